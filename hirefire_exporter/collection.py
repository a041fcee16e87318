"""The collection cycle: measure every proc concurrently, keep one immutable Snapshot, serve it, share it.

This is the only place that decides caching and concurrency:

- a cycle reads every proc in parallel, each read bounded by ``timeout``. Procs that read the same Redis server are
  read together in one pipelined round trip (one task), every other proc is a task of its own;
- collecting is separate from serving. A request is answered from the latest :class:`Snapshot`. When that is older
  than ``max_age``, a refresh starts on a background thread (at most one in flight) and the request waits for it at
  most ``refresh_wait`` seconds before it is answered from what exists. Only a process that has never had a snapshot
  waits for its first cycle (up to ``timeout``). So a stalled broker never holds a request thread of the host app;
- with a shared store (``share``), processes that measure the same configuration elect one collector per
  ``max_age`` through Redis and the others serve its snapshot (see :mod:`hirefire_exporter.sharing`); a store that
  cannot be reached means collecting locally;
- a proc whose read fails keeps its last good reading, served while it is younger than ``stale_after``, judged at the
  moment it is served, and flagged by its age; after that the proc has no usable reading. A failure is never turned
  into 0;
- a read that is still hanging from an earlier cycle is not started again, so a stalled broker costs one thread, not
  one per cycle. Reads run on daemon threads: a hanging read never keeps the process from exiting.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from itertools import chain
from operator import attrgetter
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any, cast

from .counts import COUNTS_KEY, CycleCounts
from .discovery import assign_claims
from .procs.base import Proc, ProcConfigError, QueueReading, Reading
from .procs.redis_proc import RedisProc, batch_key, read_redis_procs
from .redaction import describe_error
from .settings_check import collection_options

if TYPE_CHECKING:
    from redis import Redis

    from .sharing import SharedSnapshots

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
    shared: bool = False  # read from the shared store rather than collected by this process (never serialized)

    def reading_age(self, status: ProcStatus) -> float | None:
        """Seconds between the cycle and the reading served for ``status`` (0 when fresh, None when none)."""
        return None if status.read_at is None else max(0.0, self.collected_at - status.read_at)

    def usable(self, status: ProcStatus, now: float) -> bool:
        """Whether ``status`` has a reading fit to act on at unix time ``now`` (when it is served): taken no more
        than ``stale_after`` seconds before ``now``."""
        return (
            status.read_at is not None and now - status.read_at <= self.stale_after and self.value(status) is not None
        )

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

    def failed(self, now: float) -> list[ProcStatus]:
        """Procs with no usable reading at ``now``: the ones ``/info`` must not report."""
        return [status for status in self.procs if not self.usable(status, now)]

    def usable_mask(self, now: float) -> tuple[bool, ...]:
        """Which procs are usable at ``now``, in order: what decides whether a rendering of this snapshot changed."""
        return tuple(self.usable(status, now) for status in self.procs)


class _Task:
    """A unit of concurrent work in a cycle: one proc read on its own, or all Redis procs on one server, read in one
    pipeline through ``client`` (decided once, when the collection is built)."""

    def __init__(self, procs: list[Proc], client: Redis | None = None) -> None:
        self.procs = procs
        self.client = client
        self.running = False  # a read of this task is on a thread (possibly still hanging from an earlier cycle)

    def run(self, cache: dict[str, Any], now: float) -> dict[str, tuple[Reading | Exception, float]]:
        start = time.perf_counter()
        failed = {p.name: exc for p in self.procs if (exc := _refresh_queues(p, now)) is not None}
        if self.client is not None:
            redis_procs = cast("list[RedisProc]", [p for p in self.procs if p.name not in failed])
            try:
                results: list[Reading | Exception] = read_redis_procs(self.client, redis_procs, now)
            except Exception as exc:  # the server is unreachable: every proc on it failed
                results = [exc] * len(redis_procs)
            elapsed = time.perf_counter() - start
            outcomes = {p.name: (_checked(p, r), elapsed) for p, r in zip(redis_procs, results)}
            return {**outcomes, **{name: (exc, elapsed) for name, exc in failed.items()}}
        (proc,) = self.procs
        try:
            result: Any = failed.get(proc.name) or proc.read(cache)
        except Exception as exc:
            result = exc
        return {proc.name: (_checked(proc, result), time.perf_counter() - start)}


def _arrive(arrived: SimpleQueue[Any], task: _Task, outcome: dict[str, tuple[Reading | Exception, float]]) -> None:
    arrived.put((task, outcome))


def _refresh_queues(proc: Proc, now: float) -> Exception | None:
    """Discover the proc's queues when due (:meth:`Proc.refresh_queues`); why that failed, if it did."""
    try:
        proc.refresh_queues(now)
    except Exception as exc:
        return exc
    return None


