"""Queue discovery (``queues = "*"``): queues found on the broker, re-found on a timer, never counted twice."""

from __future__ import annotations

import json
import logging
import textwrap

import pytest
from huey import MemoryHuey
from support import command_counts, samples, start_rq_worker, stop, wait_until
from werkzeug.test import Client

from hirefire_exporter import discovery, fingerprint
from hirefire_exporter.app import ExporterApp
from hirefire_exporter.collection import Collection
from hirefire_exporter.config import load_settings
from hirefire_exporter.loading import load_procs
from hirefire_exporter.procs.base import Proc, ProcConfigError, QueueReading, Reading
from hirefire_exporter.procs.celery import CeleryProc
from hirefire_exporter.procs.dramatiq import DramatiqProc
from hirefire_exporter.procs.hotqueue import HotQueueProc
from hirefire_exporter.procs.huey import HueyProc
from hirefire_exporter.procs.queues import QueuesProc
from hirefire_exporter.procs.rq import RQProc

rq = pytest.importorskip("rq")


class Clock:
    """The collection's clock, moved by the test: discovery is due every ``discover_every`` seconds of it."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def enqueue(redis_conn, queue: str, n: int = 1) -> None:
    for _ in range(n):
        rq.Queue(queue, connection=redis_conn).enqueue("rq_jobs.noop")


def served(app: ExporterApp) -> tuple[list, dict]:
    """One fresh cycle, then what /info and /metrics serve from it: the HireFire JSON and the queue series."""
    app.collection.collect()
    client = Client(app)
    info = client.get("/hirefire/tok/info")
    assert info.status_code == 200, info.data
    metrics = client.get("/metrics").get_data(as_text=True)
    jobs = samples(metrics, "hirefire_queue_jobs")
    queued = {(proc, queue): n for (proc, queue, state), n in jobs.items() if state == "queued"}
    return json.loads(info.data), queued


def app_for(*procs: Proc, clock: Clock | None = None) -> ExporterApp:
    return ExporterApp(Collection(procs, max_age=3600, stale_after=7200, clock=clock or Clock()), "tok")


# RQ: the queue registry (rq:queues)


def test_rq_queues_appear_and_disappear_in_metrics_and_info_without_a_restart(redis_conn, redis_url):
    enqueue(redis_conn, "dsc-reports", 2)
    enqueue(redis_conn, "other", 5)  # not matched
    clock = Clock()
    app = app_for(RQProc("worker", queues="dsc-*", url=redis_url), clock=clock)

    info, queued = served(app)
    assert info == [{"name": "worker", "value": 2, "quantity": 2}]
    assert queued == {("worker", "dsc-reports"): 2.0}

    enqueue(redis_conn, "dsc-mail", 3)  # a new queue, made by a real enqueue
    info, queued = served(app)  # before the next discovery: the list found 10 s ago
    assert info == [{"name": "worker", "value": 2, "quantity": 2}]

    clock.now += 60  # discover_every (60 s by default) has passed
    info, queued = served(app)
    assert info == [{"name": "worker", "value": 5, "quantity": 5}]
    assert queued == {("worker", "dsc-mail"): 3.0, ("worker", "dsc-reports"): 2.0}

    rq.Queue("dsc-reports", connection=redis_conn).delete(delete_jobs=True)
    clock.now += 60
    info, queued = served(app)
    assert info == [{"name": "worker", "value": 3, "quantity": 3}]
    assert queued == {("worker", "dsc-mail"): 3.0}  # the deleted queue's series is gone


def test_a_real_workers_running_job_counts_in_its_discovered_queue(redis_conn, redis_url):
    queue = rq.Queue("dsc-busy", connection=redis_conn)
    worker = start_rq_worker(redis_url, "dsc-busy")
    try:
        job = queue.enqueue("rq_jobs.block_until", redis_url, "dsc-release")
        wait_until(lambda: job.get_status(refresh=True) == "started", what="the worker to start the job")
        queue.enqueue("rq_jobs.noop")
        proc = RQProc("worker", queues="*", url=redis_url)
        snapshot = Collection([proc]).collect()
        (reading_queue,) = snapshot.procs[0].reading.queues
        assert (reading_queue.name, reading_queue.jobs["queued"], reading_queue.jobs["started"]) == ("dsc-busy", 1, 1)
        assert snapshot.procs[0].reading.quantity == 2
    finally:
        redis_conn.set("dsc-release", 1)
        stop(worker)


def test_a_glob_leaves_out_queues_another_proc_names_and_the_first_glob_wins(redis_conn, redis_url):
    enqueue(redis_conn, "dsc-high", 2)
    enqueue(redis_conn, "dsc-hot", 7)
    enqueue(redis_conn, "dsc-low", 3)
    enqueue(redis_conn, "dsc-mid", 1)
    procs = [
        RQProc("urgent", queues="dsc-h*", url=redis_url),  # first glob: dsc-hot (dsc-high is named below)
        RQProc("rest", queues=["dsc-*"], url=redis_url),  # every other dsc- queue
        RQProc("high", queues=["dsc-high"], url=redis_url),
        RQProc("elsewhere", queues="dsc-*", url=redis_url, key_prefix="rq2"),  # another key prefix: other queues
    ]
    info, queued = served(app_for(*procs))

    assert info == [
        {"name": "urgent", "value": 7, "quantity": 7},
        {"name": "rest", "value": 4, "quantity": 4},
        {"name": "high", "value": 2, "quantity": 2},
        {"name": "elsewhere", "value": 0, "quantity": 0},
    ]
    assert sum(entry["value"] for entry in info) == 13  # every job once
    assert queued == {
        ("urgent", "dsc-hot"): 7.0,
        ("rest", "dsc-low"): 3.0,
        ("rest", "dsc-mid"): 1.0,
        ("high", "dsc-high"): 2.0,
    }


def test_named_queues_come_first_and_a_proc_mixes_names_and_patterns(redis_conn, redis_url):
    enqueue(redis_conn, "dsc-b", 1)
    enqueue(redis_conn, "dsc-a", 1)
    proc = RQProc("worker", queues=["zeta", "dsc-?", "dsc-b"], url=redis_url)
    Collection([proc]).collect()
    assert proc.queues == ["zeta", "dsc-b", "dsc-a"]  # named in their order, then the discovered ones by name
    assert proc.configured_queues() == ["zeta", "dsc-b", "dsc-?"]
    upper = RQProc("upper", queues="DSC-*", url=redis_url)
    Collection([upper]).collect()
    assert upper.queues == []  # patterns are case-sensitive


def private_url(client) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/0"


def cost(client, collection: Collection) -> dict[str, int]:
    """The commands one cycle of ``collection`` sends to the private server of ``client``, but the loading of the
    reader script (once per server and process: whichever cycle comes first)."""
    client.config_resetstat()
    collection.collect()
    counts = command_counts(client)
    counts.pop("script|load", None)
    return counts


def test_rediscovery_costs_one_smembers_and_nothing_in_between(private_redis):
    url = private_url(private_redis)
    for name in ("dsc-a", "dsc-b"):
        enqueue(private_redis, name)
    clock = Clock()
    globbed = Collection([RQProc("worker", queues="dsc-*", url=url, discover_every=30)], clock=clock)
    reference = cost(private_redis, Collection([RQProc("worker", queues=["dsc-a", "dsc-b"], url=url)]))

    discovering = {**reference, "smembers": reference.get("smembers", 0) + 1}  # + SMEMBERS rq:queues
    assert cost(private_redis, globbed) == discovering  # the first cycle discovers
    clock.now += 29
    assert cost(private_redis, globbed) == reference  # 29 s later: the same list, no discovery
    clock.now += 1
    assert cost(private_redis, globbed) == discovering


def test_a_failed_discovery_fails_the_proc_never_zero():
    proc = RQProc("worker", queues="*", url="redis://127.0.0.1:1/0", socket_timeout=1)
    app = ExporterApp(Collection([proc]), "tok")
    info = Client(app).get("/hirefire/tok/info")
    assert info.status_code == 503
    status = app.collection.latest.procs[0]
    assert not status.up and status.reading is None and "Connection refused" in status.error


def test_a_failed_rediscovery_keeps_the_last_reading_flagged_stale(killable_redis):
    import redis

    url = killable_redis.url
    enqueue(redis.Redis.from_url(url), "dsc-a", 4)
    clock = Clock()
    collection = Collection([RQProc("worker", queues="*", url=url, socket_timeout=1)], clock=clock)
    assert collection.collect().procs[0].reading.quantity == 4
    killable_redis.kill()
    clock.now += 60
    status = collection.collect().procs[0]
    assert (status.up, status.reading.quantity, status.read_at) == (False, 4, clock.now - 60)


def test_a_glob_matching_nothing_reads_zero_and_warns_once(redis_conn, redis_url, caplog):
    enqueue(redis_conn, "other", 2)
    clock = Clock()
    app = app_for(RQProc("worker", queues="dsc-*", url=redis_url), clock=clock)
    with caplog.at_level(logging.WARNING, logger="hirefire_exporter"):
        assert served(app) == ([{"name": "worker", "value": 0, "quantity": 0}], {})
        clock.now += 60
        served(app)
    warnings = [r.getMessage() for r in caplog.records if "matches no queue" in r.getMessage()]
    assert warnings == [
        "proc 'worker': queues 'dsc-*' matches no queue on the broker (other than queues other procs measure): it"
        " reads as 0 jobs until one appears"
    ]
    enqueue(redis_conn, "dsc-new", 1)
    clock.now += 60
    assert served(app)[0] == [{"name": "worker", "value": 1, "quantity": 1}]


def test_a_prefix_is_honoured(redis_conn, redis_url, monkeypatch):
    monkeypatch.setenv("RQ_KEY_PREFIX", "myrq")
    redis_conn.sadd("myrq:queues", "myrq:queue:dsc-x")
    redis_conn.rpush("myrq:queue:dsc-x", "id1", "id2")
    for job in ("id1", "id2"):
        redis_conn.hset(f"myrq:job:{job}", "enqueued_at", "2026-12-01T00:00:00Z")
    redis_conn.sadd("rq:queues", "rq:queue:dsc-y")
    proc = RQProc("worker", queues="*", url=redis_url)
    reading = Collection([proc]).collect().procs[0].reading
    assert [(q.name, q.jobs["queued"]) for q in reading.queues] == [("dsc-x", 2)]


# Configuration: TOML, HIREFIRE_PROCS, the Python API, validation, the digest


class GlobProc(RQProc):
    name = "worker"
    queues = "dsc-*"
    url = "redis://127.0.0.1:6379/8"


def test_patterns_from_toml_dotted_paths_and_keywords(tmp_path, redis_url):
    config = tmp_path / "hirefire.toml"
    config.write_text(
        textwrap.dedent(f"""
        [[procs]]
        name = "worker"
        backend = "rq"
        url = "{redis_url}"
        queues = "*"
        discover_every = 10
        """)
    )
    (toml_proc,) = load_procs(load_settings(config=str(config)).procs)
    (dotted,) = load_procs("test_discovery.GlobProc", "HIREFIRE_PROCS")
    keyword = RQProc("worker", queues=["high", "dsc-*"], url=redis_url)
    assert (toml_proc.configured_queues(), toml_proc.discover_every) == (["*"], 10)
    assert dotted.configured_queues() == ["dsc-*"]
    assert (keyword.queues, keyword.configured_queues()) == (["high"], ["high", "dsc-*"])
    assert repr(keyword) == "RQProc(name='worker', queues=['high', 'dsc-*'])"


@pytest.mark.parametrize(
    ("proc", "message"),
    [
        (
            lambda: RQProc("worker", queues=[""], url="redis://x"),
            r"each entry of queues must be a queue name or pattern \(text\), got ''",
        ),
        (lambda: RQProc("worker", queues=[], url="redis://x"), r"needs at least one queue name or pattern"),
        (lambda: RQProc("worker", queues=["*", 3], url="redis://x"), r"a queue name or pattern \(text\), got 3$"),
        (lambda: RQProc("worker", queues={"x": 1}, url="redis://x"), r"queues must be a list of queue names"),
        (lambda: RQProc("worker", queues="*", url="redis://x", discover_every=-1), r"discover_every must be"),
        (
            lambda: QueuesProc("worker", queues="*", url="redis://x"),
            r"^procs: proc 'worker': queues '\*': the queues library cannot discover its queues \(a queue is a plain"
            r" Redis list named after it, which nothing tells apart from other keys, or a beanstalkd tube, forgotten"
            r" while idle\): name them$",
        ),
        (
            lambda: CeleryProc("worker", queues="*", url="amqp://guest:guest@127.0.0.1//"),
            r"^procs: proc 'worker': queues '\*': discovery on RabbitMQ needs `management_url` \(AMQP cannot list"
            r" queues\): set it, or name the queues$",
        ),
        (
            lambda: DramatiqProc("worker", queues="*", url="amqp://guest:guest@127.0.0.1:5672/%2F"),
            r"^procs: proc 'worker': queues '\*': discovery on RabbitMQ needs `management_url` \(AMQP cannot list"
            r" queues\): set it, or name the queues$",
        ),
        (
            lambda: HueyProc("worker", queues="*", huey=MemoryHuey("x")),
            r"^procs: proc 'worker': queues '\*': Huey's MemoryStorage cannot list its queues: name them$",
        ),
    ],
)
def test_procs_that_cannot_discover_are_refused_at_start_up_in_one_line(proc, message):
    with pytest.raises(ProcConfigError, match=message):
        load_procs([proc()])


class Custom(Proc):
    def quantity(self, **kwargs):
        return 1


def test_a_custom_proc_without_discovery_is_refused():
    with pytest.raises(ProcConfigError, match=r"^proc 'custom': queues 'a\*': Custom cannot discover queues"):
        Custom("custom", queues=["a*"]).validate()


class Listed(Proc):
    """A custom proc that discovers: the hook the Dramatiq backend (or anyone's) implements."""

    listing: list[str] | None = None

    def discover_queues(self):
        return self.listing

    def read(self, cache):
        return Reading.from_queues(QueueReading(q, {"queued": len(q)}) for q in self.queues)


def test_a_custom_proc_can_discover_and_is_never_read_before_its_first_list():
    proc = Listed("custom", queues="a*")
    collection = Collection([proc], clock=Clock())
    status = collection.collect().procs[0]
    assert (status.up, status.reading) == (False, None)
    assert status.error == "DiscoveryPending: discovering queues: no complete list of the broker's queues yet"
    proc.listing = ["abc", "b", "ab"]
    assert [(q.name, q.quantity) for q in collection.collect().procs[0].reading.queues] == [("ab", 2), ("abc", 3)]


def test_the_digest_holds_the_pattern_and_not_what_discovery_found(redis_conn, redis_url):
    enqueue(redis_conn, "dsc-a")
    proc = RQProc("worker", queues="dsc-*", url=redis_url)
    before = fingerprint.digest([proc])
    Collection([proc]).collect()
    assert proc.queues == ["dsc-a"]
    assert fingerprint.digest([proc]) == before
    assert fingerprint.digest([RQProc("worker", queues="dsc-?*", url=redis_url)]) != before
    assert fingerprint.digest([RQProc("worker", queues=["dsc-a"], url=redis_url)]) != before


# SCAN-based discovery: budgeted, resumed over cycles


def test_a_large_keyspace_is_rescanned_a_budgeted_slice_per_cycle(private_redis, monkeypatch):
    monkeypatch.setattr(discovery, "SCAN_CALLS", 2)
    monkeypatch.setattr(discovery, "SCAN_COUNT", 10)
    private_redis.mset({f"unrelated:{i}": 1 for i in range(300)})
    private_redis.rpush("hotqueue:dsc-a", "m1", "m2")
    proc = HotQueueProc("worker", queues="dsc-*", url=private_url(private_redis), discover_every=0)
    collection = Collection([proc])

    private_redis.config_resetstat()
    assert collection.collect().procs[0].reading.quantity == 2
    assert command_counts(private_redis)["scan"] > 2  # the first pass runs to its end: the proc has no list before

    private_redis.rpush("hotqueue:dsc-b", "m1", "m2", "m3")
    scans, totals = [], []
    while len(scans) < 100 and totals[-1:] != [5]:
        private_redis.config_resetstat()
        status = collection.collect().procs[0]
        scans.append(command_counts(private_redis)["scan"])
        totals.append(status.reading.quantity)
        assert status.up  # the last list is measured while a later pass goes on
    assert totals[-1] == 5 and set(totals[:-1]) == {2}
    assert len(scans) > 3 and max(scans) == 2  # 300 keys, 10 a call, 2 calls a cycle


def test_hotqueue_queues_found_by_scan_in_one_call(private_redis):
    hotqueue = pytest.importorskip("hotqueue")
    kwargs = private_redis.connection_pool.connection_kwargs
    for name, n in (("dsc-a", 2), ("dsc-b", 1), ("other", 4)):
        queue = hotqueue.HotQueue(name, host=kwargs["host"], port=kwargs["port"])
        for i in range(n):
            queue.put(i)
    collection = Collection([HotQueueProc("worker", queues="dsc-*", connection=private_redis)])
    reference = cost(private_redis, Collection([HotQueueProc("worker", ["dsc-a", "dsc-b"], connection=private_redis)]))
    assert cost(private_redis, collection) == {**reference, "scan": 1}  # what naming the queues costs, and one SCAN
    queues = collection.latest.procs[0].reading.queues
    assert [(q.name, q.jobs["queued"]) for q in queues] == [("dsc-a", 2), ("dsc-b", 1)]


# Huey: the instances sharing one storage


def test_redis_huey_instances_sharing_a_redis_are_found_by_scan(private_redis):
    huey = pytest.importorskip("huey")
    pool = private_redis.connection_pool
    instances = [huey.RedisHuey(name, connection_pool=pool) for name in ("dsc_mail", "dsc_reports", "other")]
    for instance, n in zip(instances, (2, 1, 5)):

        @instance.task()
        def noop():
            return None

        for _ in range(n):
            noop()
    scheduled_only = huey.RedisHuey("dsc_later", connection_pool=pool)

    @scheduled_only.task()
    def later():
        return None

    scheduled_only.add_schedule(later.s(delay=3600))  # as a consumer does with a task whose ETA is to come
    collection = Collection([HueyProc("worker", huey=instances[0], queues="dsc_*")])
    names = ["dsc_later", "dsc_mail", "dsc_reports"]
    reference = cost(private_redis, Collection([HueyProc("worker", huey=instances[0], queues=names)]))
    # a SCAN of the queues' keys and one of the schedules', and the type of the queue key of a name only scheduled
    # (in a round trip of its own, with its ROLE)
    extra = {"scan": 2, "type": 1, "evalsha_ro": reference["evalsha_ro"] + 1, "role": reference["role"] + 1}
    assert cost(private_redis, collection) == {**reference, **extra}
    reading = collection.latest.procs[0].reading
    assert {q.name: dict(q.jobs) for q in reading.queues} == {
        "dsc_later": {"queued": 0, "due": 0, "scheduled": 1},
        "dsc_mail": {"queued": 2, "due": 0, "scheduled": 0},
        "dsc_reports": {"queued": 1, "due": 0, "scheduled": 0},
    }
    assert reading.quantity == 3


def test_sqlite_huey_queues_are_found_in_its_tables(tmp_path):
    huey = pytest.importorskip("huey")
    filename = str(tmp_path / "huey.db")
    for name, n in (("dsc_a", 2), ("dsc_b", 1)):
        instance = huey.SqliteHuey(name, filename=filename)

        @instance.task()
        def noop():
            return None

        for _ in range(n):
            noop()
    proc = HueyProc("worker", storage="sqlite", filename=filename, queues="*")
    reading = Collection([proc]).collect().procs[0].reading
    assert [(q.name, q.jobs["queued"]) for q in reading.queues] == [("dsc_a", 2), ("dsc_b", 1)]


def test_a_discovered_name_holding_glob_characters_is_a_name_not_a_new_pattern(private_redis):
    """A queue called ``dsc-we*ird`` found by ``dsc-*`` must not turn into a pattern of its own: that would drop what
    the proc knows of the others' claims and count ``dsc-high-1`` in both procs."""
    url = private_url(private_redis)
    enqueue(private_redis, "dsc-high-1", 5)
    enqueue(private_redis, "dsc-we*ird", 1)
    clock = Clock()
    high = RQProc("high", queues=["dsc-high-*"], url=url, discover_every=60)
    other = RQProc("other", queues=["dsc-*"], url=url, discover_every=60)
    collection = Collection([high, other], clock=clock, max_age=0)
    private_redis.config_resetstat()
    for _ in range(3):
        snapshot = collection.collect()
        assert [(s.name, s.reading.quantity) for s in snapshot.procs] == [("high", 5), ("other", 1)]
        assert [q.name for q in snapshot.procs[1].reading.queues] == ["dsc-we*ird"]
        clock.now += 1
    assert other.discovery.patterns == ("dsc-*",)
    smembers_rq_queues = 2  # one discovery per proc in the first cycle, none after: discover_every holds
    assert command_counts(private_redis)["smembers"] == smembers_rq_queues + 3 * 2  # + the worker sets, per cycle


def test_a_queue_name_that_is_not_text_is_left_out_not_fatal_to_the_server(private_redis, caplog):
    url = private_url(private_redis)
    enqueue(private_redis, "dsc-default", 2)
    private_redis.sadd("rq:queues", b"rq:queue:dsc-bad\xff")
    procs = [RQProc("web", queues=["dsc-default"], url=url), RQProc("other", queues="dsc-*", url=url)]
    with caplog.at_level(logging.WARNING, logger="hirefire_exporter"):
        snapshot = Collection(procs).collect()
    assert [(s.name, s.up, s.reading.quantity) for s in snapshot.procs] == [("web", True, 2), ("other", True, 0)]
    assert "1 queue name(s) on the broker are not UTF-8 text" in caplog.text


def test_a_huey_instance_named_with_a_dash_is_not_discovered_again_by_another_proc(private_redis):
    """Huey stores ``dsc-my-app`` as ``dscmyapp`` (its ``clean_name``): the claim must be compared as stored."""
    huey = pytest.importorskip("huey")
    pool = private_redis.connection_pool
    named = huey.RedisHuey("dsc-my-app", connection_pool=pool)

    @named.task()
    def noop():
        return None

    for _ in range(4):
        noop()
    assert private_redis.llen("huey.redis.dscmyapp") == 4
    finder = huey.RedisHuey("x", connection_pool=pool)
    procs = [HueyProc("worker", huey=named), HueyProc("other", huey=finder, queues="*")]
    snapshot = Collection(procs).collect()
    assert [(s.name, s.reading.quantity) for s in snapshot.procs] == [("worker", 4), ("other", 0)]


# What discovery must survive: queues that drain, stray keys, names that look like patterns, a queue named twice


def jobs_by_queue(collection: Collection, proc: int = 0) -> dict[str, int]:
    status = collection.collect().procs[proc]
    assert status.up, status.error
    return {q.name: q.jobs["queued"] for q in status.reading.queues}


def test_a_drained_queue_is_read_until_it_fills_again_then_forgotten_after_an_hour(private_redis):
    """HotQueue (like Huey and Dramatiq on Redis) keeps nothing of an empty queue: Redis deletes the list with its
    last job. A job sent to it after the next discovery must still be counted."""
    hotqueue = pytest.importorskip("hotqueue")
    kwargs = private_redis.connection_pool.connection_kwargs
    queue = hotqueue.HotQueue("dsc-mail", host=kwargs["host"], port=kwargs["port"])
    queue.put("first")
    clock = Clock()
    collection = Collection([HotQueueProc("worker", queues="dsc-*", connection=private_redis)], clock=clock)
    assert jobs_by_queue(collection) == {"dsc-mail": 1}
    assert queue.get() == "first"  # a worker takes the last job: the key is gone
    clock.now += 60  # a discovery, which no longer sees the queue
    assert jobs_by_queue(collection) == {"dsc-mail": 0}
    queue.put("second")
    queue.put("third")
    clock.now += 30  # before the next discovery
    assert jobs_by_queue(collection) == {"dsc-mail": 2}
    queue.clear()
    clock.now += discovery.KEEP_FOR
    assert jobs_by_queue(collection) == {}


def test_a_stray_key_of_another_type_under_a_pattern_fails_no_proc(private_redis):
    """A string where each backend's discovery expects a list, hash or set: passed over, the real queues counted."""
    import dramatiq
    from celery import Celery
    from dramatiq.brokers.redis import RedisBroker

    url = private_url(private_redis)
    kwargs = private_redis.connection_pool.connection_kwargs
    hotqueue = pytest.importorskip("hotqueue").HotQueue("dsc-h", host=kwargs["host"], port=kwargs["port"])
    hotqueue.put(1)
    huey = pytest.importorskip("huey").RedisHuey("dsc_huey", connection_pool=private_redis.connection_pool)
    huey.enqueue(huey.task()(lambda: None).s())
    RedisBroker(url=url).enqueue(dramatiq.Message("dsc-d", "noop", (), {}, {}))
    Celery(broker=url).send_task("noop", queue="dsc-c")
    for key in ("hotqueue:dsc-x", "huey.redis.dsc_x", "huey.schedule.dsc_x", "dramatiq:dsc-x.msgs"):
        private_redis.set(key, "garbage")
    private_redis.set("_kombu.binding.dsc-x", "garbage")
    procs = [
        HotQueueProc("hotqueue", queues="dsc-*", connection=private_redis),
        HueyProc("huey", huey=huey, queues="dsc_*"),
        DramatiqProc("dramatiq", queues="dsc-*", url=url),
        CeleryProc("celery", queues="dsc-*", url=url),
    ]
    snapshot = Collection(procs).collect()
    assert [(s.name, s.up, s.reading and s.reading.quantity) for s in snapshot.procs] == [
        ("hotqueue", True, 1),
        ("huey", True, 1),
        ("dramatiq", True, 1),
        ("celery", True, 1),
    ]
    assert [[q.name for q in s.reading.queues] for s in snapshot.procs] == [
        ["dsc-h"],
        ["dsc_huey"],
        ["dsc-d"],
        ["dsc-c"],
    ]


def test_a_plain_and_a_priority_huey_on_one_redis_each_find_their_own(private_redis):
    huey = pytest.importorskip("huey")
    pool = private_redis.connection_pool
    plain, priority = (
        huey.RedisHuey("dsc_plain", connection_pool=pool),
        huey.PriorityRedisHuey("dsc_prio", connection_pool=pool),
    )
    for instance, n in ((plain, 2), (priority, 3)):
        task = instance.task()(lambda: None)
        for _ in range(n):
            instance.enqueue(task.s())
    procs = [HueyProc("plain", huey=plain, queues="dsc_*"), HueyProc("priority", huey=priority, queues="dsc_*")]
    collection = Collection(procs)
    assert jobs_by_queue(collection, 0) == {"dsc_plain": 2}
    assert jobs_by_queue(collection, 1) == {"dsc_prio": 3}


def test_a_huey_pattern_matches_the_names_as_huey_stores_them(private_redis):
    """Huey stores ``reports-eu`` as ``reportseu``: the pattern ``reports-*`` must find it (as ``reports*``)."""
    huey = pytest.importorskip("huey")
    for name, n in (("reports-eu", 2), ("reports-us", 1), ("other", 4)):
        instance = huey.RedisHuey(name, connection_pool=private_redis.connection_pool)
        task = instance.task()(lambda: None)
        for _ in range(n):
            instance.enqueue(task.s())
    collection = Collection([HueyProc("worker", huey=instance, queues="reports-*")])
    assert jobs_by_queue(collection) == {"reportseu": 2, "reportsus": 1}


def test_a_queue_whose_name_holds_glob_characters_is_named_by_escaping_them(private_redis):
    """``dsc-a[1]`` is a name (a one-character set stands for itself); ``dsc-b[*]c`` names ``dsc-b*c``: both stay
    out of the glob proc, which measures the rest."""
    url = private_url(private_redis)
    for name, n in (("dsc-a[1]", 1), ("dsc-a1", 2), ("dsc-b*c", 3), ("dsc-bxc", 4)):
        enqueue(private_redis, name, n)
    procs = [RQProc("named", queues=["dsc-a[1]", "dsc-b[*]c"], url=url), RQProc("all", queues="dsc-*", url=url)]
    collection = Collection(procs)
    assert jobs_by_queue(collection, 0) == {"dsc-a[1]": 1, "dsc-b*c": 3}
    assert jobs_by_queue(collection, 1) == {"dsc-a1": 2, "dsc-bxc": 4}
    assert discovery.literal("jobs[[]1]") == "jobs[1]" and discovery.is_pattern("jobs[12]")
    # as configured, in the repr and the configuration digest: the name is not the pattern that reads alike
    assert repr(procs[0]) == "RQProc(name='named', queues=['dsc-a[[]1]', 'dsc-b[*]c'])"
    named, pattern = (fingerprint.digest([RQProc("w", queues=[q], url=url)]) for q in ("dsc-b[*]c", "dsc-b*c"))
    assert named != pattern


def test_a_queue_named_twice_is_measured_once(private_redis, caplog):
    url = private_url(private_redis)
    enqueue(private_redis, "dsc-a", 3)
    huey = pytest.importorskip("huey").RedisHuey("dsc-my-app", connection_pool=private_redis.connection_pool)
    huey.enqueue(huey.task()(lambda: None).s())
    procs = [
        RQProc("rq", queues=["dsc-a", "dsc-a"], url=url),
        HueyProc("huey", huey=huey, queues=["dsc-my-app", "dscmyapp"]),
    ]
    with caplog.at_level(logging.WARNING, logger="hirefire_exporter"):
        app = ExporterApp(Collection(procs), "tok")
        info, queued = served(app)
    assert info == [{"name": "rq", "value": 3, "quantity": 3}, {"name": "huey", "value": 1, "quantity": 1}]
    assert queued == {("rq", "dsc-a"): 3.0, ("huey", "dsc-my-app"): 1.0}  # one series each: Prometheus takes it
    assert "proc 'rq': queues ['dsc-a'] name queues named before" in caplog.text
    assert "proc 'huey': queues ['dscmyapp'] name queues named before" in caplog.text


def test_a_discovered_queue_that_is_deleted_is_no_typo_to_warn_about(private_redis, caplog):
    url = private_url(private_redis)
    enqueue(private_redis, "dsc-tmp", 1)
    clock = Clock()
    collection = Collection([RQProc("worker", queues="dsc-*", url=url)], clock=clock)
    assert jobs_by_queue(collection) == {"dsc-tmp": 1}
    rq.Queue("dsc-tmp", connection=private_redis).delete()
    clock.now += 1  # before the next discovery: still measured, and gone from the broker
    with caplog.at_level(logging.WARNING, logger="hirefire_exporter"):
        assert jobs_by_queue(collection) == {"dsc-tmp": 0}
    assert "not found on the broker" not in caplog.text


class _BeforeRedis6:
    """A client on a real server whose SCAN takes no TYPE, as before Redis 6: the only way to get that reply here."""

    def __init__(self, client) -> None:
        self.client = client
        self.typed_scans = 0

    def scan(self, cursor, match=None, count=None, _type=None):
        import redis

        if _type is not None:
            self.typed_scans += 1
            raise redis.exceptions.ResponseError("ERR syntax error")
        return self.client.scan(cursor, match=match, count=count)

    def pipeline(self, transaction=True):
        return self.client.pipeline(transaction=transaction)


def test_before_redis_6_a_scan_keeps_its_type_with_one_pipelined_type_per_key(private_redis):
    private_redis.rpush("hotqueue:dsc-a", 1)
    private_redis.set("hotqueue:dsc-x", "garbage")
    scan = discovery.KeyScan("hotqueue:*", "list")
    client = _BeforeRedis6(private_redis)
    assert scan.step(client) == {"hotqueue:dsc-a"}
    assert scan.step(client) == {"hotqueue:dsc-a"}
    assert client.typed_scans == 1  # learnt once: no TYPE asked of SCAN again
    assert discovery.KeyScan("hotqueue:*", "list").step(private_redis) == {"hotqueue:dsc-a"}  # Redis 6 and later
