"""Garbage in the brokers never breaks a cycle: counts stay exact, a latency that cannot be read is unknown (never
a guess), and a key of the wrong type fails only the proc that reads it, never its neighbours on the same server.

The garbage is written straight into the real Redis (test database only), where a buggy producer, an old library
version, an expired key or a manual ``redis-cli`` session could have left it.
"""

from __future__ import annotations

import json
import math
import struct
import time

import pytest
from support import samples
from werkzeug.test import Client

from hirefire_exporter.app import ExporterApp
from hirefire_exporter.collection import Collection
from hirefire_exporter.procs.base import Proc, QueueReading, Reading
from hirefire_exporter.procs.huey import HueyProc
from hirefire_exporter.procs.rq import RQProc

rq = pytest.importorskip("rq")

GARBAGE = [
    b"\x80\x04\x95\x10\x00\x00",  # a truncated pickle
    b"\xff\xfe\x00not utf-8",
    b"{not json",
    b'{"truncated": "jso',
    b"[]",
    b"null",
    b"",
    b"x" * 100_000,
]


def cycle(redis_conn, proc):
    """One cycle of ``proc`` next to a clean RQ neighbour on the same server (2 jobs in queue ``clean``)."""
    redis_conn.delete("rq:queue:clean")
    for _ in range(2):
        rq.Queue("clean", connection=redis_conn).enqueue("rq_jobs.noop")
    neighbour = RQProc("neighbour", connection=redis_conn, queues=["clean"])
    collection = Collection([proc, neighbour], max_age=0)
    snapshot = collection.collect()
    status, clean = snapshot.procs
    assert (clean.up, clean.reading.quantity) == (True, 2), clean.error  # the neighbour always reports exactly
    collection.close()
    return status


# RQ


def test_rq_ids_without_a_job_hash_are_expired_jobs_not_waiting_ones(redis_conn):
    """An id whose job hash is gone (a `ttl` passed, a manual cleanup) or that never named a job: an RQ worker pops it
    and drops it. It is reported as `expired`, not counted, and no job waits."""
    queue = rq.Queue("default", connection=redis_conn)
    job = queue.enqueue("rq_jobs.noop")
    redis_conn.delete(f"rq:job:{job.id}")
    status = cycle(redis_conn, RQProc("worker", connection=redis_conn))
    assert (status.up, status.reading.quantity, status.reading.latency) == (True, 0, 0.0)
    assert status.reading.queues[0].jobs["expired"] == 1

    redis_conn.delete("rq:queue:default")
    for item in GARBAGE:
        redis_conn.rpush("rq:queue:default", item)
    status = cycle(redis_conn, RQProc("worker", connection=redis_conn))
    assert (status.up, status.reading.quantity, status.reading.latency) == (True, 0, 0.0)
    assert status.reading.queues[0].jobs["expired"] == len(GARBAGE)


@pytest.mark.parametrize(
    ("enqueued_at", "latency"),
    [
        (b"yesterday", None),
        (b"\xff\xfe", None),
        (b"", None),
        (b"2026-13-45T99:99:99Z", None),
        (b"9999-12-31T23:59:59Z", 0.0),  # the future: clocks differ, never negative
    ],
)
def test_rq_garbage_enqueued_at_gives_an_unknown_latency_not_a_failure(redis_conn, enqueued_at, latency):
    job = rq.Queue("default", connection=redis_conn).enqueue("rq_jobs.noop")
    redis_conn.hset(f"rq:job:{job.id}", "enqueued_at", enqueued_at)
    status = cycle(redis_conn, RQProc("worker", connection=redis_conn, metric="latency"))
    assert (status.up, status.reading.quantity, status.reading.latency) == (True, 1, latency)


def test_rq_job_hash_of_the_wrong_type_gives_an_unknown_latency(redis_conn):
    job = rq.Queue("default", connection=redis_conn).enqueue("rq_jobs.noop")
    redis_conn.delete(f"rq:job:{job.id}")
    redis_conn.rpush(f"rq:job:{job.id}", "a list, not a hash")
    status = cycle(redis_conn, RQProc("worker", connection=redis_conn))
    assert (status.up, status.reading.quantity, status.reading.latency) == (True, 1, None)


@pytest.mark.parametrize("key", ["rq:queue:default", "rq:wip:default", "rq:scheduled:default"])
def test_a_key_of_the_wrong_type_fails_only_its_own_proc_and_says_why(redis_conn, key):
    redis_conn.set(key, "a string where RQ keeps a list or a sorted set")
    status = cycle(redis_conn, RQProc("worker", connection=redis_conn))
    assert status.up is False and status.reading is None
    assert status.error.startswith("ResponseError: WRONGTYPE")


