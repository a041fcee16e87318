"""The worker-side tracker: real Celery workers and Huey consumers record what they hold, and the procs count every
held and running task without a broadcast; a killed worker drops out within its lease, a stopped one at once."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import redis
from celery_app_support import ROOT, Blocker, Worker, app_for, declare, wait_for
from kombu import Connection
from support import count_round_trips

from hirefire_exporter.collection import Collection
from hirefire_exporter.procs.base import ProcConfigError, Workers
from hirefire_exporter.procs.celery import CeleryProc
from hirefire_exporter.procs.huey import HueyProc

NOBODY = Workers(online=0, slots=0, busy_slots=0, busy=0)
ONE_BUSY = Workers(online=1, slots=1, busy_slots=1, busy=1)


def trk(kind: str) -> str:
    return f"trk-{kind}-{uuid.uuid4().hex[:8]}"


def jobs(reading, queue):
    return dict(next(q for q in reading.queues if q.name == queue).jobs)


def tracker_keys(client) -> list[bytes]:
    return list(client.scan_iter(match="hirefire_exporter:tracker:*"))


@pytest.fixture
def amqp_queues(amqp_url):
    """Queue names for RabbitMQ, deleted at teardown with the exchanges Celery declares for them."""
    names: list[str] = []
    yield names
    with Connection(amqp_url) as conn:
        channel = conn.default_channel
        for name in names:
            channel.queue_delete(name)
            for exchange in (name, f"hf-ctl-{name}.pidbox", f"reply.hf-ctl-{name}.pidbox"):
                channel.exchange_delete(exchange)


def test_celery_on_redis_counts_prefetched_and_running_tasks_with_early_ack(
    redis_conn, redis_url, workers, monkeypatch
):
    q = trk("redis")
    spec = [[q, "", "direct", q, 0]]
    app = app_for(redis_url, spec)
    blocker = Blocker(app, redis_conn)
    blocker.send(10, queue=q)
    worker = Worker(redis_url, spec, redis_url, prefetch=4, tracker="broker")
    workers.append(worker)
    tracked = CeleryProc("worker", queues=[q], app=app, tracker=True)
    tracked.validate()
    wait_for(lambda: blocker.started() == 1 and redis_conn.hlen("unacked") == 4, "1 running + 4 prefetched")

    reading = wait_for(lambda: (r := tracked.read({})).quantity == 10 and r, "10 of 10")
    assert jobs(reading, q) == {"queued": 5, "reserved": 4, "scheduled": 0, "started": 1}
    assert reading.workers == ONE_BUSY
    # the same broker without the tracker: the running task left it (early ack)
    assert CeleryProc("worker", queues=[q], app=app).read({}).quantity == 9

    sends = count_round_trips(monkeypatch)
    snapshot = Collection([tracked, CeleryProc("other", queues=[q], app=app)]).collect()
    assert [s.reading.quantity for s in snapshot.procs] == [10, 9]
    assert len(sends) == 1  # the tracker's keys are read in the broker's pipeline, with the other proc's commands

    blocker.release()
    wait_for(lambda: blocker.started() == 10, "every task to run")
    worker.process.send_signal(signal.SIGTERM)  # a warm shutdown: the worker removes its entries at once
    worker.process.wait(20)
    assert tracker_keys(redis_conn) == []
    reading = tracked.read({})
    assert reading.quantity == 0 and reading.workers == NOBODY


def test_late_ack_tasks_in_kombus_unacked_hash_are_not_counted_twice(redis_conn, redis_url, private_redis, workers):
    """Late ack on Redis: the running and the prefetched tasks are in kombu's unacked hash and in the tracker; the
    tracker wins. Its store here is another Redis server than the broker: read in a pipeline of its own."""
    server = private_redis.connection_pool.connection_kwargs
    store = f"redis://{server['host']}:{server['port']}/0"
    q = trk("late")
    spec = [[q, "", "direct", q, 0]]
    app = app_for(redis_url, spec)
    blocker = Blocker(app, redis_conn)
    blocker.send(6, queue=q)
    workers.append(Worker(redis_url, spec, redis_url, prefetch=3, acks_late=True, tracker=store))
    proc = CeleryProc("worker", queues=[q], app=app, tracker_url=store)
    proc.validate()
    assert proc.redis_client() is None  # not batched with the broker's other procs: it reads two servers
    wait_for(lambda: blocker.started() == 1 and redis_conn.hlen("unacked") == 3, "1 running + 2 prefetched")

    reading = wait_for(lambda: (r := proc.read({})).workers == ONE_BUSY and r, "the worker in the store")
    assert jobs(reading, q) == {"queued": 3, "reserved": 2, "scheduled": 0, "started": 1}
    assert reading.quantity == 6
    assert CeleryProc("worker", queues=[q], app=app).read({}).quantity == 6  # the broker's own account agrees


def test_what_kombu_shows_a_worker_holds_and_no_tracker_reports_still_counts_once(redis_conn, redis_url, workers):
    """A worker that has not written yet (its next flush, or no track() at all): the messages it holds in kombu's
    unacked hash count as reserved, and its running task, acknowledged, is what only a tracker would show."""
    q = trk("untracked")
    spec = [[q, "", "direct", q, 0]]
    app = app_for(redis_url, spec)
    blocker = Blocker(app, redis_conn)
    blocker.send(5, queue=q)
    workers.append(Worker(redis_url, spec, redis_url, prefetch=2))  # without the tracker
    wait_for(lambda: blocker.started() == 1 and redis_conn.hlen("unacked") == 2, "1 running + 2 prefetched")

    reading = CeleryProc("worker", queues=[q], app=app, tracker=True).read({})
    assert jobs(reading, q) == {"queued": 2, "reserved": 2, "scheduled": 0, "started": 0}
    assert reading.workers == NOBODY


def test_celery_on_rabbitmq_without_management_counts_held_running_and_eta_tasks(
    amqp_url, amqp_queues, redis_conn, redis_url, workers
):
    q = trk("amqp")
    amqp_queues.append(q)
    spec = [[q, "", "direct", q, 0]]
    app = app_for(amqp_url, spec)
    declare(app)
    blocker = Blocker(app, redis_conn)
    blocker.send(1, queue=q, countdown=600)  # held by the worker until its ETA
    blocker.send(10, queue=q)
    workers.append(Worker(amqp_url, spec, redis_url, prefetch=4, tracker=redis_url))
    proc = CeleryProc("worker", queues=[q], app=app, tracker_url=redis_url)
    proc.validate()
    wait_for(lambda: blocker.started() == 1, "the first task to start")

    expected = {"queued": 5, "reserved": 4, "scheduled": 1, "started": 1}
    reading = wait_for(lambda: (r := proc.read({})).quantity == 11 and jobs(r, q) == expected and r, "11 of 11")
    assert reading.workers == ONE_BUSY
    assert CeleryProc("worker", queues=[q], app=app).read({}).quantity == 5  # ready messages only


def test_a_worker_killed_with_sigkill_drops_out_within_its_lease(redis_conn, redis_url, workers):
    q = trk("kill")
    spec = [[q, "", "direct", q, 0]]
    app = app_for(redis_url, spec)
    blocker = Blocker(app, redis_conn)
    blocker.send(3, queue=q)
    lease = 3.0
    worker = Worker(redis_url, spec, redis_url, prefetch=2, tracker="broker", lease=lease)
    workers.append(worker)
    proc = CeleryProc("worker", queues=[q], app=app, tracker=True)
    reading = wait_for(lambda: (r := proc.read({})).quantity == 3 and r.workers == ONE_BUSY and r, "3 of 3")
    assert jobs(reading, q) == {"queued": 0, "reserved": 2, "scheduled": 0, "started": 1}

    os.kill(worker.process.pid, signal.SIGKILL)
    gone = wait_for(lambda: (r := proc.read({})).workers == NOBODY and r.quantity == 2 and r, "its drop-out", lease + 1)
    # its running task (acknowledged when it started) is gone with it; what it prefetched is still in kombu's unacked
    # hash, which puts it back in the queue after its visibility timeout: it still needs a worker
    assert jobs(gone, q) == {"queued": 0, "reserved": 2, "scheduled": 0, "started": 0}
    assert redis_conn.hlen("unacked") == 2


def test_a_task_is_in_the_store_as_it_arrives_not_a_flush_later(redis_conn, redis_url, workers):
    """With early acknowledgement a task that starts at once leaves kombu's unacked hash before any flush: the
    tracker writes on receipt (not ``flush_every``, 10 s here, later), so the task is never counted nowhere."""
    q = trk("wake")
    spec = [[q, "", "direct", q, 0]]
    app = app_for(redis_url, spec)
    worker = Worker(redis_url, spec, redis_url, tracker="broker", lease=60.0, flush_every=10.0)
    workers.append(worker)
    proc = CeleryProc("worker", queues=[q], app=app, tracker=True)
    wait_for(lambda: proc.read({}).workers == Workers(online=1, slots=1, busy_slots=0, busy=0), "the idle worker")
    blocker = Blocker(app, redis_conn)
    blocker.send(1, queue=q)
    reading = wait_for(lambda: (r := proc.read({})).quantity == 1 and r.workers == ONE_BUSY and r, "1 of 1", 3.0)
    assert jobs(reading, q) == {"queued": 0, "reserved": 0, "scheduled": 0, "started": 1}
    blocker.release()


def test_a_prefork_child_killed_mid_task_leaves_the_count_and_its_worker_stays(redis_conn, redis_url, workers):
    q = trk("prefork")
    spec = [[q, "", "direct", q, 0]]
    app = app_for(redis_url, spec)
    blocker = Blocker(app, redis_conn)
    blocker.send(1, queue=q)
    worker = Worker(redis_url, spec, redis_url, pool="prefork", tracker="broker")
    workers.append(worker)
    proc = CeleryProc("worker", queues=[q], app=app, tracker=True)
    reading = wait_for(lambda: (r := proc.read({})).workers == ONE_BUSY and r, "the task running in a child")
    assert jobs(reading, q) == {"queued": 0, "reserved": 0, "scheduled": 0, "started": 1}
    (child,) = blocker.pids()
    assert child != worker.process.pid

    os.kill(child, signal.SIGKILL)  # the main process sees the child die (WorkerLostError) and drops its task
    idle = Workers(online=1, slots=1, busy_slots=0, busy=0)
    reading = wait_for(lambda: (r := proc.read({})).workers == idle and r, "the task to leave the count", 5)
    assert reading.quantity == 0


def test_with_the_store_down_tasks_run_on_and_the_proc_fails_instead_of_reading_low(
    amqp_url, amqp_queues, redis_conn, redis_url, killable_redis, workers
):
    q = trk("down")
    amqp_queues.append(q)
    spec = [[q, "", "direct", q, 0]]
    app = app_for(amqp_url, spec)
    declare(app)
    blocker = Blocker(app, redis_conn)
    blocker.send(1, queue=q)
    worker = Worker(amqp_url, spec, redis_url, tracker=killable_redis.url, lease=3)
    workers.append(worker)
    proc = CeleryProc("worker", queues=[q], app=app, tracker_url=killable_redis.url)
    wait_for(lambda: proc.read({}).quantity == 1, "the running task")

    killable_redis.kill()
    blocker.release()
    blocker.send(2, queue=q)
    wait_for(lambda: blocker.started() == 3, "the tasks to run while the store is down")
    with pytest.raises(redis.ConnectionError):
        proc.read({})
    snapshot = Collection([proc]).collect()
    assert not snapshot.procs[0].up and snapshot.failed(time.time()) == [snapshot.procs[0]]  # down, never 0

    killable_redis.start()  # empty: the tracker writes its whole state again
    idle = Workers(online=1, slots=1, busy_slots=0, busy=0)
    wait_for(lambda: (r := proc.read({})).workers == idle and r.quantity == 0, "the worker back in the store")
    assert worker.output().count("cannot write to the store") == 1  # logged once, not once per attempt


def test_tracker_options_are_checked_at_start_up(amqp_url, redis_url):
    app = app_for(amqp_url, [["q", "", "direct", "q", 0]])
    with pytest.raises(ProcConfigError, match="which is not Redis here: give `tracker_url`"):
        CeleryProc("worker", queues=["q"], app=app, tracker=True).validate()
    with pytest.raises(ProcConfigError, match="leave out inspect_statuses"):
        CeleryProc("worker", queues=["q"], url=redis_url, tracker=True, inspect_statuses=["active"]).validate()
    with pytest.raises(ProcConfigError, match="tracker_url"):
        CeleryProc("worker", queues=["q"], app=app, tracker_url="http://x").validate()
    with pytest.raises(ProcConfigError, match="tracker_url"):
        HueyProc("worker", storage="sqlite", filename="/tmp/x.db", tracker=True).validate()


class Consumer:
    """A ``huey_consumer`` process of ``tests/huey_app.py`` (``workers`` of ``kind``), stopped for sure by stop()."""

    def __init__(self, name: str, url: str, lease: float, workers: int = 1, kind: str = "thread") -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="huey-consumer-", suffix=".log", delete=False)
        tests = str(Path(__file__).parent)
        env = dict(
            os.environ,
            HIREFIRE_HUEY_NAME=name,
            HIREFIRE_HUEY_URL=url,
            HIREFIRE_HUEY_TRACKER_LEASE=str(lease),
            PYTHONPATH=os.pathsep.join([tests, str(ROOT), os.environ.get("PYTHONPATH", "")]),
        )
        consumer = str(Path(sys.executable).with_name("huey_consumer"))
        self.process = subprocess.Popen(
            [consumer, "huey_app.huey", "-w", str(workers), "-k", kind],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # process workers too
        self.process.wait(10)
        self.log.close()
        os.unlink(self.log.name)


def test_huey_consumer_running_a_long_task_is_counted(redis_conn, redis_url, workers):
    import huey_app

    name = trk("huey").replace("-", "_")  # Huey names its keys after a cleaned name
    instance, block = huey_app.make(name, redis_url)
    key = trk("release")
    for _ in range(3):
        block(key, 40)
    consumer = Consumer(name, redis_url, lease=15)
    workers.append(consumer)
    wait_for(lambda: redis_conn.llen(f"{key}:started") == 1, "the first task to start")

    proc = HueyProc("worker", huey=instance, tracker=True)
    proc.validate()
    snapshot = wait_for(lambda: (s := Collection([proc]).collect()).procs[0].reading.quantity == 3 and s, "3 of 3")
    reading = snapshot.procs[0].reading
    assert jobs(reading, name) == {"queued": 2, "due": 0, "scheduled": 0, "started": 1}
    assert reading.workers == ONE_BUSY
    untracked = HueyProc("worker", huey=instance)
    untracked.validate()
    assert untracked.read({}).quantity == 2  # Huey's own records: the waiting tasks only

    redis_conn.rpush(key, *["go"] * 3)
    wait_for(lambda: redis_conn.llen(f"{key}:started") == 3, "every task to run")
    consumer.process.send_signal(signal.SIGINT)  # graceful: the consumer's workers remove their entries
    consumer.process.wait(20)
    assert tracker_keys(redis_conn) == []


def test_a_glob_huey_proc_finds_a_queue_whose_only_task_runs(redis_conn, redis_url, workers):
    """Huey deletes its queue's key when the consumer takes the last task: discovery finds the queue by the
    consumer's registration in the tracker, and the running task counts."""
    import huey_app

    prefix = trk("hueyglob").replace("-", "_")
    name = f"{prefix}_mail"
    instance, block = huey_app.make(name, redis_url)
    key = trk("release")
    block(key, 40)
    workers.append(Consumer(name, redis_url, lease=15))
    wait_for(lambda: redis_conn.llen(f"{key}:started") == 1, "the task to start")
    wait_for(lambda: len(tracker_keys(redis_conn)) == 3, "the consumer and its task in the tracker")  # + its queue
    assert not redis_conn.exists(f"huey.redis.{name}")  # nothing of the queue is left in Huey's storage

    proc = HueyProc("worker", huey=instance, queues=f"{prefix}_*", tracker=True)
    reading = wait_for(lambda: (s := Collection([proc]).collect()).procs[0].reading.quantity == 1 and s, "1 of 1")
    assert jobs(reading.procs[0].reading, name) == {"queued": 0, "due": 0, "scheduled": 0, "started": 1}
    redis_conn.rpush(key, "go")


