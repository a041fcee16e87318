"""``/readyz``: ready once every proc has a usable reading; answered from what the collection holds, never waiting."""

from __future__ import annotations

import time

import pytest
from support import wait_until
from werkzeug.test import Client

from hirefire_exporter.app import ExporterApp
from hirefire_exporter.collection import Collection
from hirefire_exporter.contrib import exporter_app, reset
from hirefire_exporter.procs.rq import RQProc

rq = pytest.importorskip("rq")


def test_not_ready_before_the_first_cycle_without_waiting_for_it_then_ready(killable_redis):
    """A stalled broker (SIGSTOP) holds the first cycle for its timeout: /readyz answers meanwhile, from nothing."""
    killable_redis.pause()
    collection = Collection([RQProc("worker", url=killable_redis.url)], timeout=3)
    client = Client(ExporterApp(collection, "t"))
    try:
        response = client.get("/readyz")
        assert (response.status_code, response.get_data(as_text=True)) == (
            503,
            "not ready: no collection has finished yet\n",
        )
        assert response.mimetype == "text/plain" and response.headers["Cache-Control"] == "no-store"
        assert collection.latest is None  # the cycle it started is still held by the broker: nobody waited for it
    finally:
        killable_redis.resume()
    response = wait_until(lambda: (r := client.get("/readyz")).status_code == 200 and r, what="/readyz to be 200")
    assert response.get_data(as_text=True) == "ready\n"
    assert client.get("/hirefire/t/info").status_code == 200


def test_a_proc_without_a_reading_is_named_and_the_others_are_not(redis_conn, redis_url):
    rq.Queue("default", connection=redis_conn).enqueue("rq_jobs.noop")
    procs = [RQProc("worker", url=redis_url), RQProc("urgent", url="redis://127.0.0.1:1/0")]
    collection = Collection(procs, max_age=60, stale_after=120)
    client = Client(ExporterApp(collection, "t"))
    collection.collect()
    response = client.get("/readyz")
    assert (response.status_code, response.get_data(as_text=True)) == (
        503,
        "not ready: no usable reading of urgent (none yet)\n",
    )
    assert client.get("/hirefire/t/info").status_code == 503  # what HireFire would get from this replica
    assert collection.cycles == 1  # a snapshot younger than max_age: /readyz started no refresh


def test_ready_while_a_failed_proc_s_last_reading_is_served_then_not_once_it_is_too_old(killable_redis):
    now = [time.time()]
    collection = Collection(
        [RQProc("worker", url=killable_redis.url)], max_age=60, stale_after=90, clock=lambda: now[0]
    )
    client = Client(ExporterApp(collection, "t"))
    collection.collect()
    assert client.get("/readyz").status_code == 200
    killable_redis.kill()
    now[0] += 50
    assert not collection.collect().procs[0].up
    assert (client.get("/readyz").status_code, client.get("/hirefire/t/info").status_code) == (200, 200)
    now[0] += 50  # the last reading is now 100 s old: over stale_after
    response = client.get("/readyz")
    assert (response.status_code, response.get_data(as_text=True)) == (
        503,
        "not ready: no usable reading of worker (too old)\n",
    )
    assert client.get("/hirefire/t/info").status_code == 503


def test_a_replica_that_is_not_ready_recovers_without_any_other_traffic(killable_redis):
    """Taken out of rotation, a replica gets probes only: each probe that finds it not ready starts a background
    refresh (never waited for), so it becomes ready once its broker answers again."""
    killable_redis.kill()
    collection = Collection([RQProc("worker", url=killable_redis.url)], max_age=0, stale_after=10, timeout=1)
    client = Client(ExporterApp(collection, "t"))
    collection.collect()
    assert client.get("/readyz").status_code == 503
    killable_redis.start()
    wait_until(lambda: client.get("/readyz").status_code == 200, what="/readyz to recover")


def test_the_framework_adapters_leave_readyz_to_the_host_app_as_they_leave_healthz(redis_url):
    try:
        app = exporter_app([RQProc("worker", url=redis_url)], "t")
        assert not app.handles("/readyz") and not app.handles("/healthz")
        assert Client(app).get("/readyz").status_code == 404
        standalone = ExporterApp(app.collection, "t")
        assert standalone.handles("/readyz") and standalone.handles("/healthz")
    finally:
        reset()
