"""The collection cycle: measure every proc concurrently, keep one immutable Snapshot, share it.

This is the only place that decides caching and concurrency:

- a cycle reads every proc in parallel, each read bounded by ``timeout``. Procs that read the same Redis server are
  read together in one pipelined round trip (one task), every other proc is a task of its own;
- the resulting :class:`Snapshot` is served to every caller for ``max_age`` seconds; callers that arrive while a cycle
  runs wait for it instead of starting their own (single flight);
- a proc whose read fails keeps its last good reading, served while it is younger than ``stale_after`` and flagged by
  its age; after that the proc has no usable reading. A failure is never turned into 0;
- a read that is still hanging from an earlier cycle is not started again, so a stalled broker costs one thread, not
  one per cycle.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from .procs.base import Proc, ProcConfigError, Reading
from .procs.redis_proc import RedisProc, read_redis_procs, server_key
from .redaction import describe_error

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger("hirefire_exporter")


@dataclass(frozen=True)
class ProcStatus:
    """One proc in one snapshot: its latest good reading (possibly from an earlier cycle) and this cycle's outcome."""

    name: str
    metric: str
    reading: Reading | None
    read_at: float | None  # unix time the reading was taken
    up: bool  # this cycle's read succeeded
    error: str | None  # this cycle's failure, without secrets
    duration: float  # seconds this cycle's read took (the timeout, for a read that timed out)


@dataclass(frozen=True)
class Snapshot:
    """Everything one cycle measured. Immutable: renderers read it, nothing writes it."""

    collected_at: float  # unix time
    procs: tuple[ProcStatus, ...]
    stale_after: float

    def reading_age(self, status: ProcStatus) -> float | None:
        """Seconds between the cycle and the reading served for ``status`` (0 when fresh, None when none)."""
        return None if status.read_at is None else max(0.0, self.collected_at - status.read_at)

    def usable(self, status: ProcStatus) -> bool:
        """Whether ``status`` has a reading fit to act on: fresh, or stale but younger than ``stale_after``."""
        age = self.reading_age(status)
        return age is not None and age <= self.stale_after and self.value(status) is not None

    def value(self, status: ProcStatus) -> float | int | None:
        """What HireFire gets for the proc: its job count, or its oldest job's age for a latency proc."""
        reading = status.reading
        if reading is None:
            return None
        if status.metric == "latency":
            if reading.latency is None:
                return 0.0 if reading.quantity == 0 else None
            return round(reading.latency, 3)
        return reading.quantity

    @property
    def failed(self) -> list[ProcStatus]:
        """Procs with no usable reading: the ones ``/info`` must not report."""
        return [status for status in self.procs if not self.usable(status)]


class _Task:
    """A unit of concurrent work in a cycle: one proc read on its own, or all Redis procs on one server, read in one
    pipeline through ``client`` (decided once, when the collection is built)."""

    def __init__(self, procs: list[Proc], client: Redis | None = None) -> None:
        self.procs = procs
        self.client = client
        self.inflight: Future[dict[str, tuple[Reading | Exception, float]]] | None = None

    def run(self, cache: dict[str, Any], now: float) -> dict[str, tuple[Reading | Exception, float]]:
        start = time.perf_counter()
        if self.client is not None:
            redis_procs = cast("list[RedisProc]", self.procs)
            try:
                results: list[Reading | Exception] = read_redis_procs(self.client, redis_procs, now)
            except Exception as exc:  # the server is unreachable: every proc on it failed
                results = [exc] * len(redis_procs)
            elapsed = time.perf_counter() - start
            return {p.name: (_checked(p, r), elapsed) for p, r in zip(redis_procs, results)}
        (proc,) = self.procs
        try:
            result: Any = proc.read(cache)
        except Exception as exc:
            result = exc
        return {proc.name: (_checked(proc, result), time.perf_counter() - start)}


def _checked(proc: Proc, result: Any) -> Reading | Exception:
    """The reading, or why it is unfit to act on: a proc that returned something other than a Reading, or measured
    NaN, a negative count or a string fails (its last good reading is kept), instead of putting ``NaN`` in HireFire's
    JSON or turning every request into a 500. Never raises: whatever one proc returns must not sink the cycle."""
    if isinstance(result, Exception):
        return result
    if not isinstance(result, Reading):
        return TypeError(f"{type(proc).__name__}.read() returned {type(result).__name__}, not a Reading")
    try:
        problems = [] if _count(result.quantity) else [f"quantity {result.quantity!r}"]
        problems += [] if _age(result.latency) else [f"latency {result.latency!r}"]
        for queue in result.queues:
            problems += [f"queue {queue.name!r} {state} {n!r}" for state, n in queue.jobs.items() if not _count(n)]
            problems += [] if _age(queue.latency) else [f"queue {queue.name!r} latency {queue.latency!r}"]
    except Exception as exc:  # e.g. queues that are not QueueReadings
        return TypeError(f"{type(proc).__name__}.read() returned a malformed Reading: {describe_error(exc)}")
    if problems:
        return ValueError("not a count or an age in seconds: " + ", ".join(problems[:3]))
    return result


