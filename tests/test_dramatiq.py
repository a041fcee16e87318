"""Dramatiq on Redis: exact counts from dramatiq's own storage, written by dramatiq and by real workers."""

from __future__ import annotations

import json
import signal
import time

import pytest
from dramatiq_support import DramatiqWorker, unique_queue, wait_started
from support import command_counts, count_round_trips, wait_until

from hirefire_exporter.collection import Collection
from hirefire_exporter.loading import proc_from_table
from hirefire_exporter.procs.dramatiq import DramatiqProc
from hirefire_exporter.procs.rq import RQProc

dramatiq = pytest.importorskip("dramatiq")
from dramatiq.brokers.redis import RedisBroker  # noqa: E402


def send(broker, queue: str, actor: str, *args, delay: int | None = None):
    """Enqueue a message for an actor of tests/dramatiq_actors.py, as ``actor.send`` does."""
    return broker.enqueue(
        dramatiq.Message(queue_name=queue, actor_name=actor, args=args, kwargs={}, options={}), delay=delay
    )


def jobs(snapshot, proc: int = 0) -> dict[str, dict[str, int]]:
    reading = snapshot.procs[proc].reading
    return {q.name: dict(q.jobs) for q in reading.queues}


@pytest.fixture
def flags(tmp_path):
    return tmp_path


def test_counts_running_prefetched_waiting_delayed_due_and_dead_messages(redis_conn, redis_url, flags, workers):
    q, idle = unique_queue(), unique_queue()
    producer = RedisBroker(url=redis_url)
    worker = DramatiqWorker("redis", redis_url, q, flags, threads=1, heartbeat_ms=3000)
    workers.append(worker)
    send(producer, q, "fail")
    wait_until(lambda: redis_conn.zcard(f"dramatiq:{q}.XQ") == 1, timeout=30, what="the failed message dead-lettered")
    for name in "abcd":
        send(producer, q, "hold", name)
    send(producer, q, "hold", "later", delay=3_600_000)
    send(producer, idle, "hold", "due", delay=1)  # nobody consumes `idle`: its message stays in the delay queue
    wait_started(flags, "a")
    wait_until(lambda: redis_conn.llen(f"dramatiq:{q}") == 2, what="the worker to prefetch its second message")
    time.sleep(0.01)
    proc = DramatiqProc("worker", queues=[q, idle], url=redis_url, heartbeat_timeout=3)

    snapshot = Collection([proc]).collect()

    # one thread: `a` runs, `b` is prefetched (dramatiq prefetches twice its threads), `c` and `d` wait
    assert jobs(snapshot) == {
        q: {"queued": 2, "started": 2, "orphaned": 0, "due": 0, "delayed": 1, "dead": 1},
        idle: {"queued": 0, "started": 0, "orphaned": 0, "due": 1, "delayed": 0, "dead": 0},
    }
    reading = snapshot.procs[0].reading
    assert reading.quantity == 5
    assert 0 <= reading.queues[0].latency < 30  # the age of `c`, the oldest waiting message
    assert reading.queues[1].latency == 0.0

    worker.kill()  # its heartbeat stops; its two messages stay in its ack set until dramatiq requeues them
    wait_until(
        lambda: jobs(Collection([proc]).collect())[q]["started"] == 0,
        timeout=15,
        what="the dead worker's heartbeat to lapse",
    )
    after = Collection([proc]).collect()
    assert jobs(after)[q] == {"queued": 2, "started": 0, "orphaned": 2, "due": 0, "delayed": 1, "dead": 1}
    assert after.procs[0].reading.quantity == 5  # they still need a worker: not running, not lost


