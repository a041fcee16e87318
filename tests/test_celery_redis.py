"""Celery on Redis: exact counts from the broker (priorities, prefetched and ETA tasks, exchanges), real workers."""

from __future__ import annotations

import json
import logging
import os
import signal
import time

import pytest
from celery_app_support import Blocker, Worker, app_for, declare, unique, wait_for
from support import count_round_trips

from hirefire_exporter import celery_latency
from hirefire_exporter.collection import Collection
from hirefire_exporter.loading import proc_from_table
from hirefire_exporter.procs.celery import CeleryProc
from hirefire_exporter.procs.celery import inspect as celery_inspect
from hirefire_exporter.procs.celery.inspect import InspectIncomplete
from hirefire_exporter.procs.redis_proc import read_redis_procs


def jobs(reading, queue):
    return dict(next(q for q in reading.queues if q.name == queue).jobs)


@pytest.fixture
def stamped():
    celery_latency.enable()
    yield
    celery_latency.disable()


def test_waiting_tasks_of_every_priority_are_counted(redis_conn, redis_url):
    q, other = unique("prio"), unique("other")
    app = app_for(redis_url, [[q, "", "direct", q, 0], [other, "", "direct", other, 0]])
    blocker = Blocker(app, redis_conn)
    for priority in range(10):
        blocker.send(queue=q, priority=priority)
    blocker.send(3, queue=other)

    reading = CeleryProc("worker", queues=[q, other], app=app).read({})

    assert redis_conn.llen(q) == 3  # priorities 0-2: what a tool reading only the base list reports
    assert jobs(reading, q) == {"queued": 10, "reserved": 0, "scheduled": 0}
    assert jobs(reading, other) == {"queued": 3, "reserved": 0, "scheduled": 0}
    assert reading.quantity == 13


def test_transport_options_prefix_separator_and_steps_are_honoured(redis_conn, redis_url, workers):
    q = unique("opts")
    spec = [[q, "", "direct", q, 0]]
    options = {"global_keyprefix": "myapp:", "sep": ":", "priority_steps": list(range(10))}
    app = app_for(redis_url, spec, transport_options=options)
    blocker = Blocker(app, redis_conn)
    blocker.send(10, queue=q, priority=7)
    blocker.send(2, queue=q, priority=0)
    proc = CeleryProc("worker", queues=[q], app=app)

    assert redis_conn.llen(f"myapp:{q}:7") == 10
    assert jobs(proc.read({}), q) == {"queued": 12, "reserved": 0, "scheduled": 0}
    # the same queue read with the default options finds nothing: the options matter
    assert CeleryProc("worker", queues=[q], url=redis_url).read({}).quantity == 0

    workers.append(Worker(redis_url, spec, redis_url, prefetch=2, transport_options=options))
    wait_for(lambda: blocker.started() == 1 and redis_conn.hlen("myapp:unacked") == 2, "1 running + 2 prefetched")
    assert jobs(proc.read({}), q) == {"queued": 9, "reserved": 2, "scheduled": 0}


def test_prefetched_tasks_are_reserved_and_the_running_one_is_invisible_with_early_ack(redis_conn, redis_url, workers):
    q = unique("prefetch")
    spec = [[q, "", "direct", q, 0]]
    app = app_for(redis_url, spec)
    blocker = Blocker(app, redis_conn)
    blocker.send(6, queue=q)
    workers.append(Worker(redis_url, spec, redis_url, prefetch=3))
    proc = CeleryProc("worker", queues=[q], app=app)

    wait_for(lambda: blocker.started() == 1 and redis_conn.hlen("unacked") == 3, "1 running + 3 prefetched")

    # early ack: the running task left the broker; only inspection (or acks_late) sees it
    assert jobs(proc.read({}), q) == {"queued": 2, "reserved": 3, "scheduled": 0}
    inspected = CeleryProc("worker", queues=[q], app=app, inspect_statuses=["active"], workers=1)
    assert jobs(inspected.read({}), q) == {"queued": 2, "reserved": 3, "scheduled": 0, "started": 1}
    assert inspected.read({}).quantity == 6


