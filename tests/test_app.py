"""The HTTP contract: routes, tokens, headers, and the JSON HireFire reads."""

from __future__ import annotations

import json
import logging

import pytest
from werkzeug.test import Client

from hirefire_exporter import __version__
from hirefire_exporter.app import ExporterApp, create_app
from hirefire_exporter.collection import Collection
from hirefire_exporter.procs.base import Proc
from hirefire_exporter.procs.rq import RQProc

rq = pytest.importorskip("rq")


class Fixed(Proc):
    queues = ["default"]

    def __init__(self, name: str, jobs: int) -> None:
        super().__init__(name)
        self.jobs = jobs

    def quantity(self, **kwargs) -> int:
        return self.jobs


@pytest.fixture
def client(redis_conn) -> Client:
    queue = rq.Queue("default", connection=redis_conn)
    for _ in range(5):
        queue.enqueue("rq_jobs.noop")
    procs = [RQProc("worker", connection=redis_conn), Fixed("mailer", 2)]
    return Client(ExporterApp(Collection(procs), "s3cret-token"))


def test_info_lists_every_proc_in_configured_order_with_value_and_quantity(client):
    response = client.get("/hirefire/s3cret-token/info")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert json.loads(response.data) == [
        {"name": "worker", "value": 5, "quantity": 5},
        {"name": "mailer", "value": 2, "quantity": 2},
    ]
    assert response.headers["Cache-Control"] == "must-revalidate, private, max-age=0"
    assert response.headers["HireFire-Resource"] == f"Python-hirefire-exporter-{__version__}"


def test_token_in_the_header_route(client):
    response = client.get("/hirefire", headers={"HireFire-Token": "s3cret-token"})
    assert response.status_code == 200 and json.loads(response.data)[0]["value"] == 5


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/hirefire/wrong/info", {}),
        ("/hirefire/s3cret-toke/info", {}),
        ("/hirefire/s3cret-token-and-more/info", {}),
        ("/hirefire/development/info", {}),
        ("/hirefire", {"HireFire-Token": "wrong"}),
        ("/hirefire", {}),
    ],
)
def test_a_wrong_or_missing_token_is_a_404_like_any_unknown_path(client, path, headers):
    unknown = client.get("/no/such/path")
    response = client.get(path, headers=headers)
    assert response.status_code == 404
    assert response.data == unknown.data
    assert "s3cret" not in response.get_data(as_text=True)


def test_hirefire_test_page_healthz_and_methods(client):
    test = client.get("/hirefire/test")
    assert (test.status_code, test.mimetype, test.get_data(as_text=True)) == (
        200,
        "text/plain",
        "HireFire Middleware Found!",
    )
    assert client.get("/healthz").status_code == 200
    assert client.post("/hirefire/s3cret-token/info").status_code == 405


def test_metrics_speaks_prometheus_text_and_openmetrics(client):
    plain = client.get("/metrics")
    assert plain.status_code == 200 and plain.mimetype == "text/plain"
    assert 'hirefire_proc_jobs{proc="worker"} 5.0' in plain.get_data(as_text=True)
    open_metrics = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert open_metrics.mimetype == "application/openmetrics-text"
    assert open_metrics.get_data(as_text=True).rstrip().endswith("# EOF")


def test_without_a_configured_token_development_is_accepted_with_a_warning(monkeypatch, caplog):
    monkeypatch.delenv("HIREFIRE_TOKEN", raising=False)
    with caplog.at_level(logging.WARNING, "hirefire_exporter"):
        client = Client(create_app([Fixed("worker", 3)]))
    assert "no HireFire token configured" in caplog.text
    assert json.loads(client.get("/hirefire/development/info").data) == [{"name": "worker", "value": 3, "quantity": 3}]


def test_the_token_comes_from_hirefire_token_when_not_given(monkeypatch):
    monkeypatch.setenv("HIREFIRE_TOKEN", "from-env")
    client = Client(create_app([Fixed("worker", 3)]))
    assert client.get("/hirefire/from-env/info").status_code == 200
    assert client.get("/hirefire/development/info").status_code == 404


def test_a_latency_proc_reports_seconds_as_value(redis_conn):
    rq.Queue("default", connection=redis_conn).enqueue("rq_jobs.noop")
    later = __import__("time").time() + 42
    collection = Collection([RQProc("worker", connection=redis_conn, metric="latency")], clock=lambda: later)
    (entry,) = json.loads(Client(ExporterApp(collection, "t")).get("/hirefire/t/info").data)
    assert entry["name"] == "worker" and isinstance(entry["value"], float)
    assert 41 <= entry["value"] <= 43 and entry["quantity"] == entry["value"]


def test_metrics_can_be_switched_off(redis_conn):
    client = Client(ExporterApp(Collection([Fixed("worker", 1)]), "t", metrics=False))
    assert client.get("/metrics").status_code == 404
    assert client.get("/hirefire/t/info").status_code == 200


def test_metrics_bodies_are_encoded_once_per_snapshot_and_stay_exact(redis_conn):
    import gzip

    from prometheus_client import CollectorRegistry, Counter
    from support import without_requests

    queue = rq.Queue("default", connection=redis_conn)
    queue.enqueue("rq_jobs.noop")
    live = Counter("web_requests", "A live metric, changing between snapshots.", registry=CollectorRegistry())
    collection = Collection([RQProc("worker", connection=redis_conn)], max_age=60, stale_after=120)
    client = Client(ExporterApp(collection, "t", collectors=[live]))
    open_metrics = {"Accept": "application/openmetrics-text; version=1.0.0"}

    first = client.get("/metrics", headers=open_metrics).get_data(as_text=True)
    live.inc()
    second = client.get("/metrics", headers=open_metrics).get_data(as_text=True)
    assert 'hirefire_proc_jobs{proc="worker"} 1.0' in second
    assert "web_requests_total 0.0" in first and "web_requests_total 1.0" in second  # live part: fresh every scrape
    assert second.count("# EOF") == 1 and second.endswith("# EOF\n")
    assert collection.cycles == 1

    zipped = client.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert without_requests(gzip.decompress(zipped.data)) == without_requests(client.get("/metrics").data)

    queue.enqueue("rq_jobs.noop")
    collection.max_age = 0  # the next scrape runs a new cycle: its body must say so
    assert 'hirefire_proc_jobs{proc="worker"} 2.0' in client.get("/metrics").get_data(as_text=True)

    filtered = client.get("/metrics?name[]=hirefire_proc_up").get_data(as_text=True)
    assert 'hirefire_proc_up{proc="worker"} 1.0' in filtered and "hirefire_proc_jobs" not in filtered
