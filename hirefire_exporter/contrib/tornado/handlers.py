"""Tornado handlers::

    from hirefire_exporter.contrib.tornado.handlers import hirefire_handlers

    handlers = hirefire_handlers(os.environ["HIREFIRE_TOKEN"], ["mysite.procs.WorkerProc"])
    application = tornado.web.Application([...] + handlers)

The shared exporter runs in a small thread pool (Tornado's ``WSGIContainer`` with an executor), so the IOLoop keeps
serving other requests while a collection cycle waits on a broker.
"""

from __future__ import annotations

import threading
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from tornado.httputil import HTTPServerRequest
from tornado.web import FallbackHandler, OutputTransform
from tornado.wsgi import WSGIContainer

from ...queue_time import QueueTimer
from .. import ProcSpecs, exporter_app, timer_from_option

_executor: Executor | None = None
_executor_lock = threading.Lock()


def _shared_executor() -> Executor:
    """Built on first use (no threads at import). Concurrent polls share one cycle, so a few threads suffice."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="hirefire-tornado")
        return _executor


def hirefire_handlers(
    token: str | None,
    procs: ProcSpecs,
    *,
    metrics: bool = False,
    executor: Executor | None = None,
    **options: Any,
) -> list[tuple[str, type, dict[str, Any]]]:
    """URL specs for ``tornado.web.Application``: ``/hirefire/<token>/info``, ``/hirefire``, ``/hirefire/test`` and,
    with ``metrics``, ``/metrics``. ``options``: ``max_age``, ``stale_after``, ``timeout``, ``refresh_wait``,
    ``share``, ``setting``."""
    options.setdefault("setting", "hirefire_handlers procs")
    exporter = exporter_app(procs, token, metrics=metrics, **options)
    container = WSGIContainer(exporter, executor=executor or _shared_executor())
    routes: list[tuple[str, type, dict[str, Any]]] = [(r"/hirefire(?:/.*)?", FallbackHandler, {"fallback": container})]
    if metrics:
        routes.append((r"/metrics", FallbackHandler, {"fallback": container}))
    return routes


class QueueTimeTransform(OutputTransform):
    """Measures each request's queue time as Tornado starts handling it (a transform sees every request)."""

    timer: QueueTimer | None = None

    def __init__(self, request: HTTPServerRequest) -> None:
        super().__init__(request)
        if self.timer is not None:
            self.timer.observe(request.headers.get("X-Request-Start"))


def queue_time_transform(queue_time: bool | QueueTimer = True) -> type[OutputTransform]:
    """A transform class for ``application.add_transform(...)`` that measures request queue time."""
    return type("QueueTimeTransform", (QueueTimeTransform,), {"timer": timer_from_option(queue_time)})
