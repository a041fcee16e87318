"""Broker faults against real brokers: what an autoscaler reads while Redis or RabbitMQ is down, hung or slow.

Every fault is made on loopback without touching the machine's shared brokers: a private ``redis-server`` killed
with SIGKILL and started again on the same port, or a :class:`~faultproxy.FaultProxy` in front of a broker that cuts,
stalls or slows the connection. The promises checked here:

- a proc whose broker cannot be read is never reported as 0: ``/info`` serves its last good reading while it is
  younger than ``stale_after``, then answers 503 naming it; ``/metrics`` always answers 200, with
  ``hirefire_proc_up 0``, the reading's true age, and no job samples once the reading is past ``stale_after``;
- the collection timeout bounds every request, whatever the broker does;
- recovery needs no restart;
- 1,000 failing cycles leak no thread, file descriptor or Redis connection.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest
from conftest import unavailable
from faultproxy import FaultProxy, RedisProcess, free_port
from support import samples, wait_until
from werkzeug.test import Client

from hirefire_exporter.app import ExporterApp, create_app
from hirefire_exporter.collection import Collection
from hirefire_exporter.procs.base import Proc
from hirefire_exporter.procs.huey import HueyProc
from hirefire_exporter.procs.rq import RQProc

rq = pytest.importorskip("rq")

TOKEN = "fault-token"
INFO = f"/hirefire/{TOKEN}/info"


class Clock:
    """The collection's clock, moved by hand so that staleness is tested without waiting."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def need_redis_server() -> None:
    if shutil.which("redis-server") is None:
        unavailable("redis-server", "the fault tests start, kill and restart a redis-server of their own")


@pytest.fixture
def own_redis():
    """A private redis-server on a free port, not started yet: the test kills and restarts it at will."""
    need_redis_server()
    server = RedisProcess()
    try:
        yield server
    finally:
        server.stop()


def enqueue(url: str, queue: str, n: int) -> None:
    import redis

    with redis.Redis.from_url(url) as connection:
        for _ in range(n):
            rq.Queue(queue, connection=connection).enqueue("rq_jobs.noop")


class Scrape:
    """One look at the app, as HireFire and Prometheus see it."""

    def __init__(self, client: Client) -> None:
        info = client.get(INFO)
        metrics = client.get("/metrics")
        self.info_status = info.status_code
        self.info = json.loads(info.data)
        self.metrics_status = metrics.status_code
        self.text = metrics.get_data(as_text=True)

    def metric(self, name: str) -> dict[tuple, float]:
        return samples(self.text, name)


def exporter_clients(port: int) -> list[str]:
    """The connections a private Redis holds, other than the one asking (CLIENT LIST)."""
    import redis

    with redis.Redis(host="127.0.0.1", port=port) as admin:
        me = admin.client_id()
        return [c["addr"] for c in admin.client_list() if int(c["id"]) != me]


# Redis


def test_redis_down_at_start_up_starts_anyway_reports_down_then_recovers_by_itself(own_redis):
    app = create_app([RQProc("worker", url=own_redis.url, socket_timeout=1)], TOKEN, timeout=2, max_age=0)
    down = Scrape(Client(app))  # building the app did no I/O: the server is not even started
    assert (down.info_status, down.info["procs"]) == (503, ["worker"])
    assert down.metrics_status == 200
    assert down.metric("hirefire_proc_up") == {("worker",): 0.0}
    assert down.metric("hirefire_proc_jobs") == {} and down.metric("hirefire_queue_jobs") == {}
    assert "Connection refused" in app.collection.latest.procs[0].error

    own_redis.start()
    enqueue(own_redis.url, "default", 3)
    up = Scrape(Client(app))
    assert (up.info_status, up.info) == (200, [{"name": "worker", "value": 3, "quantity": 3}])
    assert up.metric("hirefire_proc_up") == {("worker",): 1.0}
    assert up.metric("hirefire_proc_reading_age_seconds") == {("worker",): 0.0}


