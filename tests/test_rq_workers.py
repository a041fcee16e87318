"""RQ workers from RQ's own worker registry, with real ``rq worker`` processes: how many are online, how many run a
job (the floor under which scaling down stops a worker mid-job), and what a killed worker reads as."""

from __future__ import annotations

import json
import os
import signal

import pytest
from faultproxy import RedisProcess
from support import command_counts, count_round_trips, samples, start_rq_worker, stop, wait_until
from test_faults import TOKEN, Clock, Scrape, need_redis_server
from werkzeug.test import Client

from hirefire_exporter.app import ExporterApp
from hirefire_exporter.collection import Collection
from hirefire_exporter.procs.base import Proc, Reading, Workers
from hirefire_exporter.procs.rq import RQProc
from hirefire_exporter.prometheus import SnapshotCollector
from hirefire_exporter.sharing import SharedSnapshots

rq = pytest.importorskip("rq")

WORKER_FAMILIES = ("hirefire_workers", "hirefire_worker_slots", "hirefire_worker_slots_busy", "hirefire_workers_busy")


def worker_lines(text: str) -> list[str]:
    """The sample lines of the four worker metrics in a /metrics body, in order."""
    return [line for line in text.splitlines() if line.split("{")[0] in WORKER_FAMILIES]


def registered(redis_conn, queue: str) -> set[bytes]:
    return redis_conn.smembers(f"rq:workers:{queue}")


def read_workers(proc: RQProc) -> Workers | None:
    return Collection([proc]).collect().procs[0].reading.workers


def test_workers_online_and_busy_each_counted_once_per_proc(redis_conn, redis_url):
    both = start_rq_worker(redis_url, "wrk-high", "wrk-low")  # serves two of the proc's queues: one worker
    low = start_rq_worker(redis_url, "wrk-low")
    other = start_rq_worker(redis_url, "wrk-other")  # another proc's worker
    try:
        wait_until(lambda: len(registered(redis_conn, "wrk-low")) == 2, what="two workers on wrk-low")
        wait_until(lambda: registered(redis_conn, "wrk-other"), what="the worker on wrk-other")
        running = rq.Queue("wrk-high", connection=redis_conn).enqueue("rq_jobs.block_until", redis_url, "release")
        wait_until(lambda: running.get_status(refresh=True) == "started", what="the worker to start the job")
        rq.Queue("wrk-high", connection=redis_conn).enqueue("rq_jobs.noop")  # waits: its only worker is busy

        procs = [
            RQProc("worker", queues=["wrk-high", "wrk-low"], url=redis_url),
            RQProc("other", queues=["wrk-other"], url=redis_url),
            RQProc("nobody", queues=["wrk-none"], url=redis_url),  # no worker ever registered: 0 online, known
        ]
        app = ExporterApp(Collection(procs), "tok")
        client = Client(app)
        metrics = client.get("/metrics").get_data(as_text=True)
        info = json.loads(client.get("/hirefire/tok/info").data)

        assert worker_lines(metrics) == [
            'hirefire_workers{proc="worker"} 2.0',
            'hirefire_workers{proc="other"} 1.0',
            'hirefire_workers{proc="nobody"} 0.0',
            'hirefire_worker_slots{proc="worker"} 2.0',
            'hirefire_worker_slots{proc="other"} 1.0',
            'hirefire_worker_slots{proc="nobody"} 0.0',
            'hirefire_worker_slots_busy{proc="worker"} 1.0',
            'hirefire_worker_slots_busy{proc="other"} 0.0',
            'hirefire_worker_slots_busy{proc="nobody"} 0.0',
            'hirefire_workers_busy{proc="worker"} 1.0',
            'hirefire_workers_busy{proc="other"} 0.0',
            'hirefire_workers_busy{proc="nobody"} 0.0',
        ]
        assert samples(metrics, "hirefire_proc_jobs") == {("worker",): 2.0, ("other",): 0.0, ("nobody",): 0.0}
        assert info[0] == {"name": "worker", "value": 2, "quantity": 2}  # /info is unchanged: jobs, not workers
        assert app.collection.cycles == 1

        redis_conn.set("release", 1)
        wait_until(lambda: redis_conn.llen("rq:queue:wrk-high") == 0, what="the waiting job to be taken")
        wait_until(
            lambda: read_workers(procs[0]) == Workers(online=2, slots=2, busy_slots=0, busy=0),
            what="both workers idle again",
        )
    finally:
        for worker in (both, low, other):
            stop(worker)


