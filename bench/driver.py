"""Runs collection cycles the way a user of one tool would, inside that tool's own venv (stdlib + the tool only).

    python driver.py KIND --url redis://127.0.0.1:PORT/0 --queues 100 [--procs 1] [--cycles 20]

Builds the tool's long-lived objects and runs one warm-up cycle, prints ``ready``, waits for a line on stdin (the
benchmark resets Redis's statistics meanwhile), runs ``--cycles`` cycles and prints one JSON line: the time of each
cycle in seconds and the last cycle's result. KIND: ours, raw, hirefire11, hirefire-resource, rq-exporter.
``--paired-with KIND`` alternates each cycle with one of another kind in the same process (ABBA order), the fairest
side-by-side timing on a busy machine.

``--count`` wraps the socket class to count, per cycle, connections opened and round trips: a round trip starts
whenever a socket sends after it has received (or sends for the first time), so a pipeline written in several chunks
is one round trip however it is split, and a client that waits for each reply makes one per command. The wrapper
slows the cycle down, so the benchmark takes times from a separate run without it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any


def names(count: int, prefix: str) -> list[str]:
    return [f"{prefix}-{i:04d}" for i in range(count)]


def ours(url: str, queues: list[str], procs: int, pipeline: bool = False) -> Callable[[], Any]:
    """hirefire-exporter: one Collection over ``procs`` RQProcs sharing the queues, as `serve` runs it."""
    from hirefire_exporter.collection import Collection
    from hirefire_exporter.procs.redis_script import pipeline_only
    from hirefire_exporter.procs.rq import RQProc

    size = -(-len(queues) // procs)
    rq_procs = [RQProc(f"worker{i}", queues=queues[i * size : (i + 1) * size], url=url) for i in range(procs)]
    collection = Collection(rq_procs, max_age=0, timeout=30)  # 10,000 queues on a busy machine: seconds, not 0
    if pipeline:
        pipeline_only(rq_procs[0].redis_client())

    def cycle() -> Any:
        snapshot = collection.collect()
        assert all(status.up for status in snapshot.procs), [s.error for s in snapshot.procs]
        return sum(status.reading.quantity for status in snapshot.procs)

    return cycle


def ours_pipeline(url: str, queues: list[str], procs: int) -> Callable[[], Any]:
    """hirefire-exporter reading with plain pipelined commands, as it does where the server refuses scripts. Through
    ``localhost``: what a server allows is kept per address, and a paired ``ours`` reads through 127.0.0.1."""
    return ours(url.replace("127.0.0.1", "localhost"), queues, procs, pipeline=True)


def ours_celery(url: str, queues: list[str], procs: int) -> Callable[[], Any]:
    """hirefire-exporter: one CeleryProc (metric latency) over Celery queues with priority lists (bench/scripts.py)."""
    from hirefire_exporter.collection import Collection
    from hirefire_exporter.procs.celery import CeleryProc

    collection = Collection([CeleryProc("worker", queues=queues, url=url, metric="latency")], max_age=0, timeout=30)

    def cycle() -> Any:
        snapshot = collection.collect()
        assert all(status.up for status in snapshot.procs), [s.error for s in snapshot.procs]
        return snapshot.procs[0].reading.quantity

    return cycle


def raw_llen(url: str, queues: list[str], procs: int) -> Callable[[], Any]:
    """The counts alone: one bare pipeline of LLEN on every list of kombu's default priority steps."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5.0)
    lists = [name for q in queues for name in (q, f"{q}\x06\x163", f"{q}\x06\x166", f"{q}\x06\x169")]

    def cycle() -> Any:
        pipe = client.pipeline(transaction=False)
        for name in lists:
            pipe.execute_command("LLEN", name)
        return sum(pipe.execute())

    return cycle