def test_redis_killed_and_restarted_serves_the_last_reading_while_fresh_then_503_then_recovers(own_redis):
    own_redis.start()
    enqueue(own_redis.url, "default", 2)
    clock = Clock()
    collection = Collection(
        [RQProc("worker", url=own_redis.url, socket_timeout=1)], max_age=0, stale_after=60, timeout=2, clock=clock
    )
    client = Client(ExporterApp(collection, TOKEN))
    assert Scrape(client).info == [{"name": "worker", "value": 2, "quantity": 2}]

    own_redis.kill()
    clock.now += 30
    stale = Scrape(client)
    assert (stale.info_status, stale.info) == (200, [{"name": "worker", "value": 2, "quantity": 2}])
    assert stale.metric("hirefire_proc_up") == {("worker",): 0.0}
    assert stale.metric("hirefire_proc_reading_age_seconds") == {("worker",): 30.0}
    assert stale.metric("hirefire_proc_jobs") == {("worker",): 2.0}  # served, flagged by its age

    clock.now += 31  # the last good reading is 61 s old: past stale_after
    expired = Scrape(client)
    assert expired.info_status == 503
    assert expired.info == {
        "error": "no current reading for some procs; their broker could not be read",
        "procs": ["worker"],
    }
    assert expired.metrics_status == 200
    assert expired.metric("hirefire_proc_up") == {("worker",): 0.0}
    assert expired.metric("hirefire_proc_reading_age_seconds") == {("worker",): 61.0}
    assert expired.metric("hirefire_proc_jobs") == {}  # absent, never 0

    own_redis.start()  # same port, empty (no persistence): the truth is now 0 waiting jobs, then 1
    clock.now += 5
    assert Scrape(client).info == [{"name": "worker", "value": 0, "quantity": 0}]
    enqueue(own_redis.url, "default", 1)
    clock.now += 5
    back = Scrape(client)
    assert (back.info_status, back.info) == (200, [{"name": "worker", "value": 1, "quantity": 1}])
    assert back.metric("hirefire_proc_up") == {("worker",): 1.0}
    assert back.metric("hirefire_proc_reading_age_seconds") == {("worker",): 0.0}
    assert len(exporter_clients(own_redis.port)) == 1  # one pooled connection, reopened once


def test_redis_killed_while_a_read_waits_for_its_reply_fails_that_cycle_only(own_redis):
    own_redis.start()
    enqueue(own_redis.url, "default", 4)
    collection = Collection([RQProc("worker", url=own_redis.url, socket_timeout=10)], max_age=0, timeout=10)
    assert collection.collect().procs[0].reading.quantity == 4

    # Make the server busy (DEBUG SLEEP is refused by default, so use a blocking Lua loop on our own server), so
    # the exporter's pipeline is sent and waits for its reply when the server dies.
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    busy = redis.Redis(host="127.0.0.1", port=own_redis.port, socket_timeout=30, retry=Retry(NoBackoff(), 0))
    script = "local t = redis.call('TIME')[1] + 5 while tonumber(redis.call('TIME')[1]) < t do end return 1"
    blocker = threading.Thread(target=lambda: _swallow(busy.eval, script, 0), daemon=True)
    blocker.start()
    time.sleep(0.3)
    outcome: list = []
    reader = threading.Thread(target=lambda: outcome.append(collection.collect()))
    reader.start()
    time.sleep(0.3)
    own_redis.kill()
    reader.join(15)
    blocker.join(15)
    busy.close()

    (status,) = outcome[0].procs
    assert status.up is False and status.error.startswith("ConnectionError")
    assert status.duration < 5  # the dead connection failed the read at once: it did not wait for the timeout
    assert status.reading.quantity == 4  # the last good reading is kept (its age decides whether it is served)

    own_redis.start()
    enqueue(own_redis.url, "default", 2)
    (status,) = collection.collect().procs
    assert status.up is True and status.reading.quantity == 2


def _swallow(fn, *args) -> None:
    try:
        fn(*args)
    except Exception:
        pass


# Hung and slow brokers


