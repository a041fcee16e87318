"""How long one Celery collection takes with and without worker inspection (Redis and RabbitMQ brokers).

Starts one real worker per broker (threads pool, a blocked task and prefetched tasks, so inspection has something to
report), then times ``Collection.collect()`` for a CeleryProc configured in several ways (median of the runs):

    /work/venv/bin/python bench/celery_inspect.py [--runs 7]

Brokers: ``HIREFIRE_BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``) and ``HIREFIRE_BENCH_AMQP_URL``
(default ``amqp://guest:guest@127.0.0.1:5672//``; skipped when unreachable). Only keys and queues named after this
run are created, and they are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from celery_app_support import Blocker, Worker, app_for, declare, unique, wait_for
from kombu import Connection

from hirefire_exporter.collection import Collection
from hirefire_exporter.procs.celery import CeleryProc

REDIS_URL = os.environ.get("HIREFIRE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
AMQP_URL = os.environ.get("HIREFIRE_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def timed(proc: CeleryProc, runs: int) -> tuple[float, str]:
    collection = Collection([proc], max_age=0, timeout=10)
    times, outcome = [], ""
    for _ in range(runs):
        start = time.perf_counter()
        status = collection.collect().procs[0]
        times.append(time.perf_counter() - start)
        outcome = f"{status.reading.quantity} jobs" if status.up else f"FAILED: {status.error}"
    collection.close()
    return statistics.median(times), outcome


def bench(broker: str, label: str, runs: int, signal_redis) -> None:
    q = unique("bench")
    spec = [[q, "", "direct", q, 0]]
    app = app_for(broker, spec)
    declare(app)
    blocker = Blocker(app, signal_redis)
    blocker.send(10, queue=q)
    worker = Worker(broker, spec, REDIS_URL, prefetch=4)
    try:
        wait_for(lambda: blocker.started() == 1 and app.control.inspect(timeout=0.5).ping(), "the worker", 30)
        cases = [
            ("no inspection (broker counts only)", {}),
            ("inspect active, workers=1 (limit: returns on the reply)", {"inspect_statuses": ["active"], "workers": 1}),
            ("inspect all three, workers=1", {"inspect_statuses": ["active", "reserved", "scheduled"], "workers": 1}),
        ]
        if label == "redis":
            cases.append(("inspect active, workers found in Redis (limit)", {"inspect_statuses": ["active"]}))
        else:
            cases.append(("inspect all three, workers unknown (waits the timeout)", {"inspect_statuses": list(_ALL)}))
        print(f"\n{label} ({runs} runs, median; inspect_timeout 1.0 s)")
        baseline = None
        for name, options in cases:
            median, outcome = timed(CeleryProc("worker", queues=[q], app=app, **options), runs)
            baseline = baseline or median
            print(f"  {name:<60} {median * 1000:8.1f} ms  x{median / baseline:7.1f}  ({outcome})")
        start = time.perf_counter()  # what the old package did: sequential broadcasts, no limit (one run)
        inspector = app.control.inspect(timeout=1.0)
        replies = [inspector.active(), inspector.reserved(), inspector.scheduled(), inspector.active_queues()]
        old = time.perf_counter() - start
        name = "old hirefire: 4 sequential broadcasts, no limit (1 run)"
        print(f"  {name:<60} {old * 1000:8.1f} ms  x{old / baseline:7.1f}  ({sum(map(bool, replies))}/4 replied)")
    finally:
        worker.stop()
        if label == "rabbitmq":
            with Connection(broker) as conn:
                conn.default_channel.queue_delete(q)
                for exchange in (q, f"hf-ctl-{q}.pidbox", f"reply.hf-ctl-{q}.pidbox"):  # what Celery declared
                    conn.default_channel.exchange_delete(exchange)
        else:
            for tag, entry in signal_redis.hgetall("unacked").items():  # what the killed worker held, ours only
                if json.loads(entry)[2] == q:
                    signal_redis.hdel("unacked", tag)
                    signal_redis.zrem("unacked_index", tag)
            _delete_keys(signal_redis, f"*{q}*")  # its lists and kombu's binding tables
        _delete_keys(signal_redis, f"{blocker.key}*")


_ALL = ("active", "reserved", "scheduled")


def _delete_keys(client, pattern: str) -> None:
    keys = list(client.scan_iter(pattern))
    if keys:
        client.delete(*keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    import redis

    signal_redis = redis.Redis.from_url(REDIS_URL)
    bench(REDIS_URL, "redis", args.runs, signal_redis)
    try:
        with Connection(AMQP_URL, connect_timeout=2) as conn:
            conn.connect()
    except Exception as exc:
        print(f"\nrabbitmq: skipped ({type(exc).__name__})")
        return
    bench(AMQP_URL, "rabbitmq", args.runs, signal_redis)


if __name__ == "__main__":
    main()
