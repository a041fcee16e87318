"""The worker-side tracker for Dramatiq: real ``dramatiq`` workers record their threads and running messages, the
proc reports its workers on both brokers and, on RabbitMQ without the management API, the running messages; a
killed worker drops out within its lease, a stopped one at once."""

from __future__ import annotations

import uuid

import pytest
from dramatiq_support import DramatiqWorker, wait_started
from support import count_round_trips, wait_until
from test_dramatiq_rabbitmq import pika_url

from hirefire_exporter.collection import Collection
from hirefire_exporter.procs.base import ProcConfigError, Workers
from hirefire_exporter.procs.dramatiq import DramatiqProc
from hirefire_exporter.procs.huey import HueyProc

dramatiq = pytest.importorskip("dramatiq")
from dramatiq.brokers.rabbitmq import RabbitmqBroker  # noqa: E402
from dramatiq.brokers.redis import RedisBroker  # noqa: E402

from hirefire_exporter.tracking.dramatiq import track  # noqa: E402

NOBODY = Workers(online=0, slots=0, busy_slots=0, busy=0)


def unique_queue() -> str:
    return f"dq2-{uuid.uuid4().hex[:10]}"


def send(broker, queue: str, *names: str) -> None:
    for name in names:
        broker.enqueue(dramatiq.Message(queue_name=queue, actor_name="hold", args=(name,), kwargs={}, options={}))


def reading(proc: DramatiqProc):
    status = Collection([proc]).collect().procs[0]
    assert status.up, status.error
    return status.reading


def jobs(proc: DramatiqProc) -> dict[str, dict[str, int]]:
    """The counts per queue, ``{}`` when the read failed (the API has no figures yet for queues just declared)."""
    snapshot = Collection([proc]).collect().procs[0].reading
    return {q.name: dict(q.jobs) for q in snapshot.queues} if snapshot else {}


def tracker_keys(client) -> list[bytes]:
    return list(client.scan_iter(match="hirefire_exporter:tracker:*"))


def release(flags, *names: str) -> None:
    for name in names:
        (flags / f"{name}.release").touch()


def test_redis_workers_come_from_the_tracker_and_counts_from_the_ack_sets(
    redis_conn, redis_url, tmp_path, workers, monkeypatch
):
    q = unique_queue()
    worker = DramatiqWorker("redis", redis_url, q, tmp_path, threads=2, track="")
    workers.append(worker)
    proc = DramatiqProc("worker", queues=[q], url=redis_url, tracker=True)
    proc.validate()
    idle = Workers(online=1, slots=2, busy_slots=0, busy=0)
    wait_until(lambda: reading(proc).workers == idle, timeout=30, what="the worker to register its 2 threads")

    send(RedisBroker(url=redis_url), q, *"abcde")
    wait_started(tmp_path, "a")
    wait_started(tmp_path, "b")
    busy = Workers(online=1, slots=2, busy_slots=2, busy=1)
    wait_until(lambda: reading(proc).workers == busy, what="its two running messages")
    untracked = DramatiqProc("worker", queues=[q], url=redis_url)
    wait_until(lambda: jobs(untracked)[q]["queued"] == 1, what="the worker to prefetch 4 (twice its threads)")
    # a, b running and c, d prefetched, all in the worker's ack set: counted there once, not again from the tracker
    assert (
        jobs(proc)
        == jobs(untracked)
        == {q: {"queued": 1, "started": 4, "orphaned": 0, "due": 0, "delayed": 0, "dead": 0}}
    )
    assert reading(proc).quantity == 5
    sends = count_round_trips(monkeypatch)
    Collection([proc]).collect()
    assert len(sends) == 2  # the tracker's keys ride in the broker's first pipeline

    release(tmp_path, *"abcde")
    wait_until(lambda: reading(proc).quantity == 0 and reading(proc).workers == idle, what="every message done")
    assert worker.terminate() == 0
    assert tracker_keys(redis_conn) == []  # a clean stop removes its entries at once
    assert reading(proc).workers == NOBODY


