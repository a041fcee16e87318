"""``hirefire-exporter serve`` under many open connections, and listening errors as one line."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from conftest import free_port, unavailable
from support import wait_until

from hirefire_exporter.app import create_app
from hirefire_exporter.procs.base import ProcConfigError
from hirefire_exporter.procs.rq import RQProc
from hirefire_exporter.server import close_server, raise_file_limit, serve

rq = pytest.importorskip("rq")

IDLE = 600  # connected, never sent a byte (a proxy's spare keep-alive connection)
SLOW = 600  # one header line every 2 s, never finishing the request (a slow or hostile client)


def write_config(tmp_path, redis_url: str) -> str:
    path = tmp_path / "exporter.toml"
    path.write_text(f'token = "t0ken"\n[[procs]]\nname = "worker"\nbackend = "rq"\nurl = "{redis_url}"\n')
    return str(path)


def serve_command(port: int, config: str) -> list[str]:
    return [sys.executable, "-m", "hirefire_exporter.cli", "serve", "--host", "127.0.0.1", f"--port={port}", config]


def healthy_get(port: int, timeout: float) -> tuple[bytes, float]:
    """One whole /info request on a new connection: (response, seconds it took)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as client:
        client.sendall(b"GET /hirefire/t0ken/info HTTP/1.1\r\nHost: exporter\r\nConnection: close\r\n\r\n")
        response = b""
        while chunk := client.recv(65536):
            response += chunk
    return response, time.monotonic() - started


def lower_soft_file_limit() -> None:
    """In the server's child process: the soft limit most distributions start with."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def test_a_healthy_client_is_answered_within_a_second_while_1200_idle_and_slow_connections_are_open(
    tmp_path, redis_conn, redis_url
):
    needed = IDLE + SLOW + 256
    if raise_file_limit(needed) < needed:
        unavailable("file descriptors", f"this test opens {IDLE + SLOW} sockets; RLIMIT_NOFILE's hard limit is lower")
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < needed:
        unavailable("file descriptors", "the server needs a hard RLIMIT_NOFILE above 1024 to raise its soft limit to")
    rq.Queue("default", connection=redis_conn).enqueue("rq_jobs.noop")
    port = free_port()
    server = subprocess.Popen(
        serve_command(port, f"--config={write_config(tmp_path, redis_url)}"),
        preexec_fn=lower_soft_file_limit,  # the server must raise it itself: 1,200 sockets do not fit in 1024
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    held: list[socket.socket] = []
    dripping = threading.Event()
    try:

        def up() -> bool:
            try:
                return healthy_get(port, 1)[0].startswith(b"HTTP/1.1 200")
            except OSError:
                assert server.poll() is None, server.stderr.read()
                return False

        wait_until(up, what="the server to answer")
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(IDLE + SLOW)]
        slow = held[IDLE:]
        for client in slow:
            client.sendall(b"GET /hirefire/t0ken/info HTTP/1.1\r\n")

        def drip() -> None:
            line = 0
            while not dripping.wait(2):
                for client in slow:
                    client.sendall(b"X-Line-%d: still coming\r\n" % line)
                line += 1

        threading.Thread(target=drip, daemon=True).start()
        # The server accepts the 1,200 connections one loop turn at a time; wait for it to have taken them all.
        wait_until(up, timeout=30, what="the server to take the connections in")
        replies = []
        deadline = time.monotonic() + 6  # three drips of every slow client
        while time.monotonic() < deadline:
            replies.append(healthy_get(port, 5))
            time.sleep(0.2)
        for response, seconds in replies:
            head, body = response.split(b"\r\n\r\n", 1)
            assert head.startswith(b"HTTP/1.1 200")
            assert json.loads(body) == [{"name": "worker", "value": 1, "quantity": 1}]
            assert seconds < 1.0
        assert len(replies) >= 10
        # every held connection is still open: none was dropped to make room
        for client in held:
            client.setblocking(False)
            with pytest.raises(BlockingIOError):
                client.recv(1)

        started = time.monotonic()
        server.send_signal(signal.SIGINT)
        assert server.wait(10) == 0 and time.monotonic() - started < 10
    finally:
        dripping.set()
        for client in held:
            client.close()
        if server.poll() is None:
            server.kill()
            server.wait()


def test_a_port_in_use_exits_2_with_one_line(tmp_path, redis_url):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            serve_command(port, f"--config={write_config(tmp_path, redis_url)}"),
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "HIREFIRE_LOG_LEVEL": "WARNING"},
        )
    assert result.returncode == 2
    reason = "Address already in use"
    assert (
        result.stderr
        == f"hirefire-exporter: configuration error: cannot listen on 127.0.0.1:{port} (--host, --port): {reason}\n"
    )


@pytest.mark.parametrize(
    ("host", "port", "message"),
    [
        ("no-such-host.invalid", 9180, "--host 'no-such-host.invalid': cannot resolve it"),
        ("192.0.2.1", 9180, "cannot listen on 192.0.2.1:9180 (--host, --port): Cannot assign requested address"),
        ("127.0.0.1", 70000, "--port must be between 0 and 65535, not 70000"),  # waitress would listen on 4464
    ],
    ids=["unresolvable", "not-this-machine", "out-of-range"],
)
def test_listening_errors_are_one_line_naming_the_setting(host, port, message):
    app = create_app([RQProc("worker", url="redis://:hunter2@127.0.0.1:1/0")], "t0ken")
    with pytest.raises(ProcConfigError) as raised:
        serve(app, host=host, port=port, threads=1, connection_limit=10)
    text = str(raised.value)
    assert text.startswith(message) and "\n" not in text and "hunter2" not in text
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # nothing installed for a server that never ran


def test_a_request_thread_that_finishes_after_the_close_writes_to_no_other_file():
    """waitress wakes its loop by writing b"x" to a pipe it closes with os.close: a request thread finishing after
    the close would write into whatever file took that number next (seen: another subprocess's stdout in a test run,
    which then read "x")."""
    from waitress.server import create_server

    server = create_server(create_app([RQProc("worker", url="redis://127.0.0.1:1/0")], "tok"), port=0, threads=1)
    wake_up = server.trigger.trigger  # the descriptor waitress writes to
    close_server(server)
    pipes = []
    try:
        while all(wake_up not in pipe for pipe in pipes) and len(pipes) < 20:
            pipes.append(os.pipe())  # the freed numbers are taken again, lowest first
        assert any(wake_up in pipe for pipe in pipes)

        server.pull_trigger()  # what a request thread does when it has a response to send

        for reader, _ in pipes:
            os.set_blocking(reader, False)
            with pytest.raises(BlockingIOError):
                os.read(reader, 1)  # nothing arrived in any of them
    finally:
        for pipe in pipes:
            for fd in pipe:
                os.close(fd)
