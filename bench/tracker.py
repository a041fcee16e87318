"""What the worker-side tracker costs a Celery worker per task: Redis commands and microseconds, side by side with the
same worker without it.

Each round starts a real worker (threads pool, prefetch 16) on a private redis-server (the broker), without and then
with ``hirefire_exporter.tracking.celery.track`` writing to a second private redis-server (the store, so that its
``INFO commandstats`` counts the tracker's commands alone: kombu's Redis transport sends ZADD/ZREM of its own), and
runs the same tasks through it. Two kinds of task: one that returns at once (most tasks come and go between two of
the tracker's flushes), and one that runs 0.6 s, longer than a flush (every task is written when received, moved
when started, removed when done: the most the tracker writes per task). Figures per task: wall time, the worker
process's CPU time (its tracker thread included), Redis commands and Redis server time, broker and store together:

    /work/venv/bin/python bench/tracker.py [--tasks 2000] [--rounds 2]

Rounds alternate the two workers, so that a noisy neighbour hits both; read the differences and ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the tests' workers; their `support`

import redis
from celery_app_support import Blocker, Worker, app_for, unique, wait_for

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("bench_support", HERE / "support.py")
bench_support = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_support)

#: (label, tasks, seconds each task runs; None: the default for --tasks)
KINDS = (("tasks that return at once", None, 0.0), ("tasks that run 0.6 s", 20, 0.6))


def run(broker_port: int, store_port: int, tasks: int, seconds: float, tracked: bool) -> dict[str, float]:
    broker, store = f"redis://127.0.0.1:{broker_port}/0", f"redis://127.0.0.1:{store_port}/0"
    clients = [redis.Redis(port=broker_port), redis.Redis(port=store_port)]
    for client in clients:
        client.flushall()
    q = unique("bench-trk")
    spec = [[q, "", "direct", q, 0]]
    app = app_for(broker, spec)
    blocker = Blocker(app, clients[0])
    if not seconds:
        blocker.release(tasks + 1)  # every task returns at once
    worker = Worker(broker, spec, broker, prefetch=16, tracker=store if tracked else None)
    try:
        blocker.send(1, queue=q, timeout=seconds)
        wait_for(lambda: blocker.started() == 1, "the worker to run a first task", 60)
        time.sleep(1 + seconds)  # past the first task and the tracker's first flushes
        for client in clients:
            client.config_resetstat()
        cpu, start = bench_support.cpu_seconds(worker.process.pid), time.perf_counter()
        blocker.send(tasks, queue=q, timeout=seconds)
        wait_for(lambda: blocker.started() == tasks + 1, f"{tasks} tasks", 300)
        time.sleep(seconds)  # the last one to finish
        wall, cpu = time.perf_counter() - start, bench_support.cpu_seconds(worker.process.pid) - cpu
        stats = [bench_support.command_stats(client) for client in clients]
    finally:
        worker.stop()
        for client in clients:
            client.close()
    return bench_support.tracker_figures(stats, wall, cpu, tasks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks that return at once, per round")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with bench_support.private_redis() as broker_port, bench_support.private_redis() as store_port:
        for label, tasks, seconds in KINDS:
            tasks = tasks or args.tasks
            one = partial(run, broker_port, store_port, tasks, seconds)  # one worker's round: one(tracked)
            plain, tracked = bench_support.alternated(one, args.rounds)
            heading = f"{label}: {tasks} tasks x {args.rounds} rounds, threads pool, prefetch 16"
            bench_support.tracker_report(heading, "task", plain, tracked)


if __name__ == "__main__":
    main()
