"""The collection cycle: caching, single flight, timeouts, and stale readings instead of a false 0."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import free_port
from support import command_counts, samples
from werkzeug.test import Client

from hirefire_exporter.app import ExporterApp
from hirefire_exporter.collection import Collection, _Pool
from hirefire_exporter.procs.base import Proc, ProcConfigError, QueueReading, Reading
from hirefire_exporter.procs.rq import RQProc

rq = pytest.importorskip("rq")


class Switch(Proc):
    """A custom proc (old API) whose broker can be switched off, and which can be made to hang."""

    queues = ["default"]

    def __init__(self, name: str, jobs: int = 7) -> None:
        super().__init__(name)
        self.jobs = jobs
        self.broken = False
        self.gate = threading.Event()
        self.gate.set()

    def quantity(self, **kwargs) -> int:
        self.gate.wait(30)
        if self.broken:
            raise ConnectionError("Error 111 connecting to redis://app:s3cret@broker:6379/0. Connection refused.")
        return self.jobs


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_concurrent_requests_during_a_cycle_share_that_one_cycle(private_redis):
    queue = rq.Queue("default", connection=private_redis)
    for _ in range(4):
        queue.enqueue("rq_jobs.noop")
    slow = Switch("slow")
    slow.gate.clear()  # the first cycle hangs in this proc until every request is waiting for it
    app = ExporterApp(Collection([RQProc("worker", connection=private_redis), slow], timeout=20), "tok")
    private_redis.config_resetstat()

    def get(path: str):
        return Client(app).get(path)

    with ThreadPoolExecutor(50) as pool:
        futures = [pool.submit(get, "/hirefire/tok/info" if i % 2 else "/metrics") for i in range(50)]
        time.sleep(0.5)
        slow.gate.set()
        responses = [f.result() for f in futures]

    assert app.collection.cycles == 1
    assert {r.status_code for r in responses} == {200}
    infos = {r.get_data(as_text=True) for r in responses if r.mimetype == "application/json"}
    assert [json.loads(i) for i in infos] == [
        [{"name": "worker", "value": 4, "quantity": 4}, {"name": "slow", "value": 7, "quantity": 7}]
    ]
    counts = command_counts(private_redis)
    assert (counts["evalsha_ro"], counts["llen"]) == (1, 1)  # the broker saw one cycle's commands, not 50


def test_snapshot_is_cached_for_max_age(private_redis):
    collection = Collection([RQProc("worker", connection=private_redis)], max_age=60, stale_after=120)
    first = collection.snapshot()
    assert collection.snapshot() is first and collection.cycles == 1
    collection.max_age = 0
    assert collection.snapshot() is not first and collection.cycles == 2


def test_a_failing_proc_serves_its_last_reading_while_fresh_then_503_never_zero(caplog):
    clock, proc = Clock(), Switch("worker")
    app = ExporterApp(Collection([proc, Switch("other", jobs=2)], max_age=0, stale_after=60, clock=clock), "tok")
    client = Client(app)
    assert json.loads(client.get("/hirefire/tok/info").data)[0]["value"] == 7

    proc.broken, clock.now = True, clock.now + 30
    info = client.get("/hirefire/tok/info")
    metrics = client.get("/metrics").get_data(as_text=True)
    assert info.status_code == 200 and json.loads(info.data)[0] == {"name": "worker", "value": 7, "quantity": 7}
    assert samples(metrics, "hirefire_proc_up") == {("worker",): 0.0, ("other",): 1.0}
    assert samples(metrics, "hirefire_proc_reading_age_seconds") == {("worker",): 30.0, ("other",): 0.0}
    assert samples(metrics, "hirefire_proc_jobs") == {("worker",): 7.0, ("other",): 2.0}

    clock.now += 31  # the last good reading is now 61 s old: past stale_after
    info = client.get("/hirefire/tok/info")
    metrics = client.get("/metrics")
    assert info.status_code == 503
    assert json.loads(info.data)["procs"] == ["worker"]
    assert metrics.status_code == 200
    text = metrics.get_data(as_text=True)
    assert samples(text, "hirefire_proc_up") == {("worker",): 0.0, ("other",): 1.0}
    assert samples(text, "hirefire_proc_jobs") == {("other",): 2.0}  # no sample at all for worker, never a 0
    assert "s3cret" not in caplog.text and "s3cret" not in info.get_data(as_text=True) + text

    proc.broken = False  # the broker is back: recovery needs no restart
    clock.now += 5
    assert json.loads(client.get("/hirefire/tok/info").data)[0]["value"] == 7


def test_an_unreachable_broker_reports_the_proc_down_not_zero():
    down = RQProc("worker", url=f"redis://127.0.0.1:{free_port()}/0")
    client = Client(ExporterApp(Collection([down], timeout=5), "tok"))
    info = client.get("/hirefire/tok/info")
    assert info.status_code == 503 and json.loads(info.data)["procs"] == ["worker"]
    text = client.get("/metrics").get_data(as_text=True)
    assert samples(text, "hirefire_proc_up") == {("worker",): 0.0}
    assert samples(text, "hirefire_proc_jobs") == {}
    assert samples(text, "hirefire_queue_jobs") == {}


def test_a_hanging_proc_is_bounded_by_the_timeout_and_not_started_twice():
    hung, fine = Switch("hung"), Switch("fine", jobs=3)
    hung.gate.clear()
    calls = []
    original = hung.quantity
    hung.quantity = lambda **kw: (calls.append(1), original(**kw))[1]
    collection = Collection([hung, fine], timeout=0.3, max_age=0)
    try:
        started = time.monotonic()
        first = collection.collect()
        second = collection.collect()
        assert time.monotonic() - started < 5
        assert [(s.name, s.up) for s in first.procs] == [("hung", False), ("fine", True)]
        assert "within 0.3s" in first.procs[0].error
        assert "still running" in second.procs[0].error
        assert len(calls) == 1  # the stalled read was not started again while it still hangs
        assert second.procs[1].reading.quantity == 3
    finally:
        hung.gate.set()
        collection.close()


def test_old_style_procs_share_one_cache_dict_per_cycle():
    seen = []

    class Recorder(Proc):
        queues = ["q"]

        def quantity(self, **kwargs):
            seen.append(kwargs["cache"])
            return 1

    collection = Collection([Recorder("a"), Recorder("b")], max_age=0)
    collection.collect()
    assert len(seen) == 2 and seen[0] is seen[1]
    collection.collect()
    assert seen[2] is not seen[0]  # a fresh cache every cycle


def test_callers_waiting_on_a_cycle_longer_than_max_age_share_it_instead_of_queueing_their_own():
    slow = Switch("slow")
    slow.gate.clear()  # the cycle outlasts max_age (0: every caller wants a fresh one) while 10 callers wait for it
    collection = Collection([slow], max_age=0, timeout=20)
    with ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(collection.snapshot) for _ in range(10)]
        time.sleep(0.5)
        slow.gate.set()
        snapshots = {id(f.result()) for f in futures}
    assert collection.cycles == 1 and len(snapshots) == 1


class NotAReading(RQProc):
    """A custom Redis proc whose parsing returns a bare count instead of a Reading."""

    def build_reading(self, depth, latency, now):
        return depth[0].counts[0]  # the first queue's reply: its length first


class MalformedReading(Proc):
    queues = ["q"]

    def read(self, cache):
        return Reading(quantity=1, queues=("q",))  # queue names where QueueReadings belong


def test_a_proc_that_returns_no_proper_reading_fails_alone_and_the_others_are_served(redis_conn):
    rq.Queue("default", connection=redis_conn).enqueue("rq_jobs.noop")
    odd, worker = NotAReading("odd", connection=redis_conn), RQProc("worker", connection=redis_conn)
    procs = [odd, MalformedReading("bad"), worker]
    client = Client(ExporterApp(Collection(procs), "tok"))

    info = client.get("/hirefire/tok/info")
    metrics = client.get("/metrics")
    assert info.status_code == 503 and json.loads(info.data)["procs"] == ["odd", "bad"]
    assert metrics.status_code == 200
    text = metrics.get_data(as_text=True)
    assert samples(text, "hirefire_proc_up") == {("odd",): 0.0, ("bad",): 0.0, ("worker",): 1.0}
    assert samples(text, "hirefire_proc_jobs") == {("worker",): 1.0}
    odd, bad, _ = client.application.collection.latest.procs
    assert odd.error == "TypeError: NotAReading.read() returned int, not a Reading"
    assert bad.error.startswith("TypeError: MalformedReading.read() returned a malformed Reading: AttributeError")


def test_procs_on_one_server_are_read_with_their_own_credentials(private_redis):
    port = private_redis.connection_pool.connection_kwargs["port"]
    rq.Queue("default", connection=private_redis).enqueue("rq_jobs.noop")
    private_redis.config_set("requirepass", "right")  # the fixture's connection stays authenticated
    try:
        stale = RQProc("stale", url=f"redis://:wrong@127.0.0.1:{port}/0")
        current = RQProc("current", url=f"redis://:right@127.0.0.1:{port}/0")
        snapshot = Collection([stale, current]).collect()
    finally:
        private_redis.config_set("requirepass", "")
    assert [(s.name, s.up) for s in snapshot.procs] == [("stale", False), ("current", True)]
    assert "AuthenticationError" in snapshot.procs[0].error and "wrong" not in snapshot.procs[0].error
    assert snapshot.procs[1].reading.quantity == 1


def test_sentinel_managed_clients_of_different_services_are_read_apart():
    from redis.sentinel import Sentinel

    sentinel = Sentinel([("127.0.0.1", free_port())])  # no I/O: a collection is planned without touching a server
    procs = [
        RQProc("a", connection=sentinel.master_for("service-a")),
        RQProc("b", connection=sentinel.master_for("service-b")),
        RQProc("a2", connection=sentinel.master_for("service-a")),
    ]
    tasks = Collection(procs)._tasks
    assert [[p.name for p in task.procs] for task in tasks] == [["a", "a2"], ["b"]]


def test_two_procs_with_one_name_are_refused():
    with pytest.raises(ProcConfigError, match="two procs are named 'worker'"):
        Collection([Switch("worker"), Switch("worker", jobs=1)])


def test_a_password_with_an_at_sign_is_scrubbed_whole_from_errors_and_logs(caplog):
    class Leaky(Proc):
        queues = ["default"]

        def quantity(self, **kwargs):  # an unencoded '@' is accepted by redis-py and kombu: the host follows the last
            raise ConnectionError("Error 111 connecting to redis://app:p@ss@broker:6379/0. Connection refused.")

    snapshot = Collection([Leaky("worker")]).collect()
    assert snapshot.procs[0].error == (
        "ConnectionError: Error 111 connecting to redis://app:***@broker:6379/0. Connection refused."
    )
    assert "ss@broker" not in caplog.text


def test_the_fast_queue_reading_constructor_makes_the_same_frozen_reading():
    fields = {f.name: f"value of {f.name}" for f in dataclasses.fields(QueueReading)}  # every field, whatever they are
    fast, plain = QueueReading.of(**fields), QueueReading(**fields)
    assert fast == plain and hash(fast) == hash(plain) and repr(fast) == repr(plain)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.latency = 1.0


def test_a_cycle_that_starts_as_the_last_one_ends_reuses_its_read_thread():
    """The next cycle can start the moment an outcome arrives (``max_age = 0``, a fleet's requests): the thread that
    read it must already count as free, or every such cycle would start one more thread."""
    pool, done, results = _Pool(), threading.Event(), []
    threads = threading.active_count()

    def next_cycle(result: int) -> None:  # runs as the first outcome is handed on
        pool.submit(lambda: result + 1, lambda second: (results.append(second), done.set()))

    pool.submit(lambda: 1, next_cycle)
    assert done.wait(5)
    assert results == [2]
    assert threading.active_count() == threads + 1  # one thread ran both


# Which procs share a round trip: one keyspace, clients that read alike


def _task_sizes(procs) -> list[int]:
    from hirefire_exporter.collection import _plan

    return [len(task.procs) for task in _plan(procs)]


def test_a_client_that_decodes_replies_never_reads_for_a_proc_that_does_not(redis_conn, redis_url):
    """A user's client with ``decode_responses=True`` first: batched with it, an RQ proc's head job whose stamp is
    not UTF-8 failed the decode of the whole round trip, so every proc on the server (in either order)."""
    import redis

    job = rq.Queue("default", connection=redis_conn).enqueue("rq_jobs.noop")
    redis_conn.hset(job.key, "enqueued_at", b"\xff\xfe not utf-8")
    redis_conn.rpush("plain", "a", "b")
    decoding = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=5)
    from hirefire_exporter.procs.queues import QueuesProc

    for order in (1, -1):
        procs = [QueuesProc("user", ["plain"], connection=decoding), RQProc("rq", url=redis_url)][::order]
        collection = Collection(procs, max_age=0)
        statuses = {s.name: s for s in collection.collect().procs}
        collection.close()
        assert statuses["user"].up and statuses["user"].reading.quantity == 2
        assert statuses["rq"].up and statuses["rq"].reading.quantity == 1, statuses["rq"].error
        assert _task_sizes(procs) == [1, 1]
    decoding.close()


def test_a_client_without_a_socket_timeout_never_reads_for_a_proc_that_has_one(redis_url):
    import redis

    unbounded = redis.Redis.from_url(redis_url)  # redis-py's default: no socket timeout
    bounded = [RQProc("a", url=redis_url), RQProc("b", url=redis_url.replace(":6379/", "/"), socket_timeout=5.0)]

    assert _task_sizes([RQProc("user", connection=unbounded), *bounded]) == [1, 2]  # the URL-built ones share one
    assert _task_sizes([*bounded, RQProc("short", url=redis_url, socket_timeout=0.5)]) == [2, 1]
    unbounded.close()


def test_one_server_spelt_two_ways_is_one_keyspace_and_no_queue_is_discovered_twice(redis_conn, redis_url):
    """``redis://host/db`` and ``redis://host:6379/db``, the user ``default`` and no user: one server. A
    ``queues="*"`` proc on one spelling leaves the queue another proc names on the other to that proc."""
    from hirefire_exporter.procs.redis_proc import batch_key, server_key

    for name, n in (("named", 2), ("other", 3)):
        for _ in range(n):
            rq.Queue(name, connection=redis_conn).enqueue("rq_jobs.noop")
    implicit = redis_url.replace(":6379/", "/").replace("redis://", "redis://default@")
    assert implicit != redis_url and ":6379" not in implicit
    every, named = RQProc("every", queues="*", url=implicit), RQProc("named", queues=["named"], url=redis_url)
    assert server_key(every.redis_client()) == server_key(named.redis_client())
    assert batch_key(every.redis_client()) == batch_key(named.redis_client())

    collection = Collection([every, named], max_age=0)
    statuses = {s.name: s for s in collection.collect().procs}
    collection.close()

    assert [q.name for q in statuses["every"].reading.queues] == ["other"]
    assert (statuses["every"].reading.quantity, statuses["named"].reading.quantity) == (3, 2)


@pytest.mark.parametrize(
    ("omitted", "given"),
    [("amqp://guest:guest@127.0.0.1//", "amqp://guest:guest@127.0.0.1:5672//"),
     ("amqps://guest:guest@broker.example//", "amqps://guest:guest@broker.example:5671//")],
)  # fmt: skip
def test_an_amqp_broker_with_its_port_omitted_is_the_same_scope(omitted, given):
    from hirefire_exporter.procs.celery import CeleryProc

    scopes = {CeleryProc("w", queues=["q"], url=url).queue_scope() for url in (omitted, given)}
    assert len(scopes) == 1
