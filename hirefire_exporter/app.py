"""The WSGI app every entry point serves: the standalone server and each framework adapter.

Routes: ``/metrics``, ``/hirefire/<token>/info``, ``/hirefire`` (token in the ``HireFire-Token`` header),
``/hirefire/test``, ``/healthz`` (alive) and ``/readyz`` (has a usable reading of every proc). A wrong token is a
404 indistinguishable from an unknown path. With an :class:`~hirefire_exporter.auth.Auth`, ``/metrics`` answers 401
to a request without the right credentials; the probes and the HireFire routes (which have their token) stay open.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.registry import Collector
from werkzeug.exceptions import HTTPException, InternalServerError, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from . import hirefire
from .auth import METRICS_TOKEN, WEB_CONFIG, Auth
from .collection import Collection
from .counts import Counts
from .loading import load_procs
from .prometheus import Exposition, SnapshotCollector
from .selfmetrics import SelfCollector
from .settings_check import collection_options

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from .procs.base import Proc

log = logging.getLogger("hirefire_exporter")

TEST_BODY = "HireFire Middleware Found!"
#: The token segment of ``/hirefire/<token>/info``, masked in log lines.
_TOKEN_IN_PATH = re.compile(r"(?<=^/hirefire)/[^/]*/(?=info)")

_ROUTES = Map(
    [
        Rule("/metrics", endpoint="metrics", methods=["GET"]),
        Rule("/hirefire/test", endpoint="test", methods=["GET"]),
        Rule("/hirefire/<token>/info", endpoint="info", methods=["GET"]),
        Rule("/hirefire", endpoint="header_info", methods=["GET"]),
        Rule("/healthz", endpoint="healthz", methods=["GET"]),
        Rule("/readyz", endpoint="readyz", methods=["GET"]),
    ],
    strict_slashes=False,
    merge_slashes=False,
)


class ExporterApp:
    """The exporter as a WSGI app over one :class:`Collection`.

    ``metrics=False`` leaves ``/metrics`` out (a 404), for apps that do not want to publish queue figures.
    ``healthz=False`` leaves ``/healthz`` and ``/readyz`` out, so that a framework adapter never shadows the host
    app's own. ``collectors`` are extra Prometheus collectors served on ``/metrics`` (e.g. the request queue-time
    histogram). ``auth``: who may read ``/metrics`` (default: anyone).
    """

    def __init__(
        self,
        collection: Collection,
        token: str | None = None,
        *,
        metrics: bool = True,
        healthz: bool = True,
        collectors: Iterable[Collector] = (),
        auth: Auth | None = None,
    ) -> None:
        self.collection = collection
        self.token = hirefire.Token(token)
        self.metrics_enabled = metrics
        self.healthz_enabled = healthz
        self.auth = auth
        self.requests = Counts()  # by route and status: hirefire_exporter_requests_total
        collectors = [*collectors, SelfCollector(self.requests, collection)]
        self.registry = CollectorRegistry(auto_describe=True)  # everything /metrics serves, for name[] filters
        self.registry.register(SnapshotCollector(collection))
        for collector in collectors:
            self.registry.register(collector)
        self._filtered_metrics_app = make_wsgi_app(self.registry)
        self.exposition = Exposition(collection, collectors)

    def handles(self, path: str) -> bool:
        """Whether a request path belongs to the exporter (what middleware intercepts; the rest passes through)."""
        return (
            path == "/hirefire"
            or path.startswith("/hirefire/")
            or (self.healthz_enabled and path in ("/healthz", "/readyz"))
            or (self.metrics_enabled and path == "/metrics")
        )

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        route = "other"

        def counted(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            self.requests.add(route, status.split(" ", 1)[0])
            return start_response(status, headers, exc_info)

        try:
            endpoint, args = _ROUTES.bind_to_environ(environ).match()
            if endpoint in ("healthz", "readyz") and not self.healthz_enabled:
                raise NotFound()
            if endpoint == "metrics" and not self.metrics_enabled:
                raise NotFound()
            route = _ROUTE_LABELS[endpoint]
            if endpoint == "metrics":
                if self.auth is not None and not self.auth.allows(environ.get("HTTP_AUTHORIZATION")):
                    response = self._unauthorized()
                elif "name[]" in unquote(environ.get("QUERY_STRING", "")):  # filtering by name: rare, not cached
                    return self._filtered_metrics_app(environ, counted)
                else:
                    response = self._metrics(request)
            else:
                response = getattr(self, f"_{endpoint}")(request, **args)
        except HTTPException as exc:
            response = exc.get_response(environ)
        except Exception:
            log.exception("hirefire-exporter: error while serving %s", _TOKEN_IN_PATH.sub("/<token>/", request.path))
            response = InternalServerError().get_response(environ)
        return response(environ, counted)

    def _unauthorized(self) -> Response:
        assert self.auth is not None
        response = Response("Unauthorized\n", status=401, mimetype="text/plain")
        for challenge in self.auth.challenges:
            response.headers.add("WWW-Authenticate", challenge)
        return response

    def _metrics(self, request: Request) -> Response:
        # q-values count: "gzip;q=0" refuses gzip, "*" accepts it (werkzeug's parser, RFC 9110)
        gzipped = request.accept_encodings.quality("gzip") > 0
        body, content_type = self.exposition.body(request.headers.get("Accept", ""), gzipped)
        headers = {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"} if gzipped else {"Vary": "Accept-Encoding"}
        return Response(body, content_type=content_type, headers=headers)

    def _test(self, request: Request) -> Response:
        return Response(TEST_BODY, mimetype="text/plain")

    def _healthz(self, request: Request) -> Response:
        return Response("ok\n", mimetype="text/plain")

    def _readyz(self, request: Request) -> Response:
        """200 when the latest snapshot has a usable reading of every proc, else 503 naming the procs that have
        none. Reads only what the collection holds: never waits, never reads a broker on the request thread. A
        replica that is not ready starts a background refresh (as a scrape would), so that it becomes ready once
        its brokers answer even while no traffic reaches it."""
        snapshot = self.collection.latest
        now = self.collection.clock()
        if snapshot is None:
            waiting = "no collection has finished yet"
        else:
            failed = snapshot.failed(now)
            if not failed:
                return Response("ready\n", mimetype="text/plain", headers={"Cache-Control": "no-store"})
            waiting = "no usable reading of " + ", ".join(
                f"{s.name} ({'none yet' if s.read_at is None else 'too old' if not s.up else 'unusable'})"
                for s in failed
            )
        self.collection.refresh_in_background()
        return Response(
            f"not ready: {waiting}\n", status=503, mimetype="text/plain", headers={"Cache-Control": "no-store"}
        )

    def _info(self, request: Request, token: str) -> Response:
        return self._hirefire_info(token)

    def _header_info(self, request: Request) -> Response:
        return self._hirefire_info(request.headers.get("HireFire-Token"))

    def _hirefire_info(self, token: str | None) -> Response:
        if not self.token.matches(token):
            raise NotFound()
        status, body = hirefire.info(self.collection.snapshot(), self.collection.clock())
        return Response(json.dumps(body), status=status, mimetype="application/json", headers=hirefire.HEADERS)


#: Each endpoint's ``route`` label in ``hirefire_exporter_requests_total``; any other path is ``other``. Never the raw
#: path: no client can create series.
_ROUTE_LABELS = {
    "metrics": "metrics",
    "info": "hirefire_info",
    "header_info": "hirefire_info",
    "test": "hirefire_test",
    "healthz": "healthz",
    "readyz": "readyz",
}

#: The environment variable that turns on sharing when no ``share`` option is given.
SHARE_ENV = "HIREFIRE_SHARE_URL"


def build_collection(
    procs: Sequence[Proc | str | type] | str,
    *,
    max_age: float = 5.0,
    stale_after: float = 60.0,
    timeout: float = 3.0,
    refresh_wait: float = 0.25,
    share: str | None = None,
    setting: str = "procs",
) -> Collection:
    """A :class:`Collection` over procs given as instances, classes or dotted paths (``setting`` names where they
    came from, for error messages). ``share``: a Redis URL where processes measuring the same configuration share
    one collection per ``max_age``; ``None`` takes ``HIREFIRE_SHARE_URL``, ``""`` turns sharing off. No I/O. A bad
    option raises :class:`ProcConfigError` (see :func:`hirefire_exporter.settings_check.collection_options`)."""
    options = collection_options(
        {"share": "share" if share is not None else SHARE_ENV},
        max_age=max_age,
        stale_after=stale_after,
        timeout=timeout,
        refresh_wait=refresh_wait,
        share=os.environ.get(SHARE_ENV) if share is None else share,
    )
    loaded = load_procs(procs, setting=setting)
    url = options.pop("share")
    store = None
    if url:
        from .sharing import SharedSnapshots

        store = SharedSnapshots(url, loaded, **{k: options[k] for k in ("max_age", "stale_after", "timeout")})
    return Collection(loaded, **options, share=store)


def create_app(
    procs: Sequence[Proc | str | type],
    token: str | None = None,
    *,
    max_age: float = 5.0,
    stale_after: float = 60.0,
    timeout: float = 3.0,
    refresh_wait: float = 0.25,
    share: str | None = None,
    metrics: bool = True,
    web_config: str | None = None,
    metrics_token: str | None = None,
    setting: str = "procs",
) -> ExporterApp:
    """Build the exporter app from procs (instances, classes or dotted paths). ``setting`` names where the procs
    came from, for error messages (``HIREFIRE_PROCS``, ``--procs``...); see :func:`build_collection` for the
    collection options. ``web_config`` (an exporter-toolkit web configuration file with ``basic_auth_users``)
    and/or ``metrics_token`` (a bearer token) protect ``/metrics`` (see :mod:`hirefire_exporter.auth`)."""
    auth = Auth.from_settings(
        WEB_CONFIG.check(web_config, "web_config") if web_config is not None else None,
        METRICS_TOKEN.check(metrics_token, "metrics_token"),
    )
    collection = build_collection(
        procs,
        max_age=max_age,
        stale_after=stale_after,
        timeout=timeout,
        refresh_wait=refresh_wait,
        share=share,
        setting=setting,
    )
    return ExporterApp(collection, token, metrics=metrics, auth=auth)
