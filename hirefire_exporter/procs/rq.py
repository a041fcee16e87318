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
Where that set cannot be read (a key of the wrong type), an empty queue reads 0 jobs and ``found = None`` (unknown):
the counts stand, on both paths.

Workers: an RQ worker adds its key ``rq:worker:<name>`` to ``rq:workers`` and to ``rq:workers:<q>`` for each queue
it listens on, and keeps the hash at that key alive with a TTL it renews on each heartbeat (``worker_ttl`` + 60 s,
480 s by default, while idle; ``job_monitoring_interval`` + 60 s, 90 s by default, while it runs a job). A worker killed
with SIGKILL leaves its key in the sets: it is online while its hash exists and not once it has expired (RQ's own
rule: ``rq info`` and RQ's cleanup of the sets go by the same hash). Its hash is judged by ``birth``, written with the
rest of it at start: the work horse of a worker killed mid-job writes its statistics into the expired hash when the
job ends, recreating it without ``birth`` and without a TTL. A worker that shut down cleanly took its key out of the
sets and stamped ``death`` on its hash: not online either. ``state`` ``busy`` means it runs a job. An RQ worker
runs one job at a time (``rq worker-pool`` starts separate workers, each registered on its own), so it has one slot.
A worker serving several of a proc's queues counts once. The sets cost one SMEMBERS per queue inside its read in the
first round trip, the hashes one HMGET per worker in a follow-up round trip (with the oldest-job walks on the
pipeline path);
when the sets cannot be read (an ACL that denies them, a key of the wrong type) the proc's job counts are still
served and its workers are unknown.

RQ's own ``registry.count`` runs a cleanup that writes to Redis and moves jobs to the failed registry, so this
module never calls it: it reads with LLEN, ZCOUNT, ZCARD, EXISTS, SISMEMBER, SMEMBERS, LINDEX, HGET and HMGET, and
the walk with LRANGE, HGET and EXISTS.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache
from typing import Any

from ..discovery import key_text
from ..redaction import describe_error
from ..settings_check import OrNone, Text
from .base import ClientProc, QueueReading, Reading, Workers
from .redis_proc import Command, RedisProc, age_since, as_text, parse_utc
from .redis_script import CHUNK_COST, first_error, read_function

log = logging.getLogger("hirefire_exporter")

#: The states that need a worker now or are on one: HireFire's count.
COUNTED = frozenset({"queued", "started", "due"})
#: A queue's counts, in the order of :data:`QUEUE_READ`'s summary: waiting ids, popped, running, due, scheduled for
#: later, deferred, failed, and whether RQ knows the queue (then the walk).
_COUNTS = 8
#: How many ids at the head of a queue the walk looks at, at most, to find a live job (about 1-3 ms of Redis time).
HEAD_SCAN_LIMIT = 1000
#: How many ids :data:`QUEUE_READ` walks inside the reader's call, where the reads of up to ~30 queues share one call:
#: a queue whose head is expired past these is walked on in a follow-up :data:`FIRST_LIVE_JOB` call of its own.
SCRIPT_WALK_LIMIT = 4

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
#: Its cost: a walk of :data:`HEAD_SCAN_LIMIT` ids takes a call of its own (a live head costs next to nothing, but
#: nothing tells in advance how far a walk goes).
_FIRST_LIVE = read_function("rq_first_live_job", FIRST_LIVE_JOB, cost=CHUNK_COST)

#: KEYS[1]: a queue's id list; ARGV: the prefix, the queue's name, now, :data:`SCRIPT_WALK_LIMIT`. One queue's reads,
#: on the server: its counts, whether RQ knows it (asked only of a queue with no job in any state), for a non-empty
#: queue its oldest live job (the head's hash, and only when that is gone the walk of :data:`FIRST_LIVE_JOB`, over a
#: few ids: past them, the follow-up walks on), and its worker set. The reply is one line of text, the summary, so
#: that a queue costs the client one reply to parse, not a dozen: the eight counts and how many expired ids the walk
#: skipped, then ``|`` and the oldest job (``-`` when not looked for; ``S<enqueued_at>``, ``E`` when every id was
#: expired, ``L`` at the limit, or ``!<error>``). The numbers come first, apart: a line of them recurs from queue to
#: queue and cycle to cycle, and is parsed once (:func:`_numbers`). A queue with workers registered, or whose set
#: cannot be read, replies ``{summary, members or error}`` instead. The other keys are derived from the name (Redis
#: Cluster is not supported).
QUEUE_READ = """
local prefix, queue, now = ARGV[1], ARGV[2], ARGV[3]
local call = redis.call
local key = KEYS[1]
local scheduled = prefix .. ':scheduled:' .. queue
local waiting = call('LLEN', key)
local planned = call('ZCARD', scheduled)
local due = planned > 0 and call('ZCOUNT', scheduled, '-inf', now) or 0
local running = call('ZCOUNT', prefix .. ':wip:' .. queue, now, '+inf')
local popped, deferred, failed = 0, 0, 0
local intermediate = key .. ':intermediate'
local deferreds, faileds = prefix .. ':deferred:' .. queue, prefix .. ':failed:' .. queue
if call('EXISTS', intermediate, deferreds, faileds) > 0 then -- one call for three keys that are mostly absent
  popped, deferred, failed = call('LLEN', intermediate), call('ZCARD', deferreds), call('ZCARD', faileds)
end
local known = 1
if waiting + planned + popped + running + deferred + failed == 0 then
  known = redis.pcall('SISMEMBER', prefix .. ':queues', key)
  if type(known) ~= 'number' then known = -1 end -- rq:queues of the wrong type: whether RQ knows it is unknown
end
local skipped, outcome = 0, '-'
if waiting > 0 then
  local jobs = prefix .. ':job:'
  local head = call('LINDEX', key, 0)
  local stamp = head and redis.pcall('HGET', jobs .. head, 'enqueued_at')
  if type(stamp) == 'table' then -- an error: a job key of the wrong type
    outcome = '!' .. tostring(stamp.err)
  elseif stamp then
    outcome = 'S' .. stamp
  else
    local ok, found = pcall(F.rq_first_live_job, KEYS, {jobs, ARGV[4]})
    if not ok then
      outcome = '!' .. tostring(type(found) == 'table' and found.err or found)
    elseif found[2] then
      skipped, outcome = found[1], 'S' .. found[2]
    else
      skipped, outcome = found[1], (found[3] == 1 and 'E' or 'L')
    end
  end
end
local summary = text(waiting) .. ' ' .. text(popped) .. ' ' .. text(running) .. ' ' .. text(due) .. ' ' ..
  text(planned - due) .. ' ' .. text(deferred) .. ' ' .. text(failed) .. ' ' .. text(known) .. ' ' ..
  text(skipped) .. '|' .. outcome
local workers = redis.pcall('SMEMBERS', prefix .. ':workers:' .. queue)
if workers.err or #workers > 0 then return {summary, workers} end
return summary
"""


#: A walk's outcome when every id it looked at was expired: no job waits (an age of 0.0).
_NOTHING_WAITS = float("-inf")


class _Queue:
    """One queue's reply, parsed as it arrives: its counts (:data:`_COUNTS`), its oldest live job (:func:`_head`;
    ``None`` when not looked for on the server: the pipeline path, or an empty queue), its worker set's members (or
    the error reading it) and, once the oldest job is known, the queue's reading."""

    __slots__ = ("counts", "head", "reading", "workers")

    def __init__(self, counts: Sequence[int], head: Any, workers: Any, reading: QueueReading | None = None) -> None:
        self.counts, self.head, self.workers, self.reading = counts, head, workers, reading


def _head(walk: Any) -> tuple[int, float | None] | Exception:
    """A reply of :data:`FIRST_LIVE_JOB` as how many expired ids lead the queue and the ``enqueued_at`` of the first
    live job after them (unix seconds; :data:`_NOTHING_WAITS` when there is none, ``None`` when it cannot be told:
    past the scan limit, no stamp, an unreadable reply); an error reply as it is."""
    if isinstance(walk, Exception):
        return walk
    try:
        skipped, stamp, *rest = walk
        skipped = int(skipped)
    except (TypeError, ValueError):
        return 0, None
    if stamp is not None:
        return skipped, _enqueued_at(stamp)
    return skipped, (_NOTHING_WAITS if rest and int(rest[0]) else None)


def _queue_reading(name: str, counts: Sequence[int], head: Any, now: float) -> QueueReading:
    """A queue's reading from its counts and its oldest live job (``None`` for an empty queue). Expired ids ahead of
    the first live job are ``expired``, not ``queued``; the age is ``0.0`` when no job waits, ``None`` when it cannot
    be told."""
    waiting, popped, running, due, later, deferred, failed, known = counts
    expired, age = 0, 0.0
    if waiting:
        if isinstance(head, Exception):  # e.g. a job key of the wrong type: the proc says so (build_reading)
            age = None
        else:
            expired, stamp = head
            age = None if stamp is None else 0.0 if stamp == _NOTHING_WAITS else age_since(stamp, now)
    queued = waiting - expired  # (not max(): this runs for every queue of every cycle)
    jobs = {
        "queued": queued if queued > 0 else 0,
        "started": popped + running,  # popped but not yet registered + running
        "due": due,
        "scheduled": later,
        "deferred": deferred,
        "failed": failed,
        "expired": expired,
    }
    if waiting + popped + running + due + later + deferred + failed > 0:
        found: bool | None = True
    else:  # -1: RQ's set of queues could not be read (a key of the wrong type): unknown, not missing
        found = known > 0 if known >= 0 else None
    return QueueReading.of(name, jobs, COUNTED, age, found)


def _parse_queue(reply: Any, _key: str, _prefix: str, queue: str, now: float, _limit: int) -> _Queue:
    """:data:`QUEUE_READ`'s reply as a :class:`_Queue` with its reading: done as the reply arrives, while Redis
    reads on."""
    summary, workers = reply if type(reply) is list else (reply, ())
    numbers, _, outcome = (summary if type(summary) is bytes else str(summary).encode()).partition(b"|")
    counts, skipped = _numbers(numbers)
    head: Any = None
    kind = outcome[:1]
    if kind == b"S":
        head = skipped, _enqueued_at(outcome[1:])
    elif kind == b"!":
        from redis.exceptions import ResponseError

        head = ResponseError(outcome[1:].decode("utf-8", "replace"))
    elif kind == b"L":  # expired ids past the few walked in the call: the follow-up walks on (latency_commands)
        return _Queue(counts, None, workers)
    elif kind != b"-":
        head = skipped, _NOTHING_WAITS
    return _Queue(counts, head, workers, _queue_reading(queue, counts, head, now))


@lru_cache(maxsize=4096)
def _numbers(text: bytes) -> tuple[tuple[int, ...], int]:
    """The numbers of a summary: the eight counts and how many expired ids the walk skipped, remembered (idle
    queues all send ``0 0 0 0 0 0 0 1 0``; a busy queue's counts change less often than they are read)."""
    *counts, skipped = map(int, text.split(b" "))
    if len(counts) != _COUNTS:
        raise ValueError(f"not a queue's summary: {text[:100]!r}")
    return tuple(counts), skipped


@lru_cache(maxsize=65536)
def _enqueued_at(text: bytes | str) -> float | None:
    """:func:`parse_utc`, remembered: a queue whose head has not moved since the last cycle has the same stamp."""
    return parse_utc(text)


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
        ("SMEMBERS", f"{p}:workers:{q}"),
    ]