def test_a_garbage_proc_is_served_over_http_as_down_never_as_zero(redis_conn):
    redis_conn.set("rq:queue:default", "garbage")
    rq.Queue("clean", connection=redis_conn).enqueue("rq_jobs.noop")
    procs = [RQProc("worker", connection=redis_conn), RQProc("neighbour", connection=redis_conn, queues=["clean"])]
    client = Client(ExporterApp(Collection(procs, max_age=0), "t"))
    info = client.get("/hirefire/t/info")
    assert (info.status_code, json.loads(info.data)["procs"]) == (503, ["worker"])
    text = client.get("/metrics").get_data(as_text=True)
    assert samples(text, "hirefire_proc_up") == {("worker",): 0.0, ("neighbour",): 1.0}
    assert samples(text, "hirefire_proc_jobs") == {("neighbour",): 1.0}


# Huey


def test_huey_garbage_messages_are_counted_not_parsed(redis_conn):
    import huey

    tasks = huey.RedisHuey("garbage", connection_pool=redis_conn.connection_pool)
    for item in GARBAGE:
        redis_conn.lpush("huey.redis.garbage", item)
    redis_conn.zadd("huey.schedule.garbage", {b"\x80\x04truncated": 1.0, b"\xff": time.time() + 3600})
    status = cycle(redis_conn, HueyProc("huey", huey=tasks))
    assert status.up, status.error
    assert dict(status.reading.queues[0].jobs) == {"queued": len(GARBAGE), "due": 1, "scheduled": 1}


@pytest.mark.parametrize(
    ("member", "latency"),
    [
        (b"\x00", None),  # shorter than the 8-byte timestamp
        (b"", None),
        (struct.pack(">Q", 2**64 - 1) + b"garbage", 0.0),  # a timestamp in year 586,000: never negative
        (struct.pack(">Q", 0) + b"\x80\x04truncated pickle", "epoch"),  # 1970: as old as it says
    ],
)
def test_priority_huey_garbage_members_never_break_the_latency(redis_conn, member, latency):
    import huey

    tasks = huey.PriorityRedisHuey("prio", connection_pool=redis_conn.connection_pool)
    redis_conn.zadd("huey.redis.prio", {member: 0})
    started = time.time()
    status = cycle(redis_conn, HueyProc("huey", huey=tasks, metric="latency"))
    assert status.up and status.reading.quantity == 1
    if latency == "epoch":
        assert status.reading.latency >= started
    else:
        assert status.reading.latency == latency


def test_huey_queue_of_the_wrong_type_fails_only_its_proc(redis_conn):
    import huey

    tasks = huey.RedisHuey("garbage", connection_pool=redis_conn.connection_pool)
    redis_conn.hset("huey.redis.garbage", "not", "a list")
    status = cycle(redis_conn, HueyProc("huey", huey=tasks))
    assert status.up is False and status.error.startswith("ResponseError: WRONGTYPE")


# Celery on Redis


celery_proc = pytest.importorskip("hirefire_exporter.procs.celery")
SEP = "\x06\x16"


def celery_cycle(redis_conn, redis_url, **options):
    proc = celery_proc.CeleryProc("worker", queues=["celery"], url=redis_url, **options)
    return cycle(redis_conn, proc)


def test_celery_garbage_messages_count_with_unknown_latency(redis_conn, redis_url):
    for item in GARBAGE:
        redis_conn.lpush("celery", item)
    status = celery_cycle(redis_conn, redis_url)
    assert status.up, status.error
    assert status.reading.quantity == len(GARBAGE) and status.reading.latency is None


@pytest.mark.parametrize(
    "envelope",
    [
        {"headers": "not a dict"},
        {"headers": {"hirefire_enqueued_at": "yesterday"}},
        {"headers": {"hirefire_enqueued_at": True}},
        {"headers": None, "properties": {"timestamp": [1]}},
        ["a", "list"],
        "a string",
        12,
    ],
)
def test_celery_envelopes_without_a_usable_stamp_have_unknown_latency(redis_conn, redis_url, envelope):
    redis_conn.lpush("celery", json.dumps(envelope))
    status = celery_cycle(redis_conn, redis_url)
    assert (status.up, status.reading.quantity, status.reading.latency) == (True, 1, None)


