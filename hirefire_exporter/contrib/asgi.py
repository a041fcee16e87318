"""ASGI middleware for Starlette, FastAPI, Quart, Django's ASGI handler or any ASGI app.

::

    from hirefire_exporter.contrib.asgi import HireFireMiddleware

    app = HireFireMiddleware(app, ["mysite.procs.WorkerProc"])     # or app.add_middleware(HireFireMiddleware, ...)

The exporter is synchronous (a collection cycle may wait on a broker), so it runs in a worker thread: the event loop
keeps serving other requests while a cycle talks to a broker.
"""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ..queue_time import QueueTimer
from . import ExporterMiddleware, serve, timer_from_option, wsgi_path

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _in_thread(function: Callable[..., Any], *args: Any) -> Any:
    """Run blocking work in a thread: through anyio when installed (asyncio and trio alike), else asyncio."""
    try:
        import anyio.to_thread
    except ImportError:
        return await asyncio.to_thread(function, *args)
    return await anyio.to_thread.run_sync(function, *args)


def _path(scope: Scope) -> str:
    """The path below the app's mount point, as the exporter routes it. Servers disagree on whether ``path``
    includes ``root_path`` (the ASGI spec now says it does): strip it only when it is a whole leading segment."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "").rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root) :]
    return path


def environ_from_scope(scope: Scope) -> dict[str, Any]:
    """A WSGI environ for an ASGI HTTP request without a body (the exporter only serves GETs)."""
    server = scope.get("server") or ("localhost", 80)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope.get("method", "GET"),
        "SCRIPT_NAME": wsgi_path(scope.get("root_path", "")),
        "PATH_INFO": wsgi_path(_path(scope)),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1] if server[1] is not None else 80),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        value = raw_value.decode("latin-1")
        key = name if name in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{name}"
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


class HireFireMiddleware(ExporterMiddleware[ASGIApp]):
    """Serve HireFire's routes in front of an ASGI app (arguments as for the WSGI middleware)."""

    setting = "asgi.HireFireMiddleware procs"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if self.queue_timer is not None:
                self.queue_timer.observe_scope(scope)
            if self.exporter.handles(_path(scope)):
                await self._serve(scope, send)
                return
        await self.app(scope, receive, send)

    async def _serve(self, scope: Scope, send: Send) -> None:
        environ = environ_from_scope(scope)
        response = await _in_thread(serve, self.exporter, environ)
        headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in response.headers]
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        body = b"" if scope.get("method") == "HEAD" else response.get_data()
        await send({"type": "http.response.body", "body": body})


class QueueTimeMiddleware:
    """Only measure request queue time (for apps that serve HireFire's routes some other way)."""

    def __init__(self, app: ASGIApp, queue_time: bool | QueueTimer = True) -> None:
        self.app = app
        self.queue_timer = timer_from_option(queue_time)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.queue_timer is not None:
            self.queue_timer.observe_scope(scope)
        await self.app(scope, receive, send)
