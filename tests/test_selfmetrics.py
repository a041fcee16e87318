"""The exporter's own metrics, counted exactly after real requests and cycles; and a server configured by its
environment alone (Heroku config vars), end to end."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time

import pytest
from conftest import free_port
from support import http_get, samples, wait_until
from test_settings import clean_env
from werkzeug.test import Client

from hirefire_exporter import __version__
from hirefire_exporter.app import ExporterApp, build_collection
from hirefire_exporter.collection import Collection
from hirefire_exporter.procs.rq import RQProc

rq = pytest.importorskip("rq")


def metrics(client: Client) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200
    return response.get_data(as_text=True)


def test_requests_are_counted_by_route_and_status_never_by_raw_path(redis_conn, redis_url):
    rq.Queue("default", connection=redis_conn).enqueue("rq_jobs.noop")
    collection = Collection([RQProc("worker", url=redis_url)], max_age=60, stale_after=120)
    client = Client(ExporterApp(collection, "t0ken"))
    for path, times in [
        ("/hirefire/t0ken/info", 3),
        ("/hirefire/wrong/info", 2),
        ("/hirefire/test", 1),
        ("/healthz", 2),
        ("/readyz", 1),
        ("/no/such/path", 1),
        ("/also/unknown?x=1", 1),
    ]:
        for _ in range(times):
            client.get(path)
    client.get("/hirefire", headers={"HireFire-Token": "t0ken"})
    client.post("/metrics")
    first = samples(metrics(client), "hirefire_exporter_requests_total")
    assert first == {
        ("hirefire_info", "200"): 4,
        ("hirefire_info", "404"): 2,
        ("hirefire_test", "200"): 1,
        ("healthz", "200"): 2,
        ("readyz", "200"): 1,
        ("other", "404"): 2,
        ("other", "405"): 1,
    }  # the scrape itself is counted once answered: in the next one
    second = samples(metrics(client), "hirefire_exporter_requests_total")
    assert second == {**first, ("metrics", "200"): 1}


def test_cycles_are_counted_by_outcome(redis_url):
    procs = [RQProc("worker", url=redis_url), RQProc("urgent", url="redis://127.0.0.1:1/0")]
    both = Collection(procs, max_age=60, stale_after=120)
    for _ in range(3):
        both.collect()
    down = Collection(procs[1:], max_age=60, stale_after=120)
    down.collect()
    up = Collection(procs[:1], max_age=60, stale_after=120)
    up.collect()
    up.collect()
    counted = {
        name: samples(metrics(Client(ExporterApp(c, "t"))), "hirefire_exporter_cycles_total")
        for name, c in (("both", both), ("down", down), ("up", up))
    }
    assert counted == {
        "both": {("ok",): 0, ("partial",): 3, ("failed",): 0},
        "down": {("ok",): 0, ("partial",): 0, ("failed",): 1},
        "up": {("ok",): 2, ("partial",): 0, ("failed",): 0},
    }


def test_shared_store_reads_are_counted_by_result(redis_conn, redis_url):
    rq.Queue("default", connection=redis_conn).enqueue("rq_jobs.noop")
    procs = lambda: [RQProc("worker", url=redis_url)]  # noqa: E731
    collector = build_collection(procs(), max_age=60, stale_after=120, share=redis_url)
    reader = build_collection(procs(), max_age=60, stale_after=120, share=redis_url)
    solo = Collection(procs(), max_age=60, stale_after=120)
    try:
        collector_client, reader_client = Client(ExporterApp(collector, "t")), Client(ExporterApp(reader, "t"))
        collector_client.get("/hirefire/t/info")  # no snapshot in the store: it collects and publishes
        reader_client.get("/hirefire/t/info")  # finds it
        assert (collector.cycles, reader.cycles) == (1, 0)
        reads = {
            name: samples(metrics(client), "hirefire_exporter_shared_reads_total")
            for name, client in (("collector", collector_client), ("reader", reader_client))
        }
        assert reads == {
            "collector": {("none",): 1, ("snapshot",): 0, ("unreadable",): 0, ("unreachable",): 0},
            "reader": {("none",): 0, ("snapshot",): 1, ("unreadable",): 0, ("unreachable",): 0},
        }
        assert "hirefire_exporter_shared_reads" not in metrics(Client(ExporterApp(solo, "t")))  # sharing off
    finally:
        collector.close()
        reader.close()


def test_build_info_each_app_s_own_counts_and_the_dyno_label(monkeypatch):
    collection = Collection([RQProc("worker", url="redis://127.0.0.1:1/0")], max_age=60, stale_after=120)
    one, two = Client(ExporterApp(collection, "t")), Client(ExporterApp(collection, "t"))  # no registry clash
    one.get("/healthz")
    text = metrics(one)
    assert samples(text, "hirefire_exporter_build_info") == {
        (platform.python_version(), __version__): 1.0
    }  # labels sorted by name
    assert samples(text, "hirefire_exporter_requests_total") == {("healthz", "200"): 1}
    assert samples(metrics(two), "hirefire_exporter_requests_total") == {}
    monkeypatch.setenv("DYNO", "web.3")
    labelled = samples(metrics(one), "hirefire_exporter_requests_total")
    assert labelled == {("web.3", "healthz", "200"): 1, ("web.3", "metrics", "200"): 1}
    assert samples(metrics(one), "hirefire_proc_up") == {("worker",): 0.0}  # the snapshot's series: no dyno label


def test_a_server_configured_by_its_environment_alone(tmp_path, redis_conn, redis_url):
    """Heroku config vars and nothing else: procs, port, token, timing, bearer token and log level from the
    environment. The server collects its first cycle at start-up, so /readyz turns 200 with no other request."""
    project = tmp_path / "myapp"
    project.mkdir()
    (project / "__init__.py").write_text("")
    (project / "procs.py").write_text(
        "import os\nfrom hirefire_exporter.procs.rq import RQProc\n\n"
        "worker = RQProc('worker', url=os.environ['REDIS_URL'])\n"
    )
    for _ in range(4):
        rq.Queue("default", connection=redis_conn).enqueue("rq_jobs.noop")
    port = free_port()
    token = "b" * 24
    env = clean_env(
        HIREFIRE_PROCS="myapp.procs.worker",
        REDIS_URL=redis_url,
        PORT=str(port),
        HIREFIRE_HOST="127.0.0.1",
        HIREFIRE_TOKEN="env-token",
        HIREFIRE_MAX_AGE="60",
        HIREFIRE_STALE_AFTER="120",
        HIREFIRE_METRICS_TOKEN=token,
        HIREFIRE_THREADS="2",
        HIREFIRE_LOG_LEVEL="WARNING",
        PYTHONPATH=os.pathsep.join([str(tmp_path), clean_env()["PYTHONPATH"]]),
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "hirefire_exporter", "serve"], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    statuses: list[int] = []
    try:

        def ready() -> bool:
            try:
                status, _ = http_get(port, "/readyz", timeout=5)
            except OSError:
                assert server.poll() is None, server.stderr.read()
                return False
            statuses.append(status)
            return status == 200

        wait_until(ready, timeout=30, what="/readyz to answer 200")
        assert http_get(port, "/metrics")[0] == 401
        status, body = http_get(port, "/metrics", headers={"Authorization": f"Bearer {token}"})
        assert status == 200
        text = body.decode()
        assert samples(text, "hirefire_proc_jobs") == {("worker",): 4.0}
        assert samples(text, "hirefire_exporter_cycles_total")[("ok",)] == 1  # the start-up cycle, nothing else
        requests = samples(text, "hirefire_exporter_requests_total")
        assert requests == {
            **({("readyz", "503"): statuses.count(503)} if 503 in statuses else {}),
            ("readyz", "200"): 1,
            ("metrics", "401"): 1,
        }
        assert http_get(port, "/hirefire/env-token/info")[0] == 200
        time.sleep(0)  # (the log level: nothing on stderr below WARNING)
    finally:
        server.terminate()
        server.wait(15)
    assert server.stderr.read() == ""
