"""RQ (2.x and 3.x): read RQ's Redis keys directly, read-only.

Per queue ``q`` (prefix ``rq``, or ``RQ_KEY_PREFIX`` as RQ 3 reads it):

- ``rq:queue:q`` (list): waiting jobs, the next one at index 0, its ``enqueued_at`` in hash ``rq:job:<id>``;
- ``rq:queue:q:intermediate`` (list): jobs a worker has just popped and not yet registered as started;
- ``rq:wip:q`` (sorted set, the StartedJobRegistry): running jobs scored by when their worker's lease runs out.
  Only live leases (score >= now) count: an expired one belongs to a dead worker and RQ will requeue or fail it;
- ``rq:scheduled:q`` (sorted set scored by run time): ``due`` jobs wait for a worker's scheduler, the rest are
  ``scheduled`` for later;
- ``rq:deferred:q`` and ``rq:failed:q``: reported, never counted.

A queue's id list may hold ids whose job hash is gone: a job enqueued with a ``ttl`` that passed while it waited, or
a hash deleted by hand. An RQ worker pops such an id and drops it without running anything. The oldest waiting job is
therefore the first *live* one: :data:`FIRST_LIVE_JOB`, a read-only Lua script, walks the queue from its head past
such ids (at most :data:`HEAD_SCAN_LIMIT`) and returns the first live job's ``enqueued_at`` and how many expired ids
it passed. Those are reported as ``expired`` and not counted; an expired id behind a live job is still counted as
``queued`` until a worker drops it (finding it would mean reading every job hash of the queue). RQ's own workers and
scheduler run Lua scripts on the same server.

Whether a queue exists: RQ adds every queue it enqueues to (its key) to the set ``rq:queues``; a queue in neither
that set nor any of its keys has never had a job, which reads as 0 jobs and ``found = False`` (a typo in ``queues``?).

Workers: an RQ worker adds its key ``rq:worker:<name>`` to ``rq:workers`` and to ``rq:workers:<q>`` for each queue
it listens on, and keeps the hash at that key alive with a TTL it renews on each heartbeat (``worker_ttl`` + 60 s,
480 s by default, while idle; ``job_monitoring_interval`` + 60 s, 90 s by default, while it runs a job). A worker killed
with SIGKILL leaves its key in the sets: it is online while its hash exists and not once it has expired (RQ's own
rule: ``rq info`` and RQ's cleanup of the sets go by the same hash). Its hash is judged by ``birth``, written with the
rest of it at start: the work horse of a worker killed mid-job writes its statistics into the expired hash when the
job ends, recreating it without ``birth`` and without a TTL. A worker that shut down cleanly took its key out of the
sets and stamped ``death`` on its hash: not online either. ``state`` ``busy`` means it runs a job. An RQ worker
runs one job at a time (``rq worker-pool`` starts separate workers, each registered on its own), so it has one slot.
A worker serving several of a proc's queues counts once. The sets cost one SMEMBERS per queue in the first round
trip, the hashes one HMGET per worker in a follow-up round trip (with the oldest-job walks on the pipeline path);
when the sets cannot be read (an ACL that denies them, a key of the wrong type) the proc's job counts are still
served and its workers are unknown.

RQ's own ``registry.count`` runs a cleanup that writes to Redis and moves jobs to the failed registry, so this
module never calls it: it reads with LLEN, ZCOUNT, ZCARD, SISMEMBER, SMEMBERS and HMGET, and the script with LRANGE,
HGET and EXISTS.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any

from ..discovery import key_text
from ..redaction import describe_error
from ..settings_check import OrNone, Text
from .base import ClientProc, QueueReading, Reading, Workers
from .redis_proc import Command, RedisProc, age_since, as_text, parse_utc
from .redis_script import read_function

log = logging.getLogger("hirefire_exporter")

#: The states that need a worker now or are on one: HireFire's count.
COUNTED = frozenset({"queued", "started", "due"})
#: A queue's reply, in this order: the counts, then whether RQ knows the queue (then, read on the server, the walk).
_STATES = ("queued", "intermediate", "started", "due", "scheduled", "deferred", "failed")
_PER_QUEUE = len(_STATES) + 1
_KNOWN = _PER_QUEUE - 1
#: How many ids at the head of a queue the script looks at, at most, to find a live job (about 1 ms of Redis time).
HEAD_SCAN_LIMIT = 1000

#: KEYS[1]: a queue's id list; ARGV[1]: the job key prefix (``rq:job:``); ARGV[2]: how many ids to look at, at most.
#: Returns ``{skipped, enqueued_at}`` for the first id whose job hash exists (``enqueued_at`` is ``""`` when the hash
#: has none), else ``{skipped, false, 1}`` when every id was expired, ``{skipped, false, 0}`` at the limit. Reads only;
#: ids are read in growing slices, so a live head costs one LRANGE of 4 ids and one HGET.
FIRST_LIVE_JOB = """
local limit = tonumber(ARGV[2])
local start, size = 0, 4
while start < limit do
  local ids = redis.call('LRANGE', KEYS[1], start, math.min(start + size, limit) - 1)
  for i, id in ipairs(ids) do
    local key = ARGV[1] .. id
    local stamp = redis.call('HGET', key, 'enqueued_at')
    if stamp then return {start + i - 1, stamp} end
    if redis.call('EXISTS', key) == 1 then return {start + i - 1, ''} end
  end
  if #ids < math.min(size, limit - start) then return {start + #ids, false, 1} end
  start = start + #ids
  size = size * 4
