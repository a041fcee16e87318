"""Django middleware (new-style ``MIDDLEWARE``, WSGI and ASGI alike). Put it first::

    MIDDLEWARE = ["hirefire_exporter.contrib.django.middleware.HireFireMiddleware", ...]
    HIREFIRE_PROCS = ["mysite.procs.WorkerProc"]

Settings: ``HIREFIRE_PROCS`` (required: dotted paths to Proc classes or instances), ``HIREFIRE_TOKEN`` (else the
``HIREFIRE_TOKEN`` environment variable), ``HIREFIRE_METRICS`` (serve ``/metrics``, default False),
``HIREFIRE_QUEUE_TIME`` (measure request queue time, default False), ``HIREFIRE_QUEUE_TIME_LOG`` (print the
``[hirefire:router]`` line, default True), ``HIREFIRE_DISPATCH_URL`` (else the environment variable),
``HIREFIRE_MAX_AGE``, ``HIREFIRE_STALE_AFTER``, ``HIREFIRE_TIMEOUT``, ``HIREFIRE_REFRESH_WAIT`` (seconds),
``HIREFIRE_SHARE_URL`` (a Redis URL to share one collection with every process; else the environment variable).

The exporter is built when Django loads its middleware (at start-up), without broker I/O; a bad setting raises
``ImproperlyConfigured`` naming it. Requests for other paths go straight to the next middleware.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse

from ...config import BY_NAME
from ...procs.base import ProcConfigError
from ...settings_check import collection_options
from .. import exporter_app, queue_timer, serve, wsgi_path

#: Collection options -> (the Django setting, named as the environment variable, and its default).
_OPTIONS = {
    name: (BY_NAME[name].env, BY_NAME[name].default)
    for name in ("max_age", "stale_after", "timeout", "refresh_wait", "share")
}


def _environ(request: HttpRequest) -> dict[str, Any]:
    environ = dict(request.META)
    environ.update(
        {
            "REQUEST_METHOD": request.method or "GET",
            "PATH_INFO": wsgi_path(request.path_info),
            "SERVER_NAME": environ.get("SERVER_NAME") or "localhost",
            "SERVER_PORT": str(environ.get("SERVER_PORT") or "80"),
            "wsgi.url_scheme": request.scheme or "http",
            "wsgi.input": io.BytesIO(b""),
            "wsgi.errors": sys.stderr,
        }
    )
    return environ


def _django_response(request: HttpRequest, exporter: Any) -> HttpResponse:
    answer = serve(exporter, _environ(request))
    response = HttpResponse(answer.get_data(), status=answer.status_code)
    for name, value in answer.headers.items():
        response[name] = value
    return response


class HireFireMiddleware:
    """Answers HireFire's routes (and ``/metrics`` with ``HIREFIRE_METRICS``) and hands every other request to the
    next middleware; sync or async, whichever Django's handler is."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
        procs = getattr(settings, "HIREFIRE_PROCS", None)
        if not procs:
            raise ImproperlyConfigured(
                "HIREFIRE_PROCS: set it to a list of dotted paths to your procs, e.g. ['mysite.procs.WorkerProc']"
            )
        try:
            given = {name: getattr(settings, setting, default) for name, (setting, default) in _OPTIONS.items()}
            options = collection_options({name: setting for name, (setting, _) in _OPTIONS.items()}, **given)
            self.exporter = exporter_app(
                procs,
                getattr(settings, "HIREFIRE_TOKEN", None),
                metrics=bool(getattr(settings, "HIREFIRE_METRICS", False)),
                setting="HIREFIRE_PROCS",
                **options,
            )
            self.queue_timer = (
                queue_timer(
                    log=bool(getattr(settings, "HIREFIRE_QUEUE_TIME_LOG", True)),
                    dispatch_url=getattr(settings, "HIREFIRE_DISPATCH_URL", None),
                    token=getattr(settings, "HIREFIRE_TOKEN", None),
                )
                if getattr(settings, "HIREFIRE_QUEUE_TIME", False)
                else None
            )
        except ProcConfigError as exc:
            raise ImproperlyConfigured(str(exc)) from exc

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        if self.queue_timer is not None:
            self.queue_timer.observe_environ(request.META)
        if self.exporter.handles(request.path_info):
            return _django_response(request, self.exporter)
        return self.get_response(request)

    async def __acall__(self, request: HttpRequest) -> Any:
        if self.queue_timer is not None:
            self.queue_timer.observe_environ(request.META)
        if self.exporter.handles(request.path_info):
            # the cycle may wait on a broker: never on the event loop
            return await sync_to_async(_django_response, thread_sensitive=False)(request, self.exporter)
        response: Awaitable[Any] = self.get_response(request)
        return await response