def test_a_worker_killed_with_sigkill_drops_out_within_its_lease(redis_conn, redis_url, tmp_path, workers):
    q, lease = unique_queue(), 3.0
    worker = DramatiqWorker("redis", redis_url, q, tmp_path, threads=1, track="", lease=lease)
    workers.append(worker)
    proc = DramatiqProc("worker", queues=[q], url=redis_url, tracker=True)
    send(RedisBroker(url=redis_url), q, "a")
    wait_started(tmp_path, "a")
    one_busy = Workers(online=1, slots=1, busy_slots=1, busy=1)
    wait_until(lambda: reading(proc).workers == one_busy, what="the running message")
    worker.kill()
    wait_until(lambda: reading(proc).workers == NOBODY, timeout=lease + 1, what="the killed worker to drop out")


def test_the_tracker_on_another_redis_than_the_broker(redis_conn, redis_url, killable_redis, tmp_path, workers):
    store = killable_redis.url
    q = unique_queue()
    workers.append(DramatiqWorker("redis", redis_url, q, tmp_path, threads=1, track=store))
    proc = DramatiqProc("worker", queues=[q], url=redis_url, tracker_url=store)
    assert proc.redis_client() is None  # read on its own: the broker's pipeline, then the store's
    send(RedisBroker(url=redis_url), q, "a", "b", "c")
    wait_started(tmp_path, "a")
    one_busy = Workers(online=1, slots=1, busy_slots=1, busy=1)
    wait_until(lambda: reading(proc).workers == one_busy, what=f"the running message in the other store: {store}")
    assert jobs(proc)[q]["started"] + jobs(proc)[q]["queued"] == 3
    assert reading(proc).quantity == 3
    assert tracker_keys(redis_conn) == []  # nothing in the broker's Redis


@pytest.fixture
def rabbit_queues():
    """(producer, queue) pairs whose three RabbitMQ queues are deleted at teardown."""
    made: list[tuple] = []
    yield made
    for producer, q in made:
        for name in (q, f"{q}.DQ", f"{q}.XQ"):
            producer.channel.queue_delete(name)
        producer.close()


def test_rabbitmq_without_the_management_api_counts_running_messages_from_the_tracker(
    amqp_url, redis_conn, redis_url, tmp_path, workers, rabbit_queues
):
    url, q = pika_url(amqp_url), unique_queue()
    producer = RabbitmqBroker(url=url)
    rabbit_queues.append((producer, q))
    workers.append(DramatiqWorker("rabbitmq", url, q, tmp_path, threads=1, track=redis_url))
    send(producer, q, *"abcd")
    wait_started(tmp_path, "a")
    proc = DramatiqProc("worker", queues=[q], url=url, tracker_url=redis_url)
    # `a` runs (the tracker), `b` is prefetched (invisible to AMQP and to the tracker), `c` and `d` are ready
    expected = {q: {"queued": 2, "started": 1, "delayed": 0, "dead": 0}}
    wait_until(lambda: jobs(proc) == expected, what=f"the counts to settle at {expected}")
    assert reading(proc).quantity == 3
    assert reading(proc).workers == Workers(online=1, slots=1, busy_slots=1, busy=1)
    assert reading(DramatiqProc("worker", queues=[q], url=url)).quantity == 2  # without the tracker


def test_two_deliveries_of_one_message_id_in_one_process_each_count_until_each_ends(
    amqp_url, redis_conn, redis_url, tmp_path, workers, rabbit_queues
):
    """A message sent twice (or redelivered after a reconnect) runs twice at once under one message id: the tracker
    counts each delivery, and the first to end leaves the other counted."""
    url, q = pika_url(amqp_url), unique_queue()
    producer = RabbitmqBroker(url=url)
    rabbit_queues.append((producer, q))
    workers.append(DramatiqWorker("rabbitmq", url, q, tmp_path, threads=2, track=redis_url))
    first = dramatiq.Message(queue_name=q, actor_name="hold", args=("a",), kwargs={}, options={})
    producer.enqueue(first)
    producer.enqueue(first.copy(args=("b",)))  # the same message_id, another delivery
    wait_started(tmp_path, "a")
    wait_started(tmp_path, "b")
    proc = DramatiqProc("worker", queues=[q], url=url, tracker_url=redis_url)
    expected = {q: {"queued": 0, "started": 2, "delayed": 0, "dead": 0}}
    wait_until(lambda: jobs(proc) == expected, what=f"both deliveries running: {expected}")
    assert reading(proc).workers == Workers(online=1, slots=2, busy_slots=2, busy=1)

    release(tmp_path, "a")
    expected = {q: {"queued": 0, "started": 1, "delayed": 0, "dead": 0}}
    wait_until(lambda: jobs(proc) == expected, what=f"the second delivery still counted: {expected}")
    assert reading(proc).workers == Workers(online=1, slots=2, busy_slots=1, busy=1)
    release(tmp_path, "b")
    wait_until(lambda: jobs(proc)[q]["started"] == 0, what="both deliveries done")


