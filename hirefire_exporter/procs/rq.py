"""RQ (2.x and 3.x): read RQ's Redis keys directly, read-only.

Per queue ``q`` (prefix ``rq``, or ``RQ_KEY_PREFIX`` as RQ 3 reads it):

- ``rq:queue:q`` (list): waiting jobs, the next one at index 0, its ``enqueued_at`` in hash ``rq:job:<id>``;
- ``rq:queue:q:intermediate`` (list): jobs a worker has just popped and not yet registered as started;
- ``rq:wip:q`` (sorted set, the StartedJobRegistry): running jobs scored by when their worker's lease runs out.
  Only live leases (score >= now) count: an expired one belongs to a dead worker and RQ will requeue or fail it;
- ``rq:scheduled:q`` (sorted set scored by run time): ``due`` jobs wait for a worker's scheduler, the rest are
  ``scheduled`` for later;
- ``rq:deferred:q`` and ``rq:failed:q``: reported, never counted.

RQ's own ``registry.count`` runs a cleanup that writes to Redis and moves jobs to the failed registry, so this
module never calls it: only LLEN, LINDEX, ZCOUNT, ZCARD and HGET.
"""

from __future__ import annotations

import os
from typing import Any

from ..settings_check import OrNone, Text
from .base import ClientProc, QueueReading, Reading
from .redis_proc import Command, RedisProc, age_since, as_text, parse_utc

#: The states that need a worker now or are on one: HireFire's count.
COUNTED = frozenset({"queued", "started", "due"})
#: depth_commands per queue, in this order: the counts, then the id of the job at the head of the queue.
_STATES = ("queued", "intermediate", "started", "due", "scheduled", "deferred", "failed")
_PER_QUEUE = len(_STATES) + 1
_HEAD = _PER_QUEUE - 1


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

    def depth_commands(self, now: float) -> list[Command]:
        p = self.prefix
        commands: list[Command] = []
        for q in self.queues:
            commands += [
                ("LLEN", f"{p}:queue:{q}"),
                ("LLEN", f"{p}:queue:{q}:intermediate"),
                ("ZCOUNT", f"{p}:wip:{q}", now, "+inf"),
                ("ZCOUNT", f"{p}:scheduled:{q}", "-inf", now),
                ("ZCOUNT", f"{p}:scheduled:{q}", f"({now}", "+inf"),
                ("ZCARD", f"{p}:deferred:{q}"),
                ("ZCARD", f"{p}:failed:{q}"),
                ("LINDEX", f"{p}:queue:{q}", 0),
            ]
        return commands

    def latency_commands(self, depth: list[Any]) -> list[Command]:
        """``enqueued_at`` of the job at the head of each non-empty queue."""
        p = self.prefix  # once: it reads the environment
        heads = (as_text(replies[_HEAD]) for replies in _per_queue(depth))
        return [("HGET", f"{p}:job:{head}", "enqueued_at") for head in heads if head is not None]

    def build_reading(self, depth: list[Any], latency: list[Any], now: float) -> Reading:
        enqueued_at = iter(latency)  # one reply per non-empty queue, as latency_commands asked
        queues = []
        for q, r in zip(self.queues, _per_queue(depth)):  # replies in the order of _STATES, then the head job's id
            queued = int(r[0])
            counts = {
                "queued": queued,
                "started": int(r[1]) + int(r[2]),  # popped but not yet registered + running
                "due": int(r[3]),
                "scheduled": int(r[4]),
                "deferred": int(r[5]),
                "failed": int(r[6]),
            }
            age = None if as_text(r[_HEAD]) is None else _age(next(enqueued_at), now)
            queues.append(QueueReading(q, counts, COUNTED, 0.0 if queued == 0 else age))
        return Reading.from_queues(queues)


def _per_queue(depth: list[Any]) -> list[list[Any]]:
    """The replies to :meth:`RQProc.depth_commands`, one list per queue."""
    return [depth[i : i + _PER_QUEUE] for i in range(0, len(depth), _PER_QUEUE)]


def _age(enqueued_at: Any, now: float) -> float | None:
    stamp = parse_utc(enqueued_at)
    return None if stamp is None else age_since(stamp, now)