def test_huey_process_workers_each_register_and_count_their_task(redis_conn, redis_url, workers):
    import huey_app

    name = trk("hueyproc").replace("-", "_")
    instance, block = huey_app.make(name, redis_url)
    key = trk("release")
    for _ in range(3):
        block(key, 40)
    workers.append(Consumer(name, redis_url, lease=15, workers=2, kind="process"))
    wait_for(lambda: redis_conn.llen(f"{key}:started") == 2, "two tasks to start")
    assert len(set(map(int, redis_conn.lrange(f"{key}:started", 0, -1)))) == 2  # in two processes

    proc = HueyProc("worker", huey=instance, tracker=True)
    proc.validate()
    reading = wait_for(lambda: (r := proc.read({})).quantity == 3 and r, "3 of 3")
    assert jobs(reading, name) == {"queued": 1, "due": 0, "scheduled": 0, "started": 2}
    assert reading.workers == Workers(online=2, slots=2, busy_slots=2, busy=2)


def test_the_celery_routes_table_stays_bounded_with_ids_in_routing_keys(redis_url):
    """Topic routing keys that carry ids (``order.<id>``) must not grow the worker's table of routes without end."""
    from types import SimpleNamespace

    from hirefire_exporter.tracking import celery as tracking_celery

    q = trk("routes")
    app = app_for(redis_url, [[q, "", "direct", q, 0]])
    account = tracking_celery._Account(app, 1)
    consumed = app.amqp.queues.consume_from
    account._consumed = tuple(sorted(consumed))
    for n in range(3 * tracking_celery._ROUTES):
        request = SimpleNamespace(delivery_info={"exchange": "orders", "routing_key": f"order.{n}"})
        assert account._queue(request, consumed) == q  # the worker's only queue
    assert len(account._queues) <= tracking_celery._ROUTES
