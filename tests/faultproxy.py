"""Broker faults on loopback, for tests and benchmarks: a TCP proxy that can cut, stall or slow a connection, and a
private ``redis-server`` that can be killed with SIGKILL and started again on the same port.

Neither touches the machine's shared brokers: the proxy only forwards to them, and :class:`RedisProcess` runs a
server of its own on a free port.

The proxy runs one thread (a selector loop), whatever the number of connections, so tests that count the threads
of their process can tell the exporter's threads from the proxy's.
"""

from __future__ import annotations

import heapq
import itertools
import os
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["FaultProxy", "RedisProcess", "free_port", "wait_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, up: bool = True, timeout: float = 10.0) -> None:
    """Wait until something listens on ``port`` (or, with ``up=False``, until nothing does)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                listening = True
        except OSError:
            listening = False
        if listening == up:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"port {port} still {'closed' if up else 'open'} after {timeout}s")
        time.sleep(0.02)


@dataclass(eq=False)
class _Pair:
    client: socket.socket
    upstream: socket.socket | None = None  # None while the connection is held (stall mode)
    closed: bool = field(default=False)


class FaultProxy:
    """A loopback TCP proxy in front of ``upstream`` whose behaviour switches at run time.

    Modes: ``pass`` (forward both ways), ``stall`` (accept connections, forward nothing, answer nothing: a broker that
    hangs), ``slow`` (deliver every chunk the upstream sends ``delay`` seconds late). :meth:`cut` closes the listening
    socket and every live connection (new connections are refused, like a broker that went down); :meth:`restore`
    listens again on the same port. Every switch is applied by the proxy's thread before the call returns.
    """

    def __init__(self, upstream_host: str, upstream_port: int, *, port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode = "pass"
        self.delay = 0.0
        self.accepted = 0  # connections accepted since start
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._calls: list[tuple[Callable[[], None], threading.Event]] = []
        self._calls_lock = threading.Lock()
        self._pairs: set[_Pair] = set()
        self._late: list[tuple[float, int, _Pair, bytes]] = []  # (due, seq, pair, data): slow-mode deliveries
        self._seq = itertools.count()
        self._listener: socket.socket | None = None
        self._running = True
        self._listen(port)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._loop, name="faultproxy", daemon=True)
        self._thread.start()

    # Control (any thread)

    @property
    def url_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        """Live client connections through the proxy."""
        return self._call(lambda: len(self._pairs))

    def normal(self) -> None:
        self._call(lambda: self._set_mode("pass"))

    def stall(self) -> None:
        self._call(lambda: self._set_mode("stall"))

    def slow(self, delay: float) -> None:
        def apply() -> None:
            self.delay = delay
            self._set_mode("slow")

        self._call(apply)

    def cut(self) -> None:
        """Refuse new connections and close every live one (the broker went down)."""
        self._call(self._cut)

    def restore(self) -> None:
        """Listen again on the same port, in ``pass`` mode (the broker is back)."""

        def apply() -> None:
            if self._listener is None:
                self._listen(self.port)
            self._set_mode("pass")

        self._call(apply)

    def close(self) -> None:
        if not self._running:
            return
        self._call(self._cut)
        self._running = False
        self._wake_w.send(b"x")
        self._thread.join(5)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Callable[[], object]) -> object:
        done, box = threading.Event(), []
        with self._calls_lock:
            self._calls.append((lambda: box.append(fn()), done))
        self._wake_w.send(b"x")
        if not done.wait(10):
            raise TimeoutError("the fault proxy's thread did not answer")
        return box[0]

    # The proxy's thread

    def _listen(self, port: int) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        self._selector.register(listener, selectors.EVENT_READ, "accept")

    def _set_mode(self, mode: str) -> None:
        self.mode = mode
        for pair in list(self._pairs):
            if mode == "stall":
                self._watch(pair, False)
            else:
                if pair.upstream is None and not self._connect(pair):
                    continue
                self._watch(pair, True)

    def _cut(self) -> None:
        if self._listener is not None:
            self._selector.unregister(self._listener)
            self._listener.close()
            self._listener = None
        for pair in list(self._pairs):
            self._drop(pair)
        self._late.clear()

    def _watch(self, pair: _Pair, on: bool) -> None:
        for sock in (pair.client, pair.upstream):
            if sock is None:
                continue
            registered = _registered(self._selector, sock)
            if on and not registered:
                self._selector.register(sock, selectors.EVENT_READ, pair)
            elif not on and registered:
                self._selector.unregister(sock)

    def _connect(self, pair: _Pair) -> bool:
        try:
            pair.upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            self._drop(pair)
            return False
        return True

    def _drop(self, pair: _Pair) -> None:
        if pair.closed:
            return
        pair.closed = True
        for sock in (pair.client, pair.upstream):
            if sock is None:
                continue
            if _registered(self._selector, sock):
                self._selector.unregister(sock)
            sock.close()
        self._pairs.discard(pair)

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        client.setblocking(True)
        client.settimeout(5)
        self.accepted += 1
        pair = _Pair(client)
        self._pairs.add(pair)
        if self.mode == "stall":
            return  # held: accepted, never connected upstream, never read
        if self._connect(pair):
            self._watch(pair, True)

    def _pump(self, pair: _Pair, source: socket.socket) -> None:
        try:
            data = source.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(pair)
            return
        if source is pair.client:
            target = pair.upstream
        else:
            target = pair.client
            if self.mode == "slow":
                heapq.heappush(self._late, (time.monotonic() + self.delay, next(self._seq), pair, data))
                return
        self._send(pair, target, data)

    def _send(self, pair: _Pair, target: socket.socket | None, data: bytes) -> None:
        if pair.closed or target is None:
            return
        try:
            target.sendall(data)
        except OSError:
            self._drop(pair)

    def _loop(self) -> None:
        while self._running:
            timeout = None
            if self._late:
                timeout = max(0.0, self._late[0][0] - time.monotonic())
            for key, _ in self._selector.select(timeout):
                if key.data is None:
                    self._run_calls()
                elif key.data == "accept":
                    if self._listener is not None:
                        self._accept()
                elif not key.data.closed:
                    self._pump(key.data, key.fileobj)
            now = time.monotonic()
            while self._late and self._late[0][0] <= now:
                _, _, pair, data = heapq.heappop(self._late)
                self._send(pair, pair.client, data)

    def _run_calls(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        with self._calls_lock:
            calls, self._calls = self._calls, []
        for fn, done in calls:
            fn()
            done.set()


def _registered(selector: selectors.BaseSelector, sock: socket.socket) -> bool:
    try:
        selector.get_key(sock)
    except (KeyError, ValueError):
        return False
    return True


class RedisProcess:
    """A ``redis-server`` of the test's own on a fixed port: :meth:`kill` (SIGKILL) and :meth:`start` again, or
    :meth:`pause` it (SIGSTOP: connections stay open and nothing answers, as in a failover) and :meth:`resume`."""

    def __init__(self, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not on PATH")
        self.binary = binary
        self.port = port or free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="hirefire-faults-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            [*command, "--dir", self._dir.name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_port(self.port)
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown, no goodbye to clients (their sockets are closed by the kernel)."""
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
            self.process = None
        wait_port(self.port, up=False)

    def pause(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None:
            self.resume()  # a stopped process would hold SIGTERM until it runs again
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
            self.process = None
        self._dir.cleanup()

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port)

    def __enter__(self) -> RedisProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
