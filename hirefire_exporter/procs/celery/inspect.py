"""Celery worker inspection (``app.control.inspect()``), broadcast at most once per method and cycle.

Each inspect method is a broadcast that waits for replies until ``limit`` workers answered or ``timeout`` passed. A
worker that misses the timeout (busy solo pool, overloaded, network) is simply absent from the replies, which Celery
turns into "no tasks": here, when the number of workers (or their names) is known, an incomplete answer raises
:class:`InspectIncomplete` so the proc fails visibly (the collection keeps serving the last good reading) instead of
reporting too few jobs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ...counts import COUNTS_KEY
from .routing import Binding

METHODS = ("active", "reserved", "scheduled")
_CACHE_KEY = "hirefire_exporter.celery.inspect"


class InspectIncomplete(RuntimeError):
    """Fewer workers answered an inspect broadcast than are known to exist."""


@dataclass(frozen=True)
class HeldTask:
    """A task a worker holds, as one inspect reply describes it."""

    exchange: str
    routing_key: str
    acknowledged: bool


class Sightings:
    """When each worker found in the broker was first seen and last answered a broadcast (monotonic clock).

    On Redis a worker killed without shutting down (SIGKILL, a crashed dyno) leaves its broadcast binding forever,
    and nothing tells it from a busy worker. One silent for longer than ``forget_after`` seconds (from when it was
    first seen if it never answered) is taken for gone, so that it stops failing every cycle; until then its
    silence fails the proc, so that a briefly busy worker never reads as holding no tasks.
    """

    def __init__(self, forget_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.forget_after = forget_after
        self.clock = clock
        self._lock = threading.Lock()
        self._first: dict[str, float] = {}
        self._replied: dict[str, float] = {}
        self._gone: set[str] = set()

    def sort(self, hostnames: Iterable[str]) -> tuple[set[str], list[str]]:
        """The workers still expected to answer, and those taken for gone since the last call (sorted, each reported
        once while it stays gone). Workers no longer in ``hostnames`` are forgotten."""
        now = self.clock()
        with self._lock:
            found = set(hostnames)
            for table in (self._first, self._replied):
                for hostname in table.keys() - found:
                    del table[hostname]
            for hostname in found:
                self._first.setdefault(hostname, now)
            gone = {h for h in found if now - self._replied.get(h, self._first[h]) > self.forget_after}
            newly_gone = sorted(gone - self._gone)
            self._gone = gone
        return found - gone, newly_gone

    def answered(self, hostnames: Iterable[str]) -> None:
        """Record answers (from workers seen in the broker: others have nothing to be forgotten for)."""
        now = self.clock()
        with self._lock:
            for hostname in hostnames:
                if hostname in self._first:
                    self._replied[hostname] = now
                    self._gone.discard(hostname)


class _Shared:
    """One broadcast's outcome, shared by every proc that asks for it in the same cycle."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None


def inspect_tasks(
    app: Any,
    methods: Iterable[str],
    cache: dict[str, Any],
    *,
    broker: str,
    timeout: float,
    expected: int | Collection[str] | None = None,
    at_least: int = 0,
    replied: Callable[[set[str]], None] | None = None,
) -> dict[str, list[HeldTask]]:
    """Tasks held by workers, per inspect method, broadcasting each method at most once per ``cache`` (cycle).

    ``expected`` is the number of workers, or their hostnames: it becomes the broadcast's ``limit`` (so the call
    returns as soon as everyone answered) and anything short of it raises :class:`InspectIncomplete`, as do fewer
    than ``at_least`` replies (a lower bound such as a queue's consumer count). The methods run concurrently, so the
    cost is one timeout at most, not one per method. ``replied`` is told the hostnames that answered (before the
    completeness check: a worker that answered an incomplete broadcast still answered).
    """
    methods = list(dict.fromkeys(methods))
    if not methods:
        return {}
    limit = expected if isinstance(expected, int) else (len(expected) if expected is not None else None)
    with ThreadPoolExecutor(max_workers=len(methods), thread_name_prefix="hirefire-inspect") as pool:
        futures = {
            m: pool.submit(_shared_broadcast, app, m, cache, broker=broker, timeout=timeout, limit=limit or None)
            for m in methods
        }
        replies = {m: f.result() for m, f in futures.items()}
    if replied is not None:
        replied({hostname for reply in replies.values() for hostname in reply})
    for method, reply in replies.items():
        _check_complete(method, reply, expected, timeout)
        if len(reply) < at_least:
            raise InspectIncomplete(
                f"inspect {method}: {len(reply)} workers answered within {timeout:g}s, but the queues have"
                f" {at_least} consumers (a busy worker would read as holding no tasks)"
            )
    return {method: list(_held(method, reply)) for method, reply in replies.items()}


def active_queues(app: Any, cache: dict[str, Any], *, broker: str, timeout: float, limit: int | None) -> list[Binding]:
    """The workers' queues as :class:`Binding` rows, from ``active_queues`` (one more broadcast, once per cycle)."""
    reply = _shared_broadcast(app, "active_queues", cache, broker=broker, timeout=timeout, limit=limit)
    bindings = []
    for queues in reply.values():
        for queue in queues or ():
            exchange = queue.get("exchange") or {}
            name = exchange.get("name") or ""
            bindings.append(
                Binding(name, exchange.get("type") or "direct", queue.get("routing_key") or "", queue["name"])
            )
    return bindings


def _shared_broadcast(app: Any, method: str, cache: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    shared = cache.setdefault((_CACHE_KEY, kwargs["broker"], method), _Shared())  # setdefault is atomic
    with shared.lock:
        if not shared.done:
            counts = cache.get(COUNTS_KEY)
            if counts is not None:
                counts.inspect_broadcasts.add(method)
            try:
                shared.value = _broadcast(app, method, kwargs["timeout"], kwargs["limit"])
            except Exception as exc:
                shared.error = exc
            shared.done = True
    if shared.error is not None:
        raise shared.error
    return shared.value


def _broadcast(app: Any, method: str, timeout: float, limit: int | None) -> dict[str, Any]:
    inspector = app.control.inspect(timeout=timeout, limit=limit)
    return getattr(inspector, method)() or {}


def _check_complete(method: str, reply: dict[str, Any], expected: int | Collection[str] | None, timeout: float) -> None:
    if expected is None or isinstance(expected, int):
        if expected is not None and len(reply) < expected:
            raise InspectIncomplete(
                f"inspect {method}: {len(reply)} of {expected} workers answered within {timeout:g}s"
                " (a busy worker would read as holding no tasks)"
            )
        return
    missing = sorted(set(expected) - set(reply))
    if missing:
        raise InspectIncomplete(
            f"inspect {method}: no answer within {timeout:g}s from {', '.join(missing)}"
            " (a busy worker would read as holding no tasks)"
        )


def _held(method: str, reply: dict[str, Any]) -> Iterable[HeldTask]:
    for tasks in reply.values():
        for task in tasks or ():
            request = task.get("request", task) if method == "scheduled" else task
            delivery = request.get("delivery_info") or {}
            yield HeldTask(
                delivery.get("exchange") or "",
                delivery.get("routing_key") or "",
                bool(request.get("acknowledged", method == "active")),
            )
