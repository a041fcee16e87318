"""How long one call holds Redis where a read's reply has no size bound: the reviewer's two cases, in SLOWLOG.

    PYTHONPATH=. /work/venv/bin/python bench/unbounded.py     # ~30 s; PYTHONPATH=<other checkout> to compare

On a private redis-server (bench/support.py), with SLOWLOG logging every command from 0.5 ms up (the calls a script
makes itself are far shorter, so neither logged nor slowed by the logging), over 5 cycles after a first that loads
the scripts:

- Dramatiq: 10 queues of 10,000 delayed messages each (dramatiq's own RedisBroker wrote them): the delay queues'
  HVALS;
- RQ: 60 queues led by 1,500 ids whose job hash is gone (a ``ttl`` that passed), each with one live job behind them;

per case the longest top-level command (a script call, or a plain one beside it) and the number of calls, then
whether a proc with ``socket_timeout = 0.1`` reads every cycle.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from support import private_redis

import hirefire_exporter
from hirefire_exporter.collection import Collection
from hirefire_exporter.procs.dramatiq import DramatiqProc
from hirefire_exporter.procs.rq import RQProc

CYCLES = 5


def dramatiq_case(client: redis.Redis, url: str) -> list:
    broker = RedisBroker(url=url)
    names = [f"d{i}" for i in range(10)]
    for name in names:
        for _ in range(10_000):
            message = dramatiq.Message(queue_name=name, actor_name="work", args=(1,), kwargs={}, options={})
            broker.enqueue(message, delay=3_600_000)
    return [lambda timeout: DramatiqProc("dramatiq", queues=names, url=url, socket_timeout=timeout)]


def rq_case(client: redis.Redis, url: str) -> list:
    names = [f"r{i}" for i in range(60)]
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.rpush(f"rq:queue:{name}", *(f"gone-{i}" for i in range(1_500)))
        pipe.sadd("rq:queues", f"rq:queue:{name}")
    pipe.execute()
    return [lambda timeout: RQProc("rq", queues=names, url=url, socket_timeout=timeout)]


def measure(client: redis.Redis, makers: list) -> tuple[str, str, str]:
    collection = Collection([make(5.0) for make in makers], max_age=0)
    collection.collect()  # the scripts loaded, the connection made
    # from 0.5 ms up: the calls a script makes itself (each far shorter) are not logged, nor slowed by the logging
    client.config_set("slowlog-log-slower-than", 500)
    client.config_set("slowlog-max-len", 10_000)
    client.slowlog_reset()
    client.config_resetstat()
    for _ in range(CYCLES):
        collection.collect()
    stats = client.info("commandstats")
    entries = [e for e in client.slowlog_get(10_000) if e["client_address"] != b"?:0"]
    collection.close()
    calls = sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha_ro", "evalsha")) // CYCLES
    if entries:
        longest = max(entries, key=lambda e: e["duration"])
        name = longest["command"].split(b" ", 1)[0].decode()
        held = f"{longest['duration'] / 1000:.1f} ms ({name})"
    else:
        held = "< 0.5 ms"
    client.config_set("slowlog-log-slower-than", 10_000)
    short = Collection([make(0.1) for make in makers], max_age=0)
    ups = sum(all(status.up for status in short.collect().procs) for _ in range(CYCLES))
    short.close()
    return held, f"{calls}", f"{ups}/{CYCLES}"


def main() -> None:
    print(f"hirefire_exporter from {Path(hirefire_exporter.__file__).parent.parent}")
    print(f"{'case':<44} {'longest command':>22} {'script calls/cycle':>19} {'up at 0.1 s':>12}")
    with private_redis() as port:
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis(port=port)
        for label, case in (
            ("Dramatiq, 10 queues x 10,000 delayed", dramatiq_case),
            ("RQ, 60 queues x 1,500 expired ids", rq_case),
        ):
            client.flushall()
            makers = case(client, url)
            time.sleep(0.1)
            print(f"{label:<44} " + " ".join(f"{v:>{w}}" for v, w in zip(measure(client, makers), (22, 19, 12))))
        client.close()


if __name__ == "__main__":
    main()
