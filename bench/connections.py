"""Connection capacity: a healthy client's latency while many idle and slow connections are open, for waitress as
`serve` used to run it, waitress with only its connection limit raised, and `hirefire-exporter serve` today.

    /work/venv/bin/python bench/connections.py      # ~1.5 minutes; --idle/--slow to change the load

Each server gets `--idle` connections that never send a byte and `--slow` ones that send one header line every 2 s
and never finish their request, then a healthy client GETs /hirefire/<token>/info on a new connection every 0.2 s
for `--seconds`. The servers start with the soft RLIMIT_NOFILE of most distributions (1024), but one.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from serve import TOKEN, percentile  # noqa: E402
from support import free_port, make_rq_queues, private_redis, queue_names  # noqa: E402

#: waitress with some options, as `serve` ran it before (argv: redis port, http port, JSON waitress options).
WAITRESS = """
import json, sys
from waitress.server import create_server
from hirefire_exporter.app import create_app
from hirefire_exporter.procs.rq import RQProc
app = create_app([RQProc("worker", queues=["bench-0000"], url=f"redis://127.0.0.1:{sys.argv[1]}/0")], sys.argv[4])
create_server(app, host="127.0.0.1", port=int(sys.argv[2]), **json.loads(sys.argv[3])).run()
"""


def soft_1024() -> None:
    """The soft RLIMIT_NOFILE of most distributions."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def healthy(port: int, timeout: float) -> tuple[bool, float]:
    began = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as client:
            client.sendall(f"GET /hirefire/{TOKEN}/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            response = b""
            while chunk := client.recv(65536):
                response += chunk
        return response.startswith(b"HTTP/1.1 200"), time.monotonic() - began
    except OSError:
        return False, time.monotonic() - began


@contextlib.contextmanager
def held_connections(port: int, idle: int, slow: int) -> Iterator[int]:
    clients = []
    stop = threading.Event()
    try:
        failures = 0
        while len(clients) < idle + slow and failures < 3:
            try:  # past a full backlog the kernel drops SYNs: the client retries after 1 s, then 3 s
                clients.append(socket.create_connection(("127.0.0.1", port), timeout=4))
                failures = 0
            except OSError:
                failures += 1  # three in a row: the server does not take more
        dripping = clients[idle:]
        for client in dripping:
            with contextlib.suppress(OSError):
                client.sendall(f"GET /hirefire/{TOKEN}/info HTTP/1.1\r\n".encode())

        def drip() -> None:
            line = 0
            while not stop.wait(2):
                for client in dripping:
                    with contextlib.suppress(OSError):
                        client.sendall(b"X-Slow-%d: x\r\n" % line)
                line += 1

        threading.Thread(target=drip, daemon=True).start()
        yield len(clients)
    finally:
        stop.set()
        for client in clients:
            client.close()


def measure(args: list[str], port: int, idle: int, slow: int, seconds: float, low_limit: bool = True) -> str:
    process = subprocess.Popen(
        args, preexec_fn=soft_1024 if low_limit else None, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(100):
            if healthy(port, 1)[0]:
                break
            time.sleep(0.1)
        with held_connections(port, idle, slow) as opened:
            time.sleep(3)  # the server takes the connections in
            results = []
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                results.append(healthy(port, 5))
                time.sleep(0.2)
        times = [t for _, t in results]
        answered = sum(ok for ok, _ in results)
        alive = "yes" if process.poll() is None else "no (exited)"
        return (
            f"{opened:,} | {answered}/{len(results)} | {percentile(times, 0.5) * 1000:,.0f} ms "
            f"| {max(times) * 1000:,.0f} ms | {alive} |"
        )
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--slow", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    needed = args.idle + args.slow + 100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))
    with private_redis() as redis_port, tempfile.TemporaryDirectory() as tmp:
        make_rq_queues(redis.Redis(port=redis_port), queue_names(1))
        config = Path(tmp) / "bench.toml"
        config.write_text(
            f'token = "{TOKEN}"\n[[procs]]\nname = "worker"\nbackend = "rq"\n'
            f'url = "redis://127.0.0.1:{redis_port}/0"\nqueues = ["bench-0000"]\n'
        )
        exporter = str(Path(sys.executable).with_name("hirefire-exporter"))
        waitress = [sys.executable, "-c", WAITRESS, str(redis_port)]
        ours = [exporter, "serve", f"--config={config}", "--host=127.0.0.1", "--log-level=WARNING", "--share="]
        limit = '{"connection_limit": 4000}'
        servers = {  # label: (command for a port, whether the server starts with the soft limit 1024)
            "waitress defaults (serve before)": (lambda port: [*waitress, str(port), "{}", TOKEN], True),
            "waitress, connection_limit 4000": (lambda port: [*waitress, str(port), limit, TOKEN], True),
            "waitress, connection_limit 4000, no 1024 soft limit": (
                lambda port: [*waitress, str(port), limit, TOKEN],
                False,
            ),
            "hirefire-exporter serve": (lambda port: [*ours, f"--port={port}"], True),
        }
        print(f"\n### A healthy client while {args.idle:,} idle and {args.slow:,} slow connections are open\n")
        print("| server | connections opened | healthy answered | p50 | max | still running |")
        print("|---|---:|---:|---:|---:|---|")
        for label, (command, low_limit) in servers.items():
            port = free_port()
            row = measure(command(port), port, args.idle, args.slow, args.seconds, low_limit)
            print(f"| {label} | {row}", flush=True)


if __name__ == "__main__":
    main()
