"""HotQueue: exact counts of real HotQueue queues, the old package's API, faults and TOML declaration."""

from __future__ import annotations

import json

import pytest
from conftest import free_port
from support import samples
from werkzeug.test import Client

from hirefire_exporter.app import create_app
from hirefire_exporter.config import load_settings
from hirefire_exporter.loading import load_procs
from hirefire_exporter.procs.base import ProcConfigError
from hirefire_exporter.procs.hotqueue import HotQueueProc

hotqueue = pytest.importorskip("hotqueue")


@pytest.fixture
def params(redis_conn) -> dict:
    """``connection_params`` for the test database, as the old package took them."""
    kwargs = redis_conn.connection_pool.connection_kwargs
    return {"host": kwargs["host"], "port": kwargs["port"], "db": kwargs["db"]}


def fill(params: dict, **sizes: int) -> None:
    """Put ``n`` messages on each named queue with HotQueue itself."""
    for name, n in sizes.items():
        hotqueue.HotQueue(name, **params).put(*({"job": i} for i in range(n)))


def test_counts_every_queue_and_a_missing_queue_is_empty(params, redis_url):
    fill(params, emails=3, reports=5)
    hotqueue.HotQueue("reports", **params).get()  # a worker took one: HotQueue keeps no trace of it
    app = create_app([HotQueueProc("worker", queues=["emails", "reports", "nothing"], url=redis_url)], "tok")
    client = Client(app)

    info = client.get("/hirefire/tok/info")
    metrics = client.get("/metrics").get_data(as_text=True)

    assert info.status_code == 200
    assert json.loads(info.data) == [{"name": "worker", "value": 7, "quantity": 7}]
    assert samples(metrics, "hirefire_queue_jobs") == {
        ("worker", "emails", "queued"): 3.0,
        ("worker", "reports", "queued"): 4.0,
        ("worker", "nothing", "queued"): 0.0,
    }
    assert samples(metrics, "hirefire_proc_latency_seconds") == {}  # HotQueue messages carry no timestamp
    assert samples(metrics, "hirefire_proc_up") == {("worker",): 1.0}


def test_the_old_api_connection_params_client_and_hotqueue_objects(params):
    fill(params, emails=2, reports=1)

    class WorkerHotQueueProc(HotQueueProc):
        name = "worker"
        queues = ["emails", "reports"]
        connection_params = params

    proc = WorkerHotQueueProc()
    assert proc.quantity() == 3
    client = proc.client("emails")  # a HotQueue on the proc's Redis client, as the old ClientProc gave
    assert isinstance(client, hotqueue.HotQueue) and len(client) == 2 and client.get() == {"job": 0}
    assert [len(c) for c in proc.clients] == [1, 1]

    assert HotQueueProc(params, "old-signature", ["emails", "reports"]).quantity(cache={}) == 2
    objects = HotQueueProc("objects", queues=[hotqueue.HotQueue("emails", **params), "reports"])
    assert objects.queues == ["emails", "reports"] and objects.quantity() == 2  # on the objects' own connection


def test_a_key_of_the_wrong_type_fails_only_its_own_proc(params, redis_conn, redis_url):
    fill(params, emails=4)
    redis_conn.set("hotqueue:garbage", "not a list")
    procs = [
        HotQueueProc("broken", queues=["garbage"], url=redis_url),
        HotQueueProc("worker", queues=["emails"], url=redis_url),
    ]
    client = Client(create_app(procs, "tok"))

    info = client.get("/hirefire/tok/info")
    metrics = client.get("/metrics").get_data(as_text=True)

    assert info.status_code == 503 and json.loads(info.data)["procs"] == ["broken"]
    assert samples(metrics, "hirefire_proc_up") == {("broken",): 0.0, ("worker",): 1.0}
    assert samples(metrics, "hirefire_proc_jobs") == {("worker",): 4.0}  # nothing at all for the broken one


def test_redis_down_is_a_failed_proc_never_zero():
    down = HotQueueProc("worker", queues=["emails"], connection_params={"port": free_port(), "socket_timeout": 1})
    client = Client(create_app([down], "tok", timeout=1))  # redis-py retries a refused connection for ~3 s

    info = client.get("/hirefire/tok/info")
    metrics = client.get("/metrics").get_data(as_text=True)

    assert info.status_code == 503 and json.loads(info.data)["procs"] == ["worker"]
    assert samples(metrics, "hirefire_proc_up") == {("worker",): 0.0}
    assert samples(metrics, "hirefire_proc_jobs") == {} and samples(metrics, "hirefire_queue_jobs") == {}


def test_declared_in_toml_with_a_url_or_connection_params(params, redis_url, tmp_path):
    fill(params, emails=2, reports=3)
    config = tmp_path / "exporter.toml"
    config.write_text(
        f'[[procs]]\nname = "worker"\nbackend = "hotqueue"\nurl = "{redis_url}"\nqueues = ["emails", "reports"]\n\n'
        f'[[procs]]\nname = "mailer"\nbackend = "hotqueue"\nqueues = ["emails"]\n'
        f'connection_params = {{ host = "{params["host"]}", port = {params["port"]}, db = {params["db"]} }}\n'
    )
    procs = load_procs(load_settings(config=str(config)).procs)
    assert [(p.name, p.quantity()) for p in procs] == [("worker", 5), ("mailer", 2)]


def test_bad_configuration_is_a_start_up_error_naming_the_proc(redis_url):
    with pytest.raises(ProcConfigError, match=r"'worker'.*bad Redis connection settings.*'hots'"):
        load_procs([HotQueueProc("worker", queues=["q"], connection_params={"hots": "x"})])
    with pytest.raises(ProcConfigError, match="give one of `connection`, `url` or `connection_params`"):
        load_procs([HotQueueProc("worker", queues=["q"], url=redis_url, connection_params={})])
    with pytest.raises(ProcConfigError, match="cannot measure job latency"):
        load_procs([HotQueueProc("worker", queues=["q"], url=redis_url, metric="latency")])
    with pytest.raises(ProcConfigError, match="needs at least one queue"):
        load_procs([HotQueueProc("worker", url=redis_url)])
