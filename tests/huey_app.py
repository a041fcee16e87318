"""The Huey instance the tracker tests run consumers of (``huey_consumer huey_app.huey``), configured from the
environment: ``HIREFIRE_HUEY_NAME`` (the instance's name, its queue), ``HIREFIRE_HUEY_URL`` (its Redis, where the
``block`` task reports to and waits on too) and ``HIREFIRE_HUEY_TRACKER_LEASE`` (run the tracker with this lease)."""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from huey import RedisHuey

from hirefire_exporter.tracking.huey import track


def make(name: str, url: str, lease: float | None = None) -> tuple[RedisHuey, Any]:
    """The instance and its ``block`` task; tracked when ``lease`` is given (the consumer's side)."""
    instance = RedisHuey(name, url=url)
    signal = redis.Redis.from_url(url)

    @instance.task(name="block")
    def block(key: str, timeout: float = 60.0) -> None:
        """Say it started (``RPUSH <key>:started``), then wait until the test pushes to ``key`` (or ``timeout``)."""
        signal.rpush(f"{key}:started", os.getpid())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not signal.blpop([key], timeout=1):
            pass

    if lease is not None:
        track(instance, lease=lease)
    return instance, block


if "HIREFIRE_HUEY_NAME" in os.environ:
    lease = float(os.environ["HIREFIRE_HUEY_TRACKER_LEASE"])
    huey, _ = make(os.environ["HIREFIRE_HUEY_NAME"], os.environ["HIREFIRE_HUEY_URL"], lease)
