"""RQ: exact counts from RQ's own storage, written by RQ itself and by a real worker."""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime, timedelta

import pytest
from support import command_counts, count_round_trips, samples, start_rq_worker, stop, wait_until
from werkzeug.test import Client

from hirefire_exporter.app import ExporterApp
from hirefire_exporter.collection import Collection
from hirefire_exporter.procs.redis_proc import parse_utc
from hirefire_exporter.procs.redis_script import CHUNK_COST
from hirefire_exporter.procs.rq import _QUEUE, RQProc

rq = pytest.importorskip("rq")


@pytest.fixture
def queues(redis_conn):
    return {name: rq.Queue(name, connection=redis_conn) for name in ("high", "default", "low")}


def test_counts_waiting_running_and_due_jobs_over_several_queues(redis_conn, redis_url, queues):
    worker = start_rq_worker(redis_url, "low")
    try:
        running = queues["low"].enqueue("rq_jobs.block_until", redis_url, "release")
        wait_until(lambda: running.get_status(refresh=True) == "started", what="the worker to start the job")
        queues["low"].enqueue("rq_jobs.noop")
        queues["low"].enqueue("rq_jobs.noop")  # the only worker is busy: both wait
        queues["high"].enqueue("rq_jobs.noop")
        queues["high"].enqueue("rq_jobs.noop")
        queues["high"].enqueue_at(datetime.now(UTC) - timedelta(minutes=5), "rq_jobs.noop")  # due
        parent = queues["default"].enqueue("rq_jobs.noop")
        queues["default"].enqueue("rq_jobs.noop")
        queues["default"].enqueue("rq_jobs.noop")
        queues["default"].enqueue("rq_jobs.noop", depends_on=parent)  # deferred: not runnable yet
        queues["default"].enqueue_in(timedelta(hours=1), "rq_jobs.noop")  # scheduled for later

        app = ExporterApp(Collection([RQProc("worker", queues=["high", "default", "low"], url=redis_url)]), "tok")
        client = Client(app)
        info = client.get("/hirefire/tok/info")
        metrics = client.get("/metrics").get_data(as_text=True)

        # high: 2 queued + 1 due; default: 3 queued (deferred and scheduled not counted); low: 2 queued + 1 started
        assert info.status_code == 200
        assert json.loads(info.data) == [{"name": "worker", "value": 9, "quantity": 9}]
        assert samples(metrics, "hirefire_proc_jobs") == {("worker",): 9.0}
        jobs = samples(metrics, "hirefire_queue_jobs")
        expected = {
            "high": {"queued": 2, "started": 0, "due": 1, "scheduled": 0, "deferred": 0, "failed": 0, "expired": 0},
            "default": {"queued": 3, "started": 0, "due": 0, "scheduled": 1, "deferred": 1, "failed": 0, "expired": 0},
            "low": {"queued": 2, "started": 1, "due": 0, "scheduled": 0, "deferred": 0, "failed": 0, "expired": 0},
        }
        assert jobs == {
            ("worker", queue, state): float(n) for queue, states in expected.items() for state, n in states.items()
        }
        assert app.collection.cycles == 1  # /info and /metrics were served from the same cycle

        redis_conn.set("release", 1)
        wait_until(lambda: redis_conn.zcard("rq:finished:low") == 3, what="the worker to finish the 3 'low' jobs")
        snapshot = app.collection.collect()
        assert snapshot.procs[0].reading.quantity == 6  # 3 high + 3 default
    finally:
        stop(worker)


def test_oldest_waiting_job_age_and_latency_proc(redis_conn, redis_url, queues):
    queues["default"].enqueue("rq_jobs.noop")
    queues["default"].enqueue("rq_jobs.noop")
    enqueued = time.time()
    later = enqueued + 120  # the exporter's clock two minutes after the jobs were enqueued
    proc = RQProc("worker", queues=["default", "low"], url=redis_url, metric="latency")
    snapshot = Collection([proc], clock=lambda: later).collect()

    reading = snapshot.procs[0].reading
    by_queue = {q.name: q for q in reading.queues}
    assert 119 <= by_queue["default"].latency <= 121
    assert by_queue["low"].latency == 0.0  # empty queue
    assert 119 <= snapshot.value(snapshot.procs[0]) <= 121  # what HireFire's job-latency manager gets


