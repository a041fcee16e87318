"""What the worker-side tracker costs a Dramatiq worker per message: Redis commands and microseconds, side by side
with the same worker without it.

Each round starts a real ``dramatiq`` worker (one process, 8 threads) of tests/dramatiq_actors.py on a private
redis-server (the broker), without and then with ``hirefire_exporter.tracking.dramatiq.track`` writing to a second
private redis-server (the store, whose ``INFO commandstats`` counts the tracker's commands alone), and runs the same
messages through it: ``noop`` (returns at once: most messages come and go between two of the tracker's flushes) and
``pause`` of 0.6 s (longer than a flush: each message is written when started and removed when done). Figures per
message: wall time, the worker process's CPU time (its tracker thread included), Redis commands and Redis time. The
tests' actors run the tracker with ``flush_every = 0.1`` (five times the default's wake-ups):

    /work/venv/bin/python bench/dramatiq_tracker.py [--messages 2000] [--rounds 2]

Rounds alternate the two workers, so that a noisy neighbour hits both; read the differences and ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the tests' workers; their `support`

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq_support import DramatiqWorker
from support import wait_until

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("bench_support", HERE / "support.py")
bench_support = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_support)

#: (label, messages (None: --messages), seconds each runs)
KINDS = (("messages that return at once", None, 0.0), ("messages that run 0.6 s", 40, 0.6))
THREADS = 8


def worker_pid(worker: DramatiqWorker) -> int:
    """The worker process dramatiq's main process forked (it runs the threads and the tracker)."""
    pid = worker.process.pid
    children = wait_until(
        lambda: Path(f"/proc/{pid}/task/{pid}/children").read_text().split(), what="the worker process"
    )
    return int(children[0])


def run(broker_port: int, store_port: int, messages: int, seconds: float, tracked: bool) -> dict[str, float]:
    url, store = f"redis://127.0.0.1:{broker_port}/0", f"redis://127.0.0.1:{store_port}/0"
    clients = [redis.Redis(port=broker_port), redis.Redis(port=store_port)]
    for client in clients:
        client.flushall()
    q = "bench-drq"
    with tempfile.TemporaryDirectory() as flags:
        producer = RedisBroker(url=url)
        worker = DramatiqWorker("redis", url, q, Path(flags), threads=THREADS, track=store if tracked else None)

        def send(n: int) -> None:
            actor, args = ("pause", (seconds,)) if seconds else ("noop", ())
            for _ in range(n):
                producer.enqueue(dramatiq.Message(queue_name=q, actor_name=actor, args=args, kwargs={}, options={}))

        def drained() -> bool:
            return clients[0].llen(f"dramatiq:{q}") == 0 and clients[0].hlen(f"dramatiq:{q}.msgs") == 0

        try:
            send(1)  # a first message, past the worker's start-up
            wait_until(drained, timeout=60, what="the worker to run a first message")
            pid = worker_pid(worker)
            time.sleep(1)  # the tracker's first flushes
            for client in clients:
                client.config_resetstat()
            cpu, start = bench_support.cpu_seconds(pid), time.perf_counter()
            send(messages)
            wait_until(drained, timeout=300, interval=0.01, what=f"{messages} messages")
            wall = time.perf_counter() - start
            time.sleep(0.5)  # the tracker's last flush (the last messages' removal)
            cpu = bench_support.cpu_seconds(pid) - cpu
            stats = [bench_support.command_stats(client) for client in clients]
        finally:
            worker.stop()
            producer.close()
            for client in clients:
                client.close()
    return bench_support.tracker_figures(stats, wall, cpu, messages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages that return at once, per round")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with bench_support.private_redis() as broker_port, bench_support.private_redis() as store_port:
        for label, messages, seconds in KINDS:
            messages = messages or args.messages
            one = partial(run, broker_port, store_port, messages, seconds)  # one worker's round: one(tracked)
            plain, tracked = bench_support.alternated(one, args.rounds)
            heading = f"{label}: {messages} messages x {args.rounds} rounds, {THREADS} threads"
            bench_support.tracker_report(heading, "message", plain, tracked)


if __name__ == "__main__":
    main()