def test_with_acks_late_the_running_task_stays_visible(redis_conn, redis_url, workers):
    q = unique("late")
    spec = [[q, "", "direct", q, 0]]
    app = app_for(redis_url, spec)
    blocker = Blocker(app, redis_conn)
    blocker.send(6, queue=q)
    workers.append(Worker(redis_url, spec, redis_url, prefetch=3, acks_late=True))

    wait_for(lambda: blocker.started() == 1 and redis_conn.hlen("unacked") == 3, "1 running + 2 prefetched")

    assert jobs(CeleryProc("worker", queues=[q], app=app).read({}), q) == {"queued": 3, "reserved": 3, "scheduled": 0}
    # inspection moves the running task from reserved to started instead of counting it twice
    inspected = CeleryProc("worker", queues=[q], app=app, inspect_statuses=["active"])
    reading = inspected.read({})
    assert jobs(reading, q) == {"queued": 3, "reserved": 2, "scheduled": 0, "started": 1}
    assert reading.quantity == 6


def test_inspection_asks_the_workers_of_the_broker_it_measures_not_the_apps(redis_url, private_redis, workers):
    """The proc's `url` is another broker than the app's own: its broadcasts go there, to the workers it counts."""
    server = private_redis.connection_pool.connection_kwargs
    measured = f"redis://{server['host']}:{server['port']}/0"
    q = unique("elsewhere")
    spec = [[q, "", "direct", q, 0]]
    app = app_for(redis_url, spec)  # the app's own broker: the test database, with no worker on it
    blocker = Blocker(app_for(measured, spec), private_redis)
    blocker.send(3, queue=q)
    workers.append(Worker(measured, spec, measured, prefetch=1))
    wait_for(lambda: blocker.started() == 1, "the task to start on the measured broker")

    for known in ({}, {"workers": 1}):  # the workers found in the measured broker, or their given number
        proc = CeleryProc("worker", queues=[q], app=app, url=measured, inspect_statuses=["active"], **known)
        assert jobs(proc.read({}), q) == {"queued": 1, "reserved": 1, "scheduled": 0, "started": 1}


def test_eta_tasks_held_by_a_worker_are_scheduled(redis_conn, redis_url, workers):
    q = unique("eta")
    spec = [[q, "", "direct", q, 0]]
    app = app_for(redis_url, spec)
    blocker = Blocker(app, redis_conn)
    blocker.send(4, queue=q, countdown=600)
    blocker.send(1, queue=q)
    workers.append(Worker(redis_url, spec, redis_url, prefetch=1))

    wait_for(lambda: blocker.started() == 1 and redis_conn.hlen("unacked") == 4, "4 ETA tasks held")

    assert jobs(CeleryProc("worker", queues=[q], app=app).read({}), q) == {"queued": 0, "reserved": 0, "scheduled": 4}


def test_custom_exchanges_and_routing_keys_map_held_tasks_to_their_queues(redis_conn, redis_url, workers):
    emails, reports, idle = unique("emails"), unique("reports"), unique("idle")
    exchange = unique("topic")
    spec = [
        [emails, exchange, "topic", "mail.#", 0],
        [reports, exchange, "topic", "report.*", 0],
        [idle, unique("direct"), "direct", "idle-key", 0],
    ]
    app = app_for(redis_url, spec)
    declare(app)
    blocker = Blocker(app, redis_conn)
    blocker.send(3, exchange=exchange, routing_key="mail.welcome.de")
    blocker.send(2, exchange=exchange, routing_key="report.daily")
    workers.append(Worker(redis_url, spec[:2], redis_url, prefetch=5, acks_late=True))

    wait_for(lambda: blocker.started() == 1 and redis_conn.hlen("unacked") == 5, "1 running + 4 prefetched")

    reading = CeleryProc("worker", queues=[emails, reports, idle], app=app).read({})
    assert {q.name: q.jobs["reserved"] for q in reading.queues} == {emails: 3, reports: 2, idle: 0}
    assert {q.name for q in reading.queues if q.jobs["queued"]} == set()