end
return {start, false, 0}
"""
_FIRST_LIVE = read_function("rq_first_live_job", FIRST_LIVE_JOB, cost=6)

#: KEYS[1]: a queue's id list; ARGV: the prefix, the queue's name, now, :data:`HEAD_SCAN_LIMIT`. One queue's reads, on
#: the server: the commands of :func:`_queue_commands` and, for a non-empty queue, its walk (:data:`FIRST_LIVE_JOB`,
#: or its error) after them. The other keys are derived from the name (Redis Cluster is not supported).
QUEUE_READ = """
local prefix, queue, now = ARGV[1], ARGV[2], ARGV[3]
local scheduled = prefix .. ':scheduled:' .. queue
local waiting = redis.call('LLEN', KEYS[1])
local reply = {
  waiting,
  redis.call('LLEN', KEYS[1] .. ':intermediate'),
  redis.call('ZCOUNT', prefix .. ':wip:' .. queue, now, '+inf'),
  redis.call('ZCOUNT', scheduled, '-inf', now),
  redis.call('ZCOUNT', scheduled, '(' .. now, '+inf'),
  redis.call('ZCARD', prefix .. ':deferred:' .. queue),
  redis.call('ZCARD', prefix .. ':failed:' .. queue),
  redis.call('SISMEMBER', prefix .. ':queues', KEYS[1]),
}
if waiting > 0 then
  local ok, walk = pcall(F.rq_first_live_job, KEYS, {prefix .. ':job:', ARGV[4]})
  reply[9] = ok and walk or {err = tostring(type(walk) == 'table' and walk.err or walk)}
end
return reply
"""


def _queue_commands(key: str, p: str, q: str, now: float, limit: int) -> list[Command]:
    """One queue's reads as plain commands (the pipeline path; no walk: :meth:`RQProc.latency_commands` asks)."""
    return [
        ("LLEN", key),
        ("LLEN", f"{key}:intermediate"),
        ("ZCOUNT", f"{p}:wip:{q}", now, "+inf"),
        ("ZCOUNT", f"{p}:scheduled:{q}", "-inf", now),
        ("ZCOUNT", f"{p}:scheduled:{q}", f"({now}", "+inf"),
        ("ZCARD", f"{p}:deferred:{q}"),
        ("ZCARD", f"{p}:failed:{q}"),
        ("SISMEMBER", f"{p}:queues", key),
    ]


_QUEUE = read_function("rq_queue", QUEUE_READ, cost=14, fallback=_queue_commands)