@pytest.mark.parametrize("stamp", ["-Infinity", "Infinity", "NaN", "-1e308", "1e308"])
def test_celery_absurd_stamps_never_give_an_infinite_or_negative_latency(redis_conn, redis_url, stamp):
    redis_conn.lpush("celery", '{"headers": {"hirefire_enqueued_at": ' + stamp + "}}")
    status = celery_cycle(redis_conn, redis_url, metric="latency")
    assert status.up and status.reading.quantity == 1
    latency = status.reading.latency
    assert latency is None or 0.0 <= latency < math.inf  # HireFire's JSON has no Infinity or NaN
    collection = Collection([celery_proc.CeleryProc("worker", queues=["celery"], url=redis_url, metric="latency")])
    info = Client(ExporterApp(collection, "t")).get("/hirefire/t/info")
    assert info.status_code in (200, 503)
    json.loads(info.data, parse_constant=lambda c: pytest.fail(f"{c} in the /info JSON"))
    collection.close()


def test_celery_unknown_priority_keys_are_ignored(redis_conn, redis_url):
    redis_conn.lpush("celery", json.dumps({"headers": {}}))
    redis_conn.lpush(f"celery{SEP}3", json.dumps({"headers": {}}))
    for stray in (f"celery{SEP}42", f"celery{SEP}x", f"celery{SEP}", f"celery{SEP}3{SEP}3"):
        redis_conn.lpush(stray, b"\x80\x04truncated")
    status = celery_cycle(redis_conn, redis_url)
    assert status.up and status.reading.quantity == 2  # the base list and priority step 3: what kombu consumes


def test_celery_garbage_in_the_unacked_hash_is_skipped(redis_conn, redis_url):
    good = json.dumps([{"headers": {}}, "", "celery"])
    entries = {
        "good": good,
        "not json": b"\x80\x04truncated",
        "truncated": good[:-5],
        "short": json.dumps([{"headers": {}}, ""]),
        "message not a dict": json.dumps(["a string", "", "celery"]),
        "eta garbage": json.dumps([{"headers": {"eta": "soon"}}, "", "celery"]),
        "eta number": json.dumps([{"headers": {"eta": 12}}, "", "celery"]),
        "null": "null",
    }
    redis_conn.hset("unacked", mapping=entries)
    status = celery_cycle(redis_conn, redis_url)
    assert status.up, status.error
    # the good entry, and the ones whose only garbage is an unreadable ETA (held by a worker: reserved)
    assert dict(status.reading.queues[0].jobs) == {"queued": 0, "reserved": 3, "scheduled": 0}


WRONG_SHAPES = {
    "exchange not a string": [{"headers": {}}, ["x"], "celery"],
    "routing key not a string": [{"headers": {}}, "", {"routing": "key"}],
    "exchange a number": [{"headers": {}}, 5, "celery"],
}
BINDINGS = [f"celery{SEP}{SEP}celery", b"\xff\xfe", f"[{SEP}({SEP}celery"]  # a non-text and a non-regex member


@pytest.mark.parametrize("entry", WRONG_SHAPES.values(), ids=WRONG_SHAPES.keys())
def test_celery_unacked_entries_of_the_wrong_shape_never_sink_the_neighbours(redis_conn, redis_url, entry):
    """Whatever the celery proc makes of it, the RQ proc reading the same server in the same pipeline is unharmed
    (``cycle`` checks the neighbour's exact count)."""
    redis_conn.hset("unacked", mapping={"bad": json.dumps(entry), "good": json.dumps([{"headers": {}}, "", "celery"])})
    redis_conn.sadd("_kombu.binding.tasks", *BINDINGS)
    celery_cycle(redis_conn, redis_url)


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param(WRONG_SHAPES["exchange not a string"], id="exchange not a string"),
        pytest.param(WRONG_SHAPES["routing key not a string"], id="routing key not a str"),
        pytest.param(WRONG_SHAPES["exchange a number"], id="exchange a number"),
        pytest.param([{"headers": {}}, "tasks", None], id="bad regex in bindings"),
    ],
)
def test_celery_unacked_entries_of_the_wrong_shape_are_skipped(redis_conn, redis_url, entry):
    redis_conn.hset("unacked", mapping={"bad": json.dumps(entry), "good": json.dumps([{"headers": {}}, "", "celery"])})
    redis_conn.sadd("_kombu.binding.tasks", *BINDINGS)
    status = celery_cycle(redis_conn, redis_url)
    assert status.up, status.error
    assert status.reading.queues[0].jobs["reserved"] == 1


