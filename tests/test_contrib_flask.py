"""The Flask blueprint with Flask's test client, backed by real Redis."""

from __future__ import annotations

import gc
import json

import pytest
from conftest import free_port
from support import samples

from hirefire_exporter import contrib
from hirefire_exporter.procs.base import ProcConfigError
from hirefire_exporter.procs.rq import RQProc

flask = pytest.importorskip("flask")
rq = pytest.importorskip("rq")

from hirefire_exporter.contrib.flask.blueprint import build_hirefire_blueprint  # noqa: E402

WORKER = [{"name": "worker", "value": 3, "quantity": 3}]


@pytest.fixture(autouse=True)
def _fresh_registry():
    yield
    contrib.reset()
    gc.collect()  # close what this test left behind now, not during a later test that counts fds


@pytest.fixture
def worker(redis_conn) -> RQProc:
    queue = rq.Queue("default", connection=redis_conn)
    for _ in range(3):
        queue.enqueue("rq_jobs.noop")
    return RQProc("worker", connection=redis_conn)


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


def test_the_blueprint_serves_info_header_test_and_token_checks(worker):
    client = make_app("s3cret", [worker]).test_client()
    info = client.get("/hirefire/s3cret/info")
    assert (info.status_code, info.mimetype, json.loads(info.data)) == (200, "application/json", WORKER)
    assert info.headers["HireFire-Resource"].startswith("Python-hirefire-exporter-")
    assert json.loads(client.get("/hirefire", headers={"HireFire-Token": "s3cret"}).data) == WORKER
    assert client.get("/hirefire/test").get_data(as_text=True) == "HireFire Middleware Found!"
    assert client.get("/hirefire/wrong/info").status_code == 404
    assert client.get("/hirefire", headers={"HireFire-Token": "s3cre"}).status_code == 404
    assert client.get("/metrics").get_data(as_text=True) == "the app's own metrics"  # off by default
    assert client.get("/orders").get_data(as_text=True) == "orders"


def test_metrics_when_enabled_and_a_url_prefix(worker):
    app = flask.Flask(__name__)
    app.register_blueprint(build_hirefire_blueprint("s3cret", [worker], metrics=True), url_prefix="/ops")
    client = app.test_client()
    assert json.loads(client.get("/ops/hirefire/s3cret/info").data) == WORKER
    assert samples(client.get("/ops/metrics").get_data(as_text=True), "hirefire_proc_jobs") == {("worker",): 3.0}


def test_a_broker_outage_leaves_the_apps_other_routes_alone():
    down = RQProc("worker", url=f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1)
    client = make_app("s3cret", [down]).test_client()
    info = client.get("/hirefire/s3cret/info")
    assert info.status_code == 503 and json.loads(info.data)["procs"] == ["worker"]
    assert client.get("/orders").get_data(as_text=True) == "orders"


def test_queue_time_hook_measures_every_request(worker, capsys):
    client = make_app("s3cret", [worker], queue_time=True).test_client()
    assert client.get("/orders", headers={"X-Request-Start": "t=1700000000000"}).get_data(as_text=True) == "orders"
    assert client.get("/orders", headers={"X-Request-Start": "garbage"}).get_data(as_text=True) == "orders"
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[hirefire:router]")]
    assert len(lines) == 1


def test_a_bad_proc_path_fails_when_the_blueprint_is_built():
    with pytest.raises(
        ProcConfigError,
        match=r"^build_hirefire_blueprint procs: module 'hirefire_exporter.procs.rq' has no attribute 'Nope'$",
    ):
        build_hirefire_blueprint("s3cret", ["hirefire_exporter.procs.rq.Nope"])