def test_other_queues_unacked_tasks_are_not_counted(redis_conn, redis_url, workers):
    mine, theirs = unique("mine"), unique("theirs")
    spec = [[theirs, "", "direct", theirs, 0]]
    app = app_for(redis_url, spec)
    blocker = Blocker(app, redis_conn)
    blocker.send(4, queue=theirs)
    workers.append(Worker(redis_url, spec, redis_url, prefetch=2))
    wait_for(lambda: blocker.started() == 1 and redis_conn.hlen("unacked") == 2, "theirs prefetched")

    assert CeleryProc("worker", queues=[mine], app=app).read({}).quantity == 0
    assert CeleryProc("worker", queues=[theirs], app=app).read({}).quantity == 3


def test_a_worker_that_misses_the_inspect_reply_fails_the_proc(redis_conn, redis_url, workers):
    q = unique("busy")
    spec = [[q, "", "direct", q, 0]]
    app = app_for(redis_url, spec)
    blocker = Blocker(app, redis_conn)
    blocker.send(1, queue=q)
    workers.append(Worker(redis_url, spec, redis_url, pool="solo"))  # a solo worker cannot answer while busy
    wait_for(lambda: blocker.started() == 1, "the task to start")

    proc = CeleryProc("worker", queues=[q], app=app, inspect_statuses=["active"], inspect_timeout=0.3)
    with pytest.raises(InspectIncomplete, match=workers[0].hostname):  # the worker is known from its broadcast queue
        proc.read({})
    proc.workers = 1
    with pytest.raises(InspectIncomplete, match="0 of 1 workers"):
        proc.read({})

    # killed without shutting down, a worker leaves its binding: Redis cannot tell it from a busy one, so the proc
    # keeps failing, and says how to clear it
    workers[0].process.kill()
    workers[0].process.wait(10)
    proc.workers = None
    pidbox = f"_kombu.binding.{app.conf.control_exchange}.pidbox"
    assert redis_conn.scard(pidbox) == 1
    with pytest.raises(InspectIncomplete) as info:
        proc.read({})
    assert str(info.value) == (
        f"inspect active: no answer within 0.3s from {workers[0].hostname} (a busy worker would read as holding no"
        f" tasks); or the worker was killed without shutting down and left its member in the Redis set {pidbox!r}:"
        " remove it (SREM), or set `workers`"
    )


def test_one_cycle_broadcasts_each_inspect_method_once(redis_conn, redis_url, workers, monkeypatch):
    a, b = unique("a"), unique("b")
    spec = [[a, "", "direct", a, 0], [b, "", "direct", b, 0]]
    app = app_for(redis_url, spec)
    workers.append(Worker(redis_url, spec, redis_url))
    wait_for(lambda: app.control.inspect(timeout=0.5).ping(), "the worker to answer pings")
    calls = []
    real = celery_inspect._broadcast
    monkeypatch.setattr(celery_inspect, "_broadcast", lambda *args: calls.append(args[1]) or real(*args))
    procs = [CeleryProc(name, queues=[q], app=app, inspect_statuses=["active"]) for name, q in (("a", a), ("b", b))]

    collection = Collection(procs, timeout=5)
    snapshot = collection.collect()

    assert [s.up for s in snapshot.procs] == [True, True]
    assert calls == ["active"]
    assert collection.counts.inspect_broadcasts.items() == [(("active",), 1)]  # hirefire_exporter_inspect_broadcasts


