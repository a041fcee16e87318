"""The Proc API: what one Procfile process type measures.

Compatible with the old ``hirefire`` package: a ``Proc`` subclass names a Procfile entry (``name``) and the queues its
workers consume (``queues``). Old-style procs implement ``quantity(**kwargs)`` and nothing else; the backends shipped
here implement ``read(cache)``, which returns a :class:`Reading` with a per-queue breakdown by job state.
"""

from __future__ import annotations

import inspect
import logging
import re
import time
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..discovery import KEEP_FOR, Discovery, DiscoveryPending, escaped, is_pattern, queue_name, readable_names
from ..redaction import scrub
from ..settings_check import Choice, Seconds, refuse_unknown

log = logging.getLogger("hirefire_exporter")

#: Heroku process type names: letters, digits, dashes and underscores.
PROC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # use fullmatch: '$' would let "worker\n" through

METRICS = ("size", "latency")


def _is_method(cls: type, key: str) -> bool:
    """Whether ``key`` is behaviour (a method or property), which keyword options must not replace."""
    return inspect.isroutine(getattr(cls, key)) or isinstance(inspect.getattr_static(cls, key), property)


class ProcConfigError(ValueError):
    """A proc is misconfigured. Raised at start-up, with the proc's name or dotted path in the message, which is
    scrubbed of every known secret (see :mod:`hirefire_exporter.redaction`)."""

    def __init__(self, message: object = "") -> None:
        super().__init__(scrub(str(message)))


@dataclass(frozen=True)
class QueueReading:
    """One queue, as measured in one cycle.

    ``jobs`` maps a job state (``queued``, ``started``, ``scheduled``, ...) to a count. ``counted`` lists the states
    that count towards the proc's total (jobs that need a worker now or are on one). ``latency`` is the age in seconds
    of the oldest waiting job, ``None`` where the backend cannot tell, ``0.0`` for an empty queue. ``found`` says
    whether the queue exists on the broker: ``False`` for a queue the broker has no trace of (never used, or a typo
    in ``queues``), which then reads as 0 jobs like an empty one; ``None`` where the backend cannot tell.
    """

    name: str
    jobs: Mapping[str, int]
    counted: frozenset[str] = frozenset({"queued"})
    latency: float | None = None
    found: bool | None = None

    @classmethod
    def of(
        cls, name: str, jobs: Mapping[str, int], counted: frozenset[str], latency: float | None, found: bool | None
    ) -> QueueReading:
        """``QueueReading(name, jobs, counted, latency, found)`` at half the cost, for backends that make one per queue
        per cycle: a frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``."""
        reading = object.__new__(cls)
        reading.__dict__.update(name=name, jobs=jobs, counted=counted, latency=latency, found=found)
        return reading

    @property
    def quantity(self) -> int:
        jobs, total = self.jobs, 0
        for state in self.counted:  # a plain loop: a proc of 10,000 queues sums this every cycle
            total += jobs.get(state, 0)
        return total


@dataclass(frozen=True)
class Workers:
    """The workers serving one proc's queues, where the backend can know them (RQ's worker registry, the worker-side
    tracker for Celery and Huey).

    ``online``: worker processes alive now; ``slots``: their concurrency in total (tasks they can run at once);
    ``busy_slots``: slots running or holding a task; ``busy``: workers with at least one busy slot (the floor under
    which scaling down stops a worker in the middle of a job).
    """

    online: int
    slots: int
    busy_slots: int
    busy: int


@dataclass(frozen=True)
class Reading:
    """What one proc measured in one cycle: its total (what HireFire gets), where known a per-queue breakdown, and
    where the backend can know them its workers."""

    quantity: int
    queues: tuple[QueueReading, ...] = ()
    latency: float | None = None
    workers: Workers | None = None

    @classmethod
    def from_queues(cls, queues: Iterable[QueueReading]) -> Reading:
        """The proc's total and latency from its queues. The latency is unknown when any queue's is: an empty queue's
        0.0 must not stand in for a queue whose oldest job's age could not be read."""
        queues = tuple(queues)
        latencies = [q.latency for q in queues]
        return cls(
            quantity=sum(q.quantity for q in queues),
            queues=queues,
            latency=None if not latencies or None in latencies else max(latencies),
        )


