"""Dramatiq on RabbitMQ: ready messages by passive declare; held and delayed ones from the management API."""

from __future__ import annotations

import base64
import json
import uuid
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

import pytest
from dramatiq_support import DramatiqWorker, unique_queue, wait_started
from support import wait_until

from hirefire_exporter.collection import Collection
from hirefire_exporter.procs.dramatiq import DramatiqProc

dramatiq = pytest.importorskip("dramatiq")
from dramatiq.brokers.rabbitmq import RabbitmqBroker  # noqa: E402


def send(broker, queue: str, actor: str, *args, delay: int | None = None):
    message = dramatiq.Message(queue_name=queue, actor_name=actor, args=args, kwargs={}, options={})
    return broker.enqueue(message, delay=delay)


def pika_url(url: str) -> str:
    """The test broker's URL as pika (dramatiq) reads it: kombu's ``//`` (the vhost ``/``) is pika's ``/%2F``."""
    return url[:-1] + "%2F" if url.endswith("//") else url


def jobs(proc: DramatiqProc) -> dict[str, dict[str, int]]:
    """The counts per queue, ``{}`` when the read failed (the API has no figures yet for queues just declared)."""
    reading = Collection([proc]).collect().procs[0].reading
    return {q.name: dict(q.jobs) for q in reading.queues} if reading else {}


@pytest.fixture
def busy_queue(tmp_path, workers):
    """Start a worker (one thread) on a fresh queue of the broker ``url`` and give it: one dead-lettered message, one
    running (``a``), one prefetched (``b``), two waiting, one delayed by an hour. Yields (queue, producer, url)."""
    started = []

    def start(url: str):
        q = unique_queue()
        producer = RabbitmqBroker(url=url)
        workers.append(DramatiqWorker("rabbitmq", url, q, tmp_path, threads=1))
        send(producer, q, "fail")
        for name in "abcd":
            send(producer, q, "hold", name)
        send(producer, q, "hold", "later", delay=3_600_000)
        wait_started(tmp_path, "a")
        started.append((producer, q))
        return q, producer

    yield start
    for producer, q in started:
        for name in (q, f"{q}.DQ", f"{q}.XQ"):
            producer.channel.queue_delete(name)
        producer.close()


def test_without_the_management_api_ready_messages_only(amqp_url, busy_queue):
    url = pika_url(amqp_url)
    q, producer = busy_queue(url)
    missing = unique_queue()
    proc = DramatiqProc("worker", queues=[q, missing], url=url)

    # passive declares see ready messages: `a` runs and `b` is prefetched (both unacknowledged), the delayed one is
    # held by the worker until its eta: none of the three is visible
    expected = {q: {"queued": 2, "delayed": 0, "dead": 1}, missing: {"queued": 0, "delayed": 0, "dead": 0}}
    wait_until(lambda: jobs(proc) == expected, what=f"the counts to settle at {expected}")
    snapshot = Collection([proc]).collect()
    assert [r.found for r in snapshot.procs[0].reading.queues] == [True, False]
    assert snapshot.procs[0].reading.quantity == 2
    assert snapshot.procs[0].reading.latency is None  # dramatiq stamps no AMQP timestamp on its messages
    assert jobs(DramatiqProc("worker", queues=[q], broker=producer))[q] == expected[q]  # the broker's own settings


def test_the_management_api_shows_held_and_delayed_messages(management, busy_queue):
    amqp, api = management
    amqp = pika_url(amqp)
    q, _producer = busy_queue(amqp)
    proc = DramatiqProc("worker", queues=[q, unique_queue()], url=amqp, management_url=api)

    expected = {"queued": 2, "started": 2, "delayed": 1, "dead": 1}
    wait_until(lambda: jobs(proc).get(q) == expected, timeout=30, what=f"the API's figures to settle at {expected}")
    snapshot = Collection([proc]).collect()
    assert snapshot.procs[0].reading.quantity == 4  # delayed messages are not counted: due and later look alike
    assert [r.found for r in snapshot.procs[0].reading.queues] == [True, False]


def test_management_api_errors_fail_the_proc_without_the_password(management):
    amqp, api = management
    amqp = pika_url(amqp)
    wrong = api.replace("guest:guest", "guest:hunter2-secret")
    snapshot = Collection([DramatiqProc("worker", queues=["drq-x"], url=amqp, management_url=wrong)]).collect()
    status = snapshot.procs[0]
    assert status.reading is None and "401" in status.error and "hunter2" not in status.error
    port = urlsplit(api).port
    # the port is no password: kept; the API's reason says what is wrong
    assert f"API http://127.0.0.1:{port}: HTTP Error 401: Unauthorized (reason: Login failed)" in status.error


def management_call(api: str, method: str, path: str, body: dict | None = None) -> None:
    """A call to the management API as its administrator (the test node's guest)."""
    parts = urlsplit(api)
    request = Request(
        f"{parts.scheme}://{parts.hostname}:{parts.port}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"content-type": "application/json"},
    )
    token = base64.b64encode(f"{parts.username}:{parts.password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    urlopen(request, timeout=10).close()


def test_a_user_without_access_to_the_vhost_is_told_apart_from_a_wrong_password(management):
    amqp, api = management
    user, password = f"drq-{uuid.uuid4().hex[:8]}", "monitor-Pw-123"
    management_call(api, "PUT", f"/api/users/{user}", {"password": password, "tags": "monitoring"})  # no vhost rights
    try:
        parts = urlsplit(api)
        url = f"http://{user}:{password}@{parts.hostname}:{parts.port}"
        status = Collection(
            [DramatiqProc("worker", queues=["drq-x"], url=pika_url(amqp), management_url=url)]
        ).collect()
        error = status.procs[0].error
        assert f"http://{parts.hostname}:{parts.port}: HTTP Error 401: Unauthorized" in error, error
        assert "(reason: User not authorised to access virtual host)" in error, error
        assert password not in error and password.lower() not in error
    finally:
        management_call(api, "DELETE", f"/api/users/{user}")
