"""Huey 3.x: pending and scheduled tasks for RedisHuey, PriorityRedisHuey, SqliteHuey and any other storage.

- Redis storages are read with pipelined commands (``huey.redis.<name>`` list or, for PriorityRedisHuey, sorted set
  whose members start with the enqueue time as an 8-byte big-endian microsecond count; ``huey.schedule.<name>``
  sorted set scored by run time);
- SqliteHuey is read with two COUNT queries per queue on its ``task`` and ``schedule`` tables;
- any other storage through Huey's own ``pending_count()`` / ``scheduled_count()``.

Huey records no running tasks (a consumer holds them in memory), so a Huey proc counts ``queued`` plus ``due``
(scheduled tasks whose time has come: only a running consumer moves them to the queue), plus ``started`` (running)
when the consumers run the worker-side tracker (``hirefire_exporter.tracking.huey.track``) and the proc has
``tracker = true`` (the store is the instance's Redis) or ``tracker_url``.
"""

from __future__ import annotations

import struct
import time
from dataclasses import replace
from datetime import UTC, datetime
from functools import cached_property
from importlib import import_module
from typing import Any

from ..discovery import KeyScan, completed, glob_pieces
from ..redaction import describe_error
from ..settings_check import Choice, OrNone, Text, did_you_mean
from ..tracking.keys import RUNNING, Tracked
from .base import ProcConfigError, QueueReading, Reading
from .redis_proc import Command, age_since, as_text, pipelined
from .tracked import TrackedProc

COUNTED = frozenset({"queued", "due", "started"})
#: The key prefixes of a Redis storage's queues and schedules.
HEADS = ("huey.redis.", "huey.schedule.")
STORAGES = {"redis": "RedisHuey", "priority_redis": "PriorityRedisHuey", "sqlite": "SqliteHuey"}


