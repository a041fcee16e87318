"""The tracker's core, shared by the task libraries: one worker process's holdings mirrored into Redis under a lease.

A :class:`Tracker` runs one daemon thread in the worker process. Every ``flush_every`` seconds it asks the library
adapter what the process holds now (a :class:`Held`), compares it with what it last wrote, and sends the difference
in one pipeline: ``ZADD`` for a task received, moved (reserved -> started) or a registration, ``ZREM`` for a task
gone. Every third of the lease (the heartbeat) it renews all its members' scores in the same pipeline, drops
members whose lease passed long ago (other processes' leftovers) and refreshes the keys' own expiry. So a task costs
O(1) commands, batched with its neighbours, and nothing at all on the task's own thread.

The store may be down: a failed write is logged once (WARNING), retried every ``flush_every`` with the full state,
and never reaches a task. What the process could not write ages out of the counts with its lease.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..redaction import describe_error
from . import keys

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger("hirefire_exporter.tracking")

#: Seconds a member counts after its last renewal: a process killed with -9 drops out of the counts within this.
DEFAULT_LEASE = 15.0
#: Seconds between two looks at what the process holds (how soon a change shows in the store).
DEFAULT_FLUSH_EVERY = 0.5
#: After a wake (a task received or started), how long the tracker waits for the task's neighbours before it writes:
#: a burst of tasks costs one write, and a task is in the store this soon after it arrived, not a flush later (on Redis
#: with early acknowledgement a started task has already left the broker's ``unacked`` hash).
SETTLE = 0.02
#: Socket timeouts of a store client the tracker builds: a stalled store holds the tracker's thread this long at most.
STORE_TIMEOUT = 2.0

Entry = tuple[str, str]  # (key, member)


@dataclass(frozen=True)
class Held:
    """What one worker process holds now: task id -> (queue, state), the queues it consumes and its slots."""

    tasks: Mapping[str, tuple[str, str]]
    queues: Collection[str]
    slots: int


def store_client(store: Any, label: str = "hirefire tracker") -> Redis:
    """A Redis client for the store: ``store`` is a ``redis.Redis`` (used as given) or a Redis URL (a client with
    short socket timeouts is built)."""
    if callable(getattr(store, "pipeline", None)):
        return store
    if not isinstance(store, str) or not store:
        raise ValueError(f"{label}: the store must be a Redis URL or a redis.Redis client, got {type(store).__name__}")
    from ..procs.redis_proc import build_client

    return build_client(label, store, socket_timeout=STORE_TIMEOUT)


def client_like(client: Redis) -> Redis:
    """A new client on the server of a library's own ``client`` (its credentials kept out of log lines), with the
    tracker's short socket timeouts: the library's client may wait for ever on a stalled server."""
    from redis import ConnectionPool, Redis

    from ..redaction import register

    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "socket_timeout": STORE_TIMEOUT, "socket_connect_timeout": STORE_TIMEOUT}
    register(kwargs.get("password"))
    return Redis(connection_pool=ConnectionPool(connection_class=pool.connection_class, **kwargs))


def check_timing(lease: float, flush_every: float) -> None:
    """Refuse a lease the heartbeat cannot renew in time (one line, at start-up)."""
    if not (isinstance(lease, int | float) and isinstance(flush_every, int | float) and 0 < flush_every < lease / 3):
        raise ValueError(
            f"hirefire tracker: needs 0 < flush_every < lease / 3 (seconds), got lease={lease!r},"
            f" flush_every={flush_every!r}"
        )


def worker_id(name: str) -> str:
    """A process's id in the store: its name (hostname, node name) and pid, without spaces (the member separator)."""
    return "_".join(f"{name}/{os.getpid()}".split())