def raw(url: str, queues: list[str], procs: int) -> Callable[[], Any]:
    """The lower bound: the very commands RQProc sends (read from ``--commands``, written by the benchmark from
    RQProc.depth_commands), prebuilt, in two bare redis-py pipelines on a client with RQProc's socket and retry
    options; no parsing, no threads, no snapshot. Needs only redis-py, so it runs in any venv."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0, retry=Retry(NoBackoff(), 1))
    with open(COMMANDS_FILE) as f:
        commands = json.load(f)
    depth = [tuple(command) for command in commands["depth"]]
    load, walks = tuple(commands["load"]), [tuple(command) for command in commands["walks"]]

    def cycle() -> Any:
        pipe = client.pipeline(transaction=False)
        for command in depth:
            pipe.execute_command(*command)
        replies = pipe.execute()  # per queue 8 counts, then its worker set (left unparsed)
        busy = [walk for walk, length in zip(walks, replies[0::9]) if length]
        if busy:
            pipe = client.pipeline(transaction=False)
            pipe.execute_command(*load)
            for walk in busy:
                pipe.execute_command(*walk)
            pipe.execute()
        return sum(replies[0::9]) + sum(replies[1::9]) + sum(replies[2::9]) + sum(replies[3::9])

    return cycle


def hirefire11(url: str, queues: list[str], procs: int) -> Callable[[], Any]:
    """The old HireFire 1.1 package: RQProc.quantity() per proc, as its /info view calls it."""
    import redis
    from hirefire.procs.rq import RQProc

    class WorkerProc(RQProc):  # declared the way its README shows (RQ 2 needs the connection before __init__)
        connection = redis.Redis.from_url(url)

    size = -(-len(queues) // procs)
    old = [WorkerProc(name=f"worker{i}", queues=queues[i * size : (i + 1) * size]) for i in range(procs)]
    return lambda: sum(proc.quantity(cache={}) for proc in old)


def hirefire_resource(url: str, queues: list[str], procs: int) -> Callable[[], Any]:
    """HireFire's current library: the RQ macro a worker dyno's proc calls on every /info request."""
    from hirefire_resource.macro.rq import job_queue_size

    size = -(-len(queues) // procs)
    groups = [queues[i * size : (i + 1) * size] for i in range(procs)]
    return lambda: sum(job_queue_size(*group, redis_url=url) for group in groups)


def rq_exporter(url: str, queues: list[str], procs: int) -> Callable[[], Any]:
    """rq-exporter: its RQCollector.collect(), which its server runs on every scrape (all queues in rq:queues)."""
    import redis
    from rq import Queue, Worker
    from rq_exporter.collector import RQCollector

    collector = RQCollector(redis.Redis.from_url(url), Worker, Queue)

    def cycle() -> Any:
        families = list(collector.collect())
        jobs = next(f for f in families if f.name == "rq_jobs")
        return int(sum(s.value for s in jobs.samples if s.labels["status"] in ("queued", "started")))

    return cycle


COMMANDS_FILE = ""

#: The distribution each kind measures, for the table's footnote.
DISTRIBUTIONS = {
    "ours": "hirefire-exporter",
    "ours-pipeline": "hirefire-exporter",
    "ours-celery": "hirefire-exporter",
    "raw-llen": "redis",
    "raw": "redis",
    "hirefire11": "HireFire",
    "hirefire-resource": "hirefire-resource",
    "rq-exporter": "rq-exporter",
}


def versions(kind: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for dist in dict.fromkeys((DISTRIBUTIONS[kind], "rq", "redis", "hiredis")):
        try:
            found.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            pass
    return ", ".join(found)


KINDS = {
    "ours": ours,
    "ours-pipeline": ours_pipeline,
    "ours-celery": ours_celery,
    "raw-llen": raw_llen,
    "raw": raw,
    "hirefire11": hirefire11,
    "hirefire-resource": hirefire_resource,
    "rq-exporter": rq_exporter,
}


class Counter:
    def __init__(self) -> None:
        self.connections = 0
        self.round_trips = 0

    def install(self) -> None:
        import socket

        counter, last = self, {}

        def wrap(method, sending):
            def wrapper(sock, *args, **kwargs):
                if sending and last.get(id(sock)) != "send":
                    counter.round_trips += 1
                last[id(sock)] = "send" if sending else "recv"
                return method(sock, *args, **kwargs)

            return wrapper

        for name in ("send", "sendall", "sendmsg"):
            setattr(socket.socket, name, wrap(getattr(socket.socket, name), True))
        for name in ("recv", "recv_into", "recvfrom", "recvmsg"):
            setattr(socket.socket, name, wrap(getattr(socket.socket, name), False))
        connect = socket.socket.connect

        def connecting(sock, *args):
            counter.connections += 1
            last.pop(id(sock), None)
            return connect(sock, *args)

        socket.socket.connect = connecting


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("--url", required=True)
    parser.add_argument("--queues", type=int, required=True)
    parser.add_argument("--prefix", default="bench")
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--count", action="store_true", help="count round trips and connections (slower)")
    parser.add_argument("--paired-with", choices=sorted(KINDS), help="alternate cycles with this kind (ABBA order)")
    parser.add_argument("--paired-prefix", help="queue name prefix of the paired kind (default: --prefix)")
    parser.add_argument("--paired-procs", type=int, help="procs of the paired kind (default: --procs)")
    parser.add_argument("--commands", help="JSON file of the raw kind's depth commands")
    parser.add_argument("--no-hiredis", action="store_true", help="make redis-py use its pure-Python parser")
    args = parser.parse_args()
    if args.no_hiredis:
        sys.modules["hiredis"] = None  # type: ignore[assignment]  # redis-py then finds no hiredis
    global COMMANDS_FILE
    COMMANDS_FILE = args.commands or ""
    counter = Counter()
    if args.count:
        counter.install()
    queues = names(args.queues, args.prefix)
    cycles = [KINDS[args.kind](args.url, queues, args.procs)]
    if args.paired_with:
        paired_queues = names(args.queues, args.paired_prefix or args.prefix)
        cycles.append(KINDS[args.paired_with](args.url, paired_queues, args.paired_procs or args.procs))
    for cycle in cycles:
        cycle()  # warm-up: connections, imports, thread pools
    print("ready", flush=True)
    sys.stdin.readline()
    times: list[list[float]] = [[] for _ in cycles]
    results: list[Any] = [None for _ in cycles]
    counter.round_trips = counter.connections = 0
    for i in range(args.cycles):
        # paired kinds alternate A B B A ..., so that drift on a busy machine hits both alike
        order = range(len(cycles)) if i % 2 == 0 else reversed(range(len(cycles)))
        for k in order:
            start = time.perf_counter()
            results[k] = cycles[k]()
            times[k].append(time.perf_counter() - start)
    out = {"times": times[0], "result": results[0], "versions": versions(args.kind)}
    if args.paired_with:
        out.update(times_paired=times[1], result_paired=results[1])
    if args.count:
        out.update(round_trips=counter.round_trips / args.cycles, connections=counter.connections / args.cycles)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
