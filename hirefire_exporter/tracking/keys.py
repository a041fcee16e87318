"""The tracker's key layout in Redis, and how the exporter reads it (no I/O here: commands and their parsing).

Per library (``celery``, ``huey``, ``dramatiq``: a Celery and a Dramatiq queue both named ``default`` on one Redis are
two queues) and queue, one sorted set per state of the tasks worker processes hold, and one of the processes
themselves; every member is scored by the unix time its lease expires, renewed by the process that wrote it:

- ``hirefire_exporter:tracker:<library>:<queue>:reserved``: ``<worker id> <task id>``, received and waiting for a free
  slot (Celery's prefetched tasks);
- ``hirefire_exporter:tracker:<library>:<queue>:scheduled``: the same, held until an ETA/countdown;
- ``hirefire_exporter:tracker:<library>:<queue>:started``: the same, running;
- ``hirefire_exporter:tracker:<library>:<queue>:workers``: ``<worker id> <slots>``, one per live worker process
  consuming the queue (its registration; ``slots`` is its concurrency);
- ``hirefire_exporter:tracker:<library>:queues``: ``<worker id> <queue>``, the queues each live worker process
  consumes (what queue discovery reads: one command, not a scan of the keyspace). No queue's key is this one: a
  queue's keys have a state after the queue.

No library name and no state holds a ``:``, so two (library, queue, state) never share a key, whatever the queue names.

A member counts while its score is in the future: a process killed without shutting down drops out when its lease
passes. Every key also expires on its own (:data:`KEY_TTL_LEASES` leases after the last write), so a fleet that is
gone leaves nothing behind.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..procs.base import Workers

PREFIX = "hirefire_exporter:tracker"
#: What a worker can hold, in the order a task moves through them.
STATES = ("reserved", "scheduled", "started")
#: What the trackers of libraries whose brokers show held tasks themselves (Huey, Dramatiq) report: running tasks.
RUNNING = ("started",)
#: A key expires this many leases after the last write to it (each heartbeat writes it again).
KEY_TTL_LEASES = 3


def task_key(library: str, queue: str, state: str) -> str:
    return f"{PREFIX}:{library}:{queue}:{state}"


def workers_key(library: str, queue: str) -> str:
    return f"{PREFIX}:{library}:{queue}:workers"


def queues_key(library: str) -> str:
    return f"{PREFIX}:{library}:queues"


def live_queues(members: Iterable[Any]) -> set[str]:
    """The queue names in the live members of :func:`queues_key`."""
    return {queue for _, queue in filter(None, map(_split, members))}


def member(worker_id: str, item: object) -> str:
    """A member of a tracker set: the worker process first, so that the exporter can group by it."""
    return f"{worker_id} {item}"


def _split(value: Any) -> tuple[str, str] | None:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    worker, sep, item = text.partition(" ")
    return (worker, item) if sep and worker else None


@dataclass(frozen=True)
class Tracked:
    """What the tracker holds for some queues: job counts per queue and state, the ids of those tasks, and the workers
    consuming the queues."""

    jobs: dict[str, dict[str, int]]
    workers: Workers
    tasks: frozenset[str] = frozenset()


def read_commands(library: str, queues: Sequence[str], states: Sequence[str], now: float) -> list[tuple[Any, ...]]:
    """The read-only commands that read ``library``'s ``queues``: per queue the live members of each state's set (one
    per task: their ids tell a task the broker also shows, their workers the busy ones) and of the workers' set."""
    commands: list[tuple[Any, ...]] = []
    for queue in queues:
        commands += [("ZRANGEBYSCORE", task_key(library, queue, state), now, "+inf") for state in states]
        commands.append(("ZRANGEBYSCORE", workers_key(library, queue), now, "+inf"))
    return commands


def parse(queues: Sequence[str], states: Sequence[str], replies: Iterable[Any]) -> Tracked:
    """The counts from the replies to :func:`read_commands` (same ``queues`` and ``states``). A worker is counted once
    however many of the queues it consumes; its busy slots are its running tasks, at most its slots."""
    replies = iter(replies)
    jobs: dict[str, dict[str, int]] = {}
    slots: dict[str, int] = {}
    running: Counter[str] = Counter()
    tasks: set[str] = set()
    for queue in queues:
        counts = {}
        for state in states:
            members = [split for split in map(_split, next(replies)) if split]
            counts[state] = len(members)
            tasks.update(task for _, task in members)
            if state == "started":
                running.update(worker for worker, _ in members)
        jobs[queue] = counts
        for split in filter(None, map(_split, next(replies))):
            worker, concurrency = split
            slots[worker] = max(slots.get(worker, 0), int(concurrency) if concurrency.isdigit() else 0)
    busy = {worker: min(running[worker], n) for worker, n in slots.items()}
    return Tracked(
        jobs,
        Workers(
            online=len(slots),
            slots=sum(slots.values()),
            busy_slots=sum(busy.values()),
            busy=sum(1 for n in busy.values() if n),
        ),
        frozenset(tasks),
    )
