"""Turning configuration into validated procs: dotted paths, classes, instances, or TOML tables.

Everything here runs at start-up and does no broker I/O. Any problem raises :class:`ProcConfigError` with one clear
message naming the setting and the culprit, so a typo in ``HIREFIRE_PROCS`` stops the app at boot instead of turning
into a silent 0 on the first HireFire poll.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib import import_module
from typing import Any

from .procs.base import Proc, ProcConfigError
from .redaction import describe_error
from .settings_check import did_you_mean, refuse_unknown

#: ``backend = "..."`` in TOML -> the Proc class that reads it.
BACKENDS = {
    "rq": "hirefire_exporter.procs.rq.RQProc",
    "huey": "hirefire_exporter.procs.huey.HueyProc",
    "celery": "hirefire_exporter.procs.celery.CeleryProc",
    "hotqueue": "hirefire_exporter.procs.hotqueue.HotQueueProc",
    "queues": "hirefire_exporter.procs.queues.QueuesProc",
    "dramatiq": "hirefire_exporter.procs.dramatiq.DramatiqProc",
}
#: Broker names people write for ``backend`` (which names the job library).
BROKERS = ("redis", "rabbitmq", "amqp", "sqlite", "beanstalkd")


def import_dotted(path: str, setting: str) -> Any:
    """Import ``package.module.attribute``; a failure names the setting and the path."""
    module_name, _, attribute = path.strip().rpartition(".")
    if not module_name:
        raise ProcConfigError(f"{setting}: {path!r} is not a dotted path like 'myapp.procs.WorkerProc'")
    try:
        module = import_module(module_name)
    except Exception as exc:  # the user's module, failing however it may (with a secret of the environment in its
        # message, or a whole URL): described scrubbed, with where it failed, and not chained (the cause is raw)
        where = f"{setting}: cannot import {module_name!r} for {path!r}"
        raise ProcConfigError(f"{where}: {describe_error(exc, locate=True)}") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ProcConfigError(f"{setting}: module {module_name!r} has no attribute {attribute!r}") from None


def load_proc(spec: Proc | type | str, setting: str = "procs") -> Proc:
    """One proc from an instance, a Proc subclass (instantiated without arguments) or a dotted path to either."""
    obj = import_dotted(spec, setting) if isinstance(spec, str) else spec
    if isinstance(obj, type) and issubclass(obj, Proc):
        try:
            obj = obj()
        except ProcConfigError as exc:
            raise ProcConfigError(f"{setting}: {exc}") from None
        except Exception as exc:
            raise ProcConfigError(
                f"{setting}: cannot instantiate {obj.__name__}: {describe_error(exc, locate=True)}"
            ) from None
    if not isinstance(obj, Proc):
        raise ProcConfigError(f"{setting}: {spec!r} is not a Proc subclass or instance")
    try:
        obj.validate()
    except ProcConfigError as exc:
        raise ProcConfigError(f"{setting}: {exc}") from None
    return obj


def split_paths(value: str) -> list[str]:
    """The dotted paths in a comma-separated setting (``HIREFIRE_PROCS``, ``--procs``)."""
    return [part for part in (part.strip() for part in value.split(",")) if part]


def load_procs(specs: Iterable[Proc | type | str] | str, setting: str = "procs") -> list[Proc]:
    """Validated procs, in order. A comma-separated string is split (as ``HIREFIRE_PROCS`` is)."""
    if isinstance(specs, str):
        specs = split_paths(specs)
    procs = [load_proc(spec, setting) for spec in specs]
    if not procs:
        raise ProcConfigError(f"{setting}: no procs configured")
    seen: set[str] = set()
    for proc in procs:
        if proc.name in seen:
            raise ProcConfigError(f"{setting}: two procs are named {proc.name!r}; each Procfile entry needs its own")
        seen.add(proc.name)
    return procs


def proc_from_table(table: Mapping[str, Any], index: int) -> Proc:
    """A proc declared in TOML (``[[procs]]`` with ``name``, ``backend`` and the backend's options)."""
    where = f"[[procs]] #{index + 1}"
    options = dict(table)
    if "backend" not in options:
        refuse_unknown([key for key in options if did_you_mean(key, ["backend"])], {"backend"}, f"{where}: ")
    backend = options.pop("backend", None)
    if backend not in BACKENDS:
        hint = did_you_mean(backend, BACKENDS)
        if not hint and did_you_mean(backend, BROKERS):
            hint = "; backend names the job library, not the broker: the broker goes in `url`"
        raise ProcConfigError(
            f"{where} ({options.get('name')!r}): backend must be one of {sorted(BACKENDS)}, got {backend!r}{hint}"
        )
    cls = import_dotted(BACKENDS[backend], f"{where} backend {backend!r}")
    try:
        return cls(**options)
    except (ProcConfigError, TypeError) as exc:
        raise ProcConfigError(f"{where}: {exc}") from None
