"""The WSGI middleware over a plain WSGI app, backed by real Redis; the process-wide sharing of one collection."""

from __future__ import annotations

import json

import adapter_contract as contract
import pytest
from conftest import free_port
from support import samples
from werkzeug.test import Client
from werkzeug.wrappers import Request, Response

from hirefire_exporter.procs.base import ProcConfigError
from hirefire_exporter.procs.rq import RQProc

pytest.importorskip("rq")

JOBS = 5
WORKER = contract.worker_info(JOBS)
ORDERS = {"/orders": (200, b"host /orders")}

_fresh_registry = pytest.fixture(autouse=True)(contract.fresh_registry)


@pytest.fixture
def worker(redis_conn) -> RQProc:
    return contract.rq_worker(redis_conn, JOBS)


@Request.application
def host_app(request: Request) -> Response:
    """The user's own app: answers every path with its name."""
    return Response(f"host {request.path}", mimetype="text/plain")


def getter(app) -> contract.Get:
    client = Client(app)

    def get(path: str, headers: contract.Headers) -> contract.Reply:
        response = client.get(path, headers=dict(headers))
        return contract.Reply(response.status_code, response.headers, response.get_data())

    return get


def test_hirefire_routes_tokens_and_metrics_through_the_middleware(worker):
    from hirefire_exporter.contrib.wsgi import HireFireMiddleware

    app = HireFireMiddleware(host_app, [worker], "s3cret", metrics=True)
    contract.check(contract.serves_hirefire(JOBS, metrics=True, host=ORDERS), getter(app))


def test_other_requests_reach_the_host_app_untouched(worker):
    from hirefire_exporter.contrib.wsgi import HireFireMiddleware

    paths = ("/", "/metrics", "/healthz", "/hirefire-pricing", "/hire")  # /metrics is off unless asked for
    host = {path: (200, f"host {path}".encode()) for path in paths}
    app = HireFireMiddleware(host_app, [worker], "s3cret")
    contract.check(contract.serves_hirefire(JOBS, metrics=False, host=host), getter(app))
    assert worker.redis_client() is not None


def test_a_broker_outage_is_a_503_for_hirefire_and_nothing_for_the_host_app(redis_url):
    from hirefire_exporter.contrib.wsgi import HireFireMiddleware

    down = RQProc("worker", url=f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1)
    app = HireFireMiddleware(host_app, [down], "s3cret", metrics=True)
    contract.check(contract.broker_down(metrics=True, host=ORDERS, token="s3cret"), getter(app))


def test_a_misconfigured_proc_path_fails_at_start_up_naming_the_setting():
    from hirefire_exporter.contrib.wsgi import HireFireMiddleware

    with pytest.raises(ProcConfigError, match=r"^HIREFIRE_PROCS: cannot import 'mysite.nope'"):
        HireFireMiddleware(host_app, ["mysite.nope.WorkerProc"], setting="HIREFIRE_PROCS")


@pytest.mark.parametrize(("option", "value"), [("timeout", float("nan")), ("max_age", -1), ("stale_after", "60")])
def test_a_duration_option_that_is_not_a_number_of_seconds_fails_at_start_up(worker, option, value):
    from hirefire_exporter.contrib.wsgi import HireFireMiddleware

    with pytest.raises(
        ProcConfigError, match=f"^{option} must be a number of seconds (from 0 to|above 0 and up to) 31536000, got"
    ):
        HireFireMiddleware(host_app, [worker], "s3cret", **{option: value})


def test_every_adapter_in_one_process_shares_one_collection(worker):
    import flask

    from hirefire_exporter.contrib.asgi import HireFireMiddleware as AsgiMiddleware
    from hirefire_exporter.contrib.flask.blueprint import build_hirefire_blueprint
    from hirefire_exporter.contrib.tornado.handlers import hirefire_handlers
    from hirefire_exporter.contrib.wsgi import HireFireMiddleware

    wsgi = HireFireMiddleware(host_app, [worker], "s3cret")
    with_metrics = HireFireMiddleware(host_app, [worker], "s3cret", metrics=True)
    flask_app = flask.Flask(__name__)
    flask_app.register_blueprint(build_hirefire_blueprint("s3cret", [worker]))
    asgi = AsgiMiddleware(lambda scope, receive, send: None, [worker], "s3cret")
    tornado_routes = hirefire_handlers("s3cret", [worker])

    collection = wsgi.exporter.collection
    assert with_metrics.exporter.collection is collection and asgi.exporter is wsgi.exporter
    assert tornado_routes[0][2]["fallback"].wsgi_application is wsgi.exporter
    assert json.loads(Client(wsgi).get("/hirefire/s3cret/info").data) == WORKER
    assert json.loads(flask_app.test_client().get("/hirefire/s3cret/info").data) == WORKER
    assert samples(Client(with_metrics).get("/metrics").get_data(as_text=True), "hirefire_proc_jobs") == {
        ("worker",): 5.0
    }
    assert collection.cycles == 1


def test_queue_time_is_measured_for_every_request_and_served_on_metrics(worker, capsys):
    from hirefire_exporter.contrib import queue_timer
    from hirefire_exporter.contrib.wsgi import HireFireMiddleware

    app = HireFireMiddleware(host_app, [worker], "s3cret", metrics=True, queue_time=queue_timer(log=True))
    contract.check(contract.measures_queue_time("/orders", b"host /orders", metrics=True), getter(app))
    assert len(contract.router_lines(capsys.readouterr().out)) == 1


def test_a_metrics_name_filter_finds_the_queue_time_histogram(worker):
    from hirefire_exporter.contrib import queue_timer
    from hirefire_exporter.contrib.wsgi import HireFireMiddleware

    client = Client(HireFireMiddleware(host_app, [worker], "s3cret", metrics=True, queue_time=queue_timer(log=False)))
    assert client.get("/orders", headers=contract.STAMPED).status_code == 200
    full = client.get("/metrics").get_data(as_text=True)
    only = client.get("/metrics?name[]=hirefire_request_queue_seconds_count").get_data(as_text=True)
    count = samples(full, "hirefire_request_queue_seconds_count")
    assert samples(only, "hirefire_request_queue_seconds_count") == count and count[()] >= 1
    assert samples(only, "hirefire_proc_jobs") == {}


def test_building_every_adapter_talks_to_no_broker():
    """Start-up builds the exporter without broker I/O: a listening 'broker' sees no connection attempt."""
    import socket

    import flask

    from hirefire_exporter.contrib.asgi import HireFireMiddleware as AsgiMiddleware
    from hirefire_exporter.contrib.flask.blueprint import build_hirefire_blueprint
    from hirefire_exporter.contrib.tornado.handlers import hirefire_handlers
    from hirefire_exporter.contrib.wsgi import HireFireMiddleware

    with socket.create_server(("127.0.0.1", 0)) as broker:
        broker.setblocking(False)
        procs = [RQProc("worker", url=f"redis://127.0.0.1:{broker.getsockname()[1]}/0")]
        HireFireMiddleware(host_app, procs, "t", metrics=True)
        AsgiMiddleware(host_app, procs, "t")
        flask.Flask(__name__).register_blueprint(build_hirefire_blueprint("t", procs))
        hirefire_handlers("t", procs)
        with pytest.raises(BlockingIOError):
            broker.accept()