class Tracker:
    """Mirrors what one worker process of ``library`` (the key namespace, :mod:`.keys`) holds (``snapshot()``, called on
    the tracker's thread) into ``client``."""

    def __init__(
        self,
        client: Redis,
        library: str,
        worker: str,
        snapshot: Callable[[], Held],
        *,
        lease: float = DEFAULT_LEASE,
        flush_every: float = DEFAULT_FLUSH_EVERY,
        states: tuple[str, ...] = keys.STATES,
    ) -> None:
        check_timing(lease, flush_every)
        self.client = client
        self.library = library
        self.worker = worker
        self.snapshot = snapshot
        self.lease = lease
        self.flush_every = flush_every
        #: The states the library's adapter reports (the keys the heartbeat tidies).
        self.states = states
        #: What the store may hold of this process: entry -> the expiry it was written with.
        self._placed: dict[Entry, float] = {}
        self._last_beat = -float("inf")
        self._failing = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hirefire-tracker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and remove every member this process wrote (one pipeline, best effort)."""
        if os.getpid() != self._pid:  # a forked child's copy: the parent's thread and entries are not its own
            return
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.flush_every + STORE_TIMEOUT * 2)
        removes = _grouped(self._placed)
        try:
            pipe = self.client.pipeline(transaction=False)
            for key, members in removes.items():
                pipe.zrem(key, *members)
            if removes:
                pipe.execute()
            self._placed.clear()
        except Exception as exc:  # the store is down: the entries age out with their lease
            log.warning("hirefire tracker: could not remove this worker's entries at shutdown: %s", describe_error(exc))

    def wake(self) -> None:
        """Write soon (:data:`SETTLE`), not at the next flush: the process took a task. Only sets an event, so it is
        safe on a task's own path."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._wake.wait(self.flush_every):
                self._stop.wait(SETTLE)
            self._wake.clear()
            if not self._stop.is_set():
                self.sync()

    def sync(self) -> bool:
        """Write what changed since the last sync (and, when due, the heartbeat). Returns whether the store took it."""
        try:
            held = self.snapshot()
        except Exception as exc:  # the adapter's view of the worker: never let it kill the thread
            log.debug("hirefire tracker: could not read the worker's state: %s", describe_error(exc))
            return False
        now = time.time()
        desired = {
            (keys.task_key(self.library, queue, state), keys.member(self.worker, task))
            for task, (queue, state) in held.tasks.items()
        }
        desired |= {
            (keys.workers_key(self.library, queue), keys.member(self.worker, held.slots)) for queue in held.queues
        }
        desired |= {(keys.queues_key(self.library), keys.member(self.worker, queue)) for queue in held.queues}
        beat = now - self._last_beat >= self.lease / 3
        adds = desired if beat else desired - self._placed.keys()
        removes = [entry for entry in self._placed if entry not in desired]
        if not adds and not removes:
            return True
        expiry = now + self.lease
        pipe = self.client.pipeline(transaction=False)
        ttl = int(self.lease * keys.KEY_TTL_LEASES * 1000)
        for key, members in _grouped(dict.fromkeys(adds)).items():
            pipe.zadd(key, dict.fromkeys(members, expiry))
            pipe.pexpire(key, ttl)
        for key, members in _grouped(dict.fromkeys(removes)).items():
            pipe.zrem(key, *members)
        if beat:
            tidied = [keys.queues_key(self.library)]
            for queue in held.queues:
                tidied += [keys.task_key(self.library, queue, state) for state in self.states]
                tidied.append(keys.workers_key(self.library, queue))
            for key in tidied:
                pipe.zremrangebyscore(key, "-inf", now - self.lease)
                pipe.pexpire(key, ttl)
        self._placed.update(dict.fromkeys(adds, expiry))
        try:
            pipe.execute()
        except Exception as exc:
            self._failed(exc, now)
            return False
        for entry in removes:
            del self._placed[entry]
        if beat:
            self._last_beat = now
        if self._failing:
            log.info("hirefire tracker: the store is reachable again")
            self._failing = False
        return True

    def _failed(self, exc: Exception, now: float) -> None:
        """Log once; forget what aged out anyway (so memory stays bounded), rewrite everything on the next sync."""
        if not self._failing:
            log.warning(
                "hirefire tracker: cannot write to the store (tasks run on; the exporter's procs will fail until it"
                " is back): %s",
                describe_error(exc),
            )
            self._failing = True
        self._last_beat = -float("inf")
        self._placed = {entry: expiry for entry, expiry in self._placed.items() if expiry > now}


def _grouped(entries: Mapping[Entry, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for key, member in entries:
        out[key].append(member)
    return out


class RunningTasks:
    """What a library whose broker shows held tasks itself (Huey, Dramatiq) tells its tracker: the tasks this process
    runs now, fed from the library's hooks. A task started wakes the tracker (written at once, not a flush later)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._running: dict[str, str] = {}  # task id -> its queue
        self._tracker: Tracker | None = None

    def started(self, task_id: str, queue: str) -> None:
        with self._lock:
            self._running[task_id] = queue
            tracker = self._tracker
        if tracker is not None:
            tracker.wake()

    def finished(self, task_id: str) -> None:
        with self._lock:
            self._running.pop(task_id, None)

    def running(self) -> dict[str, tuple[str, str]]:
        """Task id -> (queue, ``started``), as :class:`Held` takes them."""
        with self._lock:
            return {task: (queue, "started") for task, queue in self._running.items()}