def test_one_round_trip_per_server_with_rq_plus_one_for_follow_ups(private_redis, monkeypatch):
    import rq

    port = private_redis.connection_pool.connection_kwargs["port"]
    url = f"redis://127.0.0.1:{port}/0"
    rq.Queue("default", connection=private_redis).enqueue("rq_jobs.noop")
    producer = RedisBroker(url=url)
    names = [unique_queue() for _ in range(3)]
    for q in names:
        for i in range(3):
            send(producer, q, "hold", str(i))
        send(producer, q, "hold", "later", delay=3_600_000)
    producer.do_fetch(names[0], 2)  # what a worker does: 2 messages move to this broker's ack set
    private_redis.config_resetstat()
    sends = count_round_trips(monkeypatch)

    procs = [RQProc("rq", connection=private_redis), DramatiqProc("worker", queues=names, connection=private_redis)]
    snapshot = Collection(procs).collect()

    assert len(sends) == 2  # both procs' counts in one pipeline, both procs' follow-ups in one more
    assert jobs(snapshot, 1) == {
        names[0]: {"queued": 1, "started": 2, "orphaned": 0, "due": 0, "delayed": 1, "dead": 0},
        names[1]: {"queued": 3, "started": 0, "orphaned": 0, "due": 0, "delayed": 1, "dead": 0},
        names[2]: {"queued": 3, "started": 0, "orphaned": 0, "due": 0, "delayed": 1, "dead": 0},
    }
    assert snapshot.procs[0].reading.quantity == 1
    counts = command_counts(private_redis)
    # dramatiq: 1 ZRANGEBYSCORE of live brokers, 1 ZCARD of all brokers; per queue LLEN, 2 HLEN, ZCARD; one SCARD per
    # live broker of a queue with fetched messages; per queue HVALS of the delay queue and the head script (LINDEX of
    # the head and the tail, HGET of each: one when they are the same message)
    # the scripts are loaded at most once each: the head script, and the reader script that runs the plain reads of
    # both procs on the server (once per server and process: an earlier test may have loaded it)
    assert 1 <= counts.pop("script|load") <= 2
    assert {k: v for k, v in counts.items() if k not in ("zcount", "sismember", "lrange")} == {
        "zrangebyscore": 1,
        "llen": 3 + 1,  # + RQ's of its queue
        "hlen": 6,
        "zcard": 1 + 3 + 1,  # + RQ's of its scheduled registry
        "exists": 1,  # RQ's one check of three mostly absent keys
        "scard": 1,
        "hvals": 3,
        "evalsha": 3,  # the head scripts
        "evalsha_ro": 2,  # the reader script: one call per round trip (RQ's queue reads, its oldest job inside)
        "lindex": 3 * 2 + 1,
        "hget": 1 + 2 + 2 + 1,  # names[0] has one waiting message, the others three
        "smembers": 1,  # RQ's worker set of its queue
        "role": 2,  # one per round trip: whether the server is a replica cut off from its master
    }


def test_reads_from_a_broker_instance_and_from_toml(redis_conn, redis_url):
    q = unique_queue()
    broker = RedisBroker(url=redis_url, namespace="myapp")
    send(broker, q, "hold", "x")
    from_broker = DramatiqProc("worker", queues=[q], broker=broker)
    from_toml = proc_from_table(
        {"name": "worker", "backend": "dramatiq", "url": redis_url, "namespace": "myapp", "queues": [q]}, 0
    )
    snapshot = Collection([from_broker]).collect()
    assert jobs(snapshot)[q]["queued"] == 1
    assert jobs(Collection([from_toml]).collect())[q]["queued"] == 1
    assert jobs(Collection([DramatiqProc("worker", queues=[q], url=redis_url)]).collect())[q]["queued"] == 0


def test_missing_queue_and_garbage_fail_only_what_they_touch(redis_conn, redis_url, caplog):
    q, missing, bad_body, bad_key = (unique_queue() for _ in range(4))
    producer = RedisBroker(url=redis_url)
    send(producer, q, "hold", "x")
    redis_conn.rpush(f"dramatiq:{bad_body}", "id1")
    redis_conn.hset(f"dramatiq:{bad_body}.msgs", "id1", b"\x80not json")
    redis_conn.hset(f"dramatiq:{bad_body}.DQ.msgs", mapping={"d1": "[1]", "d2": '{"options": {"eta": 1}}'})
    redis_conn.set(f"dramatiq:{bad_key}.msgs", "a string, not a hash")

    snapshot = Collection(
        [
            DramatiqProc("worker", queues=[q, missing, bad_body], url=redis_url),
            DramatiqProc("other", queues=[bad_key], url=redis_url),
        ]
    ).collect()

    reading = snapshot.procs[0].reading
    found = {r.name: (r.found, r.latency) for r in reading.queues}
    assert found[q][0] is True and found[missing] == (None, 0.0)  # dramatiq keeps no trace of an empty queue
    assert found[bad_body] == (True, None)  # a body that is not JSON: its age is unknown
    assert jobs(snapshot)[bad_body] == {
        "queued": 1,
        "started": 0,
        "orphaned": 0,
        "due": 1,
        "delayed": 0,
        "unreadable": 1,
        "dead": 0,
    }
    assert reading.latency is None
    assert snapshot.procs[1].reading is None and "WRONGTYPE" in snapshot.procs[1].error
    assert "1 delayed messages do not decode to a JSON object (another encoder, or garbage)" in caplog.text
    assert "its oldest message's age is unknown: its body is not a JSON object" in caplog.text