class Proc:
    """The base proc. Subclass it declaratively or instantiate it with keyword arguments.

    Custom procs implement ``quantity(**kwargs)`` (the old API: return the number of jobs) or ``read(cache)``
    (return a :class:`Reading`). ``kwargs`` always carries ``cache``, a dict shared by all procs in one cycle.
    Any class attribute can be overridden per instance: ``RQProc('worker', queues=['default'], connection=redis)``.
    """

    #: The Procfile process type this proc measures (required).
    name: str | None = None
    #: The queues its workers consume (required; a backend may have a default): names, and patterns such as ``"*"``
    #: or ``"reports-*"`` that the backend discovers on the broker (:mod:`hirefire_exporter.discovery`). On an
    #: instance, the names measured now: the named ones, then the discovered ones.
    queues: list[str] | tuple[str, ...] | str | None = None
    #: Seconds between two discoveries of the queues matching patterns in ``queues`` (0: every cycle).
    discover_every: float = 60.0
    #: ``size``: HireFire gets the job count; ``latency``: the oldest waiting job's age in seconds
    #: (HireFire's job-latency manager).
    metric: str = "size"
    #: Whether the backend can measure the oldest waiting job's age (required for ``metric = "latency"``).
    supports_latency: ClassVar[bool] = False
    #: Option name -> its kind (:mod:`hirefire_exporter.settings_check`), checked by :meth:`validate`. Each class
    #: declares its own options' kinds; subclasses add to their bases'.
    option_checks: ClassVar[Mapping[str, Any]] = {"metric": Choice(METRICS), "discover_every": Seconds()}

    _discovery: Discovery | None = None
    #: The names ``queues`` named: escaped ones (``a[*]b`` as ``a*b``) are not patterns when ``queues`` is split again.
    _names: frozenset[str] = frozenset()

    def __init__(self, name: str | None = None, queues: Iterable[str] | str | None = None, **options: Any) -> None:
        cls = type(self)
        if name is not None:
            self.name = name
        queues = cls.queues if queues is None else queues
        try:
            if isinstance(queues, Mapping):
                raise TypeError
            self.queues = [queues] if isinstance(queues, str) else list(queues or ())
        except TypeError:
            raise ProcConfigError(
                f"{cls.__name__}(name={self.name!r}): queues must be a list of queue names, got {queues!r}"
            ) from None
        known = cls.option_names()
        refuse_unknown(options, known, f"{cls.__name__}(name={self.name!r}): ")
        for key, value in options.items():
            setattr(self, key, value)
        self._split_patterns()

    @classmethod
    def option_names(cls) -> frozenset[str]:
        """The keyword options an instance takes: its public class attributes that are not behaviour."""
        names = {"name", "queues"} | {key for key in dir(cls) if not key.startswith("_") and not _is_method(cls, key)}
        return frozenset(names - {"option_checks", "supports_latency"})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, queues={self.configured_queues()!r})"

    def validate(self) -> None:
        """Check the configuration without any I/O. Raises :class:`ProcConfigError` naming the proc."""
        label = f"{type(self).__name__}(name={self.name!r})"
        if not isinstance(self.name, str) or not PROC_NAME.fullmatch(self.name):
            raise ProcConfigError(
                f"{label}: the name must be a Procfile process type (letters, digits, '-' and '_'), got {self.name!r}"
            )
        self._split_patterns()
        if not (self.queues or self._discovery):
            raise ProcConfigError(f"proc {self.name!r}: needs at least one queue name or pattern, got none")
        if bad := [q for q in self.queues if not (isinstance(q, str) and q)]:
            raise ProcConfigError(
                f"proc {self.name!r}: each entry of queues must be a queue name or pattern (text), got {bad[0]!r}"
            )
        checks: dict[str, Any] = {}
        for klass in reversed(type(self).__mro__):
            checks.update(vars(klass).get("option_checks", {}))
        for key, kind in checks.items():
            kind.check(getattr(self, key), f"proc {self.name!r}: {key}")
        if self.metric == "latency" and not self.supports_latency:
            raise ProcConfigError(f"proc {self.name!r}: {type(self).__name__} cannot measure job latency")
        cls = type(self)
        if cls.read is Proc.read and cls.quantity is Proc.quantity:
            raise ProcConfigError(f"proc {self.name!r}: {cls.__name__} must implement quantity() or read()")
        if self._discovery is not None and (problem := self.discovery_problem()):
            shown = ", ".join(map(repr, self._discovery.patterns))
            raise ProcConfigError(f"proc {self.name!r}: queues {shown}: {problem}")
        self._measure_each_once()

    def _measure_each_once(self) -> None:
        """Keep the first of names the broker stores as one (Huey's ``my-app`` and ``myapp``): measured twice, a
        queue would count twice, and ``/metrics`` would repeat its series (which Prometheus refuses)."""
        first: dict[str, str] = {}
        twice = []
        for queue in self.queues:
            stored = self.stored_name(queue)
            if stored in first:
                twice.append(queue)
            else:
                first[stored] = queue
        if twice:
            log.warning("proc %r: queues %s name queues named before: each is measured once", self.name, twice)
            self.queues = list(first.values())

    # Queue discovery (see hirefire_exporter.discovery)

    def _split_patterns(self) -> None:
        """Move the patterns of ``queues`` into the proc's discovery state: ``queues`` keeps the names it measures (an
        escaped entry such as ``a[*]b`` as the name it stands for)."""
        if isinstance(self.queues, str):
            self.queues = [self.queues]
        # discovered and escaped names are names, whatever they hold
        known = self._names | set(self._discovery.found if self._discovery else ())
        patterns, names, spelled = [], [], set()
        for q in self.queues:
            if not isinstance(q, str) or q in known:
                names.append(q)
            elif is_pattern(q):
                patterns.append(q)
            else:
                names.append(queue_name(q))
                spelled.add(names[-1])
        self._names = self._names | spelled
        if names != self.queues:
            self.queues = names
        if patterns:
            known_patterns = self._discovery.patterns if self._discovery else ()
            self._discovery = Discovery(tuple(dict.fromkeys((*known_patterns, *patterns))))

    @property
    def discovery(self) -> Discovery | None:
        """The discovery state of a proc with patterns in ``queues``; None for a proc that names all its queues."""
        return self._discovery

    def named_queues(self) -> list[str]:
        """The queues named in ``queues`` (not discovered ones)."""
        found = set(self._discovery.found) if self._discovery else set()
        return [q for q in self.queues if q not in found]

    def configured_queues(self) -> list[str]:
        """``queues`` as configured: the names (escaped where they hold pattern characters), then the patterns."""
        return [*map(escaped, self.named_queues()), *(self._discovery.patterns if self._discovery else ())]

    def stored_name(self, queue: str) -> str:
        """How the broker stores the name of ``queue``, as :meth:`discover_queues` finds it (Huey cleans names)."""
        return queue

    def stored_pattern(self, pattern: str) -> str:
        """A pattern of ``queues`` as it matches the names :meth:`discover_queues` finds (:meth:`stored_name`)."""
        return pattern

    def empty_queues_vanish(self) -> bool:
        """Whether the broker keeps no trace of a queue that is empty (its keys are all it has of it): a discovered
        queue is then kept for :data:`~hirefire_exporter.discovery.KEEP_FOR` after it was last seen."""
        return False

    def held_queues(self) -> Iterable[str]:
        """Queues that hold work the broker's own keys may not show, to discover with :meth:`discover_queues`'s (a
        worker-side tracker's registrations: a Huey queue whose only task runs has no key left). I/O."""
        return ()

    def discover_queues(self) -> Iterable[str] | None:
        """Every queue the broker knows for this backend (I/O; names, whether or not they match the patterns), or
        None while a pass spread over several cycles goes on (:class:`hirefire_exporter.discovery.KeyScan`).
        Backends that can discover their queues override it (and :meth:`queue_scope` when the class and Redis server
        do not say where the names live)."""
        raise NotImplementedError

    def discovery_problem(self) -> str | None:
        """Why this proc cannot discover queues, as the end of a one-line start-up error; None when it can. Does no
        I/O."""
        if type(self).discover_queues is Proc.discover_queues:
            return f"{type(self).__name__} cannot discover queues: name them"
        return None

    def queue_scope(self) -> Hashable:
        """Where this proc's queue names live: procs with equal scopes name the same queues alike, and a discovered
        queue is measured by one of them only. By default the backend (the class that discovers)."""
        return next((klass for klass in type(self).__mro__ if "discover_queues" in vars(klass)), type(self))

    def refresh_queues(self, now: float | None = None) -> None:
        """Discover the queues matching the proc's patterns, when ``discover_every`` seconds have passed since the
        last complete discovery (at once the first time); ``now`` is the cycle's unix time. Raises when discovery
        fails: the proc's read fails with it, and the next cycle tries again."""
        self._split_patterns()
        discovery = self._discovery
        now = time.time() if now is None else now
        if discovery is None or not discovery.due(self.discover_every, now):
            return
        found = self.discover_queues()
        if found is None:  # a pass spread over cycles, not finished: the last list stays
            if discovery.done_at is None:
                raise DiscoveryPending("discovering queues: no complete list of the broker's queues yet")
            return
        found, unreadable = readable_names({*found, *self.held_queues()})
        if unreadable and not discovery.unreadable_warned:
            discovery.unreadable_warned = True
            log.warning(
                "proc %r: %d queue name(s) on the broker are not UTF-8 text: left out (no library of ours can have"
                " made them)",
                self.name,
                unreadable,
            )
        named = self.named_queues()
        matchers = [self.stored_pattern(p) for p in discovery.patterns]
        keep_for = KEEP_FOR if self.empty_queues_vanish() else 0.0
        mine, idle = discovery.select(found, [self.stored_name(q) for q in named], now, matchers, keep_for)
        self.queues = [*named, *mine]
        discovery.found = tuple(mine)
        discovery.done_at = now
        for pattern in idle:
            if pattern not in discovery.idle_warned:
                discovery.idle_warned.add(pattern)
                log.warning(
                    "proc %r: queues %r matches no queue on the broker (other than queues other procs measure): it"
                    " reads as 0 jobs until one appears",
                    self.name,
                    pattern,
                )

    def read(self, cache: dict[str, Any]) -> Reading:
        """Measure the proc's queues. The default wraps an old-style ``quantity()``: a total with no breakdown."""
        return Reading(quantity=int(self.quantity(cache=cache)))

    def quantity(self, **kwargs: Any) -> int:
        """Return the number of jobs for this proc (the old API). Backends derive it from :meth:`read`."""
        self.refresh_queues()
        return self.read(kwargs.get("cache", {})).quantity


class ClientProc(Proc):
    """A proc that builds one client per queue with :meth:`client` (the old API)."""

    def client(self, queue: str) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement client(queue)")

    @property
    def clients(self) -> list[Any]:
        return [self.client(queue) for queue in self.queues]
