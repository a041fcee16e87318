"""WSGI middleware for any WSGI app (Pyramid, Bottle, Falcon, Flask, Django's WSGI handler...).

::

    from hirefire_exporter.contrib.wsgi import HireFireMiddleware

    application = HireFireMiddleware(application, ["mysite.procs.WorkerProc"])

Requests for ``/hirefire...`` (and ``/metrics`` with ``metrics=True``) go to the shared exporter; every other request
goes to the wrapped app unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..queue_time import QueueTimer
from . import ExporterMiddleware, timer_from_option

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


class HireFireMiddleware(ExporterMiddleware["WSGIApplication"]):
    """Serve HireFire's routes in front of a WSGI app (arguments: see ``contrib.ExporterMiddleware``)."""

    setting = "wsgi.HireFireMiddleware procs"

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if self.queue_timer is not None:
            self.queue_timer.observe_environ(environ)
        if self.exporter.handles(environ.get("PATH_INFO", "")):
            return self.exporter(environ, start_response)
        return self.app(environ, start_response)


class QueueTimeMiddleware:
    """Only measure request queue time (for apps that serve HireFire's routes some other way)."""

    def __init__(self, app: WSGIApplication, queue_time: bool | QueueTimer = True) -> None:
        self.app = app
        self.queue_timer = timer_from_option(queue_time)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if self.queue_timer is not None:
            self.queue_timer.observe_environ(environ)
        return self.app(environ, start_response)
