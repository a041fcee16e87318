"""Stamp Celery task messages with the time they were published, so the exporter can measure queue latency.

A default Celery message carries no timestamp, so the age of the oldest waiting task cannot be known. Call
:func:`enable` in **every process that publishes tasks** (web dynos, beat, workers that call other tasks): from then
on each message carries the publish time (unix seconds) in the header ``hirefire_enqueued_at`` and in the AMQP
``timestamp`` property (which RabbitMQ's management API reports as ``head_message_timestamp``)::

    # myproject/celery.py, next to `app = Celery(...)`
    from hirefire_exporter.celery_latency import enable
    enable()

Messages published before :func:`enable`, or by a process that never called it, have no stamp: a queue whose oldest
message has none reports no latency rather than a guess.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

#: The header carrying the publish time, in unix seconds (float).
HEADER = "hirefire_enqueued_at"
_DISPATCH_UID = "hirefire_exporter.celery_latency.stamp"


def stamp(headers: dict[str, Any] | None = None, properties: dict[str, Any] | None = None, **_: Any) -> None:
    """The ``before_task_publish`` receiver: add the publish time unless the message already has one."""
    now = time.time()
    if headers is not None:
        headers.setdefault(HEADER, now)
    if properties is not None and properties.get("timestamp") is None:
        properties["timestamp"] = int(now)


def enable() -> None:
    """Stamp every task published by this process from now on (idempotent)."""
    from celery.signals import before_task_publish

    before_task_publish.connect(stamp, weak=False, dispatch_uid=_DISPATCH_UID)


def disable() -> None:
    """Stop stamping (mostly for tests)."""
    from celery.signals import before_task_publish

    before_task_publish.disconnect(stamp, dispatch_uid=_DISPATCH_UID)


def enqueued_at(message: Mapping[str, Any]) -> float | None:
    """The publish time of a kombu message envelope (as stored in a Redis list), ``None`` when it has no stamp: the
    header :data:`HEADER`, else the AMQP ``timestamp`` property (set by :func:`stamp` too, or by the producer)."""
    for part, key in (("headers", HEADER), ("properties", "timestamp")):
        fields = message.get(part)
        value = fields.get(key) if isinstance(fields, Mapping) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None