def test_a_broker_that_accepts_but_never_answers_is_bounded_by_the_timeout(own_redis, caplog):
    own_redis.start()
    enqueue(own_redis.url, "default", 5)
    with FaultProxy("127.0.0.1", own_redis.port) as proxy:
        collection = Collection(
            [RQProc("worker", url=f"redis://{proxy.url_host}/0", socket_timeout=1.5)],
            max_age=0,
            stale_after=60,
            timeout=0.5,
        )
        client = Client(ExporterApp(collection, TOKEN))
        assert Scrape(client).info == [{"name": "worker", "value": 5, "quantity": 5}]

        proxy.stall()
        # the failure shows once a cycle has waited out the timeout; meanwhile requests are answered at once
        wait_until(lambda: Scrape(client).metric("hirefire_proc_up") == {("worker",): 0.0}, 5, "the failure")
        errors = []
        for _ in range(4):
            started = time.monotonic()
            scrape = Scrape(client)
            assert time.monotonic() - started < 0.25 * 2 + 0.5  # two requests, neither waits out the broker
            assert scrape.metrics_status == 200
            assert (scrape.info_status, scrape.info[0]["value"]) == (200, 5)  # last good reading, still fresh
            assert scrape.metric("hirefire_proc_up") == {("worker",): 0.0}
            errors.append(collection.latest.procs[0].error)
        assert "proc 'worker': read failed: TimeoutError: no answer within 0.5s" in caplog.text
        # the hung read is not started again on every scrape: later cycles say it is still running (or, once the
        # socket timeout fired, time out on a fresh connection)
        assert set(errors) <= {
            "TimeoutError: no answer within 0.5s",
            "TimeoutError: an earlier read is still running after 0.5s",
            "TimeoutError: Timeout reading from socket",
        }

        proxy.normal()
        wait_until(lambda: Scrape(client).metric("hirefire_proc_up") == {("worker",): 1.0}, 10, "recovery")
        assert Scrape(client).info == [{"name": "worker", "value": 5, "quantity": 5}]
        collection.close()


@pytest.mark.parametrize("backend", ["rq", "huey"])
def test_a_proc_built_from_a_url_gives_up_after_its_socket_timeout_on_a_stalled_broker(own_redis, backend):
    """The read itself fails (and frees its thread) after ``socket_timeout``: it does not hang until the collection
    timeout, nor for as long as the TCP connection lives."""
    own_redis.start()
    enqueue(own_redis.url, "default", 1)
    with FaultProxy("127.0.0.1", own_redis.port) as proxy:
        url = f"redis://{proxy.url_host}/0"
        options = {"storage": "redis"} if backend == "huey" else {}
        proc = (HueyProc if backend == "huey" else RQProc)("worker", url=url, socket_timeout=0.3, **options)
        collection = Collection([proc], max_age=0, timeout=5)
        assert collection.collect().procs[0].up
        proxy.stall()
        (status,) = collection.collect().procs
        assert (status.up, status.error) == (False, "TimeoutError: Timeout reading from socket")
        assert status.duration < 5
        proxy.normal()
        assert collection.collect().procs[0].up
        collection.close()


def test_a_slow_broker_is_read_when_within_the_timeout_and_reported_late_when_not(own_redis):
    own_redis.start()
    enqueue(own_redis.url, "default", 2)
    with FaultProxy("127.0.0.1", own_redis.port) as proxy:
        collection = Collection(
            [RQProc("worker", url=f"redis://{proxy.url_host}/0", socket_timeout=5)],
            max_age=3600,
            stale_after=7200,
            timeout=3,
        )
        client = Client(ExporterApp(collection, TOKEN))
        assert Scrape(client).info[0]["value"] == 2  # connect before slowing: the handshake is not delayed

        proxy.slow(0.3)
        collection.collect()  # what one cycle reads from a slow broker (the scrapes below serve it)
        slow = Scrape(client)
        assert (slow.info_status, slow.info) == (200, [{"name": "worker", "value": 2, "quantity": 2}])
        assert slow.metric("hirefire_proc_up") == {("worker",): 1.0}
        # one round trip (the counts and the head job's enqueued_at, read on the server), delayed 0.3 s
        assert slow.metric("hirefire_proc_collect_duration_seconds")[("worker",)] >= 0.3

        collection.timeout = 0.2
        collection.collect()
        late = Scrape(client)
        assert late.metrics_status == 200
        assert late.metric("hirefire_proc_up") == {("worker",): 0.0}
        assert late.metric("hirefire_proc_collect_duration_seconds") == {("worker",): 0.2}
        assert (late.info_status, late.info[0]["value"]) == (200, 2)
        collection.close()