def test_a_worker_pool_is_as_many_workers_of_one_slot_each(redis_conn, redis_url):
    """``rq worker-pool`` starts separate worker processes, each registered on its own: RQ stores no concurrency."""
    pool = start_rq_worker(redis_url, "wrk-pool", pool=3)
    try:
        wait_until(lambda: len(registered(redis_conn, "wrk-pool")) == 3, what="the pool's 3 workers to register")
        running = rq.Queue("wrk-pool", connection=redis_conn).enqueue("rq_jobs.block_until", redis_url, "go")
        wait_until(lambda: running.get_status(refresh=True) == "started", what="a pool worker to start the job")
        proc = RQProc("worker", queues=["wrk-pool"], url=redis_url)
        assert read_workers(proc) == Workers(online=3, slots=3, busy_slots=1, busy=1)
        redis_conn.set("go", 1)
    finally:
        stop(pool)


def test_a_worker_killed_with_sigkill_is_online_until_its_hash_expires(redis_conn, redis_url):
    """RQ cannot tell a killed worker from a live one until the TTL on its hash runs out (``worker_ttl`` + 60 s
    while idle, 480 s by default): the rule is RQ's own. The test takes the wait out by letting the TTL run out at
    once (PEXPIRE), which is what time does."""
    proc = RQProc("worker", queues=["wrk-kill"], url=redis_url)
    worker = start_rq_worker(redis_url, "wrk-kill")
    try:
        (key,) = wait_until(lambda: registered(redis_conn, "wrk-kill"), what="the worker to register")
        wait_until(lambda: redis_conn.hget(key, "state") == b"idle", what="the worker to wait for jobs")
        assert read_workers(proc) == Workers(online=1, slots=1, busy_slots=0, busy=0)

        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
        assert 0 < redis_conn.ttl(key) <= 480  # the hash will expire on its own
        assert read_workers(proc) == Workers(online=1, slots=1, busy_slots=0, busy=0)  # not expired yet

        redis_conn.pexpire(key, 1)
        wait_until(lambda: not redis_conn.exists(key), what="the killed worker's hash to expire")
        assert registered(redis_conn, "wrk-kill") == {key}  # RQ leaves the stale member in the set
        assert redis_conn.sismember("rq:workers", key)
        metrics = Client(ExporterApp(Collection([proc]), "tok")).get("/metrics").get_data(as_text=True)
        assert worker_lines(metrics) == [
            'hirefire_workers{proc="worker"} 0.0',
            'hirefire_worker_slots{proc="worker"} 0.0',
            'hirefire_worker_slots_busy{proc="worker"} 0.0',
            'hirefire_workers_busy{proc="worker"} 0.0',
        ]
    finally:
        stop(worker)


def test_a_busy_worker_killed_with_sigkill_leaves_no_ghost_once_its_hash_expires(redis_conn, redis_url):
    """The job's work horse (a child) outlives a worker killed with SIGKILL; when it finishes the job it writes its
    statistics into the worker's hash, recreating an expired hash with no TTL and no ``birth``: a ghost that never
    expires, and must not count as a worker."""
    proc = RQProc("worker", queues=["wrk-ghost"], url=redis_url)
    worker = start_rq_worker(redis_url, "wrk-ghost")
    try:
        (key,) = wait_until(lambda: registered(redis_conn, "wrk-ghost"), what="the worker to register")
        job = rq.Queue("wrk-ghost", connection=redis_conn).enqueue("rq_jobs.block_until", redis_url, "ghost")
        wait_until(lambda: job.get_status(refresh=True) == "started", what="the worker to start the job")
        assert read_workers(proc) == Workers(online=1, slots=1, busy_slots=1, busy=1)

        os.kill(worker.pid, signal.SIGKILL)  # the worker, not its work horse
        worker.wait(10)
        assert 0 < redis_conn.ttl(key) <= 90  # while busy: job_monitoring_interval + 60 s
        assert read_workers(proc) == Workers(online=1, slots=1, busy_slots=1, busy=1)  # RQ cannot tell yet

        redis_conn.pexpire(key, 1)  # the 90 s pass
        wait_until(lambda: not redis_conn.exists(key), what="the killed worker's hash to expire")
        redis_conn.set("ghost", 1)  # the orphaned work horse finishes the job
        wait_until(lambda: redis_conn.exists(key), what="the work horse to write into the worker's hash")
        assert redis_conn.ttl(key) == -1 and not redis_conn.hexists(key, "birth")  # the ghost
        assert read_workers(proc) == Workers(online=0, slots=0, busy_slots=0, busy=0)
    finally:
        stop(worker)


def test_a_worker_that_shut_down_is_not_online(redis_conn, redis_url):
    proc = RQProc("worker", queues=["wrk-stop"], url=redis_url)
    worker = start_rq_worker(redis_url, "wrk-stop")
    try:
        (key,) = wait_until(lambda: registered(redis_conn, "wrk-stop"), what="the worker to register")
        wait_until(lambda: redis_conn.hget(key, "state") == b"idle", what="the worker to wait for jobs")
        assert read_workers(proc).online == 1
    finally:
        stop(worker)  # SIGTERM: RQ's warm shutdown leaves the sets and stamps `death` on the hash
    assert redis_conn.exists(key) and redis_conn.hget(key, "death")
    assert read_workers(proc) == Workers(online=0, slots=0, busy_slots=0, busy=0)


