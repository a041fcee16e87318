"""Dramatiq workers record the messages they run: one line next to the broker, ``track(broker)``.

On RabbitMQ a message a worker runs is unacknowledged, which AMQP does not count (only the management API does);
and no broker says which worker processes are alive and how many threads they run. ``track`` adds a dramatiq
middleware: ``before_process_message`` notes a message as running, ``after_process_message`` (raised or not) and
``after_skip_message`` forget it, all in memory on the worker thread. Each worker process starts one tracker thread
when it boots (:mod:`hirefire_exporter.tracking.store`), registered for the queues it consumes with as many slots as
worker threads, and removes its entries after a clean shutdown (once its threads finished their messages).

A running message is keyed by its delivery, not its message id: one process may run two deliveries of one id at once
(a message sent twice, a redelivery after a reconnect), and each holds a thread until it ends. The hooks get the
same ``MessageProxy`` from before to after processing; each delivery's member in the store is the message id and a
number unique in the process (``<id>#<n>``).
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


def track(
    broker: Any, store: Any = None, *, lease: float = DEFAULT_LEASE, flush_every: float = DEFAULT_FLUSH_EVERY
) -> None:
    """Make every worker process of ``broker`` record its running messages per queue in ``store`` (a Redis URL or
    ``redis.Redis``; by default the ``RedisBroker``'s own Redis; a ``RabbitmqBroker`` needs one). Call it once,
    where the broker is made: it does no I/O and starts nothing in producers."""
    from dramatiq import Middleware

    check_timing(lease, flush_every)
    client = store_client(store if store is not None else _broker_store(broker))

    class HireFireTracker(Middleware):
        """Running messages in memory; the tracker started and stopped with the worker."""

        def __init__(self) -> None:
            self.account = _Account(client, lease, flush_every)

        def after_worker_boot(self, broker: Any, worker: Any) -> None:
            self.account.boot(worker)

        def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
            self.account.shutdown()

        def before_process_message(self, broker: Any, message: Any) -> None:
            self.account.started_message(message)

        def after_process_message(
            self, broker: Any, message: Any, *, result: Any = None, exception: BaseException | None = None
        ) -> None:
            self.account.done(message)

        def after_skip_message(self, broker: Any, message: Any) -> None:
            self.account.done(message)

    broker.add_middleware(HireFireTracker())


def _broker_store(broker: Any) -> Any:
    """A client on the ``RedisBroker``'s Redis, with the tracker's own short socket timeouts."""
    client = getattr(broker, "client", None)
    if not callable(getattr(client, "pipeline", None)):
        raise ValueError(
            f"hirefire tracker: the {type(broker).__name__} is not Redis: give track(broker, store='redis://...'), a"
            " Redis the exporter reads as the proc's tracker_url"
        )
    return client_like(client)


class _Account(RunningTasks):
    """One worker process's running messages and its tracker."""

    def __init__(self, client: Any, lease: float, flush_every: float) -> None:
        super().__init__()
        self.client = client
        self.lease = lease
        self.flush_every = flush_every
        self._worker: Any = None
        #: id() of a running delivery's MessageProxy -> (the proxy, held so its id() is not reused; its task key).
        self._deliveries: dict[int, tuple[Any, str]] = {}
        self._delivered = 0

    def boot(self, worker: Any) -> None:
        with self._lock:
            if self._tracker is not None:
                return  # a second Worker in this process: the first one's tracker stays
            self._worker, self._running, self._deliveries = worker, {}, {}
            tracker = self._tracker = Tracker(
                self.client, "dramatiq", worker_id(f"dramatiq@{os.uname().nodename}"), self.held, lease=self.lease,
                flush_every=self.flush_every, states=RUNNING,
            )  # fmt: skip
        tracker.sync()  # registered at once, not one flush later
        tracker.start()

    def shutdown(self) -> None:
        with self._lock:
            tracker, self._tracker = self._tracker, None
        if tracker is not None:
            tracker.stop()

    def started_message(self, message: Any) -> None:
        from dramatiq.common import q_name

        with self._lock:
            self._delivered += 1
            task = f"{message.message_id}#{self._delivered}"
            self._deliveries[id(message)] = (message, task)
        self.started(task, q_name(message.queue_name))

    def done(self, message: Any) -> None:
        """The delivery ended (processed, failed or skipped); a skip before it started is no delivery of ours."""
        with self._lock:
            delivery = self._deliveries.pop(id(message), None)
        if delivery is not None:
            self.finished(delivery[1])

    def held(self) -> Held:
        """The running messages, and the queues the worker consumes (its consumers: ``q`` and ``q.DQ`` are ``q``)."""
        from dramatiq.common import q_name

        with self._lock:
            tasks = self.running()
            worker = self._worker
        queues = sorted({q_name(name) for name in list(worker.consumers)})  # a copy: consumers are added meanwhile
        return Held(tasks, queues, worker.worker_threads)
