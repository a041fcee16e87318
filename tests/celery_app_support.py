"""Helpers for the Celery tests: real workers as subprocesses, bounded waits, producers on the test broker."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery_app import make_app
from support import wait_until

ROOT = Path(__file__).resolve().parent.parent
CELERY = str(Path(sys.executable).with_name("celery"))
TASK = "hirefire_test.block"


def unique(prefix: str) -> str:
    return f"hf-{prefix}-{uuid.uuid4().hex[:8]}"


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    return wait_until(condition, timeout, what)


def declare(app: Any) -> None:
    """Declare the app's queues, exchanges and bindings, as a worker would at start-up."""
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for queue in app.conf.task_queues or ():
            queue(channel).declare()


class Worker:
    """A Celery worker subprocess running ``tests.celery_app`` on one broker, stopped for sure by :meth:`stop`."""

    def __init__(
        self,
        broker: str,
        queues: list[list],
        signal_redis: str,
        *,
        prefetch: int = 1,
        pool: str = "threads",
        acks_late: bool = False,
        transport_options: dict | None = None,
        name: str | None = None,
        tracker: str | None = None,
        lease: float = 15.0,
        flush_every: float = 0.5,
    ) -> None:
        self.hostname = name or f"{unique('w')}@test"
        self.log = tempfile.NamedTemporaryFile(prefix="celery-worker-", suffix=".log", delete=False)
        env = dict(
            os.environ,
            HIREFIRE_CELERY_BROKER=broker,
            HIREFIRE_CELERY_QUEUES=json.dumps(queues),
            HIREFIRE_CELERY_TRANSPORT_OPTIONS=json.dumps(transport_options or {}),
            HIREFIRE_CELERY_ACKS_LATE="1" if acks_late else "0",
            HIREFIRE_CELERY_SIGNAL_REDIS=signal_redis,
            HIREFIRE_CELERY_TRACKER=tracker or "",
            HIREFIRE_CELERY_TRACKER_LEASE=str(lease),
            HIREFIRE_CELERY_TRACKER_FLUSH=str(flush_every),
        )
        command = [
            CELERY, "-A", "tests.celery_app", "worker", f"--pool={pool}", "--concurrency=1",
            f"--prefetch-multiplier={prefetch}", "-Q", ",".join(q[0] for q in queues), "-n", self.hostname,
            "--without-mingle", "--without-gossip", "--without-heartbeat", "--loglevel=WARNING",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop(self) -> None:
        # the whole process group: a prefork pool's children too. The broker gets the held messages back (the tests
        # throw them away anyway).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self.log.close()
        os.unlink(self.log.name)

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")


class Blocker:
    """Publishes ``block`` tasks that report when they start and wait until released (all tied to one key)."""

    def __init__(self, app: Any, signal_client: Any) -> None:
        self.app = app
        self.redis = signal_client
        self.key = unique("release")

    def send(self, n: int = 1, timeout: float | None = None, **options: Any) -> None:
        """``n`` tasks, each waiting at most ``timeout`` seconds (default: the task's) to be released."""
        args = [self.key] if timeout is None else [self.key, timeout]
        for _ in range(n):
            self.app.send_task(TASK, args=args, **options)

    def started(self) -> int:
        return self.redis.llen(f"{self.key}:started")

    def pids(self) -> list[int]:
        """The processes the started tasks run in (the worker, or a prefork pool's child)."""
        return [int(pid) for pid in self.redis.lrange(f"{self.key}:started", 0, -1)]

    def release(self, n: int = 1000) -> None:
        self.redis.rpush(self.key, *["go"] * n)


def app_for(broker: str, queues: list[list] | None = None, **kwargs: Any) -> Any:
    return make_app(broker, queues, **kwargs)