def test_latency_is_the_age_of_the_oldest_waiting_task_over_all_priorities(redis_conn, redis_url, stamped):
    q = unique("latency")
    app = app_for(redis_url, [[q, "", "direct", q, 0]])
    blocker = Blocker(app, redis_conn)
    before = time.time()
    blocker.send(1, queue=q, priority=9)  # the oldest task waits in a priority list
    after = time.time()
    blocker.send(3, queue=q, priority=0)
    proc = CeleryProc("worker", queues=[q], app=app, metric="latency")
    proc.validate()

    (reading,) = read_redis_procs(proc.redis_client(), [proc], after + 100)

    assert after + 100 - reading.latency == pytest.approx(before, abs=after - before + 0.001)
    assert reading.queues[0].latency == reading.latency
    assert reading.quantity == 4


def test_latency_is_unknown_for_unstamped_tasks_and_zero_for_an_empty_queue(redis_conn, redis_url):
    q, empty = unique("unstamped"), unique("empty")
    app = app_for(redis_url, [[q, "", "direct", q, 0]])
    Blocker(app, redis_conn).send(2, queue=q)

    reading = CeleryProc("worker", queues=[q, empty], app=app).read({})

    assert [(x.name, x.latency) for x in reading.queues] == [(q, None), (empty, 0.0)]
    assert reading.latency is None  # not the empty queue's 0.0: the proc's oldest task has an unknown age


def test_procs_on_one_server_are_read_in_one_pipeline_with_other_backends(redis_conn, redis_url):
    q = unique("toml")
    Blocker(app_for(redis_url, [[q, "", "direct", q, 0]]), redis_conn).send(5, queue=q, priority=5)
    celery = proc_from_table({"name": "worker", "backend": "celery", "url": redis_url, "queues": [q]}, 0)
    rq = proc_from_table({"name": "rq", "backend": "rq", "url": redis_url, "queues": ["default"]}, 1)

    collection = Collection([celery, rq])

    assert len(collection._tasks) == 1  # one task, one pipeline for both procs
    assert [(s.name, s.up, s.reading.quantity) for s in collection.collect().procs] == [
        ("worker", True, 5),
        ("rq", True, 0),
    ]


def test_an_unreachable_broker_fails_instead_of_reading_zero(redis_server):
    from conftest import free_port

    proc = CeleryProc("worker", url=f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5)
    proc.validate()
    snapshot = Collection([proc]).collect()
    assert snapshot.procs[0].up is False and snapshot.procs[0].reading is None
    assert snapshot.failed(snapshot.collected_at) == [snapshot.procs[0]]


def test_all_queues_of_a_proc_cost_one_round_trip(redis_conn, redis_url, monkeypatch):

    names = [unique(f"rt{i}") for i in range(20)]
    app = app_for(redis_url, [[q, "", "direct", q, 0] for q in names])
    blocker = Blocker(app, redis_conn)
    for q in names:
        blocker.send(queue=q, priority=9)
    proc = CeleryProc("worker", queues=names, app=app)
    proc.validate()
    proc.redis_client().ping()  # connect first: only the reading's own round trips are counted
    sends = count_round_trips(monkeypatch)

    reading = Collection([proc]).collect().procs[0].reading

    assert reading.quantity == 20
    assert len(sends) == 1  # 20 queues x 4 priority lists (LLEN) and the unacked hash: one round trip