def _checked(proc: Proc, result: Any) -> Reading | Exception:
    """The reading, or why it is unfit to act on: a proc that returned something other than a Reading, or measured
    NaN, a negative count or a string, or workers that cannot be (more busy than online) fails (its last good reading
    is kept), instead of putting ``NaN`` in HireFire's JSON or turning every request into a 500. Never raises:
    whatever one proc returns must not sink the cycle."""
    if isinstance(result, Exception):
        return result
    if not isinstance(result, Reading):
        return TypeError(f"{type(proc).__name__}.read() returned {type(result).__name__}, not a Reading")
    try:
        problems = [] if _count(result.quantity) else [f"quantity {result.quantity!r}"]
        problems += [] if _age(result.latency) else [f"latency {result.latency!r}"]
        if not _plain_queues(result.queues):  # the queue or queues at fault, named
            for queue in result.queues:
                jobs, latency = queue.jobs, queue.latency
                problems += [f"queue {queue.name!r} {state} {n!r}" for state, n in jobs.items() if not _count(n)]
                if latency is not None and not _age(latency):
                    problems.append(f"queue {queue.name!r} latency {latency!r}")
        workers = result.workers
        if workers is not None:
            counts = {key: getattr(workers, key) for key in ("online", "slots", "busy_slots", "busy")}
            problems += [f"workers {key} {n!r}" for key, n in counts.items() if not _count(n)]
    except Exception as exc:  # e.g. queues that are not QueueReadings
        return TypeError(f"{type(proc).__name__}.read() returned a malformed Reading: {describe_error(exc)}")
    if problems:
        return ValueError("not a count or an age in seconds: " + ", ".join(problems[:3]))
    if workers is not None and (workers.busy > workers.online or workers.busy_slots > workers.slots):
        return ValueError(f"impossible workers: {workers!r} (more busy than there are)")
    return result


_LATENCY = attrgetter("latency")


def _plain_queues(queues: Sequence[QueueReading]) -> bool:
    """Whether every queue holds plain non-negative ints and a finite non-negative float latency or None: what the
    backends shipped here return. Checked over all queues at once (at 10,000 queues a check per value would cost
    milliseconds a cycle); anything else is checked value by value, to name what is wrong."""
    counts = list(chain.from_iterable([queue.jobs.values() for queue in queues]))
    if counts and (not set(map(type, counts)) <= {int} or min(counts) < 0):
        return False
    latencies = list(map(_LATENCY, queues))
    if not set(map(type, latencies)) <= {float, type(None)}:
        return False
    ages = list(filter(None, latencies))  # floats but 0.0
    return not ages or (min(ages) > 0 and math.isfinite(sum(ages)))