# Custom procs that measure garbage


class Measures(Proc):
    """A custom proc (new API) returning whatever reading it is given."""

    queues = ["default"]
    supports_latency = True

    def __init__(self, name: str, reading: Reading, metric: str = "size") -> None:
        super().__init__(name, metric=metric)
        self.reading = reading

    def read(self, cache) -> Reading:
        return self.reading


@pytest.mark.parametrize(
    ("reading", "metric", "problem"),
    [
        (Reading(quantity=float("nan")), "size", "quantity nan"),
        (Reading(quantity=-5), "size", "quantity -5"),
        (Reading(quantity="7"), "size", "quantity '7'"),
        (Reading(quantity=True), "size", "quantity True"),
        (Reading(quantity=3, latency=float("inf")), "latency", "latency inf"),
        (Reading(quantity=3, latency="x"), "latency", "latency 'x'"),
        (Reading(quantity=2, queues=(QueueReading("q", {"queued": "x"}),)), "size", "queue 'q' queued 'x'"),
        (
            Reading(quantity=2, queues=(QueueReading("q", {"queued": 2}, latency=-1.0),)),
            "size",
            "queue 'q' latency -1.0",
        ),
        # beside fine queues, each kind of garbage the all-queues-at-once check must not let through
        *(
            (Reading(quantity=2, queues=(QueueReading("a", {"queued": 1}, latency=2.5), bad)), "size", problem)
            for bad, problem in [
                (QueueReading("q", {"queued": 1}, latency=float("nan")), "queue 'q' latency nan"),
                (QueueReading("q", {"queued": 1}, latency=""), "queue 'q' latency ''"),
                (QueueReading("q", {"queued": 1}, latency=False), "queue 'q' latency False"),
                (QueueReading("q", {"queued": True}), "queue 'q' queued True"),
                (QueueReading("q", {"queued": 1, "started": -1}), "queue 'q' started -1"),
            ]
        ),
    ],
)
def test_a_custom_proc_measuring_garbage_is_down_never_nan_infinity_or_a_500(reading, metric, problem):
    collection = Collection([Measures("custom", reading, metric), Measures("fine", Reading(quantity=4))], max_age=0)
    client = Client(ExporterApp(collection, "t"))
    info = client.get("/hirefire/t/info")
    assert info.status_code == 503
    assert json.loads(info.data, parse_constant=lambda c: pytest.fail(c))["procs"] == ["custom"]
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert samples(metrics.get_data(as_text=True), "hirefire_proc_jobs") == {("fine",): 4.0}
    assert collection.latest.procs[0].error == f"ValueError: not a count or an age in seconds: {problem}"


# The script and the pipeline read garbage alike


def both_paths(monkeypatch, redis_conn, make_proc, alone: bool = False) -> list:
    """One cycle of ``make_proc()`` (next to a clean RQ neighbour unless ``alone``) in the server-side script, one
    with plain pipelined commands (as where scripts are refused): the two statuses."""
    from hirefire_exporter.procs import redis_script

    statuses = []
    for pipeline in (False, True):
        monkeypatch.setattr(redis_script, "_SERVERS", {})  # nothing learnt: the script path
        proc = make_proc()
        if pipeline:  # the proc's own client: a client that reads alike reads for it (batch_key), redis_conn not
            redis_script.pipeline_only(proc.redis_client())
        if alone:
            collection = Collection([proc], max_age=0)
            statuses.append(collection.collect().procs[0])
            collection.close()
        else:
            statuses.append(cycle(redis_conn, proc))
        assert redis_script._server(proc.redis_client()).refused is pipeline
    return statuses


def test_rq_queues_of_the_wrong_type_leave_the_counts_standing_on_both_paths(monkeypatch, redis_conn):
    """``rq:queues`` only says whether RQ knows an empty queue: unreadable (``SET rq:queues oops``), that is
    unknown, and the queues' counts stand, whether they are empty or not."""
    for _ in range(3):
        rq.Queue("busy", connection=redis_conn).enqueue("rq_jobs.noop")
    redis_conn.delete("rq:queues")
    redis_conn.set("rq:queues", "oops")

    make = lambda: RQProc("rq", connection=redis_conn, queues=["busy", "empty"])  # noqa: E731
    for status in both_paths(monkeypatch, redis_conn, make, alone=True):  # (the neighbour's enqueue would fail)
        assert status.up, status.error
        assert [(q.name, q.jobs["queued"], q.found) for q in status.reading.queues] == [
            ("busy", 3, True),
            ("empty", 0, None),
        ]


