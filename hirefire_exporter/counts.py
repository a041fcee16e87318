"""Thread-safe counts of what the exporter did, kept by the objects that do it and served by
:mod:`hirefire_exporter.selfmetrics` (this module imports nothing, so that procs and the collection can count)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

CYCLE_OUTCOMES = ("ok", "partial", "failed")
#: What a read of the shared store found: a snapshot of this configuration, nothing, something it ignored (another
#: schema or configuration, bad data), or no answer (the store is down, or left alone after failing).
SHARED_READ_RESULTS = ("snapshot", "none", "unreadable", "unreachable")
#: The key under which a cycle's ``cache`` (the dict every proc read gets) holds the collection's :class:`CycleCounts`.
COUNTS_KEY = "hirefire_exporter.counts"


class Counts:
    """Thread-safe counts by label values."""

    def __init__(self, *known: tuple[str, ...]) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, ...], int] = dict.fromkeys(known, 0)  # shown at 0 from the start

    def add(self, *labels: str) -> None:
        with self._lock:
            self._counts[labels] = self._counts.get(labels, 0) + 1

    def items(self) -> list[tuple[tuple[str, ...], int]]:
        with self._lock:
            return sorted(self._counts.items())


@dataclass
class CycleCounts:
    """A collection's counts: cycles by outcome, Celery inspect broadcasts by method."""

    cycles: Counts = field(default_factory=lambda: Counts(*((o,) for o in CYCLE_OUTCOMES)))
    inspect_broadcasts: Counts = field(default_factory=Counts)


def shared_read_counts() -> Counts:
    return Counts(*((result,) for result in SHARED_READ_RESULTS))