def test_the_sharing_digest_tells_brokers_apart_and_holds_no_password(redis_url):
    from hirefire_exporter import fingerprint

    def describe(**options) -> str:
        return json.dumps(fingerprint.describe([DramatiqProc("worker", queues=["drq-a"], **options)]))

    plain = describe(broker=RedisBroker(url=redis_url))
    assert describe(broker=RedisBroker(url=redis_url, namespace="other")) != plain
    assert describe(broker=RedisBroker(url=redis_url, heartbeat_timeout=5000)) != plain
    amqp = "amqp://app:s3cret-pw@127.0.0.1:5672/%2F"
    assert describe(url=amqp) != describe(url=amqp.replace("%2F", "other"))
    assert "s3cret-pw" not in describe(url=amqp)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "proc 'worker': needs `broker`, a Redis `connection` or `url`"),
        ({"url": "sqs://q"}, "proc 'worker': `url` must be a redis://, rediss://, amqp:// or amqps:// URL"),
        ({"broker": "tests_nowhere.broker"}, "proc 'worker': cannot import dramatiq broker 'tests_nowhere.broker'"),
        ({"broker": object()}, "proc 'worker': `broker` must be a dramatiq RedisBroker or RabbitmqBroker, got object"),
        ({"url": "amqp://:pw@h:x/%2F"}, "proc 'worker': bad RabbitMQ URL: its port is not a number"),
        ({"url": "amqp://h/%2F", "metric": "latency"}, "proc 'worker': DramatiqProc cannot measure job latency"),
    ],
)
def test_bad_settings_stop_start_up_with_one_line(options, message):
    from hirefire_exporter.loading import load_proc
    from hirefire_exporter.procs.base import ProcConfigError

    with pytest.raises(ProcConfigError) as caught:
        load_proc(DramatiqProc("worker", queues=["drq-a"], **options))
    assert message in str(caught.value), caught.value


def test_the_brokers_heartbeat_timeout_and_the_latency_metric(redis_conn, redis_url):
    q = unique_queue()
    broker = RedisBroker(url=redis_url, heartbeat_timeout=1000)  # ms, as dramatiq has it
    for name in ("first", "second"):
        send(broker, q, "hold", name)
    time.sleep(0.05)
    consumer = RedisBroker(url=redis_url)
    consumer.do_fetch(q, 1)  # a worker's fetch: `first` is in its ack set, and it beats once
    proc = DramatiqProc("worker", queues=[q], broker=broker, metric="latency")

    snapshot = Collection([proc]).collect()
    assert jobs(snapshot)[q] == {"queued": 1, "started": 1, "orphaned": 0, "due": 0, "delayed": 0, "dead": 0}
    assert 0.05 <= snapshot.value(snapshot.procs[0]) < 30  # HireFire's job-latency manager gets the age of `second`

    time.sleep(1.1)  # past the broker's heartbeat timeout without a beat from the consumer
    assert jobs(Collection([proc]).collect())[q]["orphaned"] == 1


# Names of derived queues, other namespaces' queues (see also test_dramatiq_discovery.py)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/10", "amqp://guest:guest@127.0.0.1:5672/%2F"])
@pytest.mark.parametrize(("named", "kind"), [("jobs.DQ", "delay queue"), ("jobs.XQ", "dead-letter queue")])
def test_a_delay_or_dead_letter_queue_named_as_a_queue_is_refused(url, named, kind):
    from hirefire_exporter.loading import load_proc
    from hirefire_exporter.procs.base import ProcConfigError

    with pytest.raises(ProcConfigError) as caught:
        load_proc(DramatiqProc("worker", queues=["jobs", named], url=url))
    assert str(caught.value).endswith(
        f"proc 'worker': queue '{named}' is the {kind} of 'jobs': name the base queue 'jobs' (its delay and"
        " dead-letter queues are read with it)"
    )


# Delayed messages: dramatiq's reading of their eta, and past the scan limit


def delayed_message(queue: str, name: str, **options) -> dramatiq.Message:
    """A message for the delay queue of ``queue`` with ``options`` as given (an ``eta`` of any JSON value, or none),
    encoded by dramatiq's own JSONEncoder."""
    return dramatiq.Message(queue_name=f"{queue}.DQ", actor_name="hold", args=(name,), kwargs={}, options=options)


