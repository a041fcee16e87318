"""A prometheus_client Collector that renders the latest Snapshot.

Fresh metric families on every ``collect()``, no global Gauges, and a ``describe()`` that does no I/O, so that
registering the collector never touches a broker. A proc without a usable reading gets ``hirefire_proc_up 0`` and no
job or worker samples at all: an absent series, never a 0 that an autoscaler would act on.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from .collection import Collection, Snapshot

_CACHED = " Values come from the exporter's cached collection cycle (see hirefire_collection_timestamp_seconds)."


def _families() -> dict[str, GaugeMetricFamily]:
    def gauge(name: str, doc: str, labels: list[str], cached: bool = True) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc + (_CACHED if cached else ""), labels=labels)

    return {
        "proc_jobs": gauge("hirefire_proc_jobs", "The job count HireFire gets for the proc.", ["proc"]),
        "proc_latency": gauge(
            "hirefire_proc_latency_seconds",
            "Age of the oldest waiting job over the proc's queues, where the backend can measure it.",
            ["proc"],
        ),
        "queue_jobs": gauge("hirefire_queue_jobs", "Jobs per queue and state.", ["proc", "queue", "state"]),
        "queue_latency": gauge(
            "hirefire_queue_latency_seconds", "Age of the oldest waiting job in the queue.", ["proc", "queue"]
        ),
        "queue_found": gauge(
            "hirefire_queue_found",
            "1 if the queue exists on the broker, 0 if the broker has no trace of it (never used, or a typo in the"
            " proc's queues: it reads as 0 jobs); absent where the backend cannot tell.",
            ["proc", "queue"],
        ),
        "workers": gauge(
            "hirefire_workers", "Worker processes online for the proc's queues, where the backend knows them.", ["proc"]
        ),
        "slots": gauge(
            "hirefire_worker_slots",
            "Concurrency of the proc's workers online in total: how many jobs they can run at once.",
            ["proc"],
        ),
        "slots_busy": gauge(
            "hirefire_worker_slots_busy", "Slots of the proc's workers running or holding a job.", ["proc"]
        ),
        "workers_busy": gauge(
            "hirefire_workers_busy",
            "The proc's workers with at least one busy slot: scaling below this stops a worker in the middle of a job.",
            ["proc"],
        ),
        "up": gauge("hirefire_proc_up", "1 if the proc's last collection succeeded, else 0.", ["proc"], False),
        "duration": gauge(
            "hirefire_proc_collect_duration_seconds", "How long the proc's last collection took.", ["proc"], False
        ),
        "age": gauge(
            "hirefire_proc_reading_age_seconds",
            "Age of the reading being served for the proc (0 when fresh, >0 when its broker could not be read).",
            ["proc"],
            False,
        ),
        "timestamp": gauge(
            "hirefire_collection_timestamp_seconds", "When the served snapshot was collected (unix time).", [], False
        ),
        "shared": gauge(
            "hirefire_snapshot_shared",
            "1 if the served snapshot was read from the shared store (another process collected it), 0 if this "
            "process collected it.",
            [],
            False,
        ),
    }


def render(snapshot: Snapshot, now: float) -> Iterator[GaugeMetricFamily]:
    """The metric families for one snapshot served at unix time ``now`` (which decides what is too stale to serve)."""
    f = _families()
    for status in snapshot.procs:
        proc = [status.name]
        f["up"].add_metric(proc, 1.0 if status.up else 0.0)
        f["duration"].add_metric(proc, status.duration)
        age = snapshot.reading_age(status)
        if age is not None:
            f["age"].add_metric(proc, age)
        reading = status.reading
        if reading is None or not snapshot.usable(status, now):
            continue
        f["proc_jobs"].add_metric(proc, reading.quantity)
        if reading.latency is not None:
            f["proc_latency"].add_metric(proc, reading.latency)
        for queue in reading.queues:
            for state, count in queue.jobs.items():
                f["queue_jobs"].add_metric([status.name, queue.name, state], count)
            if queue.latency is not None:
                f["queue_latency"].add_metric([status.name, queue.name], queue.latency)
            found = getattr(queue, "found", None)  # (a custom proc's duck-typed queues may not have it)
            if found is not None:
                f["queue_found"].add_metric([status.name, queue.name], 1.0 if found else 0.0)
        workers = reading.workers
        if workers is not None:
            f["workers"].add_metric(proc, workers.online)
            f["slots"].add_metric(proc, workers.slots)
            f["slots_busy"].add_metric(proc, workers.busy_slots)
            f["workers_busy"].add_metric(proc, workers.busy)
    f["timestamp"].add_metric([], snapshot.collected_at)
    f["shared"].add_metric([], 1.0 if snapshot.shared else 0.0)
    return iter(f.values())


class SnapshotCollector(Collector):
    """Register with a ``CollectorRegistry``; every scrape renders the collection's (cached) snapshot."""

    def __init__(self, collection: Collection) -> None:
        self.collection = collection

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(_families().values())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        return render(self.collection.snapshot(), self.collection.clock())


