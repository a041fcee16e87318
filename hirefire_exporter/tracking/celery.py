"""Celery workers record what they hold: one line in the app module, ``track(app)``.

The tracker runs in the worker's main process, where Celery keeps its own account of every request it holds
(``celery.worker.state``: the requests held for an ETA/countdown, those reserved for a pool slot, those running; the
same records ``inspect()`` answers from). That account is right whatever the pool: the prefork pool's children run
the tasks, but the main process hands them out and hears when each one ends, also when a child is killed (the task
then fails with ``WorkerLostError`` and leaves the account). Nothing runs on a task's own path: the tracker's thread
reads the account every ``flush_every`` seconds and writes what changed (:mod:`hirefire_exporter.tracking.store`).
"""

from __future__ import annotations

from typing import Any

from .store import DEFAULT_FLUSH_EVERY, DEFAULT_LEASE, Held, Tracker, check_timing, store_client, worker_id

#: Routes remembered at most (topic routing keys may carry ids: the table must not grow with them).
_ROUTES = 1024
#: Attempts at copying Celery's request sets, which the worker's own thread may change while they are copied.
_COPY_ATTEMPTS = 5


def track(
    app: Any, store: Any = None, *, lease: float = DEFAULT_LEASE, flush_every: float = DEFAULT_FLUSH_EVERY
) -> None:
    """Make every worker of ``app`` record its reserved, scheduled and running tasks per queue in ``store`` (a Redis
    URL or ``redis.Redis``; by default the broker, which must then be Redis). Call it once, in the app module: it
    does no I/O and starts nothing in producers; a worker starts its tracker with its own start-up (a bootstep), and
    one that cannot (a bad store setting) refuses to start rather than run uncounted."""
    from celery import bootsteps
    from celery.signals import task_prerun, task_received, worker_shutdown

    check_timing(lease, flush_every)
    trackers: list[Tracker] = []

    class HireFireTracker(bootsteps.StartStopStep):
        """Starts the tracker with the worker (a failure here stops the worker's start-up, loudly)."""

        def start(self, worker: Any) -> None:
            if trackers:
                return
            client = store_client(store if store is not None else _broker_store(app))
            tracker = Tracker(
                client, "celery", worker_id(worker.hostname), _Account(app, worker.concurrency).held, lease=lease,
                flush_every=flush_every,
            )  # fmt: skip
            tracker.sync()  # registered at once, not one flush later
            tracker.start()
            trackers.append(tracker)

    def stop(sender: Any = None, **_: Any) -> None:
        """After a warm shutdown finished the running tasks: remove this worker's entries at once."""
        if getattr(sender, "app", None) is app:
            while trackers:
                trackers.pop().stop()

    def wake(sender: Any = None, **_: Any) -> None:
        """A task received (or started, where a thread or solo pool runs it in this process): write it at once, not a
        flush later; with early acknowledgement a started task has already left the broker's ``unacked`` hash."""
        for tracker in trackers:
            tracker.wake()

    app.steps["worker"].add(HireFireTracker)
    worker_shutdown.connect(stop, weak=False, dispatch_uid=f"hirefire-tracker-{id(app)}")
    task_received.connect(wake, weak=False, dispatch_uid=f"hirefire-tracker-received-{id(app)}")
    task_prerun.connect(wake, weak=False, dispatch_uid=f"hirefire-tracker-prerun-{id(app)}")


def _broker_store(app: Any) -> str:
    url = app.conf.broker_write_url or app.conf.broker_url
    url = (url[0] if isinstance(url, list | tuple) else url) or ""
    url = url.split(";")[0].strip()
    if url.partition("://")[0].lower() not in ("redis", "rediss"):
        raise ValueError(
            "hirefire tracker: the broker is not Redis: give track(app, store='redis://...'), a Redis the exporter"
            " reads as the proc's tracker_url"
        )
    return url


class _Account:
    """Celery's own account of the requests a worker holds, by queue and state."""

    def __init__(self, app: Any, slots: int) -> None:
        self.app = app
        self.slots = slots
        self._queues: dict[tuple[Any, Any], str] = {}  # (exchange, routing key) -> queue, for the current bindings
        self._consumed: tuple[str, ...] = ()

    def held(self) -> Held:
        from celery.worker import state

        consumed = self.app.amqp.queues.consume_from  # the worker's queues (-Q, add_consumer), by name
        names = tuple(sorted(consumed))
        if names != self._consumed:  # -Q at start, add_consumer / cancel_consumer while running
            self._consumed, self._queues = names, {}
        scheduled, reserved, active = _copy(state.scheduled_requests, state.reserved_requests, state.active_requests)
        tasks: dict[str, tuple[str, str]] = {}
        for requests, where in ((scheduled, "scheduled"), (reserved, "reserved"), (active, "started")):
            for request in requests:
                tasks[request.id] = (self._queue(request, consumed), where)
        return Held(tasks, names, self.slots)

    def _queue(self, request: Any, consumed: Any) -> str:
        """The consumed queue a request came from, by its exchange and routing key (a message names no queue)."""
        info = request.delivery_info or {}
        key = (info.get("exchange"), info.get("routing_key"))
        if key not in self._queues:
            from ..procs.celery.routing import queue_bindings, route

            if len(self._queues) >= _ROUTES:
                self._queues.clear()
            reached = route(queue_bindings(consumed.values()), key[0] or "", key[1] or "") & set(self._consumed)
            if reached:
                self._queues[key] = min(reached)
            else:  # routed by a binding the worker does not declare: its only queue, else the routing key
                self._queues[key] = self._consumed[0] if len(self._consumed) == 1 else str(key[1])
        return self._queues[key]


def _copy(*sets: Any) -> list[tuple[Any, ...]]:
    """Copies of Celery's request sets, taken while the worker's thread may change them."""
    for _ in range(_COPY_ATTEMPTS):
        try:
            return [tuple(s) for s in sets]
        except RuntimeError:  # "set changed size during iteration": try again
            continue
    raise RuntimeError("the worker's request sets kept changing while they were copied")
