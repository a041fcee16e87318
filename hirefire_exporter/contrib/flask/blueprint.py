"""Flask blueprint::

    from hirefire_exporter.contrib.flask.blueprint import build_hirefire_blueprint

    app.register_blueprint(build_hirefire_blueprint(os.environ["HIREFIRE_TOKEN"], ["mysite.procs.WorkerProc"]))

The blueprint only claims the paths; the shared exporter answers them (routing, token check, JSON).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request
from werkzeug.wrappers import Response

from ...queue_time import QueueTimer
from .. import ProcSpecs, exporter_app, serve, timer_from_option, wsgi_path


def build_hirefire_blueprint(
    token: str | None,
    procs: ProcSpecs,
    *,
    metrics: bool = False,
    queue_time: bool | QueueTimer = False,
    name: str = "hirefire",
    **options: Any,
) -> Blueprint:
    """A blueprint serving ``/hirefire/<token>/info``, ``/hirefire``, ``/hirefire/test`` and, with ``metrics``,
    ``/metrics``. ``queue_time`` measures every request of the app (see the README; dispatched with ``token``).
    ``options``: ``max_age``, ``stale_after``, ``timeout``, ``refresh_wait``, ``share``, ``setting``."""
    options.setdefault("setting", "build_hirefire_blueprint procs")
    exporter = exporter_app(procs, token, metrics=metrics, **options)
    timer = timer_from_option(queue_time, token)
    blueprint = Blueprint(name, __name__)

    def _serve(path: str) -> Response:
        # the exporter routes from the root, whatever url_prefix the blueprint got
        return serve(exporter, {**request.environ, "PATH_INFO": wsgi_path(path)})

    def header_info() -> Response:
        return _serve("/hirefire")

    def hirefire(rest: str) -> Response:
        return _serve(f"/hirefire/{rest}")

    blueprint.add_url_rule("/hirefire", "header_info", header_info)
    blueprint.add_url_rule("/hirefire/<path:rest>", "hirefire", hirefire)
    if metrics:
        blueprint.add_url_rule("/metrics", "metrics", lambda: _serve("/metrics"))
    if timer is not None:

        def observe_queue_time() -> None:  # returns None: Flask would take any other value for the response
            timer.observe_environ(request.environ)

        blueprint.before_app_request(observe_queue_time)
    return blueprint
