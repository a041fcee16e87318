"""Celery on RabbitMQ: ready counts by passive declare, worker-held tasks by inspection, the management API."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import pytest
from celery import Celery
from celery_app_support import Blocker, Worker, app_for, declare, unique, wait_for
from conftest import free_port
from kombu import Connection

from hirefire_exporter import celery_latency
from hirefire_exporter.collection import Collection
from hirefire_exporter.procs.celery import CeleryProc
from hirefire_exporter.procs.celery.inspect import InspectIncomplete
from hirefire_exporter.procs.rabbitmq import declare_counts


def jobs(reading, queue):
    return dict(next(q for q in reading.queues if q.name == queue).jobs)


@pytest.fixture
def queues(amqp_url):
    """Unique queue names, deleted (with the exchanges named in ``exchanges``) at teardown."""
    names: list[str] = []
    exchanges: list[str] = []
    yield names, exchanges
    _delete(amqp_url, names, exchanges)


def _delete(url, names, exchanges):
    """Delete the test's queues and exchanges, including those Celery declares for them: an exchange per queue and
    the control exchanges named after the first queue (see ``celery_app.make_app``)."""
    with Connection(url) as conn:
        channel = conn.default_channel
        for name in names:
            channel.queue_delete(name)
        for name in names:
            exchanges += [name, f"hf-ctl-{name}.pidbox", f"reply.hf-ctl-{name}.pidbox"]
        for name in exchanges:
            channel.exchange_delete(name)  # deleting a missing exchange is no error in RabbitMQ


def spec_for(names, *specs):
    for spec in specs:
        names.append(spec[0])
    return list(specs)


def test_ready_counts_and_a_missing_queue_reads_zero_without_leaking_channels(amqp_url, redis_conn, queues):
    names, _ = queues
    a, b = unique("a"), unique("b")
    app = app_for(amqp_url, spec_for(names, [a, "", "direct", a, 0], [b, "", "direct", b, 0]))
    declare(app)
    blocker = Blocker(app, redis_conn)
    blocker.send(3, queue=a)
    blocker.send(2, queue=b)
    missing = unique("missing")
    proc = CeleryProc("worker", queues=[missing, a, unique("missing"), b], app=app)
    proc.validate()

    reading = wait_for(lambda: (r := proc.read({})).quantity == 5 and r, "5 ready messages")

    assert [(q.name, dict(q.jobs)) for q in reading.queues][:2] == [(missing, {"queued": 0}), (a, {"queued": 3})]
    assert jobs(reading, b) == {"queued": 2}
    assert [q.found for q in reading.queues] == [False, True, False, True]
    with Connection(amqp_url) as conn:
        conn.connect()
        counts = declare_counts(conn, [missing, a, missing, b], {})
        assert [c.ready for c in counts.values()] == [0, 3, 2]
        assert list(conn.connection.channels) == [0]  # only the connection itself: every channel was closed


def test_a_queue_the_broker_refuses_fails_the_read_whatever_its_name_says(amqp_url, redis_conn, queues):
    """Only the reply code 404 means "never declared". A queue held exclusively by another connection (405
    RESOURCE_LOCKED) exists and its count is unknown: the proc is down and keeps its last good reading, even when
    the queue's name (quoted in the broker's error text) contains NOT_FOUND."""
    names, _ = queues
    ready = unique("ready")
    app = app_for(amqp_url, spec_for(names, [ready, "", "direct", ready, 0]))
    declare(app)
    Blocker(app, redis_conn).send(2, queue=ready)
    locked = unique("NOT_FOUND")  # not in `names`: an exclusive queue goes away with its connection
    collection = Collection([CeleryProc("worker", queues=[ready, locked], app=app)], stale_after=3600)
    first = wait_for(lambda: (s := collection.collect()).procs[0].reading.quantity == 2 and s, "2 ready messages")
    assert [q.found for q in first.procs[0].reading.queues] == [True, False]  # not declared yet: 404, 0 jobs

    with Connection(amqp_url) as owner:
        owner.default_channel.queue_declare(queue=locked, exclusive=True)
        status = collection.collect().procs[0]

    assert status.up is False
    assert "RESOURCE_LOCKED" in status.error and "(405)" in status.error
    assert status.reading == first.procs[0].reading  # the last good reading, never a 0 for the locked queue


def test_only_reply_code_404_reads_as_a_queue_not_found():
    """kombu's virtual transports give the reply code as a string; py-amqp's errors as an int. The text is never read:
    an ACCESS_REFUSED quoting a queue named NOT_FOUND is still a refusal."""
    from amqp.exceptions import AccessRefused, NotFound, ResourceLocked

    from hirefire_exporter.procs.rabbitmq import reply_code

    with Connection("memory://") as conn:
        missing = unique("missing")
        assert declare_counts(conn, [missing], {})[missing].found is False
        with pytest.raises(conn.channel_errors) as info:
            conn.channel().queue_declare(queue=missing, passive=True)
    assert reply_code(info.value) == 404
    text = "ACCESS_REFUSED - access to queue 'NOT_FOUND' in vhost '/' refused"
    assert reply_code(AccessRefused(text, (50, 10), reply_code=403)) == 403
    assert reply_code(ResourceLocked("RESOURCE_LOCKED - queue 'NOT_FOUND'")) == 405
    assert reply_code(NotFound("NOT_FOUND - no queue 'x'")) == 404
    assert reply_code(RuntimeError("NOT_FOUND")) is None


def test_a_priority_queue_counts_every_priority(amqp_url, redis_conn, queues):
    names, _ = queues
    q = unique("prio")
    app = app_for(amqp_url, spec_for(names, [q, "", "direct", q, 10]))
    declare(app)
    blocker = Blocker(app, redis_conn)
    for priority in range(10):
        blocker.send(queue=q, priority=priority)

    proc = CeleryProc("worker", queues=[q], app=app)
    assert proc._queue_arguments() == {q: {"x-max-priority": 10}}
    assert wait_for(lambda: proc.read({}).quantity == 10, "10 ready messages")


def test_worker_held_tasks_come_from_inspection_when_asked(amqp_url, redis_conn, queues, workers):
    names, _ = queues
    q = unique("held")
    spec = spec_for(names, [q, "", "direct", q, 0])
    app = app_for(amqp_url, spec)
    declare(app)
    blocker = Blocker(app, redis_conn)
    blocker.send(2, queue=q, countdown=600)
    blocker.send(6, queue=q)
    workers.append(Worker(amqp_url, spec, redis_conn_url(redis_conn), prefetch=3))
    plain = CeleryProc("worker", queues=[q], app=app)
    inspected = CeleryProc(
        "worker", queues=[q], app=app, inspect_statuses=["active", "reserved", "scheduled"], workers=1
    )

    expected = {"queued": 2, "started": 1, "reserved": 3, "scheduled": 2}  # prefetch 3, plus the ETA tasks

    def settled():
        if blocker.started() != 1:
            return False  # (the worker may not answer broadcasts yet)
        reading = inspected.read({})
        return jobs(reading, q) == expected and reading

    reading = wait_for(settled, f"the worker to hold {expected}")
    # broker only: the ready messages; everything the worker holds is invisible to a passive declare
    assert jobs(plain.read({}), q) == {"queued": 2}
    assert reading.quantity == 8


def test_inspected_tasks_on_custom_exchanges_are_mapped_to_their_queues(amqp_url, redis_conn, queues, workers):
    names, exchanges = queues
    mail, report = unique("mail"), unique("report")
    exchange = unique("topic")
    exchanges.append(exchange)
    spec = spec_for(names, [mail, exchange, "topic", "mail.#", 0], [report, exchange, "topic", "report.*", 0])
    app = app_for(amqp_url, spec, task_acks_late=True)
    declare(app)
    blocker = Blocker(app, redis_conn)
    blocker.send(3, exchange=exchange, routing_key="mail.welcome.de")
    blocker.send(2, exchange=exchange, routing_key="report.daily")
    workers.append(Worker(amqp_url, spec, redis_conn_url(redis_conn), prefetch=10, acks_late=True))
    proc = CeleryProc("worker", queues=[mail, report], app=app, inspect_statuses=["active", "reserved"], workers=1)

    def settled():
        if blocker.started() != 1:
            return False
        reading = proc.read({})
        return reading.quantity == 5 and reading

    reading = wait_for(settled, "5 tasks held by the worker")
    held = {q.name: (q.jobs["queued"], q.jobs["started"] + q.jobs["reserved"]) for q in reading.queues}
    assert held == {mail: (0, 3), report: (0, 2)}

    # an exporter whose app does not declare the queues asks the workers how they are bound (active_queues)
    bare_app = Celery("bare", broker=amqp_url, set_as_current=False)
    bare_app.conf.control_exchange = app.conf.control_exchange  # (the test's own workers; see celery_app.make_app)
    bare = CeleryProc("worker", queues=[mail, report], app=bare_app, inspect_statuses=["active", "reserved"], workers=1)
    reading = bare.read({})
    assert {q.name: q.jobs["started"] + q.jobs["reserved"] for q in reading.queues} == {mail: 3, report: 2}


def test_a_busy_worker_that_cannot_answer_fails_the_proc(amqp_url, redis_conn, queues, workers):
    names, _ = queues
    q = unique("busy")
    spec = spec_for(names, [q, "", "direct", q, 0])
    app = app_for(amqp_url, spec)
    declare(app)
    blocker = Blocker(app, redis_conn)
    blocker.send(1, queue=q)
    workers.append(Worker(amqp_url, spec, redis_conn_url(redis_conn), pool="solo"))
    wait_for(lambda: blocker.started() == 1, "the task to start")

    # no worker count given: the queue's consumer count shows that one worker should have answered
    proc = CeleryProc("worker", queues=[q], app=app, inspect_statuses=["active"], inspect_timeout=0.3)
    with pytest.raises(InspectIncomplete, match="1 consumers"):
        proc.read({})


def test_an_unreachable_broker_fails_instead_of_reading_zero():
    proc = CeleryProc("worker", url=f"amqp://guest:secret@127.0.0.1:{free_port()}//", socket_timeout=0.5)
    proc.validate()
    status = Collection([proc]).collect().procs[0]
    assert status.up is False and status.reading is None
    assert "secret" not in status.error


# The management API: the fixtures `management` and `management_without_statistics` (conftest.py).


def test_management_api_gives_ready_unacked_and_latency_in_one_request(management, redis_conn, workers):
    amqp, api = management
    q, idle = unique("mgmt"), unique("idle")
    spec = [[q, "", "direct", q, 0], [idle, "", "direct", idle, 0]]
    app = app_for(amqp, spec)
    declare(app)
    blocker = Blocker(app, redis_conn)
    celery_latency.enable()
    try:
        before = time.time()
        blocker.send(2, queue=q, countdown=600)
        blocker.send(6, queue=q)
    finally:
        celery_latency.disable()
    workers.append(Worker(amqp, spec, redis_conn_url(redis_conn), prefetch=3))
    proc = CeleryProc("worker", queues=[q, idle, unique("missing")], app=app, management_url=api, metric="latency")
    proc.validate()
    try:

        def settled():
            try:
                reading = proc.read({})
            except LookupError:  # queues declared a moment ago: the node has no statistics for them yet
                return False
            return blocker.started() == 1 and jobs(reading, q) == {"queued": 2, "reserved": 5} and reading

        reading = wait_for(settled, "2 ready and 3 prefetched + 2 ETA unacknowledged in the API")
        assert reading.queues[0].latency >= time.time() - before - 1  # the head message was stamped at publish
        assert reading.queues[0].latency == pytest.approx(time.time() - int(before), abs=2)
        assert [(x.latency, dict(x.jobs)) for x in reading.queues[1:]] == [(0.0, {"queued": 0, "reserved": 0})] * 2
        assert [x.found for x in reading.queues] == [True, True, False]  # the API does not list a missing queue

        # with the API, only `active` is broadcast, its limit is the workers the API lists
        inspected = CeleryProc("worker", queues=[q], app=app, management_url=api, inspect_statuses=["active"])
        start = time.perf_counter()
        assert jobs(inspected.read({}), q) == {"queued": 2, "reserved": 5, "started": 1}
        assert time.perf_counter() - start < inspected.inspect_timeout  # every worker answered: no timeout waited
    finally:
        for worker in workers:
            worker.stop()
        workers.clear()
        _delete(amqp, [q, idle], [])


def test_management_api_errors_name_the_api_but_not_the_password(management):
    amqp, api = management
    parts = urlsplit(api)
    wrong = f"http://guest:wrong-secret@{parts.hostname}:{parts.port}"
    proc = CeleryProc("worker", queues=["celery"], url=amqp, management_url=wrong)
    with pytest.raises(ConnectionError) as info:
        proc.read({})
    assert "401" in str(info.value) and "wrong-secret" not in str(info.value)


def test_management_api_without_message_counts_fails_the_proc_instead_of_reading_zero(
    management_without_statistics, redis_conn
):
    """A node that collects no statistics lists its queues by name only: their counts are unknown, not 0."""
    amqp, api = management_without_statistics
    q = unique("nostats")
    app = app_for(amqp, [[q, "", "direct", q, 0]])
    declare(app)
    Blocker(app, redis_conn).send(3, queue=q)
    assert wait_for(lambda: CeleryProc("worker", queues=[q], app=app).read({}).quantity == 3, "3 ready messages")

    status = Collection([CeleryProc("worker", queues=[q, unique("missing")], app=app, management_url=api)]).collect()

    assert status.procs[0].up is False and status.procs[0].reading is None
    assert status.procs[0].error == (
        f"LookupError: the RabbitMQ management API lists {q!r} without message counts (statistics not collected yet,"
        " or disabled by management_agent.disable_metrics_collector)"
    )


def redis_conn_url(client) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"
