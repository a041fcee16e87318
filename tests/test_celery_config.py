"""CeleryProc configuration: the old API's attributes, TOML tables, and clear errors at start-up (no broker I/O)."""

from __future__ import annotations

import pytest

from hirefire_exporter.loading import load_proc, proc_from_table
from hirefire_exporter.procs.base import ProcConfigError
from hirefire_exporter.procs.celery import CeleryProc


def test_old_api_defaults():
    class WorkerProc(CeleryProc):
        name = "worker"
        simple_queues = True

    proc = load_proc(WorkerProc, "HIREFIRE_PROCS")
    assert proc.queues == ["celery"]
    assert proc.inspect_statuses == ()  # no broadcast unless asked for
    assert proc.simple_queues is True


def test_toml_table_with_a_broker_url_and_options():
    table = {
        "name": "worker",
        "backend": "celery",
        "url": "redis://:secret@127.0.0.1:6399/3",
        "queues": ["high", "low"],
        "transport_options": {"global_keyprefix": "app:", "priority_steps": [0, 5]},
        "metric": "latency",
    }
    proc = proc_from_table(table, 0)
    proc.validate()
    assert proc.supports_latency
    assert [proc._lists(q) for q in proc.queues] == [["app:high", "app:high\x06\x165"], ["app:low", "app:low\x06\x165"]]
    assert proc.redis_client().connection_pool.connection_kwargs["db"] == 3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"inspect_statuses": ["active", "revoked"]}, "inspect_statuses must be a list of"),
        ({"inspect_statuses": "active"}, "inspect_statuses must be a list of"),
        ({"workers": 0}, "workers must be a positive integer"),
        ({"metric": "latency"}, "cannot measure job latency"),  # RabbitMQ without management_url
        ({"app": "no_such_module.app"}, "cannot import Celery app 'no_such_module.app'"),
        ({"prefetch": 4}, "unknown option 'prefetch'"),
    ],
)
def test_misconfiguration_names_the_proc(options, message):
    with pytest.raises(ProcConfigError, match=message):
        proc = CeleryProc("worker", url="amqp://guest:guest@127.0.0.1:5672//", **options)
        proc.validate()


def test_rabbitmq_with_the_management_api_measures_latency():
    proc = CeleryProc("worker", url="amqp://127.0.0.1//", management_url="http://127.0.0.1:15672", metric="latency")
    proc.validate()
    assert proc.redis_client() is None and proc.supports_latency
