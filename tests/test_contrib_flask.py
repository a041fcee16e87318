"""The Flask blueprint with Flask's test client, backed by real Redis."""

from __future__ import annotations

import adapter_contract as contract
import pytest
from conftest import free_port

from hirefire_exporter.procs.base import ProcConfigError
from hirefire_exporter.procs.rq import RQProc

flask = pytest.importorskip("flask")
pytest.importorskip("rq")

from hirefire_exporter.contrib.flask.blueprint import build_hirefire_blueprint  # noqa: E402

JOBS = 3
ORDERS = {"/orders": (200, b"orders")}
OWN = {**ORDERS, "/metrics": (200, b"the app's own metrics")}

_fresh_registry = pytest.fixture(autouse=True)(contract.fresh_registry)


@pytest.fixture
def worker(redis_conn) -> RQProc:
    return contract.rq_worker(redis_conn, JOBS)


def make_app(*args, url_prefix: str | None = None, **kwargs) -> flask.Flask:
    app = flask.Flask(__name__)
    app.register_blueprint(build_hirefire_blueprint(*args, **kwargs), url_prefix=url_prefix)

    @app.route("/orders")
    def orders() -> str:
        return "orders"

    @app.route("/metrics")
    def own_metrics() -> str:
        return "the app's own metrics"

    return app


def getter(app: flask.Flask) -> contract.Get:
    client = app.test_client()

    def get(path: str, headers: contract.Headers) -> contract.Reply:
        response = client.get(path, headers=headers)
        return contract.Reply(response.status_code, response.headers, response.data)

    return get


def test_the_blueprint_serves_info_header_test_and_token_checks(worker):
    app = make_app("s3cret", [worker])
    contract.check(contract.serves_hirefire(JOBS, metrics=False, host=OWN), getter(app))  # /metrics off by default


def test_metrics_when_enabled_and_a_url_prefix(worker):
    app = make_app("s3cret", [worker], metrics=True, url_prefix="/ops")
    contract.check(contract.serves_hirefire(JOBS, metrics=True, host=OWN, prefix="/ops"), getter(app))


def test_a_broker_outage_leaves_the_apps_other_routes_alone():
    down = RQProc("worker", url=f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1)
    app = make_app("s3cret", [down])
    contract.check(contract.broker_down(metrics=False, host=ORDERS, token="s3cret"), getter(app))


def test_queue_time_hook_measures_every_request(worker, capsys):
    app = make_app("s3cret", [worker], queue_time=True)
    contract.check(contract.measures_queue_time("/orders", b"orders", metrics=False), getter(app))
    assert len(contract.router_lines(capsys.readouterr().out)) == 1


def test_a_bad_proc_path_fails_when_the_blueprint_is_built():
    with pytest.raises(
        ProcConfigError,
        match=r"^build_hirefire_blueprint procs: module 'hirefire_exporter.procs.rq' has no attribute 'Nope'$",
    ):
        build_hirefire_blueprint("s3cret", ["hirefire_exporter.procs.rq.Nope"])
