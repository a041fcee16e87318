"""What the Dramatiq proc's follow-ups cost Redis: the delay-queue scan and the live workers' ack sets.

    /work/venv/bin/python bench/dramatiq_cost.py          # ~20 s

On a private redis-server, dramatiq's own key layout written by dramatiq's ``RedisBroker``:

- the delay split (the due messages of a delay queue, by the ``eta`` in each body) at 100, 1,000 and 10,000
  delayed messages, as the proc does it (``HVALS``, bodies decoded by the exporter) and as a read-only Lua script
  decoding them in Redis would (``cjson``), alternated call by call in one process: Redis time per call
  (``INFO commandstats``) and wall time, as ratios of the proc's to the script's;
- a whole cycle at 5 queues and 1, 10 and 100 live workers (one ``SCARD`` per worker and queue with fetched
  messages): Redis time per cycle and commands per cycle, and wall time as a ratio to the same cycle reading no ack
  set (no worker live).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from support import command_stats, private_redis

from hirefire_exporter.collection import Collection
from hirefire_exporter.procs.dramatiq import DramatiqProc

#: The alternative: KEYS[1] a delay queue's message hash, ARGV[1] now (ms). ``{due, later, unreadable}``.
DELAY_SPLIT = """
local now, due, later, bad = tonumber(ARGV[1]), 0, 0, 0
for _, body in ipairs(redis.call('HVALS', KEYS[1])) do
  local ok, message = pcall(cjson.decode, body)
  local eta = ok and type(message) == 'table' and type(message.options) == 'table' and tonumber(message.options.eta)
  if not eta then bad = bad + 1 elseif eta <= now then due = due + 1 else later = later + 1 end
end
return {due, later, bad}
"""

CYCLES = 30


def message(queue: str) -> dramatiq.Message:
    return dramatiq.Message(queue_name=queue, actor_name="work", args=(1, "two"), kwargs={"k": "v"}, options={})


def timed(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def delay_scan(client: redis.Redis, url: str) -> None:
    print("delay split: one queue's delayed messages, half of them due")
    print(
        f"{'delayed':>8} {'HVALS µs (Redis)':>17} {'Lua µs (Redis)':>15} {'ratio':>6}"
        f" {'HVALS+Python ms':>16} {'Lua ms':>7} {'ratio':>6}"
    )
    script = client.register_script(DELAY_SPLIT)
    proc = DramatiqProc("worker", queues=["q"], url=url)
    for size in (100, 1_000, 10_000):
        client.flushall()
        broker = RedisBroker(url=url)
        for i in range(size):
            broker.enqueue(message("q"), delay=1 if i % 2 else 3_600_000)
        time.sleep(0.01)
        now = time.time()

        def in_lua(now: float = now) -> None:
            script(keys=["dramatiq:q.DQ.msgs"], args=[int(now * 1000), 10_000])

        def as_the_proc_does(now: float = now, size: int = size) -> None:
            proc._delayed("q", client.hvals("dramatiq:q.DQ.msgs"), size, now)

        in_lua()
        ours, theirs, ours_usec, theirs_usec = [], [], 0, 0
        for _ in range(CYCLES):
            client.config_resetstat()
            ours.append(timed(as_the_proc_does))
            ours_usec += sum(command_stats(client)[1].values())
            client.config_resetstat()
            theirs.append(timed(in_lua))
            theirs_usec += sum(command_stats(client)[1].values())
        a, b = statistics.median(ours) * 1000, statistics.median(theirs) * 1000
        ra, rb = ours_usec / CYCLES, theirs_usec / CYCLES
        print(f"{size:>8} {ra:>17.0f} {rb:>15.0f} {ra / rb:>6.2f} {a:>16.2f} {b:>7.2f} {a / b:>6.2f}")


def ack_sets(client: redis.Redis, url: str) -> None:
    print("\nwhole cycle: 5 queues of 20 waiting messages, each live worker holding 2 messages of each queue")
    print(f"{'workers':>8} {'commands':>9} {'Redis µs/cycle':>15} {'cycle ms':>9} {'no-acks ms':>11} {'ratio':>6}")
    queues = [f"q{i}" for i in range(5)]
    for workers in (1, 10, 100):
        client.flushall()
        producer = RedisBroker(url=url)
        for q in queues:
            for _ in range(20 + 2 * workers):
                producer.enqueue(message(q))
        for _ in range(workers):
            worker = RedisBroker(url=url)  # a broker of its own: its own worker id and heartbeat
            for q in queues:
                worker.do_fetch(q, 2)
        proc = DramatiqProc("worker", queues=queues, url=url)
        # the same proc with a heartbeat timeout so short that no worker is live: no SCARD, the rest alike
        blind = DramatiqProc("worker", queues=queues, url=url, heartbeat_timeout=1e-6)
        ours, theirs = Collection([proc]), Collection([blind])
        ours.collect()
        client.config_resetstat()
        mine = [timed(ours.collect) for _ in range(CYCLES)]
        calls, usec = command_stats(client)
        base = [timed(theirs.collect) for _ in range(CYCLES)]
        a, b = statistics.median(mine) * 1000, statistics.median(base) * 1000
        per_cycle = sum(calls.values()) // CYCLES
        print(f"{workers:>8} {per_cycle:>9} {sum(usec.values()) / CYCLES:>15.0f} {a:>9.2f} {b:>11.2f} {a / b:>6.2f}")
        ours.close()
        theirs.close()


def main() -> None:
    with private_redis() as port:
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis(port=port)
        delay_scan(client, url)
        ack_sets(client, url)


if __name__ == "__main__":
    main()
