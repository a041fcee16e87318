"""What the benchmarks share: a private redis-server, command statistics, RQ queues, process figures from /proc."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def private_redis() -> Iterator[int]:
    """A throwaway redis-server on a free loopback port (nobody else's commands in its statistics)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("bench: redis-server is not on PATH (apt-get install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="hirefire-bench-redis-") as tmp:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            client = redis.Redis(port=port)
            for _ in range(100):
                with contextlib.suppress(redis.ConnectionError):
                    client.ping()
                    break
                time.sleep(0.05)
            client.close()
            yield port
        finally:
            process.terminate()
            process.wait(10)


class CpuSteal:
    """The share of CPU time the hypervisor took from this machine (``steal`` in /proc/stat) since it was made: on a
    shared VM, timings taken while it is high are stretched at random, SLOWLOG's longest calls first. ``None`` where
    /proc/stat does not tell (not Linux)."""

    def __init__(self) -> None:
        self.start = self._read()

    @staticmethod
    def _read() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(n) for n in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        return (fields[7], sum(fields[:8])) if len(fields) >= 8 else None

    def share(self) -> float | None:
        end = self._read()
        if self.start is None or end is None or end[1] <= self.start[1]:
            return None
        return (end[0] - self.start[0]) / (end[1] - self.start[1])

    def __str__(self) -> str:
        share = self.share()
        return "unknown" if share is None else f"{share:.0%} of CPU time"


def command_stats(client: redis.Redis) -> tuple[dict[str, int], dict[str, int]]:
    """Calls and microseconds per command since the last CONFIG RESETSTAT, without the benchmark's own INFO/CONFIG."""
    stats = client.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}
    usec = {name.removeprefix("cmdstat_"): int(value["usec"]) for name, value in stats.items()}
    for own in ("info", "config|resetstat", "config"):
        calls.pop(own, None)
        usec.pop(own, None)
    return calls, usec


# --- RQ queues ----------------------------------------------------------------------------------------------------


def queue_names(count: int, prefix: str = "bench") -> list[str]:
    return [f"{prefix}-{i:04d}" for i in range(count)]


def make_rq_queues(client: redis.Redis, names: list[str], jobs_per_queue: int = 3) -> None:
    """RQ's own key layout (RQ 2 and 3 alike): waiting jobs with their hashes, one running and one due job per queue,
    every queue registered in ``rq:queues`` (which rq-exporter lists). Written directly: far faster than enqueueing."""
    now = time.time()
    pipe = client.pipeline(transaction=False)
    for n, name in enumerate(names):
        stamp = datetime.fromtimestamp(now - 30 - n / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # one per queue
        ids = [f"{name}-job-{j}" for j in range(jobs_per_queue)]
        for job_id in ids:
            pipe.hset(
                f"rq:job:{job_id}",
                mapping={"enqueued_at": stamp, "created_at": stamp, "status": "queued", "origin": name},
            )
        if ids:
            pipe.rpush(f"rq:queue:{name}", *ids)
        pipe.zadd(f"rq:wip:{name}", {f"{name}-running": now + 3600})
        pipe.zadd(f"rq:scheduled:{name}", {f"{name}-due": now - 5})
        pipe.sadd("rq:queues", f"rq:queue:{name}")
        if n % 500 == 499:
            pipe.execute()
    pipe.execute()


def fill_queue(client: redis.Redis, name: str, jobs: int) -> None:
    """Make ``rq:queue:<name>`` hold ``jobs`` job ids (only the head job gets a hash: nothing reads the others)."""
    make_rq_queues(client, [name], jobs_per_queue=1)
    chunk = 10_000
    for start in range(1, jobs, chunk):
        client.rpush(f"rq:queue:{name}", *(f"{name}-job-{j}" for j in range(start, min(jobs, start + chunk))))


def rss_bytes(pid: int | None = None) -> int:
    with open(f"/proc/{pid or os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tcp_connections(pid: int) -> int:
    """Open sockets of a process (listening socket included)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                count += 1
    return count


def tracker_figures(stats: list, wall: float, cpu: float, units: int) -> dict[str, float]:
    """Per task (or message) figures of one tracker benchmark round: ``stats`` is :func:`command_stats` of the broker
    and of the tracker's store, after the round."""
    (broker_calls, broker_usec), (store_calls, store_usec) = stats
    return {
        "wall_us": wall / units * 1e6,
        "cpu_us": cpu / units * 1e6,
        "broker": sum(broker_calls.values()) / units,
        "store": sum(store_calls.values()) / units,
        "redis_us": (sum(broker_usec.values()) + sum(store_usec.values())) / units,
        **{f"store {name}": n / units for name, n in store_calls.items()},
    }


def alternated(run: Callable[[bool], dict[str, float]], rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """Medians of ``run(tracked)`` over ``rounds`` rounds, without and with the tracker, alternating within each round
    so that a noisy neighbour hits both."""
    results: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for _ in range(rounds):
        for tracked in (False, True):
            results[tracked].append(run(tracked))
    keys = {k for rs in results.values() for r in rs for k in r}
    median = {t: {k: statistics.median(r.get(k, 0.0) for r in rs) for k in keys} for t, rs in results.items()}
    return median[False], median[True]


def tracker_report(heading: str, unit: str, plain: dict[str, float], tracked: dict[str, float]) -> None:
    """The figures of a worker without and with the tracker, side by side, per ``unit`` (task, message)."""
    rows = (
        (f"wall time (us/{unit})", "wall_us", "{:.0f}"),
        (f"worker CPU time (us/{unit})", "cpu_us", "{:.0f}"),
        (f"broker commands (per {unit})", "broker", "{:.2f}"),
        (f"tracker store commands (per {unit})", "store", "{:.2f}"),
        (f"Redis server time (us/{unit})", "redis_us", "{:.1f}"),
    )
    width = max(len(name) for name, _, _ in rows) + 2
    print(f"\n{heading} (median per {unit})")
    print(f"{'':{width}} {'without tracker':>16} {'with tracker':>14} {'difference':>12}")
    for name, key, form in rows:
        diff = tracked[key] - plain[key]
        ratio = f" ({tracked[key] / plain[key]:.2f}x)" if plain[key] else ""
        cells = f"{form.format(plain[key]):>16} {form.format(tracked[key]):>14} {form.format(diff):>12}"
        print(f"{name:{width}} {cells}{ratio}")
    store = sorted((k.removeprefix("store "), v) for k, v in tracked.items() if k.startswith("store "))
    print(f"the tracker's commands per {unit}: {', '.join(f'{n} {v:.2f}' for n, v in store) or 'none'}")