class RQProc(RedisProc, ClientProc):
    """A proc for RQ queues.

    Declarative::

        class WorkerProc(RQProc):
            name = "worker"
            queues = ["high", "default", "low"]
            connection = redis.Redis.from_url(os.environ["REDIS_URL"])

    or ``RQProc("worker", queues=["default"], url="redis://localhost:6379/0")``.
    """

    queues = ["default"]
    supports_latency = True
    #: RQ's key prefix; ``None`` reads ``RQ_KEY_PREFIX`` from the environment (RQ 3), else ``rq``.
    key_prefix: str | None = None
    option_checks = {"key_prefix": OrNone(Text("a Redis key prefix", word=True))}

    @property
    def prefix(self) -> str:
        return self.key_prefix or os.environ.get("RQ_KEY_PREFIX", "rq")

    def client(self, queue: str) -> Any:
        """An ``rq.Queue`` for ``queue`` on this proc's connection (the old API; not used for measuring)."""
        from rq import Queue

        return Queue(queue, connection=self.redis_client())

    def discover_queues(self) -> list[str]:
        """RQ's queue registry: the set ``rq:queues`` (one SMEMBERS), which RQ adds a queue to on its first enqueue
        and removes it from when the queue is deleted."""
        client = self.redis_client()
        assert client is not None
        head = f"{self.prefix}:queue:"
        keys = (key_text(key) for key in client.smembers(f"{self.prefix}:queues"))
        return [key[len(head) :] for key in keys if key.startswith(head) and len(key) > len(head)]

    def queue_scope(self) -> Any:
        return (super().queue_scope(), self.prefix)

    def depth_commands(self, now: float) -> list[Command]:
        """One :data:`QUEUE_READ` per queue (on the pipeline path its eight commands), then the queues' worker sets."""
        p = self.prefix
        reads: list[Command] = [_QUEUE(f"{p}:queue:{q}", p, q, now, HEAD_SCAN_LIMIT) for q in self.queues]
        return reads + [("SMEMBERS", f"{p}:workers:{q}") for q in self.queues]

    def failure(self, depth: list[Any]) -> Exception | None:
        """Only the job counts' replies fail the proc: without the worker sets its workers are unknown."""
        return super().failure(depth[: len(self.queues)])

    def latency_commands(self, depth: list[Any]) -> list[Command]:
        """The first live job of each non-empty queue whose walk the server did not do already (the pipeline path):
        :data:`FIRST_LIVE_JOB` as a script of its own; then the hashes of the workers the sets named."""
        p = self.prefix  # once: it reads the environment
        walks: list[Command] = [
            _FIRST_LIVE(f"{p}:queue:{q}", f"{p}:job:", HEAD_SCAN_LIMIT)
            for q, replies in zip(self.queues, depth)
            if int(replies[0]) and len(replies) == _PER_QUEUE
        ]
        workers: list[Command] = [("HMGET", key, "birth", "state", "death") for key in self._worker_keys(depth) or ()]
        return walks + workers

    def build_reading(self, depth: list[Any], latency: list[Any], now: float) -> Reading:
        keys = self._worker_keys(depth)
        split = len(latency) - len(keys or ())  # the worker hashes come last, as latency_commands asked
        walks = iter(latency[:split])  # one reply per non-empty queue walked in a follow-up
        queues = []
        for q, r in zip(self.queues, depth):  # replies in the order of _STATES, then rq:queues membership, then walk
            waiting = int(r[0])
            walk = (r[_PER_QUEUE] if len(r) > _PER_QUEUE else next(walks)) if waiting else None
            expired, age = self._first_live(q, walk, waiting, now) if waiting else (0, 0.0)
            counts = {
                "queued": max(0, waiting - expired),
                "started": int(r[1]) + int(r[2]),  # popped but not yet registered + running
                "due": int(r[3]),
                "scheduled": int(r[4]),
                "deferred": int(r[5]),
                "failed": int(r[6]),
                "expired": expired,
            }
            found = bool(int(r[_KNOWN])) or any(counts.values())
            queues.append(QueueReading(q, counts, COUNTED, age, found))
        reading = Reading.from_queues(queues)
        workers = None if keys is None else self._workers(latency[split:])
        return reading if workers is None else replace(reading, workers=workers)

    def _worker_keys(self, depth: list[Any]) -> list[str] | None:
        """The keys of the workers registered on any of the proc's queues, each once; ``None`` when a set could not
        be read."""
        sets = depth[len(self.queues) :]
        failed = next((reply for reply in sets if isinstance(reply, Exception)), None)
        if failed is not None:
            self._warn_once("workers", "cannot read RQ's worker registry, its workers are unknown", failed)
            return None
        return sorted({as_text(member) or "" for members in sets for member in members})

    def _workers(self, hashes: list[Any]) -> Workers | None:
        """Online: a registered worker whose hash still exists (``birth`` is its first field, written with the
        rest of it) and has no ``death``; busy: its ``state`` is ``busy``. ``None`` when a hash could not be read."""
        online = busy = 0
        for reply in hashes:
            if isinstance(reply, Exception):
                self._warn_once("workers", "cannot read an RQ worker's hash, the proc's workers are unknown", reply)
                return None
            birth, state, death = (as_text(value) for value in reply)
            if birth is None or death is not None:  # expired (killed, its TTL passed) or shut down
                continue
            online += 1
            busy += state == "busy"
        return Workers(online=online, slots=online, busy_slots=busy, busy=busy)

    def _first_live(self, queue: str, reply: Any, waiting: int, now: float) -> tuple[int, float | None]:
        """How many expired ids lead the queue, and the age of the first live job after them (``0.0`` when there is
        none: no job waits; ``None`` when it cannot be told: past the scan limit, or an unreadable reply)."""
        if isinstance(reply, Exception):  # e.g. a job key of the wrong type, or a user not allowed to run scripts
            self._warn_once("walk", f"cannot find the oldest job of queue {queue!r}, its latency is unknown", reply)
            return 0, None
        try:
            skipped, stamp, *rest = reply
            skipped = int(skipped)
        except (TypeError, ValueError):
            return 0, None
        if stamp is not None:
            return skipped, _age(stamp, now)
        if rest and int(rest[0]):  # every id was expired: nothing waits
            return skipped, 0.0
        return skipped, None

    _warned: frozenset[str] = frozenset()

    def _warn_once(self, kind: str, problem: str, error: Exception) -> None:
        """Say once per proc and ``kind`` of problem why something is unknown: a lasting problem, such as an ACL
        without EVALSHA, would otherwise be logged every cycle."""
        if kind not in self._warned:
            self._warned = self._warned | {kind}
            log.warning("proc %r: %s: %s", self.name, problem, describe_error(error))


def _age(enqueued_at: Any, now: float) -> float | None:
    stamp = parse_utc(enqueued_at)
    return None if stamp is None else age_since(stamp, now)
