"""Celery queue discovery: kombu's binding tables on Redis, the management API on RabbitMQ."""

from __future__ import annotations

import json

from celery_app_support import Blocker, Worker, app_for, declare, unique, wait_for
from support import command_counts, samples
from test_celery_rabbitmq import _delete
from werkzeug.test import Client

from hirefire_exporter.app import ExporterApp
from hirefire_exporter.collection import Collection
from hirefire_exporter.procs.celery import CeleryProc


def queued(reading) -> dict[str, dict[str, int]]:
    return {q.name: dict(q.jobs) for q in reading.queues}


def test_queues_a_real_worker_declared_and_one_send_task_created_are_found(redis_conn, redis_url, workers):
    tag = unique("dsc")
    a, b, created = f"{tag}-a", f"{tag}-b", f"{tag}-created"
    spec = [[a, a, "direct", a, 0], [b, b, "direct", b, 0]]
    app = app_for(redis_url, spec)
    blocker = Blocker(app, redis_conn)
    workers.append(Worker(redis_url, spec, redis_url, prefetch=1))
    blocker.send(3, queue=a)  # 1 running (acknowledged: invisible), 1 prefetched, 1 waiting
    wait_for(lambda: blocker.started() == 1 and redis_conn.hlen("unacked") == 1, "1 running + 1 prefetched")
    blocker.send(2, queue=created)  # no worker consumes it: Celery declares it when publishing

    app_ = ExporterApp(Collection([CeleryProc("worker", queues="*", app=app)]), "tok")
    client = Client(app_)
    info = json.loads(client.get("/hirefire/tok/info").data)
    metrics = client.get("/metrics").get_data(as_text=True)

    assert info == [{"name": "worker", "value": 4, "quantity": 4}]
    assert queued(app_.collection.latest.procs[0].reading) == {  # the worker's broadcast queue is left out
        a: {"queued": 1, "reserved": 1, "scheduled": 0},
        b: {"queued": 0, "reserved": 0, "scheduled": 0},
        created: {"queued": 2, "reserved": 0, "scheduled": 0},
    }
    assert samples(metrics, "hirefire_queue_jobs")[("worker", created, "queued")] == 2.0


def test_discovery_on_redis_costs_one_scan_and_one_smembers_per_binding_table(private_redis):
    kwargs = private_redis.connection_pool.connection_kwargs
    url = f"redis://{kwargs['host']}:{kwargs['port']}/0"
    spec = [["dsc-a", "dsc-a", "direct", "dsc-a", 0], ["dsc-b", "dsc-b", "direct", "dsc-b", 0]]
    app = app_for(url, spec)
    declare(app)
    Blocker(app, private_redis).send(2, queue="dsc-b")
    proc = CeleryProc("worker", queues="dsc-*", app=app)
    named = CeleryProc("worker", queues=["dsc-a", "dsc-b"], app=app)

    private_redis.config_resetstat()
    Collection([named]).collect()
    reference = command_counts(private_redis)
    reference.pop("script|load", None)  # the reader script is loaded by the first cycle of the process on a server
    private_redis.config_resetstat()
    reading = Collection([proc]).collect().procs[0].reading
    counts = command_counts(private_redis)
    counts.pop("script|load", None)

    assert queued(reading) == {
        "dsc-a": {"queued": 0, "reserved": 0, "scheduled": 0},
        "dsc-b": {"queued": 2, "reserved": 0, "scheduled": 0},
    }
    assert counts == {**reference, "scan": 1, "smembers": reference["smembers"] + 2}


def test_queues_listed_by_the_rabbitmq_management_api_are_found(management, redis_conn):
    amqp, api = management
    tag = unique("dsc")
    a, b, other = f"{tag}-a", f"{tag}-b", unique("other")
    spec = [[a, a, "direct", a, 0], [b, b, "direct", b, 0], [other, other, "direct", other, 0]]
    app = app_for(amqp, spec)
    declare(app)
    blocker = Blocker(app, redis_conn)
    blocker.send(2, queue=a)
    blocker.send(1, queue=b)
    blocker.send(5, queue=other)
    proc = CeleryProc("worker", queues=f"{tag}-*", app=app, management_url=api, discover_every=0)
    collection = Collection([proc])
    try:

        def settled():
            status = collection.collect().procs[0]
            return status.up and status.reading.quantity == 3 and status.reading

        reading = wait_for(settled, "the API to list both queues with their messages")
        assert queued(reading) == {a: {"queued": 2, "reserved": 0}, b: {"queued": 1, "reserved": 0}}
    finally:
        _delete(amqp, [a, b, other], [])