def test_a_delayed_message_without_a_usable_eta_is_due_as_dramatiqs_worker_runs_it(
    redis_conn, redis_url, flags, workers
):
    q, garbage = unique_queue(), unique_queue()
    producer = RedisBroker(url=redis_url)
    bad_etas = {"string": "1796314196220", "null": None, "true": True, "nan": float("nan"), "list": [1]}
    for name, eta in bad_etas.items():
        producer.enqueue(delayed_message(q, name, eta=eta))
    producer.enqueue(delayed_message(q, "missing"))  # no eta at all
    producer.enqueue(delayed_message(q, "later", eta=time.time() * 1000 + 3_600_000))
    redis_conn.hset(f"dramatiq:{garbage}.DQ.msgs", mapping={"a": "[1]", "b": b"\x80", "c": '"text"', "d": "{}"})
    proc = DramatiqProc("worker", queues=[q, garbage], url=redis_url)

    assert jobs(Collection([proc]).collect()) == {
        q: {"queued": 0, "started": 0, "orphaned": 0, "due": 6, "delayed": 1, "dead": 0},
        # a JSON object without options is due too; what does not decode to an object is unreadable
        garbage: {"queued": 0, "started": 0, "orphaned": 0, "due": 1, "delayed": 0, "unreadable": 3, "dead": 0},
    }
    # a real worker runs the six at once, and holds the later one
    workers.append(DramatiqWorker("redis", redis_url, q, flags, threads=8))
    for name in [*bad_etas, "missing"]:
        wait_started(flags, name)
    assert not (flags / "later.started").exists()


def write_delayed(client, queue: str, etas: list[float]) -> None:
    """Delayed messages of ``queue`` as dramatiq's RedisBroker stores them (the ids list and the bodies' hash, each
    body dramatiq's encoding with its eta), written in one pipeline: thousands of enqueues would take seconds."""
    pipe = client.pipeline(transaction=False)
    for i, eta in enumerate(etas):
        message = delayed_message(queue, str(i), eta=eta, redis_message_id=f"{queue}-{i}")
        pipe.hset(f"dramatiq:{queue}.DQ.msgs", f"{queue}-{i}", message.encode())
        pipe.rpush(f"dramatiq:{queue}.DQ", f"{queue}-{i}")
    pipe.execute()


