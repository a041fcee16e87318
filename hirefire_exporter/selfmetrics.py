"""The exporter's own metrics on ``/metrics``: what it is, and counters an operator reads when things go wrong.

- ``hirefire_exporter_build_info{version,python}``: always 1;
- ``hirefire_exporter_requests_total{route,status}``: requests the app answered, by route (a fixed few names, never
  the raw path, so that no client can create series) and HTTP status;
- ``hirefire_exporter_cycles_total{outcome}``: collection cycles this process ran, ``ok`` (every proc read),
  ``partial`` or ``failed`` (none read);
- ``hirefire_exporter_shared_reads_total{result}``: reads of the shared store, when sharing is on;
- ``hirefire_exporter_inspect_broadcasts_total{method}``: Celery inspect broadcasts sent.

The counts live in the objects that count them (the app, its :class:`~hirefire_exporter.collection.Collection`, its
shared store), not in module globals: every app has its own, and building many apps never registers a name twice.
They are counts of this process. Under prometheus_client's multiprocess mode (a pre-forking server, see
:mod:`hirefire_exporter.queue_time`) a scrape is answered by any one worker, and counters that jump between workers'
values read as resets to Prometheus: there only ``build_info`` is served. On Heroku (``$DYNO`` set) every sample
carries a ``dyno`` label, as the queue-time histogram does.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from . import __version__
from .counts import Counts
from .queue_time import multiprocess_dir, with_dyno

if TYPE_CHECKING:
    from .collection import Collection
    from .sharing import SharedSnapshots


def _families() -> dict[str, Metric]:
    return {
        "build": GaugeMetricFamily(
            "hirefire_exporter_build_info",
            "The exporter's version and Python's; always 1.",
            labels=["version", "python"],
        ),
        "requests": CounterMetricFamily(
            "hirefire_exporter_requests",
            "Requests this process's exporter answered, by route and HTTP status (counted when answered).",
            labels=["route", "status"],
        ),
        "cycles": CounterMetricFamily(
            "hirefire_exporter_cycles",
            "Collection cycles this process ran: ok (every proc read), partial, failed (no proc read).",
            labels=["outcome"],
        ),
        "shared": CounterMetricFamily(
            "hirefire_exporter_shared_reads",
            "Reads of the shared store: a snapshot found, none, one ignored (unreadable), or no answer (unreachable).",
            labels=["result"],
        ),
        "inspect": CounterMetricFamily(
            "hirefire_exporter_inspect_broadcasts",
            "Celery inspect broadcasts this process sent, by method.",
            labels=["method"],
        ),
    }


class SelfCollector(Collector):
    """The self-metrics of one app: its ``requests`` counts and its collection's counts."""

    def __init__(self, requests: Counts, collection: Collection) -> None:
        self.requests = requests
        self.collection = collection

    def describe(self) -> Iterator[Metric]:
        return iter(_families().values())

    def collect(self) -> Iterator[Metric]:
        f = _families()
        f["build"].add_metric([__version__, platform.python_version()], 1.0)
        families: Iterable[Metric] = [f["build"]]
        if multiprocess_dir() is None:
            share: SharedSnapshots | None = self.collection.share
            sources = [
                ("requests", self.requests),
                ("cycles", self.collection.counts.cycles),
                ("inspect", self.collection.counts.inspect_broadcasts),
            ]
            if share is not None:
                sources.append(("shared", share.reads))
            for name, counts in sources:
                for labels, count in counts.items():
                    f[name].add_metric(list(labels), count)
            families = [f["build"], *(f[name] for name, _ in sources if f[name].samples)]  # none: no family
        dyno = os.environ.get("DYNO", "").strip()
        return with_dyno(families, dyno) if dyno else iter(families)
