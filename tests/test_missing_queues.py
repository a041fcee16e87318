"""A queue that does not exist reads as 0 jobs, like an empty one, but says so: ``found`` on its QueueReading, the
series ``hirefire_queue_found{proc,queue}`` and one warning per queue, so that a typo in ``queues`` shows on day one.
The proc stays up: 0 is the truth for a queue nobody sends to."""

from __future__ import annotations

import logging
from datetime import timedelta

import huey
import pytest
from celery_app_support import Worker, app_for, unique, wait_for
from support import samples
from werkzeug.test import Client

from hirefire_exporter.app import ExporterApp
from hirefire_exporter.collection import Collection
from hirefire_exporter.procs.celery import CeleryProc
from hirefire_exporter.procs.hotqueue import HotQueueProc
from hirefire_exporter.procs.huey import HueyProc
from hirefire_exporter.procs.queues import QueuesProc
from hirefire_exporter.procs.rq import RQProc

rq = pytest.importorskip("rq")


def found(collection: Collection) -> dict[tuple[str, str], float]:
    """The hirefire_queue_found series /metrics serves for ``collection``."""
    metrics = Client(ExporterApp(collection, "t")).get("/metrics").get_data(as_text=True)
    return samples(metrics, "hirefire_queue_found")


def test_rq_queue_with_a_typo_reads_zero_says_not_found_and_warns_once(redis_conn, redis_url, caplog):
    rq.Queue("default", connection=redis_conn).enqueue("rq_jobs.noop")
    drained = rq.Queue("drained", connection=redis_conn)
    drained.enqueue("rq_jobs.noop")
    redis_conn.delete(drained.key)  # as a worker leaves it: empty, but RQ knows the queue (rq:queues)
    rq.Queue("later", connection=redis_conn).enqueue_in(timedelta(hours=1), "rq_jobs.noop")  # only a scheduled job
    collection = Collection([RQProc("worker", queues=["default", "drained", "later", "defualt"], url=redis_url)])

    with caplog.at_level(logging.WARNING, logger="hirefire_exporter"):
        snapshot = collection.collect()
        collection.collect()

    status = snapshot.procs[0]
    assert status.up and status.reading.quantity == 1
    assert [(q.name, q.quantity, q.found) for q in status.reading.queues] == [
        ("default", 1, True),
        ("drained", 0, True),
        ("later", 0, True),
        ("defualt", 0, False),
    ]
    assert found(collection) == {
        ("worker", "default"): 1.0,
        ("worker", "drained"): 1.0,
        ("worker", "later"): 1.0,
        ("worker", "defualt"): 0.0,
    }
    warnings = [r.getMessage() for r in caplog.records if "not found" in r.getMessage()]
    assert warnings == [
        "proc 'worker': queue 'defualt' not found on the broker: it reads as 0 jobs (a typo in `queues`, the wrong"
        " database or key prefix, or no job was ever sent to it?)"
    ]  # once over two cycles


def test_celery_redis_queue_found_from_kombus_binding_tables(redis_conn, redis_url, workers):
    consumed, routed, sent_to = unique("consumed"), unique("routed"), unique("sent")
    exchange = unique("ex")
    spec = [[consumed, "", "direct", consumed, 0], [routed, exchange, "topic", "a.#", 0]]
    app = app_for(redis_url, spec)
    proc = CeleryProc("worker", queues=[consumed, routed, sent_to, consumed + "x"], app=app)
    collection = Collection([proc])
    assert [q.found for q in collection.collect().procs[0].reading.queues] == [False] * 4  # nothing declared yet

    workers.append(Worker(redis_url, spec, redis_url))  # a worker declares the queues it consumes
    app.send_task("hirefire_test.block", args=["k"], queue=sent_to)  # a producer sending to one declares it too
    wait_for(lambda: all(q.found for q in proc.read({}).queues[:2]), "the worker to declare its queues")
    workers.pop().stop()
    redis_conn.delete(sent_to)  # its message gone: the queue is empty, and exists

    status = collection.collect().procs[0]
    assert status.up and status.reading.quantity == 0
    assert [q.found for q in status.reading.queues] == [True, True, True, False]


def test_backends_that_cannot_tell_publish_no_found_series(redis_conn, redis_url, tmp_path):
    """HotQueue, the queues library's Redis lists and Huey keep nothing but the jobs: an empty queue leaves no trace,
    so whether it exists cannot be told (None) and no series is published."""
    procs = [
        HotQueueProc("hot", queues=["a"], url=redis_url),
        QueuesProc("plain", queues=["a"], url=redis_url),
        HueyProc("huey", huey=huey.RedisHuey("a", url=redis_url)),
        HueyProc("sqlite", huey=huey.SqliteHuey("a", filename=str(tmp_path / "h.db"))),
    ]
    collection = Collection(procs)
    snapshot = collection.collect()
    assert all(s.up for s in snapshot.procs)
    assert {q.found for s in snapshot.procs for q in s.reading.queues} == {None}
    assert found(collection) == {}