def test_rabbitmq_with_the_management_api_keeps_its_started_and_gains_workers(
    management, redis_conn, redis_url, tmp_path, workers, rabbit_queues
):
    amqp, api = management
    url, q = pika_url(amqp), unique_queue()
    producer = RabbitmqBroker(url=url)
    rabbit_queues.append((producer, q))
    workers.append(DramatiqWorker("rabbitmq", url, q, tmp_path, threads=1, track=redis_url))
    send(producer, q, *"abcd")
    wait_started(tmp_path, "a")
    proc = DramatiqProc("worker", queues=[q], url=url, management_url=api, tracker_url=redis_url)
    # unacknowledged (a running, b prefetched) from the API; the tracker's running `a` is among them, not added
    expected = {q: {"queued": 2, "started": 2, "delayed": 0, "dead": 0}}
    wait_until(lambda: jobs(proc) == expected, timeout=30, what=f"the API's figures to settle at {expected}")
    assert reading(proc).workers == Workers(online=1, slots=1, busy_slots=1, busy=1)


def test_tracker_settings_are_checked_at_start_up(amqp_url):
    url = pika_url(amqp_url)
    with pytest.raises(ProcConfigError, match=r"tracker = true reads the tracker from the broker, which is not Redis"):
        DramatiqProc("worker", queues=["dq2-x"], url=url, tracker=True).validate()
    with pytest.raises(ValueError, match=r"^hirefire tracker: the RabbitmqBroker is not Redis: give track\(broker,"):
        track(RabbitmqBroker(url=url))
    with pytest.raises(ValueError, match=r"needs 0 < flush_every < lease / 3"):
        track(RedisBroker(url="redis://127.0.0.1:6379/10"), lease=1, flush_every=1)


def test_a_huey_and_a_dramatiq_queue_of_one_name_are_tracked_apart(
    amqp_url, redis_conn, redis_url, tmp_path, workers, rabbit_queues
):
    """One Redis tracks a Huey consumer and a Dramatiq worker whose queues share a name: each proc counts its own
    library's running task and worker, never the other's."""
    import huey_app
    from test_tracking import Consumer

    name = f"shared_{uuid.uuid4().hex[:8]}"  # a name Huey keeps as it is
    instance, block = huey_app.make(name, redis_url)
    key = f"release-{name}"
    block(key, 40)
    workers.append(Consumer(name, redis_url, lease=15))
    url = pika_url(amqp_url)
    producer = RabbitmqBroker(url=url)
    rabbit_queues.append((producer, name))
    workers.append(DramatiqWorker("rabbitmq", url, name, tmp_path, threads=1, track=redis_url))
    send(producer, name, "a")
    wait_started(tmp_path, "a")
    wait_until(lambda: redis_conn.llen(f"{key}:started") == 1, what="the Huey task to start")

    huey_proc = HueyProc("worker", huey=instance, tracker=True)
    dramatiq_proc = DramatiqProc("worker", queues=[name], url=url, tracker_url=redis_url)
    for proc in (huey_proc, dramatiq_proc):
        proc.validate()
    one_busy = Workers(online=1, slots=1, busy_slots=1, busy=1)
    wait_until(lambda: reading(huey_proc).workers == one_busy, what="the Huey consumer in the store")
    wait_until(lambda: reading(dramatiq_proc).workers == one_busy, what="the Dramatiq worker in the store")
    assert {q.name: q.jobs["started"] for q in reading(huey_proc).queues} == {name: 1}
    assert {q.name: q.jobs["started"] for q in reading(dramatiq_proc).queues} == {name: 1}
    assert {key.decode().split(":")[2] for key in tracker_keys(redis_conn)} == {"huey", "dramatiq"}
    redis_conn.rpush(key, "go")
