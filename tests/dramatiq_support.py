"""Real ``dramatiq`` worker processes for the tests, running the actors of tests/dramatiq_actors.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from support import TESTS, wait_until


def unique_queue() -> str:
    """A queue name of this test alone (other helpers' tests share RabbitMQ's vhost)."""
    return f"drq-{uuid.uuid4().hex[:10]}"


class DramatiqWorker:
    """``dramatiq dramatiq_actors``: one process of ``threads`` threads consuming ``queue`` and its delay queue."""

    def __init__(
        self,
        broker: str,
        url: str,
        queue: str,
        flags: Path,
        threads: int = 1,
        heartbeat_ms: int = 60000,
        track: str | None = None,
        lease: float = 15.0,
    ):
        """``track``: run the tracker, writing to this Redis URL (``""``: the broker's Redis); ``lease``: its lease."""
        tracking = {} if track is None else {"DRQ_TRACK": track, "DRQ_LEASE": str(lease)}
        env = {
            **os.environ,
            "PYTHONPATH": str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "DRQ_BROKER": broker,
            "DRQ_URL": url,
            "DRQ_QUEUE": queue,
            "DRQ_FLAG_DIR": str(flags),
            "DRQ_HEARTBEAT_MS": str(heartbeat_ms),
            **tracking,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dramatiq", "dramatiq_actors", "--processes", "1", "--threads", str(threads)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: kill() reaches the worker process it forks
        )

    def kill(self) -> None:
        """SIGKILL to the whole group: no graceful shutdown, no requeue, no last heartbeat."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        """A clean stop: SIGTERM to the main process, which passes it on to its worker process (once: a second one
        would kill it); the worker finishes its running messages first. Returns the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.kill()


def wait_started(flags: Path, name: str) -> None:
    wait_until(lambda: (flags / f"{name}.started").exists(), timeout=30, what=f"the worker to start {name!r}")
