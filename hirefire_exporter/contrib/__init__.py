"""What every framework adapter shares: one exporter per process and configuration, one queue timer, one dispatcher.

The adapters (Django, Flask, Tornado, WSGI, ASGI) are thin: they decide whether a request path belongs to the
exporter (:meth:`ExporterApp.handles`), hand the request to :class:`ExporterApp` as a WSGI environ, and translate the
answer back. Routing, token checks and rendering live in ``hirefire_exporter.app`` only.

:func:`exporter_app` keeps one :class:`Collection` per set of procs and collection options, so a Django middleware, a
Flask blueprint and a WSGI middleware configured with the same procs in one process run one collection cycle between
them, whichever route or framework asks. Building one does no broker I/O.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from werkzeug.wrappers import Response

from ..app import ExporterApp, build_collection
from ..collection import Collection
from ..dispatcher import Dispatcher, normalize_url
from ..procs.base import Proc, ProcConfigError
from ..queue_time import COLLECTOR, QueueTimer
from ..settings_check import collection_options

__all__ = ["ProcConfigError", "exporter_app", "queue_timer", "reset", "serve", "timer_from_option", "wsgi_path"]

ProcSpecs = Sequence[Proc | str | type] | str
App = TypeVar("App")

_lock = threading.RLock()
_collections: dict[tuple[Any, ...], tuple[Collection, list[Any]]] = {}
_apps: dict[tuple[Any, ...], ExporterApp] = {}
_dispatchers: dict[tuple[str, str], Dispatcher] = {}
_timers: dict[tuple[Any, ...], QueueTimer] = {}


def _procs_key(procs: ProcSpecs) -> tuple[Any, ...]:
    specs = procs.split(",") if isinstance(procs, str) else procs
    return tuple(
        ("path", spec.strip()) if isinstance(spec, str) else ("object", id(spec))
        for spec in specs
        if not isinstance(spec, str) or spec.strip()
    )


def exporter_app(
    procs: ProcSpecs,
    token: str | None = None,
    *,
    metrics: bool = False,
    setting: str = "procs",
    max_age: float = 5.0,
    stale_after: float = 60.0,
    timeout: float = 3.0,
    refresh_wait: float = 0.25,
    share: str | None = None,
) -> ExporterApp:
    """The process's exporter for these procs (dotted paths, classes or instances) and options, built on first use.
    ``share``: a Redis URL to share one collection per ``max_age`` with every process of the same configuration
    (default ``HIREFIRE_SHARE_URL``; ``""`` turns it off); ``refresh_wait``: the most a request waits for a refresh.

    ``/healthz`` is left out (the host app may have its own) and ``/metrics`` is off unless ``metrics=True``.
    Raises :class:`ProcConfigError` naming ``setting`` when a proc cannot be loaded, or the option that is not a
    number of seconds.
    """
    options = collection_options(max_age=max_age, stale_after=stale_after, timeout=timeout, refresh_wait=refresh_wait)
    max_age, stale_after, timeout = options["max_age"], options["stale_after"], options["timeout"]
    refresh_wait = options["refresh_wait"]
    collection_key = (_procs_key(procs), max_age, stale_after, timeout, refresh_wait, share)
    app_key = (collection_key, token, bool(metrics))
    with _lock:
        app = _apps.get(app_key)
        if app is not None:
            return app
        entry = _collections.get(collection_key)
        if entry is None:
            collection = build_collection(
                procs,
                max_age=max_age,
                stale_after=stale_after,
                timeout=timeout,
                refresh_wait=refresh_wait,
                share=share,
                setting=setting,
            )
            # keep the configured objects alive so that their id()s in the key stay theirs
            entry = _collections[collection_key] = (collection, list(procs) if not isinstance(procs, str) else [])
        app = ExporterApp(entry[0], token, metrics=metrics, healthz=False, collectors=[COLLECTOR])
        _apps[app_key] = app
        return app


def queue_timer(*, log: bool = True, dispatch_url: str | None = None, token: str | None = None) -> QueueTimer:
    """The process's queue timer: always records the ``hirefire_request_queue_seconds`` histogram; with ``log``,
    prints ``[hirefire:router] queue={ms}ms``; with a dispatch URL (default: ``HIREFIRE_DISPATCH_URL``; pass ``""``
    to turn it off) POSTs the figures to HireFire with ``token`` (default: ``HIREFIRE_TOKEN``)."""
    url = os.environ.get("HIREFIRE_DISPATCH_URL", "") if dispatch_url is None else dispatch_url
    dispatcher = None
    with _lock:
        if url.strip():
            token = token or os.environ.get("HIREFIRE_TOKEN", "")
            if not token.strip():
                raise ProcConfigError(
                    "HIREFIRE_DISPATCH_URL is set but there is no HireFire token (HIREFIRE_TOKEN) to send with it"
                )
            key = (normalize_url(url), token.strip())
            dispatcher = _dispatchers.get(key)
            if dispatcher is None:
                dispatcher = _dispatchers[key] = Dispatcher(url, token)
        timer_key = (bool(log), id(dispatcher))
        timer = _timers.get(timer_key)
        if timer is None:
            timer = _timers[timer_key] = QueueTimer(log=log, dispatcher=dispatcher)
        return timer


def timer_from_option(option: bool | QueueTimer | None, token: str | None = None) -> QueueTimer | None:
    """An adapter's ``queue_time`` argument: False/None (off), True (:func:`queue_timer` defaults, dispatching with
    the adapter's ``token`` when it has one) or a timer."""
    if isinstance(option, QueueTimer):
        return option
    return queue_timer(token=token) if option else None


def wsgi_path(path: str) -> str:
    """A decoded URL path as a WSGI ``PATH_INFO`` (PEP 3333: the UTF-8 bytes as latin-1 text)."""
    return path.encode("utf-8").decode("latin-1")


class ExporterMiddleware(Generic[App]):
    """What the WSGI and ASGI ``HireFireMiddleware`` share: the wrapped ``app``, the process's exporter, the timer.

    ``token``: the HireFire token (default ``HIREFIRE_TOKEN``), also what queue times are dispatched with.
    ``metrics``: also serve ``/metrics``.
    ``queue_time``: measure request queue time (True, or a :func:`queue_timer`).
    ``options``: ``max_age``, ``stale_after``, ``timeout``, ``refresh_wait``, ``share``, ``setting`` (the name used
    in error messages; the default is the subclass's :attr:`setting`).
    """

    setting = "procs"

    def __init__(
        self,
        app: App,
        procs: ProcSpecs,
        token: str | None = None,
        *,
        metrics: bool = False,
        queue_time: bool | QueueTimer = False,
        **options: Any,
    ) -> None:
        self.app = app
        options.setdefault("setting", self.setting)
        self.exporter = exporter_app(procs, token, metrics=metrics, **options)
        self.queue_timer = timer_from_option(queue_time, token)


def serve(app: ExporterApp, environ: dict[str, Any]) -> Response:
    """Run the exporter on a WSGI environ and return its buffered response (synchronous: it may run a cycle)."""
    return Response.from_app(app, environ, buffered=True)


def reset() -> None:
    """Forget every shared exporter, timer and dispatcher (stopping their threads). For tests."""
    with _lock:
        collections = [collection for collection, _ in _collections.values()]
        dispatchers = list(_dispatchers.values())
        _collections.clear()
        _apps.clear()
        _dispatchers.clear()
        _timers.clear()
    for collection in collections:
        collection.close()
    for dispatcher in dispatchers:
        dispatcher.stop(flush=False)