class HueyProc(TrackedProc):
    """A proc for Huey.

    ``huey`` is a Huey instance or a dotted path to one (``"myapp.tasks.huey"``). ``queues`` defaults to that
    instance's name; more names measure other Huey instances on the same storage. In TOML, instead of ``huey``:
    ``storage`` (``redis``, ``priority_redis`` or ``sqlite``) with ``url`` (Redis) or ``filename`` (SQLite).
    """

    huey: Any = None
    storage: str | None = None
    filename: str | None = None
    option_checks = {"storage": OrNone(Choice(tuple(STORAGES))), "filename": OrNone(Text("a file name"))}
    tracker_library = "huey"
    #: A Huey consumer holds nothing but the tasks it runs.
    tracked_states = RUNNING

    _instance: Any = None

    @property
    def supports_latency(self) -> bool:  # type: ignore[override]
        return self._is_priority_redis()

    def validate(self) -> None:
        self._split_patterns()
        if not self.queues and self.discovery is None:
            self.queues = [self.instance().name]
        super().validate()

    def instance(self) -> Any:
        """The Huey instance, imported or built on first use (no I/O: Huey connects lazily)."""
        if self._instance is None:
            self._instance = self._resolve()
        return self._instance

    def _resolve(self) -> Any:
        if isinstance(self.huey, str):
            module, _, attr = self.huey.rpartition(".")
            try:
                return getattr(import_module(module), attr)
            except Exception as exc:  # a broken module, however it fails; not chained: the cause is not scrubbed
                raise ProcConfigError(
                    f"proc {self.name!r}: cannot import Huey instance {self.huey!r}: {describe_error(exc, locate=True)}"
                ) from None
        if self.huey is not None:
            return self.huey
        if self.storage not in STORAGES:
            raise ProcConfigError(
                f"proc {self.name!r}: needs `huey` (an instance or dotted path) or `storage` one of {sorted(STORAGES)}"
                + did_you_mean(self.storage, STORAGES)
            )
        import huey

        name = self.queues[0] if self.queues else "huey"
        if self.storage == "sqlite":
            if not self.filename:
                raise ProcConfigError(f"proc {self.name!r}: storage 'sqlite' needs `filename`")
            return huey.SqliteHuey(name, filename=self.filename)
        if not self.url:
            raise ProcConfigError(f"proc {self.name!r}: storage {self.storage!r} needs `url`")
        # The proc's own client (URL checked, socket timeouts, quick retry), not one Huey would build without timeouts:
        # a broker that stops answering must fail the read after socket_timeout, not hold its thread for good.
        pool = self.new_client(self.url).connection_pool
        return getattr(huey, STORAGES[self.storage])(name, connection_pool=pool)

    def _storage(self) -> Any:
        return self.instance().storage

    def _is_redis(self) -> bool:
        from huey.storage import RedisStorage

        return isinstance(self._storage(), RedisStorage)

    # Queue discovery: the Huey instances sharing the storage

    def discovery_problem(self) -> str | None:
        if self._is_redis() or self._is_sqlite():
            return None
        return f"Huey's {type(self._storage()).__name__} cannot list its queues: name them"

    def discover_queues(self) -> set[str] | None:
        """Redis: the names in the keys ``huey.redis.<name>`` (of this storage's type: a list, or a sorted set for
        the priority storage) and ``huey.schedule.<name>`` (budgeted SCANs; an empty queue has no key; a name found
        only by its schedule is kept when its queue key is absent or of this storage's type). SQLite: the queues of
        the ``task`` and ``schedule`` tables."""
        if self._is_sqlite():
            rows = self._storage().sql("select queue from task union select queue from schedule", results=True)
            return {row[0] for row in rows}
        client = self._storage().conn
        keys = completed(self._scans, client)
        if keys is None:
            return None
        names = {key[len(HEADS[0]) :] for key in keys if key.startswith(HEADS[0])}
        scheduled = {key[len(HEADS[1]) :] for key in keys if key.startswith(HEADS[1])} - names
        if scheduled:
            kind, order = self._scans[0].kind, sorted(scheduled)
            types = pipelined(client, [("TYPE", HEADS[0] + name) for name in order])
            names |= {name for name, found in zip(order, types) if as_text(found) in ("none", kind)}
        return names - {""}

    @cached_property
    def _scans(self) -> tuple[KeyScan, KeyScan]:
        kind = "zset" if self._is_priority_redis() else "list"
        return KeyScan(HEADS[0] + "*", kind), KeyScan(HEADS[1] + "*", "zset")

    def empty_queues_vanish(self) -> bool:
        """A queue is found by its keys (Redis) or its rows (SQLite), which go with its last task."""
        return True

    def queue_scope(self) -> Any:
        """The Redis server and the storage's kind (a plain and a priority storage on one server keep their queues in
        keys of different types: neither finds the other's), or the SQLite file."""
        storage = self._storage()
        redis = storage.conn if self._is_redis() else None
        return (self.redis_scope(redis), self._is_priority_redis(), getattr(storage, "filename", None))

    def _is_sqlite(self) -> bool:
        from huey.storage import SqliteStorage

        return isinstance(self._storage(), SqliteStorage)

    def _is_priority_redis(self) -> bool:
        from huey.storage import RedisPriorityQueue

        return self._is_redis() and isinstance(self._storage(), RedisPriorityQueue)

    def broker_redis(self) -> Any:
        return self._storage().conn if self._is_redis() else None

    def redis_client(self) -> Any:
        return self.broker_redis() if not self.tracked() or self.tracker_inline() else None

    def stored_name(self, queue: str) -> str:
        """The name in Huey's Redis keys (``clean_name``: ``my-app`` is ``myapp``)."""
        return self._storage().clean_name(queue) if self._is_redis() else queue

    def stored_pattern(self, pattern: str) -> str:
        """On Redis, the pattern's literal characters cleaned as Huey cleans names (``reports-*`` finds the instance
        ``reports-eu``, stored as ``reportseu``)."""
        if not self._is_redis():
            return pattern
        return "".join(text if special else self.stored_name(text) for special, text in glob_pieces(pattern))

    def tracker_queues(self) -> list[str]:
        return [self.stored_name(q) for q in self.queues]

    def _due_threshold(self) -> float:
        """Now, on the clock Huey scores its schedule with (naive UTC or local time, read as local time)."""
        instance = self.instance()
        now = datetime.now(UTC).replace(tzinfo=None) if instance.utc else datetime.now()
        return now.timestamp()

    # Redis storages

    def depth_commands(self, now: float) -> list[Command]:
        storage, due, priority = self._storage(), self._due_threshold(), self._is_priority_redis()
        commands: list[Command] = []
        for q in self.queues:
            name = storage.clean_name(q)
            queue_key, schedule_key = f"huey.redis.{name}", f"huey.schedule.{name}"
            commands += [("ZCARD", queue_key), ("ZRANGE", queue_key, 0, 0)] if priority else [("LLEN", queue_key)]
            commands += [("ZCOUNT", schedule_key, "-inf", due), ("ZCOUNT", schedule_key, f"({due}", "+inf")]
        return commands + self.tracker_commands(now)

    def build_reading(self, depth: list[Any], latency: list[Any], now: float) -> Reading:
        depth, tracked = self.split_tracked(depth)
        return _with_tracked(self._redis_reading(depth, now), tracked, self.tracker_queues())

    def _redis_reading(self, depth: list[Any], now: float) -> Reading:
        replies, priority = iter(depth), self._is_priority_redis()
        queues = []
        for q in self.queues:
            queued = int(next(replies))
            age = None
            if priority:
                head = next(replies)
                age = _priority_head_age(head, now) if queued else 0.0
            due, later = int(next(replies)), int(next(replies))
            queues.append(_queue(q, queued, due, later, age))
        return Reading.from_queues(queues)

    # Other storages

    def read(self, cache: dict[str, Any]) -> Reading:
        if self.redis_client() is not None:
            return super().read(cache)
        reading = self._storage_reading()
        if not self.tracked():
            return reading
        # read after the storage: a task taken in between counts twice for a moment, rather than not at all
        return _with_tracked(reading, self.read_tracker(time.time()), self.tracker_queues())

    def _storage_reading(self) -> Reading:
        if self._is_redis():  # the tracker's store is another server: the storage's commands on their own
            now = time.time()
            depth = pipelined(self.broker_redis(), self.depth_commands(now))
            return self._redis_reading(depth, now)
        from huey.storage import SqliteStorage

        storage = self._storage()
        if isinstance(storage, SqliteStorage):
            due = self._due_threshold()
            return Reading.from_queues(_queue(q, *_sqlite_counts(storage, q, due), None) for q in self.queues)
        huey = self.instance()
        return Reading.from_queues([_queue(huey.name, huey.pending_count(), 0, huey.scheduled_count(), None)])