def test_malformed_unacked_entries_and_bindings_are_skipped_and_logged_once(redis_conn, redis_url, caplog):
    """Garbage next to real held tasks: the rest is counted exactly, and the log says how much was skipped (at
    WARNING when it appears, at DEBUG while it stays), never what it held."""
    q, exchange = unique("held"), unique("topic")
    app = app_for(redis_url, [[q, exchange, "topic", "mail.#", 0]])
    declare(app)  # kombu writes the binding table: _kombu.binding.<exchange> holds the topic's regex
    binding_key = f"_kombu.binding.{exchange}"
    personal = {"headers": {}, "body": "alice@example.com"}
    good = {
        "topic": json.dumps([{"headers": {}}, exchange, "mail.welcome"]),
        "topic 2": json.dumps([{"headers": {}}, exchange, "mail.reset"]),
        "default exchange": json.dumps([{"headers": {}}, "", q]),
    }
    garbage = {
        "exchange a list": json.dumps([personal, [exchange], "mail.welcome"]),
        "routing key a dict": json.dumps([personal, exchange, {"mail": "welcome"}]),
        "exchange a number": json.dumps([personal, 5, q]),
        "nested too deep": "[" * 100_000,
    }
    redis_conn.hset("unacked", mapping={**good, **garbage})
    redis_conn.sadd(binding_key, f"mail.#\x06\x16[unclosed\x06\x16{q}", b"\xff\xfe")
    proc = CeleryProc("worker", queues=[q], app=app)

    def reading_and_log():
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="hirefire_exporter"):
            reading = Collection([proc]).collect().procs[0].reading
        return jobs(reading, q), [(r.levelname, r.getMessage()) for r in caplog.records]

    counts, logged = reading_and_log()
    assert counts == {"queued": 0, "reserved": 3, "scheduled": 0}

    def message(entries, bindings):
        return (
            f"proc 'worker': malformed entries left out of the counts: {entries} in the Redis hash 'unacked',"
            f" {bindings} in kombu's binding tables"
        )

    assert logged == [("WARNING", message(4, 2))]
    assert reading_and_log() == (counts, [("DEBUG", message(4, 2))])  # still there: no new warning

    redis_conn.hdel("unacked", *garbage)
    redis_conn.srem(binding_key, f"mail.#\x06\x16[unclosed\x06\x16{q}", b"\xff\xfe")
    assert reading_and_log() == (counts, [])
    redis_conn.hset("unacked", "again", garbage["exchange a list"])
    assert reading_and_log() == (counts, [("WARNING", message(1, 0))])  # back: a new warning


def test_a_waiting_message_nested_too_deep_to_parse_counts_with_an_unknown_latency(redis_conn, redis_url):
    q = unique("deep")
    redis_conn.lpush(q, "[" * 100_000)
    reading = CeleryProc("worker", queues=[q], url=redis_url).read({})
    assert (reading.quantity, reading.latency) == (1, None)


def test_a_binding_table_of_the_wrong_type_fails_the_proc_saying_why(redis_conn, redis_url):
    redis_conn.hset("unacked", "1", json.dumps([{"headers": {}}, "tasks", "celery"]))
    redis_conn.set("_kombu.binding.tasks", "a string where kombu keeps a set")
    status = Collection([CeleryProc("worker", url=redis_url)]).collect().procs[0]
    assert status.up is False and status.error.startswith("ResponseError: WRONGTYPE")


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def answered_read(proc, queue):
    """The queue's jobs once every expected worker answers (workers answer slowly for a moment after start-up)."""
    try:
        return jobs(proc.read({}), queue)
    except InspectIncomplete:
        return None


