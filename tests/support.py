"""Helpers shared by the tests (not fixtures): Redis command counts and real RQ workers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

TESTS = Path(__file__).parent


def command_counts(client) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT (``{"llen": 3, ...}``), leaving out the INFO call itself
    and the handshake a new connection makes (HELLO, CLIENT SETINFO, SELECT)."""
    stats = client.info("commandstats")
    counts = {key.removeprefix("cmdstat_"): value["calls"] for key, value in stats.items()}
    for own in ("info", "config|resetstat", "flushall", "flushdb", "hello", "client|setinfo", "select"):
        counts.pop(own, None)
    return counts


def wait_until(condition: Callable[[], object], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def start_rq_worker(url: str, *queues: str) -> subprocess.Popen:
    """A real ``rq worker`` process on ``queues`` (no scheduler), importing jobs from tests/rq_jobs.py."""
    env = {**os.environ, "PYTHONPATH": str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rq.cli",
            "worker",
            "--url",
            url,
            "--name",
            f"test-{os.getpid()}-{time.time_ns()}",
            *queues,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
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
