"""Request queue time: how long a request waited between the front router and the app (HireFire's web metric).

The router stamps ``X-Request-Start`` with the time it took the request in. Routers disagree on the unit:
Heroku sends milliseconds since the epoch, nginx ``t=1700000000.123`` (seconds with a fraction), Apache
``t=1700000000123456`` (microseconds), some proxies nanoseconds. The unit is told apart by magnitude: only values
that land between 2001 and 5138 in exactly one unit are accepted, anything else is garbage and ignored (never an
error for the request). A negative queue time (router and dyno clocks differ) counts as 0.

A :class:`QueueTimer` records each queue time in the ``hirefire_request_queue_seconds`` histogram (served on the
exporter's ``/metrics``) and reports it to HireFire: as the log line ``[hirefire:router] queue={ms}ms`` and/or through
a :class:`~hirefire_exporter.dispatcher.Dispatcher`.

Under a pre-forking server (gunicorn, uWSGI) each worker process observes its own requests, so a scrape answered by
one worker would see a fraction of the counts. With prometheus_client's multiprocess mode on
(``PROMETHEUS_MULTIPROC_DIR`` set before prometheus_client is imported: it picks its value storage once, at import)
every worker writes to its own file in that directory and :data:`COLLECTOR` serves the sum over all of them, dead
workers included (a histogram counts requests, which stay counted when the worker that served them exits). Without
the variable nothing changes: the histogram lives in the process's memory. On Heroku (``$DYNO`` set, e.g. ``web.1``)
every sample carries a ``dyno`` label, since scrapes through the router land on any dyno: without the label, series
from different dynos would be one series whose counter jumps between dynos' values.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import Histogram, values
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .dispatcher import Dispatcher

log = logging.getLogger("hirefire_exporter")

HEADER = "X-Request-Start"
#: Accepted timestamps, in seconds since the epoch: 2001-09-09 to year 5138.
_EARLIEST, _LATEST = 1e9, 1e11
_UNITS = (1.0, 1e3, 1e6, 1e9)  # seconds, milliseconds, microseconds, nanoseconds
_MAX_LENGTH = 64

#: Seconds; Heroku's router gives up on a request after 30 s.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

NAME = "hirefire_request_queue_seconds"
#: The label naming the Heroku dyno (``$DYNO``) on every sample, only when ``DYNO`` is set.
DYNO_LABEL = "dyno"


def multiprocess_dir() -> str | None:
    """prometheus_client's multiprocess directory when its multiprocess mode is on in this process, else ``None``.

    The mode is what prometheus_client chose when it was imported; the variable set later does not turn it on.
    """
    if not getattr(values.ValueClass, "_multiprocess", False):
        return None
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir") or None


_MULTIPROC_DIR = multiprocess_dir()
if _MULTIPROC_DIR is not None:
    # A dyno's file system starts empty: create the directory rather than fail the host app's import over it.
    os.makedirs(_MULTIPROC_DIR, exist_ok=True)

HISTOGRAM = Histogram(
    NAME,
    "Time requests waited between the front router (X-Request-Start) and this process.",
    buckets=BUCKETS,
    registry=None,
)


def parse_request_start(value: str | bytes | None) -> float | None:
    """The ``X-Request-Start`` header as unix seconds, or ``None`` when it is missing or garbage.

    Accepts an optional ``t=`` prefix and, when proxies appended several stamps, takes the first (the earliest hop).
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    text = value.split(",", 1)[0].strip()
    if text[:2] in ("t=", "T="):
        text = text[2:].strip()
    if not text or len(text) > _MAX_LENGTH:
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    if not math.isfinite(number):
        return None
    for unit in _UNITS:
        seconds = number / unit
        if _EARLIEST <= seconds < _LATEST:
            return seconds
    return None


def queue_seconds(value: str | bytes | None, now: float | None = None) -> float | None:
    """Seconds from the router's stamp to ``now`` (default: the current time), at least 0; ``None`` for garbage."""
    started = parse_request_start(value)
    if started is None:
        return None
    return max(0.0, (time.time() if now is None else now) - started)


def _process_group_families(directory: str) -> list[Metric]:
    """The histogram summed over every process's file in the multiprocess directory."""
    files = glob.glob(os.path.join(directory, "histogram_*.db"))
    return [metric for metric in MultiProcessCollector.merge(files, accumulate=True) if metric.name == NAME]


def with_dyno(families: Iterable[Metric], dyno: str) -> Iterator[Metric]:
    """The families with ``dyno="<dyno>"`` on every sample: series of one Heroku dyno apart from another's."""
    for family in families:
        labelled = Metric(family.name, family.documentation, family.type, family.unit)
        labelled.samples = [s._replace(labels={DYNO_LABEL: dyno, **s.labels}) for s in family.samples]
        yield labelled


class _QueueTimeCollector(Collector):
    """Serves the histogram once a :class:`QueueTimer` exists in the process (nothing before: no empty histogram
    on exporters that never see web requests): the process's own, or the process group's in multiprocess mode."""

    enabled = False

    def describe(self) -> Iterator[Metric]:
        """The histogram's names, always: a registry looks them up to answer ``/metrics?name[]=...``."""
        return iter(HISTOGRAM.describe())

    def collect(self) -> Iterator[Metric]:
        if not self.enabled:
            return iter(())
        families = HISTOGRAM.collect() if _MULTIPROC_DIR is None else _process_group_families(_MULTIPROC_DIR)
        dyno = os.environ.get("DYNO", "").strip()
        return with_dyno(families, dyno) if dyno else iter(families)


#: Register this on any ``CollectorRegistry`` to publish the queue-time histogram there too.
COLLECTOR = _QueueTimeCollector()


class QueueTimer:
    """Measures each request's queue time and reports it. One per process is enough (see ``contrib.queue_timer``).

    ``log``: print ``[hirefire:router] queue={ms}ms`` on stdout (HireFire reads it from the log drain).
    ``dispatcher``: buffer the milliseconds for the dispatcher's background POSTs to HireFire.
    Every failure is swallowed and logged at debug level: measuring must never fail or slow a request.
    """

    def __init__(self, *, log: bool = False, dispatcher: Dispatcher | None = None) -> None:
        self.log = log
        self.dispatcher = dispatcher
        COLLECTOR.enabled = True

    def observe(self, header: str | bytes | None, now: float | None = None) -> float | None:
        """Record the queue time for one request's ``X-Request-Start`` value; returns it in seconds (or None)."""
        try:
            now = time.time() if now is None else now
            seconds = queue_seconds(header, now)
            if seconds is None:
                return None
            HISTOGRAM.observe(seconds)
            ms = round(seconds * 1000)
            if self.log:
                sys.stdout.write(f"[hirefire:router] queue={ms}ms\n")
                sys.stdout.flush()
            if self.dispatcher is not None:
                self.dispatcher.add(ms, now)
            return seconds
        except Exception:
            log.debug("hirefire-exporter: could not record the request queue time", exc_info=True)
            return None

    def observe_environ(self, environ: Mapping[str, Any]) -> float | None:
        """For a WSGI request."""
        return self.observe(environ.get("HTTP_X_REQUEST_START"))

    def observe_scope(self, scope: Mapping[str, Any]) -> float | None:
        """For an ASGI HTTP request."""
        for name, value in scope.get("headers", ()):
            if name.lower() == b"x-request-start":
                return self.observe(value)
        return None
