"""Dramatiq on Redis: exact counts from dramatiq's own storage, written by dramatiq and by real workers."""

from __future__ import annotations

import json
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
    # dramatiq: 1 ZRANGEBYSCORE of live brokers; per queue LLEN, 2 HLEN, ZCARD; one SCARD per live broker of a queue
    # with fetched messages; per queue HVALS of the delay queue and the head script (LINDEX, HGET)
    # the scripts are loaded at most once each: the head script, and the reader script that runs the plain reads of
    # both procs on the server (once per server and process: an earlier test may have loaded it)
    assert 1 <= counts.pop("script|load") <= 2
    assert {k: v for k, v in counts.items() if k not in ("zcount", "sismember", "lrange")} == {
        "zrangebyscore": 1,
        "llen": 3 + 1,  # + RQ's of its queue
        "hlen": 6,
        "zcard": 3 + 1,  # + RQ's of its scheduled registry
        "exists": 1,  # RQ's one check of three mostly absent keys
        "scard": 1,
        "hvals": 3,
        "evalsha": 3,  # the head scripts
        "evalsha_ro": 2,  # the reader script: one call per round trip (RQ's queue reads, its oldest job inside)
        "lindex": 3 + 1,
        "hget": 3 + 1,
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
    assert "not JSON" in caplog.text


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
