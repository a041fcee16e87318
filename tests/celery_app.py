"""The Celery app the Celery tests run workers of (``celery -A tests.celery_app worker``).

Configured from the environment so that each test can start a worker on its own broker, queues and options:

- ``HIREFIRE_CELERY_BROKER``: the broker URL;
- ``HIREFIRE_CELERY_QUEUES``: JSON list of ``[name, exchange, exchange_type, routing_key, max_priority]``
  (``task_queues``; exchange ``""`` means the default exchange);
- ``HIREFIRE_CELERY_TRANSPORT_OPTIONS``: JSON ``broker_transport_options``;
- ``HIREFIRE_CELERY_ACKS_LATE``: ``1`` for ``task_acks_late``;
- ``HIREFIRE_CELERY_SIGNAL_REDIS``: the Redis URL the ``block`` task reports to and waits on;
- ``HIREFIRE_CELERY_TRACKER``: run the worker-side tracker, writing to this Redis URL (``broker``: the broker), with
  the lease ``HIREFIRE_CELERY_TRACKER_LEASE`` and the flush interval ``HIREFIRE_CELERY_TRACKER_FLUSH`` (seconds).
"""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Celery
from kombu import Exchange, Queue

from hirefire_exporter.tracking.celery import track


def queues_from_spec(spec: list[list]) -> list[Queue]:
    out = []
    for name, exchange, kind, routing_key, max_priority in spec:
        arguments = {"x-max-priority": max_priority} if max_priority else None
        out.append(Queue(name, Exchange(exchange, type=kind), routing_key=routing_key, queue_arguments=arguments))
    return out


def make_app(broker: str, queues: list[list] | None = None, transport_options: dict | None = None, **conf) -> Celery:
    """An app for ``queues``. Its control exchange is named after the first queue, so that a test's broadcasts reach
    only that test's workers even when other test runs share the broker."""
    conf.setdefault("control_exchange", f"hf-ctl-{queues[0][0]}" if queues else "celery")
    celery = Celery("hirefire_test", broker=broker, set_as_current=False)
    celery.conf.update(
        broker_transport_options=transport_options or {},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        task_default_queue=queues[0][0] if queues else "celery",
        **conf,
    )
    if queues:
        celery.conf.task_queues = queues_from_spec(queues)
    return celery


app = make_app(
    os.environ.get("HIREFIRE_CELERY_BROKER", "redis://127.0.0.1:6379/2"),
    json.loads(os.environ.get("HIREFIRE_CELERY_QUEUES", "null")),
    json.loads(os.environ.get("HIREFIRE_CELERY_TRANSPORT_OPTIONS", "null")),
    task_acks_late=os.environ.get("HIREFIRE_CELERY_ACKS_LATE") == "1",
)
if tracker := os.environ.get("HIREFIRE_CELERY_TRACKER"):
    track(
        app,
        store=None if tracker == "broker" else tracker,
        lease=float(os.environ.get("HIREFIRE_CELERY_TRACKER_LEASE", "15")),
        flush_every=float(os.environ.get("HIREFIRE_CELERY_TRACKER_FLUSH", "0.5")),
    )
_signal = redis.Redis.from_url(os.environ.get("HIREFIRE_CELERY_SIGNAL_REDIS", "redis://127.0.0.1:6379/2"))


@app.task(name="hirefire_test.block")
def block(key: str, timeout: float = 60.0) -> None:
    """Say it started (``RPUSH <key>:started <pid>``), then wait until the test pushes to ``key`` (or ``timeout``)."""
    _signal.rpush(f"{key}:started", os.getpid())
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0 and not _signal.blpop([key], timeout=min(1.0, max(0.01, left))):
        pass  # short waits: under socket timeouts
