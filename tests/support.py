"""Helpers shared by the tests (not fixtures): Redis command counts and round trips, waits, real RQ workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

TESTS = Path(__file__).parent
T = TypeVar("T")


def command_counts(client) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT (``{"llen": 3, ...}``), leaving out the INFO call itself
    and the handshake a new connection makes (HELLO, CLIENT SETINFO, SELECT)."""
    stats = client.info("commandstats")
    counts = {key.removeprefix("cmdstat_"): value["calls"] for key, value in stats.items()}
    for own in ("info", "config|resetstat", "flushall", "flushdb", "hello", "client|setinfo", "select"):
        counts.pop(own, None)
    return counts


def count_round_trips(monkeypatch) -> list[int]:
    """From now until the test ends, every round trip redis-py makes to any server appends to the returned list:
    ``len()`` of it is the number of round trips. A round trip starts when a connection sends after it has read (or
    for the first time), so one pipeline, or calls sent in several writes before any reply is read, count once."""
    import redis.connection

    sends: list[int] = []
    reading: dict[int, bool] = {}  # per connection: whether it has read since it last sent
    cls = redis.connection.AbstractConnection
    send, read = cls.send_packed_command, cls.read_response

    def send_packed_command(self, command, check_health=True):
        if reading.get(id(self), True):
            sends.append(1)
        reading[id(self)] = False
        return send(self, command, check_health)

    def read_response(self, *args, **kwargs):
        reading[id(self)] = True
        return read(self, *args, **kwargs)

    monkeypatch.setattr(cls, "send_packed_command", send_packed_command)
    monkeypatch.setattr(cls, "read_response", read_response)
    return sends


def wait_until(condition: Callable[[], T], timeout: float = 15.0, what: str = "condition", interval: float = 0.05) -> T:
    """Poll ``condition`` every ``interval`` seconds until it returns something truthy, and return that; fail
    naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def start_rq_worker(url: str, *queues: str, pool: int | None = None) -> subprocess.Popen:
    """A real ``rq worker`` process on ``queues`` (no scheduler), importing jobs from tests/rq_jobs.py; with ``pool``,
    an ``rq worker-pool`` of that many workers instead."""
    env = {**os.environ, "PYTHONPATH": str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if pool is None:
        command = ["worker", "--url", url, "--name", f"test-{os.getpid()}-{time.time_ns()}"]
    else:
        command = ["worker-pool", "--url", url, "--num-workers", str(pool)]
    return subprocess.Popen(
        [sys.executable, "-m", "rq.cli", *command, *queues],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=pool is not None,  # so that stop() can kill a pool's workers with it
    )


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 10 s: for a process that leads its own session (a worker pool), to all of it."""
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        if os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, signal.SIGKILL)
        process.kill()
        process.wait(5)


def samples(text: str, name: str) -> dict[tuple, float]:
    """``{label values: value}`` for one metric in Prometheus text output."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sample.labels.values())] = sample.value
    return out


def http_get(port: int, path: str, timeout: float = 30, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One GET on a fresh connection to ``127.0.0.1:port``: the status and the body."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def without_requests(body: bytes) -> bytes:
    """A /metrics body without the request counts (which every scrape moves on: equal bodies differ there)."""
    return b"\n".join(line for line in body.split(b"\n") if b"hirefire_exporter_requests_total" not in line)