# Unreachable brokers and partial failure


@pytest.mark.parametrize(
    ("host", "error"),
    [
        (f"127.0.0.1:{free_port()}", "Connection refused"),
        ("no-such-host.invalid:6379", "no-such-host.invalid"),
    ],
)
def test_connection_refused_and_unknown_hosts_are_reported_down_with_the_password_kept_out(host, error, caplog):
    url = f"redis://app:hunter2-secret@{host}/0"
    with caplog.at_level(logging.DEBUG, "hirefire_exporter"):
        app = create_app([RQProc("worker", url=url, socket_timeout=2)], TOKEN, timeout=3, max_age=0)
        scrape = Scrape(Client(app))
    assert (scrape.info_status, scrape.info["procs"]) == (503, ["worker"])
    assert scrape.metric("hirefire_proc_up") == {("worker",): 0.0}
    assert scrape.metric("hirefire_proc_jobs") == {}
    status = app.collection.latest.procs[0]
    assert status.error.startswith("ConnectionError") and error in status.error
    assert "hunter2" not in caplog.text + status.error + json.dumps(scrape.info) + scrape.text
    assert "read failed" in caplog.text


class Exploding(Proc):
    """A custom proc (old API) whose backend raises on every read."""

    queues = ["default"]

    def quantity(self, **kwargs) -> int:
        raise RuntimeError("backend at amqp://user:topsecret@mq.internal//: channel closed")


def test_one_failing_proc_does_not_stop_the_others_from_reporting(own_redis, redis_conn, redis_url, caplog):
    import huey

    own_redis.start()
    enqueue(own_redis.url, "mail", 2)
    for _ in range(3):
        rq.Queue("default", connection=redis_conn).enqueue("rq_jobs.noop")
    tasks = huey.RedisHuey("faults", connection_pool=redis_conn.connection_pool)

    @tasks.task()
    def send(n):
        return n

    for n in range(4):
        send(n)

    clock = Clock()
    procs = [
        RQProc("worker", connection=redis_conn),
        RQProc("mailer", url=own_redis.url, queues=["mail"], socket_timeout=1),
        HueyProc("huey", huey=tasks),
        Exploding("custom"),
    ]
    collection = Collection(procs, max_age=0, stale_after=60, timeout=2, clock=clock)
    client = Client(ExporterApp(collection, TOKEN))
    first = Scrape(client)
    assert (first.info_status, first.info["procs"]) == (503, ["custom"])  # never read: no reading to serve
    assert first.metric("hirefire_proc_up") == {("worker",): 1.0, ("mailer",): 1.0, ("huey",): 1.0, ("custom",): 0.0}
    assert first.metric("hirefire_proc_jobs") == {("worker",): 3.0, ("mailer",): 2.0, ("huey",): 4.0}

    own_redis.kill()  # the mailer's broker goes down; the others share the machine's Redis and keep reporting
    clock.now += 61
    rq.Queue("default", connection=redis_conn).enqueue("rq_jobs.noop")
    later = Scrape(client)
    assert (later.info_status, later.info["procs"]) == (503, ["mailer", "custom"])
    assert later.metrics_status == 200
    assert later.metric("hirefire_proc_up") == {("worker",): 1.0, ("mailer",): 0.0, ("huey",): 1.0, ("custom",): 0.0}
    assert later.metric("hirefire_proc_jobs") == {("worker",): 4.0, ("huey",): 4.0}
    assert later.metric("hirefire_proc_reading_age_seconds") == {("worker",): 0.0, ("mailer",): 61.0, ("huey",): 0.0}
    assert "topsecret" not in caplog.text + later.text + json.dumps(later.info)


# Leaks


def resources() -> dict[str, int]:
    """Threads (the kernel's count and Python's) and open file descriptors of this process, after a collection of
    garbage (other tests' leftovers closing mid-loop must not hide or fake a leak)."""
    gc.collect()
    return {
        "threads": len(os.listdir("/proc/self/task")),
        "python threads": threading.active_count(),
        "fds": len(os.listdir("/proc/self/fd")),
    }


