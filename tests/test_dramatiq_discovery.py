"""Dramatiq queue discovery: queues made by real dramatiq enqueues, found on Redis by SCAN and on RabbitMQ by the
management API; derived queues (``.DQ``, ``.XQ``) fold into their queue, and no job is counted twice."""

from __future__ import annotations

import time
import uuid

import pytest
from dramatiq_support import DramatiqWorker, wait_started
from support import wait_until
from test_discovery import Clock, app_for, cost, private_url, served

from hirefire_exporter.collection import Collection
from hirefire_exporter.discovery import KEEP_FOR
from hirefire_exporter.procs.dramatiq import DramatiqProc

dramatiq = pytest.importorskip("dramatiq")
from dramatiq.brokers.rabbitmq import RabbitmqBroker  # noqa: E402
from dramatiq.brokers.redis import RedisBroker  # noqa: E402


def send(broker, queue: str, actor: str = "hold", *args, delay: int | None = None) -> None:
    broker.enqueue(dramatiq.Message(queue_name=queue, actor_name=actor, args=args, kwargs={}, options={}), delay=delay)


def real_clock() -> Clock:
    """The test's clock at the real time: delayed messages carry real etas."""
    clock = Clock()
    clock.now = time.time()
    return clock


def by_queue(snapshot, proc: int = 0) -> dict[str, dict[str, int]]:
    return {q.name: dict(q.jobs) for q in snapshot.procs[proc].reading.queues}


# Redis: the message hashes, found by SCAN


def test_redis_queues_appear_with_their_delayed_and_dead_messages_and_disappear(redis_conn, redis_url):
    producer = RedisBroker(url=redis_url)
    send(producer, "dq2-mail", "hold", "a")
    send(producer, "dq2-mail", "hold", "b")
    send(producer, "dq2-later", "hold", "c", delay=3_600_000)  # only its delay queue has keys
    send(producer, "other", "hold", "d")  # not matched
    clock = real_clock()
    app = app_for(DramatiqProc("worker", queues="dq2-*", url=redis_url), clock=clock)

    info, queued = served(app)
    assert info == [{"name": "worker", "value": 2, "quantity": 2}]
    assert queued == {("worker", "dq2-later"): 0.0, ("worker", "dq2-mail"): 2.0}  # one series per queue, no .DQ
    later = app.collection.latest.procs[0].reading.queues[0]
    assert (later.name, later.jobs["delayed"]) == ("dq2-later", 1)

    redis_conn.zadd("dramatiq:dq2-dead.XQ", {"m1": 1})  # a queue with dead letters only, as dramatiq keeps them
    redis_conn.hset("dramatiq:dq2-dead.XQ.msgs", "m1", "{}")
    producer.flush("dq2-mail")  # dramatiq deletes the queue's keys, as when its last message is taken
    clock.now += 60
    info, queued = served(app)
    assert info == [{"name": "worker", "value": 0, "quantity": 0}]
    # the drained queue stays (for KEEP_FOR), so that a message sent to it now is counted before the next discovery
    assert queued == {("worker", "dq2-dead"): 0.0, ("worker", "dq2-later"): 0.0, ("worker", "dq2-mail"): 0.0}
    assert by_queue(app.collection.latest)["dq2-dead"]["dead"] == 1
    send(producer, "dq2-mail", "hold", "e")
    clock.now += 1  # the cache's age, not a discovery's
    assert served(app)[1][("worker", "dq2-mail")] == 1.0

    redis_conn.delete("dramatiq:dq2-mail", "dramatiq:dq2-mail.msgs")
    clock.now += KEEP_FOR
    assert served(app)[1] == {("worker", "dq2-dead"): 0.0, ("worker", "dq2-later"): 0.0}


def test_a_real_workers_running_message_counts_in_its_discovered_queue(redis_conn, redis_url, tmp_path, workers):
    producer = RedisBroker(url=redis_url)
    workers.append(DramatiqWorker("redis", redis_url, "dq2-busy", tmp_path, threads=1))
    for name in "abc":
        send(producer, "dq2-busy", "hold", name)
    wait_started(tmp_path, "a")
    proc = DramatiqProc("worker", queues="*", url=redis_url)
    wait_until(lambda: by_queue(Collection([proc]).collect())["dq2-busy"]["queued"] == 1, what="b prefetched")
    snapshot = Collection([proc]).collect()
    assert [q.name for q in snapshot.procs[0].reading.queues] == ["dq2-busy"]  # no __acks__ or __heartbeats__
    assert by_queue(snapshot)["dq2-busy"]["started"] == 2  # `a` running, `b` prefetched
    assert snapshot.procs[0].reading.quantity == 3


def test_a_glob_leaves_out_named_queues_and_another_namespace_is_other_queues(redis_conn, redis_url):
    producer, elsewhere = RedisBroker(url=redis_url), RedisBroker(url=redis_url, namespace="dq2ns")
    for queue, n in (("dq2-high", 2), ("dq2-hot", 7), ("dq2-low", 3)):
        for i in range(n):
            send(producer, queue, "hold", str(i))
    send(elsewhere, "dq2-high", "hold", "x")
    procs = [
        DramatiqProc("urgent", queues="dq2-h*", url=redis_url),  # dq2-hot: dq2-high is named below
        DramatiqProc("rest", queues=["dq2-*"], url=redis_url),
        DramatiqProc("high", queues=["dq2-high"], url=redis_url),
        DramatiqProc("other", queues="*", url=redis_url, namespace="dq2ns"),  # its own queues: not claimed
    ]
    info, queued = served(app_for(*procs))
    assert info == [
        {"name": "urgent", "value": 7, "quantity": 7},
        {"name": "rest", "value": 3, "quantity": 3},
        {"name": "high", "value": 2, "quantity": 2},
        {"name": "other", "value": 1, "quantity": 1},
    ]
    assert queued == {
        ("urgent", "dq2-hot"): 7.0,
        ("rest", "dq2-low"): 3.0,
        ("high", "dq2-high"): 2.0,
        ("other", "dq2-high"): 1.0,
    }


