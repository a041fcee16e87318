"""Gunicorn server hooks for prometheus_client's multiprocess mode (the request queue-time histogram over workers).

In ``gunicorn.conf.py``::

    from hirefire_exporter.contrib.gunicorn import child_exit, on_starting  # noqa: F401

and start gunicorn with ``PROMETHEUS_MULTIPROC_DIR`` set to a directory of its own (e.g. ``/tmp/hirefire-metrics``).
Both hooks do nothing when the variable is not set, so the same config serves development without it.
"""

from __future__ import annotations

import glob
import os
from typing import Any

from prometheus_client.multiprocess import mark_process_dead

from ..queue_time import multiprocess_dir


def on_starting(server: Any) -> None:
    """In the master, before any worker starts: create the directory and remove the files of a previous run.

    Files left from an earlier run would carry its counts into this one (and a worker reusing an old pid would add
    to that pid's file), so prometheus_client asks for the directory to be wiped at every start.
    """
    directory = multiprocess_dir()
    if directory is None:
        return
    os.makedirs(directory, exist_ok=True)
    for path in glob.glob(os.path.join(directory, "*.db")):
        os.remove(path)


def child_exit(server: Any, worker: Any) -> None:
    """In the master, when a worker exited: drop the dead worker's live gauges (``livesum``, ``livemax``...).

    Counters and histograms (the queue-time histogram among them) keep the dead worker's counts, which is what a
    process group's counters must do.
    """
    directory = multiprocess_dir()
    if directory is not None:
        mark_process_dead(worker.pid, directory)