def _with_tracked(reading: Reading, tracked: Tracked | None, names: list[str]) -> Reading:
    """Add the tracker's running tasks to each queue (``names``: the queues as the tracker names them)."""
    if tracked is None:
        return reading
    queues = [replace(q, jobs={**q.jobs, **tracked.jobs[name]}) for q, name in zip(reading.queues, names)]
    return replace(Reading.from_queues(queues), workers=tracked.workers)


def _queue(name: str, queued: int, due: int, scheduled: int, latency: float | None) -> QueueReading:
    return QueueReading(name, {"queued": queued, "due": due, "scheduled": scheduled}, COUNTED, latency)


def _sqlite_counts(storage: Any, queue: str, due: float) -> tuple[int, int, int]:
    ((queued,),) = storage.sql("select count(id) from task where queue=?", (queue,), results=True)
    rows = storage.sql(
        "select count(id), coalesce(sum(timestamp <= ?), 0) from schedule where queue=?", (due, queue), results=True
    )
    ((scheduled, due_count),) = rows
    return int(queued), int(due_count), int(scheduled) - int(due_count)


def _priority_head_age(head: Any, now: float) -> float | None:
    member = head[0] if isinstance(head, list) and head else None
    if isinstance(member, str):
        member = member.encode("latin-1", "replace")
    if not isinstance(member, bytes) or len(member) < 8:
        return None
    (micros,) = struct.unpack(">Q", member[:8])
    return age_since(micros / 1e6, now)