@pytest.mark.parametrize("waiting", [0, 2])
def test_a_celery_binding_table_of_the_wrong_type_leaves_the_counts_standing_on_both_paths(
    monkeypatch, redis_conn, redis_url, waiting
):
    for _ in range(waiting):
        redis_conn.lpush("celery", json.dumps({"headers": {}, "properties": {}}))
    redis_conn.set("_kombu.binding.celery", "oops")

    statuses = both_paths(
        monkeypatch, redis_conn, lambda: celery_proc.CeleryProc("w", queues=["celery"], url=redis_url)
    )
    for status in statuses:
        assert status.up, status.error
        assert status.reading.quantity == waiting
    assert statuses[0].reading == statuses[1].reading


_T = f"{time.time() - 100:.3f}"  # a stamp 100 s old


def at(template: str, whole: bool = False) -> str:
    """``template`` with the stamp in place of ``@`` (its whole seconds with ``whole``)."""
    return template.replace("@", _T.split(".")[0] if whole else _T)


@pytest.mark.parametrize(
    ("raw", "stamped"),
    [
        (at('{"headers": {"hirefire_enqueued_at": @}}'), True),
        (at('{"hirefire_enqueued_at": 1, "headers": {"hirefire_enqueued_at": @}}'), True),  # also named outside
        (at('{"headers": {"hirefire_enqueued_at": "x"}, "properties": {"timestamp": @}}'), True),
        # the header written once is read where it is written, whatever surrounds it (as kombu writes it, a message
        # is not decoded): outside headers, nested deeper, truncated, in no JSON at all
        (at('{"headers": {}, "hirefire_enqueued_at": @}'), True),
        (at('{"headers": {"x": {"hirefire_enqueued_at": @}}}'), True),
        (at('{"properties": {}, "timestamp": @}'), False),
        (at('{"headers": {"hirefire_enqueued_at": @, "id": "abc'), True),
        (at('garbage "hirefire_enqueued_at": @}'), True),
        (at('\xff{"headers": {"hirefire_enqueued_at": @}}'), True),
        (at('{"headers": {"hirefire_enqueued_at": @ "id": 1}}'), False),  # no `,` or `}` after it, and no JSON
        (at('{"headers": {}, "hirefire_enqueued_at": @, "x": {"hirefire_enqueued_at": 1}}'), False),  # twice, outside
        ('{"headers": {"hirefire_enqueued_at": 0x10}}', False),  # cjson takes hex, JSON does not
        (at('{"headers": {"hirefire_enqueued_at": 0x10}, "properties": {"timestamp": @}}'), False),
        (at('{"headers": {"hirefire_enqueued_at": NaN}, "properties": {"timestamp": @}}'), False),
        ('{"headers": {"hirefire_enqueued_at": -Infinity}}', False),
        (at('{"headers": {"hirefire_enqueued_at": +@}}'), False),
        (at('{"headers": {"hirefire_enqueued_at": 0@}}'), False),
        (at('{"headers": {"hirefire_enqueued_at": @.}}', whole=True), False),
        (at('{"headers": {"hirefire_enqueued_at": @e0}}'), True),
        ('{"headers": {"hirefire_enqueued_at": 1E400}}', False),  # a JSON number, no time at all: unknown
    ],
)
def test_celery_stamps_are_read_by_one_rule_in_the_script_and_the_pipeline(monkeypatch, redis_conn, redis_url, raw,
                                                                           stamped):  # fmt: skip
    """The header inside the message's ``headers`` (else ``properties.timestamp``), a JSON number; anything else is
    no stamp, on the server (cjson, which takes more than JSON) as in Python."""
    redis_conn.lpush("celery", raw.encode("latin-1"))
    make = lambda: celery_proc.CeleryProc("w", queues=["celery"], url=redis_url, metric="latency")  # noqa: E731

    script, pipeline = both_paths(monkeypatch, redis_conn, make)

    assert script.up and pipeline.up, (script.error, pipeline.error)
    assert script.reading.quantity == pipeline.reading.quantity == 1
    for latency in (script.reading.queues[0].latency, pipeline.reading.queues[0].latency):  # (two cycles apart)
        assert (latency is not None and 100 <= latency < 1000) if stamped else latency is None, latency  # _T: import