def _count(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < math.inf


def _age(value: object) -> bool:
    return value is None or _count(value)


def _plan(procs: Sequence[Proc]) -> list[_Task]:
    """One task per proc, except that procs reading the same Redis server through clients that may read for one
    another (:func:`~hirefire_exporter.procs.redis_proc.batch_key`) share one task (and one round trip)."""
    by_server: dict[Any, _Task] = {}
    tasks: list[_Task] = []
    for proc in procs:
        client = proc.redis_client() if isinstance(proc, RedisProc) else None
        if client is None:
            tasks.append(_Task([proc]))
            continue
        key = batch_key(client)
        if key not in by_server:
            by_server[key] = _Task([], client)
            tasks.append(by_server[key])
        by_server[key].procs.append(proc)
    return tasks


class _Pool:
    """Daemon threads that run the reads, started as needed and reused from cycle to cycle.

    Not a ThreadPoolExecutor: its threads are joined when the interpreter exits, so one read blocked on a stalled
    broker's socket would keep a process from stopping after SIGTERM. A daemon thread ends with the process.
    """

    def __init__(self) -> None:
        self._jobs: SimpleQueue[tuple[Callable[[], Any], Callable[[Any], None]]] = SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a job that no submit() has claimed yet

    def submit(self, job: Callable[[], Any], then: Callable[[Any], None]) -> None:
        """Run ``job`` (which must not raise) on a pool thread, then hand its result to ``then``."""
        with self._lock:
            if self._idle:
                self._idle -= 1
            else:
                threading.Thread(target=self._work, name="hirefire-read", daemon=True).start()
        self._jobs.put((job, then))

    def _work(self) -> None:
        while True:
            job, then = self._jobs.get()
            result = job()
            with self._lock:  # idle before the result is handed on: the next cycle, started on it, reuses this thread
                self._idle += 1
            then(result)


#: While a cycle waits for slow brokers, the readings that already arrived are served at most this many seconds
#: later: a stalled broker delays only its own procs' readings.
_PUBLISH_EVERY = 0.1

#: Seconds a process without any snapshot waits beyond ``timeout`` for its first cycle (thread start, a shared
#: store's answer) before it answers with "no reading yet".
_FIRST_CYCLE_SLACK = 2.0


class Collection:
    """Runs collection cycles over a fixed list of procs, off the request threads, and serves the latest
    :class:`Snapshot`."""

    def __init__(
        self,
        procs: Sequence[Proc],
        *,
        max_age: float = 5.0,
        stale_after: float = 60.0,
        timeout: float = 3.0,
        refresh_wait: float = 0.25,
        share: SharedSnapshots | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.procs = list(procs)
        names: set[str | None] = set()
        for proc in self.procs:
            proc.validate()  # cheap and I/O-free; load_procs() already did it for configured procs
            if proc.name in names:  # a cycle's outcomes and the last good readings are keyed by name
                raise ProcConfigError(f"two procs are named {proc.name!r}; each Procfile entry needs its own")
            names.add(proc.name)
        assign_claims(self.procs)  # a discovered queue is measured by one proc only
        collection_options(max_age=max_age, stale_after=stale_after, timeout=timeout, refresh_wait=refresh_wait)
        self.max_age = max_age
        self.stale_after = stale_after
        self.timeout = timeout
        self.refresh_wait = refresh_wait
        self.share = share
        self.clock = clock
        self._tasks = _plan(self.procs)
        self._pool = _Pool()
        self._cycle_lock = threading.Lock()  # one cycle at a time in this process
        self._refresh_lock = threading.Lock()  # guards _refreshing
        self._refreshing: tuple[threading.Event, float] | None = None  # the refresh in flight: end, start
        #: The latest snapshot and when (``time.monotonic()``) it was taken, in one attribute so that the lock-free
        #: fast path of :meth:`snapshot` never pairs a snapshot with another one's time.
        self._cached: tuple[Snapshot, float] | None = None
        self.cycles = 0  # cycles this process ran: lets tests and benchmarks prove single flight and sharing
        self.counts = CycleCounts()  # cycles by outcome, inspect broadcasts (hirefire_exporter_* self-metrics)
        self._missing_queues: set[tuple[str | None, str]] = set()  # (proc, queue) pairs warned about as not found

    @property
    def latest(self) -> Snapshot | None:
        """The latest snapshot without refreshing it (None before the first cycle)."""
        cached = self._cached
        return None if cached is None else cached[0]

    def snapshot(self) -> Snapshot:
        """The snapshot to serve now. When it is older than ``max_age`` a background refresh is started (one at a
        time), and the request waits for it until ``refresh_wait`` seconds after that refresh started: a refresh
        that is already slow holds nobody. Only with no snapshot at all is the first cycle waited for, up to
        ``timeout`` (and a placeholder with no readings is served if even that runs out)."""
        cached = self._cached
        if cached is not None and time.monotonic() - cached[1] < self.max_age:
            return cached[0]
        done, started = self._start_refresh()
        wait = self.refresh_wait if cached is not None else self.timeout + _FIRST_CYCLE_SLACK
        done.wait(max(0.0, started + wait - time.monotonic()))
        latest = self._cached
        return latest[0] if latest is not None else self._no_reading_yet()

    def refresh_in_background(self) -> None:
        """Start a refresh when the latest snapshot is older than ``max_age`` (or there is none) and none is running,
        without waiting for it: a server's first cycle at start-up, and what a not-ready ``/readyz`` asks for."""
        cached = self._cached
        if cached is None or time.monotonic() - cached[1] >= self.max_age:
            self._start_refresh()

    def collect(self) -> Snapshot:
        """Run one cycle now, on the calling thread, whatever the cache and the shared store hold."""
        with self._cycle_lock:
            return self._store(self._cycle())

    def close(self) -> None:
        """Release the shared store's connections. Reads still hanging on a stalled broker are abandoned (their
        daemon threads end with the process)."""
        if self.share is not None:
            self.share.close()

    def _start_refresh(self) -> tuple[threading.Event, float]:
        """The refresh in flight (started now if there is none): its end, and when (monotonic) it started."""
        with self._refresh_lock:
            if self._refreshing is None:
                done = threading.Event()
                self._refreshing = (done, time.monotonic())
                threading.Thread(
                    target=self._background_refresh, args=(done,), name="hirefire-refresh", daemon=True
                ).start()
            return self._refreshing

    def _background_refresh(self, done: threading.Event) -> None:
        try:
            with self._cycle_lock:
                self._refresh()
        except Exception:  # a bug, never a broker failure (those are outcomes): keep serving what exists
            log.exception("hirefire-exporter: refresh failed")
        finally:
            with self._refresh_lock:
                self._refreshing = None
            done.set()

    def _refresh(self) -> None:
        share = self.share
        if share is None:
            self._store(self._cycle())
            return
        shared = share.fetch()
        if shared is not None and self.clock() - shared.collected_at < self.max_age:
            self._adopt(shared)
        elif share.acquire():  # this process collects for everyone (or the store is down: for itself)
            try:
                share.publish(self._store(self._cycle()))
            finally:
                share.release()
        elif shared is not None:  # another process is collecting: serve what it last published meanwhile
            self._adopt(shared)
        elif self.latest is None:  # a fleet's first cycle, collected elsewhere: wait for it as a first request would
            published = share.await_published(self.timeout + _FIRST_CYCLE_SLACK)
            if published is not None:
                self._adopt(published)

    def _adopt(self, shared: Snapshot) -> None:
        """Serve a snapshot another process collected, cached for what is left of its ``max_age``."""
        latest = self.latest
        if latest is not None and latest.collected_at >= shared.collected_at:
            return
        age = max(0.0, self.clock() - shared.collected_at)
        self._cached = (replace(shared, shared=True), time.monotonic() - age)

    def _store(self, snapshot: Snapshot) -> Snapshot:
        self._cached = (snapshot, time.monotonic() - max(0.0, self.clock() - snapshot.collected_at))
        self.cycles += 1
        read = sum(status.up for status in snapshot.procs)
        outcome = "ok" if read == len(snapshot.procs) else "failed" if read == 0 else "partial"
        self.counts.cycles.add(outcome)
        return snapshot

    def _no_reading_yet(self) -> Snapshot:
        error = f"the first collection did not finish within {self.timeout:g}s"
        statuses = (ProcStatus(p.name, p.metric, None, None, False, error, self.timeout) for p in self.procs)
        return Snapshot(self.clock(), tuple(statuses), self.stale_after)

    def _cycle(self) -> Snapshot:
        """Read every task concurrently for at most ``timeout`` seconds. Readings that arrive while slower tasks are
        still out are served at once (every ``_PUBLISH_EVERY`` seconds) rather than at the end of the cycle."""
        now = self.clock()
        started = time.monotonic()
        previous = self.latest
        cache: dict[str, Any] = {COUNTS_KEY: self.counts}  # the old API's cross-proc cache, fresh every cycle
        outcomes: dict[str, tuple[Reading | Exception, float]] = {}
        arrived: SimpleQueue[tuple[_Task, dict[str, tuple[Reading | Exception, float]]]] = SimpleQueue()
        pending: set[_Task] = set()
        for task in self._tasks:
            if task.running:
                hung = TimeoutError(f"an earlier read is still running after {self.timeout:g}s")
                outcomes.update({p.name: (hung, self.timeout) for p in task.procs})
                continue
            task.running = True
            pending.add(task)
            self._pool.submit(partial(self._run, task, cache, now), partial(_arrive, arrived, task))
        published = started
        while pending:
            try:
                task, outcome = arrived.get(timeout=max(0.0, started + self.timeout - time.monotonic()))
            except Empty:
                break
            pending.discard(task)
            outcomes.update(outcome)
            if pending and time.monotonic() - published >= _PUBLISH_EVERY:
                self._cached = (self._snapshot(now, outcomes, previous, final=False), started)
                published = time.monotonic()
        for task in pending:
            late = TimeoutError(f"no answer within {self.timeout:g}s")
            outcomes.update({p.name: (late, self.timeout) for p in task.procs})
        return self._snapshot(now, outcomes, previous, final=True)

    @staticmethod
    def _run(task: _Task, cache: dict[str, Any], now: float) -> dict[str, tuple[Reading | Exception, float]]:
        try:
            return task.run(cache, now)
        except Exception as exc:  # a bug: the task's procs fail with it, the cycle and the pool thread go on
            return {p.name: (exc, 0.0) for p in task.procs}
        finally:
            task.running = False

    def _warn_missing(self, proc: Proc, reading: Reading) -> None:
        """Once per named queue and process: a queue the broker has no trace of reads as 0 jobs, like an empty one
        (a discovered queue that went, kept for a while, is no typo)."""
        named = None
        for queue in reading.queues:
            if getattr(queue, "found", None) is False and (proc.name, queue.name) not in self._missing_queues:
                named = set(proc.named_queues()) if named is None else named
                if queue.name not in named:
                    continue
                self._missing_queues.add((proc.name, queue.name))
                log.warning(
                    "proc %r: queue %r not found on the broker: it reads as 0 jobs (a typo in `queues`, the wrong"
                    " database or key prefix, or no job was ever sent to it?)",
                    proc.name,
                    queue.name,
                )

    def _snapshot(
        self,
        now: float,
        outcomes: dict[str, tuple[Reading | Exception, float]],
        previous: Snapshot | None,
        *,
        final: bool,
    ) -> Snapshot:
        """The snapshot of a cycle that started at ``now``: each proc's outcome, its last good reading kept when it
        failed, and (while the cycle is not ``final``) its previous status when its read has not answered yet."""
        before_by_name = {s.name: s for s in previous.procs} if previous else {}
        statuses = []
        for proc in self.procs:
            before = before_by_name.get(proc.name)
            if proc.name not in outcomes:  # still reading (only before the cycle is final)
                statuses.append(before or ProcStatus(proc.name, proc.metric, None, None, False, "reading", 0.0))
                continue
            result, duration = outcomes[proc.name]
            if isinstance(result, Reading):
                if final and before is not None and not before.up:
                    log.info("proc %r: reading again", proc.name)
                self._warn_missing(proc, result)
                statuses.append(ProcStatus(proc.name, proc.metric, result, now, True, None, duration))
                continue
            error = describe_error(result)
            if final:
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
