"""The Proc API: what one Procfile process type measures.

Compatible with the old ``hirefire`` package: a ``Proc`` subclass names a Procfile entry (``name``) and the queues its
workers consume (``queues``). Old-style procs implement ``quantity(**kwargs)`` and nothing else; the backends shipped
here implement ``read(cache)``, which returns a :class:`Reading` with a per-queue breakdown by job state.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..redaction import scrub
from ..settings_check import Choice, refuse_unknown

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

    @property
    def quantity(self) -> int:
        return sum(count for state, count in self.jobs.items() if state in self.counted)


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
    #: The queues its workers consume (required; a backend may have a default).
    queues: list[str] | tuple[str, ...] | str | None = None
    #: ``size``: HireFire gets the job count; ``latency``: the oldest waiting job's age in seconds
    #: (HireFire's job-latency manager).
    metric: str = "size"
    #: Whether the backend can measure the oldest waiting job's age (required for ``metric = "latency"``).
    supports_latency: ClassVar[bool] = False
    #: Option name -> its kind (:mod:`hirefire_exporter.settings_check`), checked by :meth:`validate`. Each class
    #: declares its own options' kinds; subclasses add to their bases'.
    option_checks: ClassVar[Mapping[str, Any]] = {"metric": Choice(METRICS)}

    def __init__(self, name: str | None = None, queues: Iterable[str] | str | None = None, **options: Any) -> None:
        cls = type(self)
        if name is not None:
            self.name = name
        queues = cls.queues if queues is None else queues
        try:
            self.queues = [queues] if isinstance(queues, str) else list(queues or ())
        except TypeError:
            raise ProcConfigError(
                f"{cls.__name__}(name={self.name!r}): queues must be a list of queue names, got {queues!r}"
            ) from None
        known = cls.option_names()
        refuse_unknown(options, known, f"{cls.__name__}(name={self.name!r}): ")
        for key, value in options.items():
            setattr(self, key, value)

    @classmethod
    def option_names(cls) -> frozenset[str]:
        """The keyword options an instance takes: its public class attributes that are not behaviour."""
        names = {"name", "queues"} | {key for key in dir(cls) if not key.startswith("_") and not _is_method(cls, key)}
        return frozenset(names - {"option_checks", "supports_latency"})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, queues={self.queues!r})"

    def validate(self) -> None:
        """Check the configuration without any I/O. Raises :class:`ProcConfigError` naming the proc."""
        label = f"{type(self).__name__}(name={self.name!r})"
        if not isinstance(self.name, str) or not PROC_NAME.fullmatch(self.name):
            raise ProcConfigError(
                f"{label}: the name must be a Procfile process type (letters, digits, '-' and '_'), got {self.name!r}"
            )
        if not self.queues or not all(isinstance(q, str) and q for q in self.queues):
            raise ProcConfigError(f"proc {self.name!r}: needs at least one queue name, got {self.queues!r}")
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

    def read(self, cache: dict[str, Any]) -> Reading:
        """Measure the proc's queues. The default wraps an old-style ``quantity()``: a total with no breakdown."""
        return Reading(quantity=int(self.quantity(cache=cache)))

    def quantity(self, **kwargs: Any) -> int:
        """Return the number of jobs for this proc (the old API). Backends derive it from :meth:`read`."""
        return self.read(kwargs.get("cache", {})).quantity


class ClientProc(Proc):
    """A proc that builds one client per queue with :meth:`client` (the old API)."""

    def client(self, queue: str) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement client(queue)")

    @property
    def clients(self) -> list[Any]:
        return [self.client(queue) for queue in self.queues]