def test_a_namespace_followed_by_a_colon_is_another_apps_not_queues_of_this_one(redis_conn, redis_url):
    """``<ns>:*.msgs`` also matches the keys of the namespace ``<ns>:staging``; dramatiq's queue names hold no ``:``."""
    app, staging = (
        RedisBroker(url=redis_url, namespace="dq2app"),
        RedisBroker(url=redis_url, namespace="dq2app:staging"),
    )
    send(app, "dq2-mail", "hold", "a")
    for name in "bc":
        send(staging, "dq2-mail", "hold", name)
    send(staging, "dq2-reports", "hold", "d", delay=1)
    assert redis_conn.exists("dq2app:staging:dq2-mail.msgs", "dq2app:staging:dq2-reports.DQ.msgs") == 2
    procs = [
        DramatiqProc("worker", queues="*", url=redis_url, namespace="dq2app"),
        DramatiqProc("staging", queues="*", url=redis_url, namespace="dq2app:staging"),
    ]
    snapshot = Collection(procs).collect()
    assert by_queue(snapshot, 0) == {
        "dq2-mail": {"queued": 1, "started": 0, "orphaned": 0, "due": 0, "delayed": 0, "dead": 0}
    }
    assert by_queue(snapshot, 1) == {
        "dq2-mail": {"queued": 2, "started": 0, "orphaned": 0, "due": 0, "delayed": 0, "dead": 0},
        "dq2-reports": {"queued": 0, "started": 0, "orphaned": 0, "due": 1, "delayed": 0, "dead": 0},
    }


def test_discovery_costs_one_scan_and_nothing_in_between(private_redis):
    url = private_url(private_redis)
    producer = RedisBroker(url=url)
    send(producer, "dq2-a", "hold", "x")
    send(producer, "dq2-b", "hold", "y", delay=3_600_000)
    clock = real_clock()
    globbed = Collection([DramatiqProc("worker", queues="dq2-*", url=url, discover_every=30)], clock=clock)
    reference = cost(private_redis, Collection([DramatiqProc("worker", queues=["dq2-a", "dq2-b"], url=url)]))

    assert cost(private_redis, globbed) == {**reference, "scan": 1}
    assert [q.name for q in globbed.latest.procs[0].reading.queues] == ["dq2-a", "dq2-b"]
    clock.now += 29
    assert cost(private_redis, globbed) == reference
    clock.now += 1
    assert cost(private_redis, globbed) == {**reference, "scan": 1}


def test_a_namespace_with_glob_characters_is_matched_literally(redis_conn, redis_url):
    send(RedisBroker(url=redis_url, namespace="dq2[x]"), "dq2-a", "hold", "1")
    send(RedisBroker(url=redis_url, namespace="dq2x"), "dq2-b", "hold", "1")
    proc = DramatiqProc("worker", queues="*", url=redis_url, namespace="dq2[x]")
    assert by_queue(Collection([proc]).collect()) == {
        "dq2-a": {"queued": 1, "started": 0, "orphaned": 0, "due": 0, "delayed": 0, "dead": 0}
    }


# RabbitMQ: the management API


def pika_url(url: str) -> str:
    return url[:-1] + "%2F" if url.endswith("//") else url


def test_rabbitmq_queues_are_found_by_the_management_api_without_their_derived_queues(management):
    amqp, api = management
    amqp = pika_url(amqp)
    prefix = f"dq2-{uuid.uuid4().hex[:8]}"
    producer = RabbitmqBroker(url=amqp)
    mail, later = f"{prefix}-mail", f"{prefix}-later"
    for _ in range(3):
        send(producer, mail, "hold", "x")
    send(producer, later, "hold", "y", delay=3_600_000)
    clock = real_clock()
    proc = DramatiqProc("worker", queues=f"{prefix}-*", url=amqp, management_url=api, discover_every=0)
    collection = Collection([proc], clock=clock)
    try:
        expected = {
            later: {"queued": 0, "started": 0, "delayed": 1, "dead": 0},
            mail: {"queued": 3, "started": 0, "delayed": 0, "dead": 0},
        }
        wait_until(
            lambda: (s := collection.collect()).procs[0].reading and by_queue(s) == expected,
            timeout=30,
            what=f"the API's figures to settle at {expected}",
        )
        assert proc.queues == [later, mail]
        assert collection.latest.procs[0].reading.quantity == 3
        for name in (mail, f"{mail}.DQ", f"{mail}.XQ"):
            producer.channel.queue_delete(name)
        wait_until(lambda: collection.collect() and proc.queues == [later], what="the deleted queue to go")
    finally:
        for queue in (mail, later):
            for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
                producer.channel.queue_delete(name)
        producer.close()