def _count(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < math.inf


def _age(value: object) -> bool:
    return value is None or _count(value)


def _plan(procs: Sequence[Proc]) -> list[_Task]:
    """One task per proc, except that procs reading the same Redis server share one task (and one pipeline)."""
    by_server: dict[Any, _Task] = {}
    tasks: list[_Task] = []
    for proc in procs:
        client = proc.redis_client() if isinstance(proc, RedisProc) else None
        if client is None:
            tasks.append(_Task([proc]))
            continue
        key = server_key(client)
        if key not in by_server:
            by_server[key] = _Task([], client)
            tasks.append(by_server[key])
        by_server[key].procs.append(proc)
    return tasks


class Collection:
    """Runs collection cycles over a fixed list of procs and caches the latest :class:`Snapshot`."""

    def __init__(
        self,
        procs: Sequence[Proc],
        *,
        max_age: float = 5.0,
        stale_after: float = 60.0,
        timeout: float = 3.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.procs = list(procs)
        names: set[str | None] = set()
        for proc in self.procs:
            proc.validate()  # cheap and I/O-free; load_procs() already did it for configured procs
            if proc.name in names:  # a cycle's outcomes and the last good readings are keyed by name
                raise ProcConfigError(f"two procs are named {proc.name!r}; each Procfile entry needs its own")
            names.add(proc.name)
        self.max_age = max_age
        self.stale_after = stale_after
        self.timeout = timeout
        self._clock = clock
        self._tasks = _plan(self.procs)
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        #: The latest snapshot and when (``time.monotonic()``) its cycle started, in one attribute so that the
        #: lock-free fast path of :meth:`snapshot` never pairs a snapshot with another one's time.
        self._cached: tuple[Snapshot, float] | None = None
        self.cycles = 0  # how many cycles ran: lets tests and benchmarks prove single flight
        self._missing_queues: set[tuple[str | None, str]] = set()  # (proc, queue) pairs warned about as not found

    @property
    def latest(self) -> Snapshot | None:
        """The latest snapshot without refreshing it (None before the first cycle)."""
        cached = self._cached
        return None if cached is None else cached[0]

    def snapshot(self) -> Snapshot:
        """The cached snapshot, refreshed by one cycle when older than ``max_age`` (concurrent callers share it)."""
        seen = self._cached
        if seen is not None and time.monotonic() - seen[1] < self.max_age:
            return seen[0]
        with self._lock:
            cached = self._cached
            # A cycle that ended while this caller waited for the lock is the one it asked for, even when that cycle
            # took longer than max_age: running another would queue one cycle per waiting caller.
            if cached is not None and (cached is not seen or time.monotonic() - cached[1] < self.max_age):
                return cached[0]
            return self._refresh()

    def collect(self) -> Snapshot:
        """Run one cycle now, whatever the cache holds."""
        with self._lock:
            return self._refresh()

    def close(self) -> None:
        """Stop the worker threads (reads still hanging on a stalled broker are abandoned). Waits for a cycle that
        is running; a later cycle starts new threads."""
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None

    def _refresh(self) -> Snapshot:
        started = time.monotonic()
        snapshot = self._cycle()
        self._cached = (snapshot, started)
        self.cycles += 1
        return snapshot

    def _cycle(self) -> Snapshot:
        now = self._clock()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=max(1, len(self._tasks)), thread_name_prefix="hirefire")
        cache: dict[str, Any] = {}  # the old API's cross-proc cache, fresh every cycle
        outcomes: dict[str, tuple[Reading | Exception, float]] = {}
        running: dict[Future[Any], _Task] = {}
        for task in self._tasks:
            if task.inflight is not None and not task.inflight.done():
                hung = TimeoutError(f"an earlier read is still running after {self.timeout:g}s")
                outcomes.update({p.name: (hung, self.timeout) for p in task.procs})
                continue
            task.inflight = self._executor.submit(task.run, cache, now)
            running[task.inflight] = task
        done, _ = wait(running, timeout=self.timeout)
        for future, task in running.items():
            if future in done:
                outcomes.update(future.result())
            else:
                late = TimeoutError(f"no answer within {self.timeout:g}s")
                outcomes.update({p.name: (late, self.timeout) for p in task.procs})
        return self._snapshot(now, outcomes)

    def _warn_missing(self, proc: str | None, reading: Reading) -> None:
        """Once per queue and process: a queue the broker has no trace of reads as 0 jobs, like an empty one."""
        for queue in reading.queues:
            if getattr(queue, "found", None) is False and (proc, queue.name) not in self._missing_queues:
                self._missing_queues.add((proc, queue.name))
                log.warning(
                    "proc %r: queue %r not found on the broker: it reads as 0 jobs (a typo in `queues`, or no job"
                    " was ever sent to it?)",
                    proc,
                    queue.name,
                )

    def _snapshot(self, now: float, outcomes: dict[str, tuple[Reading | Exception, float]]) -> Snapshot:
        latest = self.latest
        previous = {s.name: s for s in latest.procs} if latest else {}
        statuses = []
        for proc in self.procs:
            result, duration = outcomes[proc.name]
            before = previous.get(proc.name)
            if isinstance(result, Reading):
                if before is not None and not before.up:
                    log.info("proc %r: reading again", proc.name)
                self._warn_missing(proc.name, result)
                statuses.append(ProcStatus(proc.name, proc.metric, result, now, True, None, duration))
                continue
            error = describe_error(result)
            level = logging.WARNING if before is None or before.up else logging.DEBUG
            log.log(level, "proc %r: read failed: %s", proc.name, error)
            statuses.append(
                ProcStatus(
                    proc.name,
                    proc.metric,
                    before.reading if before else None,
                    before.read_at if before else None,
                    False,
                    error,
                    duration,
                )
            )
        return Snapshot(now, tuple(statuses), self.stale_after)
