"""Huey consumers record the tasks they run: one line next to the Huey instance, ``track(huey)``.

Huey keeps no record of a running task anywhere a measuring tool can read; its consumer's workers (threads,
processes or greenlets) know. ``track`` registers Huey's own hooks: a pre-execute hook notes a task as running, the
post-execute hook (and the canceled / interrupted signals, which end a task without it) forgets it, all in memory on
the worker's thread. Each consumer process runs one tracker thread that writes what changed
(:mod:`hirefire_exporter.tracking.store`); the process registers with as many slots as it runs Huey workers.
"""

from __future__ import annotations

import os
from typing import Any

from .keys import RUNNING
from .store import (
    DEFAULT_FLUSH_EVERY,
    DEFAULT_LEASE,
    Held,
    RunningTasks,
    Tracker,
    check_timing,
    client_like,
    store_client,
    worker_id,
)

HOOK = "hirefire_tracker"


def track(
    huey: Any, store: Any = None, *, lease: float = DEFAULT_LEASE, flush_every: float = DEFAULT_FLUSH_EVERY
) -> None:
    """Make every consumer of ``huey`` record its running tasks in ``store`` (a Redis URL or ``redis.Redis``; by
    default the Huey instance's own Redis). Call it once, where the instance is made: it does no I/O and starts
    nothing until a consumer's worker starts."""
    check_timing(lease, flush_every)
    client = store_client(store if store is not None else _storage_store(huey))
    _Consumer(huey, client, lease, flush_every).hook()


def _storage_store(huey: Any) -> Any:
    """A client on the Huey instance's Redis, with the tracker's own short socket timeouts."""
    from huey.storage import RedisStorage

    storage = huey.storage
    if not isinstance(storage, RedisStorage):
        raise ValueError(
            f"hirefire tracker: {type(storage).__name__} is not Redis: give track(huey, store='redis://...'), a Redis"
            " the exporter reads as the proc's tracker_url"
        )
    return client_like(storage.conn)


class _Consumer(RunningTasks):
    """One consumer process's running tasks and its tracker (made again in a forked worker process)."""

    def __init__(self, huey: Any, client: Any, lease: float, flush_every: float) -> None:
        super().__init__()
        self.huey = huey
        self.client = client
        self.lease = lease
        self.flush_every = flush_every
        self.queue = getattr(huey.storage, "name", huey.name)
        self._pid = -1
        self._workers = 0

    def hook(self) -> None:
        from huey import signals

        self.huey.on_startup(HOOK)(self.worker_started)
        self.huey.on_shutdown(HOOK)(self.worker_stopped)
        self.huey.pre_execute(HOOK)(lambda task: self.started(task.id, self.queue))
        self.huey.post_execute(HOOK)(lambda task, value, exc: self.done(task))
        self.huey.signal(signals.SIGNAL_CANCELED, signals.SIGNAL_INTERRUPTED)(
            lambda signal, task, *a, **k: self.done(task)
        )

    def _forked(self) -> None:
        if self._pid != os.getpid():  # a process worker: what the parent held is not this process's
            self._pid, self._workers, self._running, self._tracker = os.getpid(), 0, {}, None

    def worker_started(self) -> None:
        with self._lock:
            self._forked()
            self._workers += 1
            if self._tracker is None:
                self._tracker = Tracker(
                    self.client, "huey", worker_id(f"huey-{self.queue}@{os.uname().nodename}"), self.held,
                    lease=self.lease, flush_every=self.flush_every, states=RUNNING,
                )  # fmt: skip
                self._tracker.start()
            self._tracker.wake()  # registered within SETTLE, with every worker started meanwhile, not a flush later

    def worker_stopped(self) -> None:
        with self._lock:
            self._workers -= 1
            tracker = self._tracker if self._workers <= 0 else None
            if tracker is not None:
                self._tracker = None
        if tracker is not None:
            tracker.stop()

    def done(self, task: Any) -> None:
        self.finished(task.id)

    def held(self) -> Held:
        with self._lock:
            return Held(self.running(), (self.queue,), max(self._workers, 1))
