"""Queue discovery (``queues = "*"``): what finding the queues costs Redis, side by side with ``KEYS``.

For keyspaces of 10,000 to 1,000,000 unrelated keys holding 100 HotQueue queues, a HotQueue proc with ``queues = "*"``
discovers them with ``SCAN`` (see :mod:`hirefire_exporter.discovery`): its first pass, then a rescan in budgeted
slices. Printed per size: the cycles a pass takes, SCAN calls, Redis time of the pass and of its longest single call
(from SLOWLOG: how long one call holds the server), against one ``KEYS hotqueue:*`` (what an exporter that lists keys
would send: one call holding the server for the whole keyspace). Then RQ's discovery (one ``SMEMBERS rq:queues``) at
1,000 queues against the cycle that measures them.

    python bench/discovery.py          # ~30 s
"""

from __future__ import annotations

import time

import redis
from support import make_rq_queues, private_redis, queue_names

from hirefire_exporter.collection import Collection
from hirefire_exporter.discovery import KeyScan
from hirefire_exporter.procs.rq import RQProc


def fill(client: redis.Redis, keys: int, queues: int) -> None:
    client.flushall()
    pipe = client.pipeline(transaction=False)
    for i in range(keys - queues):
        pipe.set(f"cache:{i}", 1)
        if i % 10_000 == 9_999:
            pipe.execute()
    for i in range(queues):
        pipe.rpush(f"hotqueue:q{i:03d}", "m")
    pipe.execute()


def slowest(client: redis.Redis, command: str) -> tuple[int, int]:
    """(calls, longest call in microseconds) of ``command`` in the slow log, which logs every call here."""
    entries = [e for e in client.slowlog_get(1_000_000) if e["command"].split(b" ")[0].upper() == command.encode()]
    return len(entries), max((e["duration"] for e in entries), default=0)


def usec(client: redis.Redis, command: str) -> int:
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("usec", 0))


def one_pass(scan: KeyScan, client: redis.Redis) -> int:
    """Step ``scan`` until a pass ends (one step per cycle): the number of steps."""
    steps = 1
    while scan.step(client) is None:
        steps += 1
    return steps


def measure(client: redis.Redis, command: str, run, *args) -> tuple[object, int, int, int]:
    """``run(*args)`` on clean statistics: its result, the Redis time of ``command``, its calls and its longest."""
    client.config_resetstat()
    client.slowlog_reset()
    result = run(*args)
    calls, longest = slowest(client, command)
    return result, usec(client, command.lower()), calls, longest


def main() -> None:
    with private_redis() as port:
        client = redis.Redis(port=port)
        client.config_set("slowlog-log-slower-than", 0)
        client.config_set("slowlog-max-len", 1_000_000)
        url = f"redis://127.0.0.1:{port}/0"
        print("keys       pass    cycles  SCAN calls  pass usec  longest SCAN usec | KEYS usec  longest / KEYS")
        for keys in (10_000, 100_000, 1_000_000):
            fill(client, keys, 100)
            scan = KeyScan("hotqueue:*")  # what a HotQueue proc with queues = "*" runs, one step per cycle
            keys_usec = measure(client, "KEYS", client.keys, "hotqueue:*")[1]
            for label in ("first", "rescan"):
                steps, scan_usec, calls, longest = measure(client, "SCAN", one_pass, scan, client)
                print(
                    f"{keys:>9,}  {label:<6}  {steps:>6}  {calls:>10}  {scan_usec:>9}  {longest:>17} | {keys_usec:>9}"
                    f"  {longest / max(keys_usec, 1):>14.3f}"
                )

        client.flushall()
        make_rq_queues(client, queue_names(1000))
        globbed = Collection([RQProc("worker", queues="*", url=url, discover_every=0)])
        named = Collection([RQProc("worker", queues=queue_names(1000), url=url)])
        for collection in (globbed, named):
            collection.collect()  # warm: connections, scripts
        client.config_resetstat()
        start = time.perf_counter()
        named.collect()
        named_time = time.perf_counter() - start
        named_usec = sum(int(v["usec"]) for k, v in client.info("commandstats").items() if k != "cmdstat_info")
        client.config_resetstat()
        start = time.perf_counter()
        globbed.collect()
        globbed_time = time.perf_counter() - start
        smembers_usec = usec(client, "smembers")
        print(
            f"RQ, 1,000 queues: a cycle {named_time * 1000:.1f} ms ({named_usec} usec of Redis time) named; discovering"
            f" every cycle {globbed_time * 1000:.1f} ms, of which SMEMBERS rq:queues {smembers_usec} usec of Redis time"
            f" ({smembers_usec / max(named_usec, 1):.1%} of the cycle's; once a minute by default)"
        )


if __name__ == "__main__":
    main()
