"""Actors for the real ``dramatiq`` workers the tests start: the broker comes from the environment.

``DRQ_BROKER``: ``redis`` or ``rabbitmq``; ``DRQ_URL``: its URL; ``DRQ_HEARTBEAT_MS``: the Redis broker's heartbeat
timeout (short in tests, so that a killed worker is seen dead quickly); ``DRQ_FLAG_DIR``: where ``hold`` marks that it
started, and waits until its release file appears; ``DRQ_TRACK``: set, the workers run the tracker
(``track(broker)``), writing to this Redis URL or, empty, to the broker's; ``DRQ_LEASE``: its lease.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import dramatiq

if os.environ.get("DRQ_BROKER", "redis") == "redis":
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(
        url=os.environ.get("DRQ_URL"), heartbeat_timeout=int(os.environ.get("DRQ_HEARTBEAT_MS", "60000"))
    )
else:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=os.environ.get("DRQ_URL"))
dramatiq.set_broker(broker)

if "DRQ_TRACK" in os.environ:
    from hirefire_exporter.tracking.dramatiq import track

    track(broker, os.environ["DRQ_TRACK"] or None, lease=float(os.environ.get("DRQ_LEASE", "15")), flush_every=0.1)


@dramatiq.actor(queue_name=os.environ.get("DRQ_QUEUE", "drq-default"), max_retries=0)
def hold(name: str) -> None:
    """Run until ``<flag dir>/<name>.release`` exists, after marking ``<name>.started``."""
    flags = Path(os.environ["DRQ_FLAG_DIR"])
    (flags / f"{name}.started").touch()
    while not (flags / f"{name}.release").exists():
        time.sleep(0.05)


@dramatiq.actor(queue_name=os.environ.get("DRQ_QUEUE", "drq-default"), max_retries=0)
def fail() -> None:
    """Raise: with no retries, the message is dead-lettered."""
    raise RuntimeError("meant to fail")


@dramatiq.actor(queue_name=os.environ.get("DRQ_QUEUE", "drq-default"), max_retries=0)
def noop() -> None:
    """Return at once (bench/dramatiq_tracker.py)."""


@dramatiq.actor(queue_name=os.environ.get("DRQ_QUEUE", "drq-default"), max_retries=0)
def pause(seconds: float) -> None:
    """Run ``seconds`` (bench/dramatiq_tracker.py)."""
    time.sleep(seconds)