def _finish_queue(replies: list[Any], *_command: Any) -> Any:
    """The pipeline path's replies as a :class:`_Queue`: a failed count fails the queue, a failed worker set only its
    workers, a failed SISMEMBER of ``rq:queues`` (a key of the wrong type) only whether RQ knows the queue (``-1``,
    as :data:`QUEUE_READ` says it)."""
    *counts, known = replies[:_COUNTS]
    failed = first_error(counts)
    if failed is not None:
        return failed
    return _Queue([*map(int, counts), -1 if isinstance(known, Exception) else int(known)], None, replies[_COUNTS])


_QUEUE = read_function(
    "rq_queue", QUEUE_READ, cost=8, parse=_parse_queue, fallback=_queue_commands, finish=_finish_queue
)


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
        """One :data:`QUEUE_READ` per queue (on the pipeline path its nine commands)."""
        p = self.prefix
        return [_QUEUE(f"{p}:queue:{q}", p, q, now, SCRIPT_WALK_LIMIT) for q in self.queues]

    def latency_commands(self, depth: list[Any]) -> list[Command]:
        """The first live job of each non-empty queue whose walk the server did not do already (the pipeline path, or
        a head expired past :data:`SCRIPT_WALK_LIMIT` ids): :data:`FIRST_LIVE_JOB`, up to :data:`HEAD_SCAN_LIMIT`
        ids, in a call of its own; then the hashes of the workers the sets named."""
        p = self.prefix  # once: it reads the environment
        walks: list[Command] = [
            _FIRST_LIVE(f"{p}:queue:{q}", f"{p}:job:", HEAD_SCAN_LIMIT)
            for q, queue in zip(self.queues, depth)
            if queue.reading is None and queue.counts[0]
        ]
        workers: list[Command] = [("HMGET", key, "birth", "state", "death") for key in self._worker_keys(depth) or ()]
        return walks + workers

    def build_reading(self, depth: list[Any], latency: list[Any], now: float) -> Reading:
        keys = self._worker_keys(depth)
        split = len(latency) - len(keys or ())  # the worker hashes come last, as latency_commands asked
        walks = iter(latency[:split])  # one reply per non-empty queue walked in a follow-up
        queues = []
        for q, queue in zip(self.queues, depth):
            reading, head = queue.reading, queue.head  # never changed: another proc may share the reply
            if reading is None:  # the pipeline path: the oldest live job came in the follow-up
                head = _head(next(walks)) if queue.counts[0] else None
                reading = _queue_reading(q, queue.counts, head, now)
            if isinstance(head, Exception):
                self._warn_once("walk", f"cannot find the oldest job of queue {q!r}, its latency is unknown", head)
            queues.append(reading)
        reading = Reading.from_queues(queues)
        workers = None if keys is None else self._workers(latency[split:])
        return reading if workers is None else replace(reading, workers=workers)

    def _worker_keys(self, depth: list[Any]) -> list[str] | None:
        """The keys of the workers registered on any of the proc's queues, each once; ``None`` when a set could not
        be read."""
        sets = [queue.workers for queue in depth if queue.workers]  # most queues have none: an empty tuple
        failed = next((workers for workers in sets if isinstance(workers, Exception)), None)
        if failed is not None:
            self._warn_once("workers", "cannot read RQ's worker registry, its workers are unknown", failed)
            return None
        return sorted({as_text(member) or "" for workers in sets for member in workers})

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

    _warned: frozenset[str] = frozenset()

    def _warn_once(self, kind: str, problem: str, error: Exception) -> None:
        """Say once per proc and ``kind`` of problem why something is unknown: a lasting problem, such as an ACL
        without EVALSHA, would otherwise be logged every cycle."""
        if kind not in self._warned:
            self._warned = self._warned | {kind}
            log.warning("proc %r: %s: %s", self.name, problem, describe_error(error))