def test_past_the_scan_limit_due_messages_are_estimated_from_a_bounded_sample(private_redis, caplog):
    from hirefire_exporter.procs.dramatiq import DELAY_SCAN_LIMIT

    url = f"redis://127.0.0.1:{private_redis.connection_pool.connection_kwargs['port']}/0"
    now_ms = time.time() * 1000
    total = DELAY_SCAN_LIMIT + 2_000
    mixed, all_due, none_due = unique_queue(), unique_queue(), unique_queue()
    write_delayed(private_redis, mixed, [now_ms - 60_000] * (total // 4) + [now_ms + 3_600_000] * (total * 3 // 4))
    write_delayed(private_redis, all_due, [now_ms - 60_000] * total)
    write_delayed(private_redis, none_due, [now_ms + 3_600_000] * total)
    RedisBroker(url=url).enqueue(dramatiq.Message(queue_name=mixed, actor_name="hold", args=(), kwargs={}, options={}))
    private_redis.config_resetstat()
    proc = DramatiqProc("worker", queues=[mixed, all_due, none_due], url=url)

    counts = jobs(Collection([proc]).collect())

    assert counts[all_due] == {"queued": 0, "started": 0, "orphaned": 0, "due": total, "delayed": 0, "dead": 0}
    assert counts[none_due] == {"queued": 0, "started": 0, "orphaned": 0, "due": 0, "delayed": total, "dead": 0}
    # a quarter due: the sample's share (binomial, 1,000 draws: 0.25 +- 0.014) scaled to the total
    assert 0.2 * total < counts[mixed]["due"] < 0.3 * total, counts[mixed]
    assert counts[mixed]["due"] + counts[mixed]["delayed"] == total
    stats = command_counts(private_redis)
    assert stats["hrandfield"] == 3 and "hvals" not in stats  # bounded: 1,000 bodies per queue, not 12,000
    assert "due ones estimated from a sample" in caplog.text

    proc._sample_by_scan = True  # a server without HRANDFIELD (Redis < 6.2): one HSCAN page instead
    private_redis.config_resetstat()
    counts = jobs(Collection([proc]).collect())
    assert command_counts(private_redis)["hscan"] == 3
    assert counts[all_due]["due"] == total and counts[none_due]["due"] == 0
    assert 0.15 * total < counts[mixed]["due"] < 0.35 * total, counts[mixed]


def test_a_sample_holding_a_due_message_never_reads_as_0_due():
    from redis.exceptions import ResponseError

    from hirefire_exporter.procs.dramatiq import DELAY_SAMPLE, _scaled

    assert _scaled({"due": 1, "delayed": DELAY_SAMPLE - 1, "unreadable": 0}, 50) == {
        "due": 1, "delayed": 49, "unreadable": 0,
    }  # fmt: skip
    assert _scaled({"due": 0, "delayed": 0, "unreadable": 0}, 20_000) == {"due": 0, "delayed": 20_000, "unreadable": 0}
    proc = DramatiqProc("worker", queues=["drq-x"], url="redis://127.0.0.1:6379/10")
    with pytest.raises(ResponseError):  # the cycle fails (no guessed 0), the next ones sample with HSCAN
        proc._delayed("drq-x", ResponseError("unknown command 'HRANDFIELD'"), 20_000, time.time())
    assert proc._sample_by_scan
    assert proc._delay_read("k", 20_000)[0] == "HSCAN" and proc._delay_read("k", 20)[0] == "HVALS"


# Latency: implausible stamps, and dramatiq's requeue to the tail


@pytest.mark.parametrize("stamp", [True, -5, 1_764_000_000, 1e20, float("nan"), "1764000000000", None])
def test_an_implausible_message_timestamp_leaves_the_latency_unknown(redis_conn, redis_url, caplog, stamp):
    q = unique_queue()
    message = dramatiq.Message(queue_name=q, actor_name="hold", args=(), kwargs={}, options={}, message_timestamp=stamp)
    RedisBroker(url=redis_url).enqueue(message)
    snapshot = Collection([DramatiqProc("worker", queues=[q], url=redis_url)]).collect()
    reading = snapshot.procs[0].reading
    assert reading.queues[0].latency is None and reading.latency is None  # not 57 years, not 0
    assert jobs(snapshot)[q]["queued"] == 1 and reading.quantity == 1  # the counts stand
    assert "its oldest message's age is unknown: its message_timestamp" in caplog.text


def test_the_latency_counts_a_message_requeued_to_the_tail_by_a_stopping_worker(redis_conn, redis_url, flags, workers):
    q = unique_queue()
    producer = RedisBroker(url=redis_url)
    worker = DramatiqWorker("redis", redis_url, q, flags, threads=1)
    workers.append(worker)
    send(producer, q, "hold", "a")
    send(producer, q, "hold", "b")
    wait_started(flags, "a")
    wait_until(lambda: redis_conn.llen(f"dramatiq:{q}") == 0, what="the worker to prefetch `b`")
    time.sleep(1.5)
    send(producer, q, "hold", "c")
    send(producer, q, "hold", "d")
    (flags / "b.release").touch()  # were `b` run, the test fails below instead of waiting for ever
    worker.process.send_signal(signal.SIGTERM)
    time.sleep(3)  # the worker process sees the signal within a second and stops its threads taking messages
    (flags / "a.release").touch()
    assert worker.process.wait(30) == 0
    ids = redis_conn.lrange(f"dramatiq:{q}", 0, -1)
    bodies = [json.loads(redis_conn.hget(f"dramatiq:{q}.msgs", i)) for i in ids]
    assert [body["args"] for body in bodies] == [["c"], ["d"], ["b"]]  # dramatiq's requeue appends `b` to the tail
    c_stamp, b_stamp = bodies[0]["message_timestamp"] / 1000, bodies[2]["message_timestamp"] / 1000
    assert c_stamp - b_stamp >= 1.5

    before = time.time()
    latency = Collection([DramatiqProc("worker", queues=[q], url=redis_url)]).collect().procs[0].reading.latency
    assert before - b_stamp <= latency <= time.time() - b_stamp  # the age of `b`, the oldest, not of `c` at the head


# A namespace nobody uses


def test_a_namespace_no_dramatiq_broker_used_reads_not_found_and_warns_once(redis_conn, redis_url, caplog):
    q = unique_queue()
    send(RedisBroker(url=redis_url, namespace="drq-app"), q, "hold", "x")
    wrong = DramatiqProc("worker", queues=[q, "default"], url=redis_url, namespace="drq-typo")
    collection = Collection([wrong])
    for _ in range(2):
        reading = collection.collect().procs[0].reading
        assert [(r.name, r.found, r.quantity) for r in reading.queues] == [(q, False, 0), ("default", False, 0)]
    message = "no dramatiq worker has used namespace 'drq-typo' on this Redis db"
    assert caplog.text.count(message) == 1, caplog.text

    caplog.clear()
    right = DramatiqProc("worker", queues=[q, "default"], url=redis_url, namespace="drq-app")
    reading = Collection([right]).collect().procs[0].reading
    assert [(r.name, r.found, r.quantity) for r in reading.queues] == [(q, True, 1), ("default", None, 0)]
    assert "no dramatiq worker" not in caplog.text