def test_reads_without_writing_and_ignores_dead_workers_leases(private_redis):
    queue = rq.Queue("default", connection=private_redis)
    queue.enqueue("rq_jobs.noop")
    now = time.time()
    private_redis.zadd("rq:wip:default", {"live-job:exec1": now + 300, "dead-worker-job:exec2": now - 30})
    private_redis.config_resetstat()

    snapshot = Collection([RQProc("worker", connection=private_redis)]).collect()

    jobs = snapshot.procs[0].reading.queues[0].jobs
    assert jobs["queued"] == 1
    assert jobs["started"] == 1  # the expired lease belongs to a dead worker; RQ requeues or fails it
    assert private_redis.zcard("rq:wip:default") == 2  # nothing cleaned up: RQ's registry.count would have
    used = set(command_counts(private_redis))
    # reads only, in the read-only reader script: the counts, rq:queues membership, the oldest live job, the worker
    # registry (SMEMBERS; HMGET of the workers' hashes); ROLE, whether a replica is cut off from its master
    reads = {"role", "llen", "zcount", "zcard", "sismember", "script|load", "evalsha_ro", "lindex", "lrange", "hget"}
    assert used <= reads | {"exists", "smembers", "hmget"}, used


def test_queues_of_one_proc_cost_one_round_trip_with_latency(private_redis, monkeypatch):
    names = [f"q{i}" for i in range(50)]
    for name in names:
        rq.Queue(name, connection=private_redis).enqueue("rq_jobs.noop")
    private_redis.config_resetstat()
    sends = count_round_trips(monkeypatch)

    Collection([RQProc("worker", queues=names, connection=private_redis)]).collect()

    assert len(sends) == 1  # one round trip: the counts and the oldest jobs' ages, read on the server
    counts = command_counts(private_redis)
    assert counts.pop("script|load", 0) <= 1  # the reader script, loaded once per server and process
    # per queue: LLEN of its list, ZCARD of the scheduled registry, ZCOUNT of the running one, one EXISTS for the three
    # keys that are mostly absent (popped, deferred, failed; each read only when it exists), SMEMBERS of its workers
    # (none); the due ZCOUNT only where something is scheduled and SISMEMBER only for a queue with no job at all (none
    # here); per non-empty queue the head of the queue (LINDEX) and the head job's enqueued_at (HGET); all inside
    # calls of the read-only script of at most CHUNK_COST each, all in that one round trip
    assert counts == {
        "smembers": 50,
        "llen": 50,
        "zcount": 50,
        "zcard": 50,
        "exists": 50,
        "evalsha_ro": math.ceil(50 / (CHUNK_COST // _QUEUE.cost)),
        "lindex": 50,
        "hget": 50,
        "role": 1,  # in the same round trip: whether the server is a replica cut off from its master
    }


def test_procs_declared_with_a_connection_and_declaratively(redis_conn, queues):
    queues["default"].enqueue("rq_jobs.noop")

    class WorkerProc(RQProc):
        name = "worker"
        queues = ["default"]
        connection = redis_conn

    client = WorkerProc().client("default")  # the old API: an rq.Queue on the proc's connection
    assert isinstance(client, rq.Queue) and client.count == 1
    assert WorkerProc().quantity() == 1
    assert RQProc("other", queues=["default"], connection=redis_conn).quantity(cache={}) == 1


def expire(redis_conn, *jobs):
    """Make jobs' hashes vanish as a `ttl` does (RQ leaves their ids in the queue)."""
    redis_conn.delete(*(job.key for job in jobs))


def test_expired_jobs_at_the_head_are_passed_over_for_latency_and_not_counted(redis_conn, redis_url, queues):
    default = queues["default"]
    with_ttl = [default.enqueue("rq_jobs.noop", ttl=1) for _ in range(3)]
    wait_until(lambda: not any(redis_conn.exists(job.key) for job in with_ttl), what="the jobs' ttl to pass")
    live = default.enqueue("rq_jobs.noop")
    expire(redis_conn, default.enqueue("rq_jobs.noop"))  # an expired id behind a live job: counted until dropped
    default.enqueue("rq_jobs.noop")
    later = parse_utc(redis_conn.hget(live.key, "enqueued_at")) + 120
    collection = Collection(
        [RQProc("worker", queues=["default"], url=redis_url, metric="latency")], clock=lambda: later
    )
    app = ExporterApp(collection, "tok")

    info = Client(app).get("/hirefire/tok/info")

    assert info.status_code == 200
    assert json.loads(info.data) == [{"name": "worker", "value": 120.0, "quantity": 120.0}]  # the live job's age
    queue = collection.latest.procs[0].reading.queues[0]
    assert (queue.jobs["queued"], queue.jobs["expired"], queue.latency) == (3, 3, 120.0)

    # what RQ workers do with expired ids: drop them, and run the live jobs
    worker = start_rq_worker(redis_url, "default")
    try:
        wait_until(lambda: redis_conn.zcard("rq:finished:default") == 2, what="the worker to run the 2 live jobs")
        wait_until(lambda: redis_conn.llen("rq:queue:default") == 0, what="the worker to drop the expired ids")
    finally:
        stop(worker)


def test_a_queue_of_expired_ids_only_has_no_waiting_job(redis_conn, redis_url, queues):
    expire(redis_conn, *(queues["default"].enqueue("rq_jobs.noop") for _ in range(5)))
    snapshot = Collection([RQProc("worker", url=redis_url, metric="latency")]).collect()
    queue = snapshot.procs[0].reading.queues[0]
    assert (dict(queue.jobs), queue.latency) == (
        {"queued": 0, "started": 0, "due": 0, "scheduled": 0, "deferred": 0, "failed": 0, "expired": 5},
        0.0,
    )
    assert snapshot.value(snapshot.procs[0]) == 0.0


def test_past_the_scan_limit_the_latency_is_unknown_and_every_id_counts(redis_conn, redis_url, queues, monkeypatch):
    monkeypatch.setattr("hirefire_exporter.procs.rq.HEAD_SCAN_LIMIT", 5)
    expire(redis_conn, *(queues["default"].enqueue("rq_jobs.noop") for _ in range(7)))
    queues["default"].enqueue("rq_jobs.noop")
    status = Collection([RQProc("worker", url=redis_url)]).collect().procs[0]
    queue = status.reading.queues[0]
    assert status.up is True
    assert (queue.jobs["queued"], queue.jobs["expired"], queue.latency) == (3, 5, None)


def test_a_read_only_acl_user_with_the_script_reads_everything(private_redis):
    """The least-privilege user the operations guide gives: read commands, plus EVALSHA and SCRIPT LOAD."""
    private_redis.execute_command(
        "ACL", "SETUSER", "hirefire", "on", ">pw", "~*", "-@all", "+@read", "+@connection", "+evalsha", "+script|load"
    )
    queue = rq.Queue("default", connection=private_redis)
    expire(private_redis, queue.enqueue("rq_jobs.noop"))
    queue.enqueue("rq_jobs.noop")
    server = private_redis.connection_pool.connection_kwargs
    url = f"redis://hirefire:pw@{server['host']}:{server['port']}/0"

    try:
        status = Collection([RQProc("worker", url=url, metric="latency")]).collect().procs[0]
    finally:
        private_redis.execute_command("ACL", "DELUSER", "hirefire")  # the server outlives the test

    assert status.up, status.error
    queue_reading = status.reading.queues[0]
    assert (queue_reading.jobs["queued"], queue_reading.jobs["expired"], queue_reading.found) == (1, 1, True)
    assert queue_reading.latency is not None and queue_reading.latency < 60