class _Fixed(Collector):
    """One snapshot served at one moment, as a collector: what prometheus_client's encoders take."""

    def __init__(self, snapshot: Snapshot, now: float) -> None:
        self.snapshot = snapshot
        self.now = now

    def collect(self) -> Iterator[GaugeMetricFamily]:
        return render(self.snapshot, self.now)


#: A snapshot's encoded part of a body: bytes, or (compressed bytes, the compressor to finish it with).
_Part = bytes | tuple[bytes, Any]


class Exposition:
    """The bodies ``/metrics`` serves.

    A snapshot is immutable and served to every scrape for ``max_age``, so its part of the exposition is encoded once
    per snapshot, content type and compression, not once per scrape (re-encoding 100 queues costs ~10 ms of CPU per
    scrape; a cached body costs tens of microseconds). Scrapes that arrive together on a new snapshot wait for one
    encoding of it instead of each repeating it (at 10,000 queues one encoding is ~0.5 s of CPU). What is served also
    depends on which procs are too stale to serve at the moment of the scrape, so that is part of what a body is kept
    for. ``live`` collectors, such as the exporter's own counters and the request queue-time histogram, change
    between snapshots and are encoded on every scrape; compressed, they are added to a copy of the compressor that
    holds the snapshot's part, so that the large part is never compressed twice.
    """

    def __init__(self, collection: Collection, live: Iterable[Collector] = ()) -> None:
        self.collection = collection
        self.live = CollectorRegistry(auto_describe=True)
        self.has_live = False
        for collector in live:
            self.live.register(collector)
            self.has_live = True
        self._lock = threading.Lock()  # one encoding at a time; a scrape finding its body cached never takes it
        self._encoded: tuple[Snapshot | None, tuple[bool, ...], dict[tuple[str, bool], _Part]] = (None, (), {})

    def body(self, accept: str, gzipped: bool) -> tuple[bytes, str]:
        """The body and its content type for a scrape's ``Accept`` header, gzip-compressed when ``gzipped``."""
        encoder, content_type = choose_encoder(accept)
        snapshot = self.collection.snapshot()
        now = self.collection.clock()
        mask = snapshot.usable_mask(now)
        key = (content_type, gzipped)
        part = self._cached(snapshot, mask).get(key)
        if part is None:
            with self._lock:
                parts = self._cached(snapshot, mask)
                part = parts.get(key)
                if part is None:
                    part = parts[key] = self._encode(encoder, snapshot, now, gzipped)
        if not self.has_live:
            return cast(bytes, part), content_type
        live = encoder(self.live)
        if not gzipped:
            return cast(bytes, part) + live, content_type
        head, compressor = cast(tuple[bytes, Any], part)
        compressor = compressor.copy()  # the snapshot part stays compressed once; only the live part is added
        return head + compressor.compress(live) + compressor.flush(), content_type

    def _encode(self, encoder: Callable[[Any], bytes], snapshot: Snapshot, now: float, gzipped: bool) -> _Part:
        """The snapshot's part of a body: bytes, or with live collectors and gzip, the compressed bytes so far and
        the compressor to finish each scrape's body with (one gzip member: any client can read it)."""
        body = encoder(_Fixed(snapshot, now))
        if self.has_live:
            body = body.removesuffix(b"# EOF\n")  # OpenMetrics ends once, at the end of the live part
        if not gzipped:
            return body
        compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip header and trailer
        head = compressor.compress(body)
        return (head, compressor) if self.has_live else head + compressor.flush()

    def _cached(self, snapshot: Snapshot, mask: tuple[bool, ...]) -> dict[tuple[str, bool], _Part]:
        """The bodies kept for this snapshot and staleness, starting afresh (in one assignment, safe for concurrent
        scrapes) when either changed."""
        held, held_mask, bodies = self._encoded
        if held is not snapshot or held_mask != mask:
            bodies = {}
            self._encoded = (snapshot, mask, bodies)
        return bodies