def assert_no_growth(baseline: dict[str, int]) -> None:
    """Nothing grew (a leak over hundreds of cycles grows by hundreds; a thread of an earlier test may end). Allowed
    a second to settle: a refresh thread that has just answered its request may still be on its way out."""
    deadline = time.monotonic() + 1.0
    while not all((after := resources())[key] <= baseline[key] for key in baseline) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(after[key] <= baseline[key] for key in baseline), (baseline, after)


def test_a_thousand_failing_cycles_leak_no_thread_fd_or_redis_connection(own_redis):
    """A broker that refuses connections, and one that flaps (cut and restored every 10 cycles) behind a proxy."""
    own_redis.start()
    enqueue(own_redis.url, "default", 6)
    with FaultProxy("127.0.0.1", own_redis.port) as proxy:
        procs = [
            RQProc("refused", url=f"redis://:pw@127.0.0.1:{free_port()}/0", socket_timeout=0.5),
            RQProc("flapping", url=f"redis://{proxy.url_host}/0", socket_timeout=0.5),
        ]
        collection = Collection(procs, max_age=0, timeout=0.5)
        client = Client(ExporterApp(collection, TOKEN))

        def cycle(i: int) -> None:
            if i % 10 == 0:
                proxy.cut() if (i // 10) % 2 else proxy.restore()
            path = "/metrics" if i % 2 else INFO
            assert client.get(path).status_code == (200 if i % 2 else 503)

        for i in range(20):  # warm up: worker threads, the proxied connection, imports
            cycle(i)
        proxy.restore()
        cycle(1)
        baseline = resources()
        ups = 0
        for i in range(1000):
            cycle(i)
            ups += collection.latest.procs[1].up
        proxy.restore()
        cycle(1)
        assert_no_growth(baseline)
        assert collection.cycles == 1000 + 22
        assert 400 <= ups <= 600  # the flapping broker really was read half the time (and failed the other half)
        assert [s.up for s in collection.latest.procs] == [False, True]
        assert collection.latest.procs[1].reading.quantity == 6
        assert proxy.connections == 1
        assert len(exporter_clients(own_redis.port)) == 1
        assert proxy.accepted >= 40  # it reconnected after each cut, through one pooled connection at a time
        collection.close()


# RabbitMQ (Celery), through a proxy in front of the machine's broker


@pytest.fixture
def amqp_queue(amqp_url):
    """A queue of the test's own on the real RabbitMQ, holding 3 ready messages; deleted afterwards."""
    from kombu import Connection, Producer, Queue

    name = f"hf-faults-{os.getpid()}-{time.time_ns()}"
    with Connection(amqp_url) as connection:
        channel = connection.default_channel
        Queue(name, channel=channel, durable=False).declare()
        for n in range(3):
            Producer(channel).publish({"n": n}, routing_key=name)
    yield name
    with Connection(amqp_url) as connection:
        connection.default_channel.queue_delete(name)


@pytest.fixture
def amqp_proxy(amqp_url):
    from urllib.parse import urlsplit

    parts = urlsplit(amqp_url)
    with FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5672) as proxy:
        yield proxy


def celery_proc(amqp_url: str, proxy: FaultProxy, queue: str, **options):
    from urllib.parse import urlsplit

    from hirefire_exporter.procs.celery import CeleryProc

    parts = urlsplit(amqp_url)
    url = parts._replace(netloc=f"{parts.username}:{parts.password}@{proxy.url_host}").geturl()
    return CeleryProc("worker", queues=[queue], url=url, **options)