def test_a_dead_member_whose_hash_is_left_with_death_is_not_online(redis_conn, redis_url):
    """The race between the two round trips: a worker stops after the sets were read and before its hash is."""
    proc = RQProc("worker", queues=["wrk-race"], url=redis_url)
    redis_conn.sadd("rq:workers:wrk-race", "rq:worker:gone", "rq:worker:live")
    birth = "2026-12-02T04:00:00.000000Z"
    redis_conn.hset("rq:worker:gone", mapping={"birth": birth, "state": "busy", "death": "2026-12-02T05:00:00.000000Z"})
    redis_conn.hset("rq:worker:live", mapping={"birth": birth, "state": "busy"})
    assert read_workers(proc) == Workers(online=1, slots=1, busy_slots=1, busy=1)


def test_workers_cost_one_smembers_per_queue_and_one_hmget_per_worker_in_the_same_two_round_trips(
    redis_conn, redis_url, monkeypatch
):
    workers = [start_rq_worker(redis_url, "wrk-a", "wrk-b"), start_rq_worker(redis_url, "wrk-b")]
    try:
        wait_until(lambda: len(registered(redis_conn, "wrk-b")) == 2, what="two workers on wrk-b")
        rq.Queue("wrk-c", connection=redis_conn).enqueue("rq_jobs.noop")  # no worker: it waits, latency is looked up
        collection = Collection([RQProc("worker", queues=["wrk-a", "wrk-b", "wrk-c"], url=redis_url)])
        collection.collect()  # connect first: the handshake is not the cycle's cost
        redis_conn.config_resetstat()
        sends = count_round_trips(monkeypatch)
        reading = collection.collect().procs[0].reading
        assert reading.workers == Workers(online=2, slots=2, busy_slots=0, busy=0)
        assert len(sends) == 2  # the counts with the worker sets, then the oldest job with the worker hashes
        counts = command_counts(redis_conn)
        assert counts["smembers"] == 3
        assert counts["hmget"] == 2  # the worker on two queues is read once
    finally:
        for worker in workers:
            stop(worker)


def test_a_process_serving_a_shared_snapshot_serves_the_same_worker_lines(redis_conn, redis_url):
    worker = start_rq_worker(redis_url, "wrk-shared")
    try:
        wait_until(lambda: registered(redis_conn, "wrk-shared"), what="the worker to register")
        job = rq.Queue("wrk-shared", connection=redis_conn).enqueue("rq_jobs.block_until", redis_url, "shared-go")
        wait_until(lambda: job.get_status(refresh=True) == "started", what="the worker to start the job")

        def app() -> ExporterApp:
            procs = [RQProc("worker", queues=["wrk-shared"], url=redis_url)]
            share = SharedSnapshots(redis_url, procs, max_age=5, stale_after=60, timeout=3)
            return ExporterApp(Collection(procs, max_age=5, share=share), "tok")

        collector, server = app(), app()
        collected = Client(collector).get("/metrics").get_data(as_text=True)
        served = Client(server).get("/metrics").get_data(as_text=True)
        assert (collector.collection.cycles, server.collection.cycles) == (1, 0)
        assert server.collection.latest.shared
        assert (
            worker_lines(served)
            == worker_lines(collected)
            == [
                'hirefire_workers{proc="worker"} 1.0',
                'hirefire_worker_slots{proc="worker"} 1.0',
                'hirefire_worker_slots_busy{proc="worker"} 1.0',
                'hirefire_workers_busy{proc="worker"} 1.0',
            ]
        )
        redis_conn.set("shared-go", 1)
        for each in (collector, server):
            each.collection.close()
    finally:
        stop(worker)


def test_no_job_and_no_worker_is_still_one_round_trip_and_an_idle_worker_adds_one(redis_conn, redis_url, monkeypatch):
    collection = Collection([RQProc("worker", queues=["wrk-idle"], url=redis_url)])
    collection.collect()
    sends = count_round_trips(monkeypatch)
    assert collection.collect().procs[0].reading.workers == Workers(online=0, slots=0, busy_slots=0, busy=0)
    assert len(sends) == 1

    worker = start_rq_worker(redis_url, "wrk-idle")
    try:
        wait_until(lambda: registered(redis_conn, "wrk-idle"), what="the worker to register")
        sends.clear()
        assert collection.collect().procs[0].reading.workers == Workers(online=1, slots=1, busy_slots=0, busy=0)
        assert len(sends) == 2  # no job waits: the second round trip is the worker's hash alone
    finally:
        stop(worker)


