"""What reading RQ's worker registry adds to a cycle: the RQ proc as shipped vs the same proc reading jobs only, side
by side on a private redis-server, at 1,000 queues with 0, 100 and 1,000 registered workers.

    /work/venv/bin/python bench/workers.py          # ~30 s

The workers are registered by RQ's own ``Worker.register_birth()`` (the keys a running ``rq worker`` writes), without
running them. Per case: the median cycle time of each proc (the two alternate cycle by cycle, so a busy machine
slows both alike) and its ratio, round trips, commands per cycle and the time Redis spent on them (commandstats).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import redis
from rq import Queue, Worker

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import command_stats, private_redis

from hirefire_exporter.procs.redis_proc import read_redis_procs
from hirefire_exporter.procs.redis_script import read_function
from hirefire_exporter.procs.rq import QUEUE_READ, RQProc, _parse_queue

QUEUES = 1000
CYCLES = 30


_WORKER_SET = """local workers = redis.pcall('SMEMBERS', prefix .. ':workers:' .. queue)
if workers.err or #workers > 0 then return {summary, workers} end
"""
assert _WORKER_SET in QUEUE_READ
#: RQ's read of a queue without its worker set (the script path only: the benchmark's server runs scripts).
_JOBS_ONLY = read_function("bench_rq_jobs_only", QUEUE_READ.replace(_WORKER_SET, ""), cost=8, parse=_parse_queue)


class JobsOnly(RQProc):
    """The same proc without the worker registry: what a cycle cost before it was read."""

    def depth_commands(self, now):
        return [(_JOBS_ONLY, *command[1:]) for command in super().depth_commands(now)]

    def _worker_keys(self, depth):
        return None


def cycle_cost(client: redis.Redis, proc: RQProc, cycles: int = 10) -> tuple[int, int, float]:
    """Round trips, commands and Redis microseconds per cycle of ``proc``, over ``cycles`` cycles. A round trip
    starts when the connection sends after it has read (a call sent in several writes is one)."""
    trips = []
    connection_class = client.connection_pool.connection_class
    send, read = connection_class.send_packed_command, connection_class.read_response

    def sending(self, command, check_health=True):
        if not trips or trips[-1] == "read":
            trips.append("send")
        return send(self, command, check_health)

    def reading(self, *args, **kwargs):
        trips[-1:] = ["read"] if trips[-1] == "read" else ["sent", "read"]
        return read(self, *args, **kwargs)

    connection_class.send_packed_command, connection_class.read_response = sending, reading
    client.config_resetstat()
    try:
        for _ in range(cycles):
            read_redis_procs(client, [proc], time.time())
    finally:
        connection_class.send_packed_command, connection_class.read_response = send, read
    calls, usec = command_stats(client)
    round_trips = trips.count("sent") - 1  # the last: command_stats' own INFO
    return round_trips // cycles, sum(calls.values()) // cycles, sum(usec.values()) / cycles


def main() -> None:
    names = [f"q{i}" for i in range(QUEUES)]
    with private_redis() as port:
        client = redis.Redis(port=port)
        for name in names:
            Queue(name, connection=client).enqueue("os.getpid")
        registered = 0
        print(f"{QUEUES} RQ queues, 1 job each; cycle median over {CYCLES} cycles, alternating")
        print(f"{'workers':>8} {'proc':10} {'median ms':>10} {'ratio':>6} {'trips':>6} {'commands':>9} {'redis us':>9}")
        for workers, per_worker in ((0, 0), (100, 10), (1000, 1)):
            while registered < workers:
                queues = [
                    Queue(names[(registered * per_worker + k) % QUEUES], connection=client) for k in range(per_worker)
                ]
                Worker(queues, connection=client, name=f"w{registered}").register_birth()
                registered += 1
            procs = {"jobs only": JobsOnly("worker", queues=names, connection=client)}
            procs["+ workers"] = RQProc("worker", queues=names, connection=client)
            assert procs["+ workers"].read({}).workers.online == workers
            times: dict[str, list[float]] = {label: [] for label in procs}
            for _ in range(CYCLES):
                for label, proc in procs.items():
                    start = time.perf_counter()
                    read_redis_procs(client, [proc], time.time())
                    times[label].append(time.perf_counter() - start)
            base = statistics.median(times["jobs only"])
            for label, proc in procs.items():
                median = statistics.median(times[label])
                trips, commands, usec = cycle_cost(client, proc)
                print(
                    f"{workers:>8} {label:10} {median * 1000:>10.2f} {median / base:>6.2f} {trips:>6} {commands:>9}"
                    f" {usec:>9.0f}"
                )
        calls, usec = command_stats(client)  # the last cycles: Redis time per call, what the added commands cost
        print("Redis us per call:", ", ".join(f"{c} {usec[c] / calls[c]:.2f}" for c in ("llen", "smembers", "hmget")))


if __name__ == "__main__":
    main()