def test_rabbitmq_down_and_back_serves_the_last_reading_then_503_then_recovers(
    amqp_url, amqp_queue, amqp_proxy, caplog
):
    clock = Clock()
    proc = celery_proc(amqp_url, amqp_proxy, amqp_queue, socket_timeout=1)
    collection = Collection([proc], max_age=30, stale_after=60, timeout=10, clock=clock)
    client = Client(ExporterApp(collection, TOKEN))
    collection.collect()
    assert Scrape(client).info == [{"name": "worker", "value": 3, "quantity": 3}]

    amqp_proxy.cut()
    clock.now += 30
    (status,) = collection.collect().procs
    assert status.up is False and "Connection refused" in status.error
    stale = Scrape(client)
    assert (stale.info_status, stale.info) == (200, [{"name": "worker", "value": 3, "quantity": 3}])
    assert stale.metric("hirefire_proc_up") == {("worker",): 0.0}
    assert stale.metric("hirefire_proc_reading_age_seconds") == {("worker",): 30.0}

    clock.now += 31
    collection.collect()
    expired = Scrape(client)
    assert (expired.info_status, expired.info["procs"]) == (503, ["worker"])
    assert expired.metrics_status == 200 and expired.metric("hirefire_proc_jobs") == {}

    amqp_proxy.restore()
    clock.now += 5
    collection.collect()
    back = Scrape(client)
    assert (back.info_status, back.info) == (200, [{"name": "worker", "value": 3, "quantity": 3}])
    assert back.metric("hirefire_proc_up") == {("worker",): 1.0}
    assert amqp_proxy.connections == 0  # every read closed its AMQP connection
    assert "guest:guest" not in caplog.text


def test_a_stalled_rabbitmq_is_bounded_by_the_timeout(amqp_url, amqp_queue, amqp_proxy):
    proc = celery_proc(amqp_url, amqp_proxy, amqp_queue, socket_timeout=1)
    collection = Collection([proc], max_age=0, stale_after=60, timeout=0.5)
    client = Client(ExporterApp(collection, TOKEN))
    assert Scrape(client).info == [{"name": "worker", "value": 3, "quantity": 3}]
    amqp_proxy.stall()
    wait_until(lambda: Scrape(client).metric("hirefire_proc_up") == {("worker",): 0.0}, 5, "the failure")
    started = time.monotonic()
    stalled = Scrape(client)
    assert time.monotonic() - started < 0.25 * 2 + 0.5  # answered from the last reading, not after the broker
    assert (stalled.info_status, stalled.info[0]["value"]) == (200, 3)
    assert stalled.metrics_status == 200 and stalled.metric("hirefire_proc_up") == {("worker",): 0.0}
    amqp_proxy.normal()
    wait_until(lambda: Scrape(client).metric("hirefire_proc_up") == {("worker",): 1.0}, 15, "recovery")
    collection.close()


def test_failing_and_succeeding_amqp_cycles_leak_no_connection_thread_or_fd(amqp_url, amqp_queue, amqp_proxy):
    """A refused login fails fast after a full AMQP handshake: 100 of them, and 100 good reads, leak nothing."""
    good = celery_proc(amqp_url, amqp_proxy, amqp_queue, socket_timeout=1)
    bad = celery_proc(amqp_url.replace(":guest@", ":wrong-password@"), amqp_proxy, amqp_queue, socket_timeout=1)
    bad.name = "refused"
    collection = Collection([good, bad], max_age=0, timeout=5)
    for _ in range(5):
        collection.collect()
    # the proxy is in this process: count fds only once it has closed its side of the last cycle's connections
    wait_until(lambda: amqp_proxy.connections == 0, 5, "the proxy to close the warm-up connections")
    baseline = resources()
    for _ in range(100):
        snapshot = collection.collect()
        assert [(s.up, s.reading.quantity if s.up else None) for s in snapshot.procs] == [(True, 3), (False, None)]
    wait_until(lambda: amqp_proxy.connections == 0, 5, "every AMQP connection to be closed")
    assert_no_growth(baseline)
    assert "ACCESS_REFUSED" in snapshot.procs[1].error and "wrong-password" not in snapshot.procs[1].error
    collection.close()


# The standalone server under load and faults


def test_a_short_soak_of_the_standalone_server_answers_correctly_with_flat_resources():
    """bench/soak.py for one cycle of fault phases (pass, stall, cut, slow within and beyond the timeout): every one
    of thousands of answers is checked, and the server's memory, threads, fds and Redis connections stay flat."""
    need_redis_server()
    from pathlib import Path

    soak = Path(__file__).resolve().parent.parent / "bench" / "soak.py"
    done = subprocess.run(
        [sys.executable, str(soak), "--duration", "14", "--phase", "2", "--scrapers", "8", "--sample", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "OK: every answer correct, resources flat" in done.stdout
    assert "hirefire 503" in done.stdout and "hirefire 200" in done.stdout  # both sides of stale_after were served