def test_an_unreadable_worker_registry_leaves_the_job_counts_served_and_the_workers_unknown(
    redis_conn, redis_url, caplog
):
    redis_conn.set("rq:workers:wrk-bad", "not a set")  # garbage in place of the set (or an ACL that denies it)
    rq.Queue("wrk-bad", connection=redis_conn).enqueue("rq_jobs.noop")
    client = Client(ExporterApp(Collection([RQProc("worker", queues=["wrk-bad"], url=redis_url)], max_age=0), "tok"))
    for _ in range(2):
        metrics = client.get("/metrics").get_data(as_text=True)
        assert samples(metrics, "hirefire_proc_up") == {("worker",): 1.0}
        assert samples(metrics, "hirefire_proc_jobs") == {("worker",): 1.0}
        assert worker_lines(metrics) == []  # unknown: absent, never 0
    warnings = [r.getMessage() for r in caplog.records if "worker registry" in r.getMessage()]
    assert warnings == [
        "proc 'worker': cannot read RQ's worker registry, its workers are unknown: ResponseError: "
        "WRONGTYPE Operation against a key holding the wrong kind of value"
    ]


def test_workers_of_a_stale_reading_are_served_flagged_then_absent_never_0():
    need_redis_server()
    server = RedisProcess().start()
    worker = start_rq_worker(server.url, "wrk-stale")
    try:
        import redis

        with redis.Redis.from_url(server.url) as connection:
            wait_until(lambda: connection.smembers("rq:workers:wrk-stale"), what="the worker to register")
        clock = Clock()
        proc = RQProc("worker", queues=["wrk-stale"], url=server.url, socket_timeout=1)
        client = Client(ExporterApp(Collection([proc], max_age=0, stale_after=60, timeout=2, clock=clock), TOKEN))
        assert samples(client.get("/metrics").get_data(as_text=True), "hirefire_workers") == {("worker",): 1.0}

        server.kill()
        clock.now += 30
        stale = Scrape(client)
        assert stale.info == [{"name": "worker", "value": 0, "quantity": 0}]
        assert stale.metric("hirefire_proc_up") == {("worker",): 0.0}
        assert stale.metric("hirefire_workers") == {("worker",): 1.0}  # the last good reading, flagged by its age
        assert stale.metric("hirefire_workers_busy") == {("worker",): 0.0}

        clock.now += 31
        expired = Scrape(client)
        assert expired.info_status == 503
        assert expired.metric("hirefire_proc_up") == {("worker",): 0.0}
        assert worker_lines(expired.text) == []
    finally:
        stop(worker)
        server.stop()


# Any backend: a reading's workers are checked like its counts


class Fixed(Proc):
    """A custom proc that returns one given reading (what a worker-side tracker or a user's own proc might)."""

    reading: Reading | None = None

    def read(self, cache):
        return self.reading


@pytest.mark.parametrize(
    ("workers", "error"),
    [
        (Workers(online=1, slots=1, busy_slots=0, busy=2), "impossible workers"),
        (Workers(online=2, slots=1, busy_slots=2, busy=1), "impossible workers"),
        (Workers(online=-1, slots=1, busy_slots=0, busy=0), "not a count or an age in seconds: workers online -1"),
        (Workers(online=1, slots=float("nan"), busy_slots=0, busy=0), "workers slots nan"),
        (Workers(online="2", slots=2, busy_slots=0, busy=0), "workers online '2'"),
    ],
)
def test_impossible_workers_make_the_reading_invalid_and_the_proc_down(workers, error):
    proc = Fixed("worker", queues=["wrk-any"], reading=Reading(quantity=3, workers=workers))
    client = Client(ExporterApp(Collection([proc]), "tok"))
    metrics = client.get("/metrics").get_data(as_text=True)
    assert samples(metrics, "hirefire_proc_up") == {("worker",): 0.0}
    assert samples(metrics, "hirefire_proc_jobs") == {}
    assert worker_lines(metrics) == []
    assert client.get("/hirefire/tok/info").status_code == 503
    assert error in client.application.collection.latest.procs[0].error


def test_a_reading_without_workers_has_no_worker_series_and_describe_knows_them():
    proc = Fixed("worker", queues=["wrk-any"], reading=Reading(quantity=3))
    collection = Collection([proc])
    metrics = Client(ExporterApp(collection, "tok")).get("/metrics").get_data(as_text=True)
    assert samples(metrics, "hirefire_proc_jobs") == {("worker",): 3.0}
    assert worker_lines(metrics) == []
    described = {family.name for family in SnapshotCollector(collection).describe()}
    assert set(WORKER_FAMILIES) <= described
