"""Runs one page's samples in a fresh process (test_docs.py starts it): ``python docs_runner.py <project dir>``.

Reads a JSON list of jobs on stdin and prints a JSON list of results, one per job (``{"where", "error"}``, with the
routes it served). Each page gets a process of its own: its project files are imported under their own names
(``myapp.procs`` differs from page to page) and samples may change process-wide state (Django settings, Celery
signals), which must not leak into the test session.

Jobs:
- ``{"kind": "python", "where", "code", "module"}``: import ``module`` (a project file) or execute ``code``; then every
  web app it defines (``app`` or ``application``: WSGI, ASGI or Tornado) must answer ``GET /hirefire/test`` with
  ``HireFire Middleware Found!``;
- ``{"kind": "toml", "where", "file"}``: load the settings file as the exporter does and build and validate its procs;
- ``{"kind": "resolve", "where", "path"}``: a dotted path in a sample must import (module, then attributes).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import sys
import traceback
from typing import Any

TEST_BODY = "HireFire Middleware Found!"


def resolve(path: str) -> Any:
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        name = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
                continue
            raise
        for attribute in parts[cut:]:
            obj = getattr(obj, attribute)
        return obj
    raise ModuleNotFoundError(f"no module for {path!r}")


def _wsgi_get(app: Any, path: str) -> tuple[int, str]:
    from werkzeug.test import Client

    response = Client(app).get(path)
    return response.status_code, response.get_data(as_text=True)


async def _asgi_get(app: Any, path: str) -> tuple[int, str]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost")],
        "client": ("127.0.0.1", 40000),
        "server": ("localhost", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body.decode()


async def _tornado_get(app: Any, path: str) -> tuple[int, str]:
    from tornado.httpclient import AsyncHTTPClient
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(app)
    server.add_sockets(sockets)
    try:
        port = sockets[0].getsockname()[1]
        response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}{path}", raise_error=False)
        return response.code, response.body.decode()
    finally:
        server.stop()


def _kind(obj: Any) -> str | None:
    """``wsgi``, ``asgi`` or ``tornado`` for a web app object, None for anything else."""
    try:
        import tornado.web

        if isinstance(obj, tornado.web.Application):
            return "tornado"
    except ImportError:
        pass
    if not callable(obj) or inspect.isclass(obj):
        return None
    call = obj if inspect.isfunction(obj) else type(obj).__call__
    try:
        parameters = [p for p in inspect.signature(call).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    except (TypeError, ValueError):
        return None
    count = len(parameters) - (0 if inspect.isfunction(obj) else 1)
    if inspect.iscoroutinefunction(call) and count == 3:
        return "asgi"
    if not inspect.iscoroutinefunction(call) and count == 2:
        return "wsgi"
    return None


def serve_test(namespace: dict[str, Any]) -> list[str]:
    """Call ``/hirefire/test`` on every web app the sample defines; the names of those served."""
    served = []
    for name in ("app", "application"):
        obj = namespace.get(name)
        kind = _kind(obj) if obj is not None else None
        if kind is None:
            continue
        if kind == "wsgi":
            status, body = _wsgi_get(obj, "/hirefire/test")
        elif kind == "asgi":
            status, body = asyncio.run(_asgi_get(obj, "/hirefire/test"))
        else:
            status, body = asyncio.run(_tornado_get(obj, "/hirefire/test"))
        if (status, body) != (200, TEST_BODY):
            raise AssertionError(f"{name} ({kind}) answered /hirefire/test with {status} {body[:200]!r}")
        served.append(name)
    return served


def run(job: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {"where": job["where"], "error": None}
    try:
        if job["kind"] == "python":
            if job.get("module"):
                namespace = vars(importlib.import_module(job["module"]))
            else:
                namespace = {"__name__": "__sample__"}
                exec(compile(job["code"], job["where"], "exec"), namespace)
            result["served"] = serve_test(namespace)
        elif job["kind"] == "toml":
            from hirefire_exporter.config import load_settings
            from hirefire_exporter.loading import load_procs

            settings = load_settings(config=job["file"])
            result["procs"] = [proc.name for proc in load_procs(settings.procs, settings.procs_setting)]
        elif job["kind"] == "resolve":
            resolve(job["path"])
        else:
            raise ValueError(f"unknown job kind {job['kind']!r}")
    except BaseException:
        result["error"] = traceback.format_exc(limit=8)
    return result


def main() -> None:
    sys.path[:0] = [sys.argv[1], sys.argv[2]]  # the page's project, then the repository root
    jobs = json.load(sys.stdin)
    results = [run(job) for job in jobs]
    sys.stdout.flush()
    print("\n" + json.dumps(results))


if __name__ == "__main__":
    main()