def test_a_killed_workers_leftover_binding_fails_the_proc_only_until_inspect_forget_after(
    redis_conn, redis_url, workers, caplog
):
    """A SIGKILLed worker (Heroku kills a dyno 30 s after SIGTERM) never removes its broadcast binding: its silence
    fails the proc for ``inspect_forget_after`` seconds, then it is taken for gone (logged once) and the live worker's
    tasks are counted exactly."""
    q = unique("killed")
    spec = [[q, "", "direct", q, 0]]
    app = app_for(redis_url, spec)
    dead, live = Worker(redis_url, spec, redis_url), Worker(redis_url, spec, redis_url)
    workers += [dead, live]
    proc = CeleryProc("worker", queues=[q], app=app, inspect_statuses=["active"])
    proc.inspect_forget_after = 2
    proc.validate()
    wait_for(lambda: redis_conn.scard(f"_kombu.binding.{app.conf.control_exchange}.pidbox") == 2, "both bindings")
    idle = {"queued": 0, "reserved": 0, "scheduled": 0, "started": 0}
    assert wait_for(lambda: answered_read(proc, q), "both workers to answer") == idle
    answered_by = time.monotonic()  # both workers answered before this

    dead.process.kill()
    dead.process.wait(10)
    blocker = Blocker(app, redis_conn)
    blocker.send(3, queue=q)
    wait_for(lambda: blocker.started() == 1 and redis_conn.hlen("unacked") == 1, "1 running + 1 prefetched")
    pidbox = f"_kombu.binding.{app.conf.control_exchange}.pidbox"
    member = f"\x06\x16\x06\x16{dead.hostname}.{app.conf.control_exchange}.pidbox"
    assert redis_conn.sismember(pidbox, member)

    with caplog.at_level(logging.WARNING, logger="hirefire_exporter"):
        with pytest.raises(InspectIncomplete) as info:  # within the window: a busy worker is never read as idle
            proc.read({})
        assert str(info.value) == (
            f"inspect active: no answer within 1s from {dead.hostname} (a busy worker would read as holding no"
            f" tasks); or the worker was killed without shutting down and left its member in the Redis set"
            f" {pidbox!r}: remove it (SREM), or set `workers`"
        )
        assert warnings_of(caplog) == []

        time.sleep(max(0.0, answered_by + 2.05 - time.monotonic()))
        readings = [jobs(proc.read({}), q) for _ in range(2)]

    assert readings == [{"queued": 1, "reserved": 1, "scheduled": 0, "started": 1}] * 2
    assert warnings_of(caplog) == [  # once, not once per cycle
        f"proc 'worker': worker {dead.hostname!r} answered no broadcast for over 2s: taken for gone (killed without"
        " shutting down?) and no longer waited for until it answers again; its member stays in the Redis set"
        f" {pidbox!r}, remove it with: redis-cli SREM {pidbox} \"$(printf '\\006\\026\\006\\026{dead.hostname}."
        f"{app.conf.control_exchange}.pidbox')\""
    ]
    assert redis_conn.sismember(pidbox, member)  # the exporter only reads: the member stays until removed


def test_a_worker_taken_for_gone_that_answers_again_is_counted_and_waited_for_again(redis_conn, redis_url, workers):
    q = unique("stopped")
    spec = [[q, "", "direct", q, 0]]
    app = app_for(redis_url, spec)
    blocker = Blocker(app, redis_conn)
    blocker.send(1, queue=q)
    worker = Worker(redis_url, spec, redis_url)
    workers.append(worker)
    wait_for(lambda: blocker.started() == 1, "the task to start")
    proc = CeleryProc("worker", queues=[q], app=app, inspect_statuses=["active"], inspect_forget_after=1)
    running = {"queued": 0, "reserved": 0, "scheduled": 0, "started": 1}
    assert wait_for(lambda: answered_read(proc, q), "the worker to answer") == running
    answered_by = time.monotonic()

    os.kill(worker.process.pid, signal.SIGSTOP)  # silent, not dead (as a worker stuck for minutes would be)
    try:
        with pytest.raises(InspectIncomplete, match=worker.hostname):
            proc.read({})
        time.sleep(max(0.0, answered_by + 1.05 - time.monotonic()))
        assert jobs(proc.read({}), q) == {**running, "started": 0}  # taken for gone: what the rule accepts
    finally:
        os.kill(worker.process.pid, signal.SIGCONT)

    assert wait_for(lambda: jobs(proc.read({}), q) == running, "the worker to answer again", timeout=10)
    os.kill(worker.process.pid, signal.SIGSTOP)  # back: its silence fails the proc again at once
    try:
        with pytest.raises(InspectIncomplete, match=worker.hostname):
            proc.read({})
    finally:
        os.kill(worker.process.pid, signal.SIGCONT)
