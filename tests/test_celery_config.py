"""CeleryProc configuration: the old API's attributes, TOML tables, and clear errors at start-up (no broker I/O)."""

from __future__ import annotations

import pytest

from hirefire_exporter.loading import load_proc, proc_from_table
from hirefire_exporter.procs.base import ProcConfigError
from hirefire_exporter.procs.celery import CeleryProc
from hirefire_exporter.procs.celery.inspect import Sightings


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
    assert [proc._lists(q) for q in proc.queues] == [("app:high", "app:high\x06\x165"), ("app:low", "app:low\x06\x165")]
    assert proc.redis_client().connection_pool.connection_kwargs["db"] == 3


POSITIVE_SECONDS = "must be a number of seconds above 0 and up to 31536000, got"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"inspect_statuses": ["active", "revoked"]}, "inspect_statuses must be a list of"),
        ({"inspect_statuses": "active"}, "inspect_statuses must be a list of"),
        ({"workers": 0}, "workers must be a number of worker processes from 1 to 100000, got 0"),
        ({"inspect_forget_after": 0}, f"inspect_forget_after {POSITIVE_SECONDS} 0"),
        ({"inspect_forget_after": -5}, f"inspect_forget_after {POSITIVE_SECONDS} -5"),
        ({"inspect_forget_after": float("inf")}, f"inspect_forget_after {POSITIVE_SECONDS} inf"),
        ({"inspect_forget_after": float("nan")}, f"inspect_forget_after {POSITIVE_SECONDS} nan"),
        ({"inspect_forget_after": "300"}, f"inspect_forget_after {POSITIVE_SECONDS} '300'"),
        ({"inspect_forget_after": True}, f"inspect_forget_after {POSITIVE_SECONDS} True"),
        ({"metric": "latency"}, "cannot measure job latency"),  # RabbitMQ without management_url
        ({"app": "no_such_module.app"}, "cannot import Celery app 'no_such_module.app'"),
        ({"prefetch": 4}, "unknown option 'prefetch'"),
    ],
)
def test_misconfiguration_names_the_proc(options, message):
    with pytest.raises(ProcConfigError, match=message):
        proc = CeleryProc("worker", url="amqp://guest:guest@127.0.0.1:5672//", **options)
        proc.validate()


def test_inspect_forget_after_defaults_to_five_minutes_and_is_read_from_toml():
    assert CeleryProc("worker", url="redis://127.0.0.1:6399/0").inspect_forget_after == 300
    table = {"name": "worker", "backend": "celery", "url": "redis://127.0.0.1:6399/0", "inspect_forget_after": 90.5}
    proc = proc_from_table(table, 0)
    proc.validate()
    assert proc.inspect_forget_after == 90.5


def test_a_worker_silent_past_inspect_forget_after_is_reported_gone_once_and_back_when_it_answers():
    """The bookkeeping behind ``inspect_forget_after``, on a clock the test moves (the real-worker cases are in
    test_celery_redis.py)."""
    now = [100.0]
    sightings = Sightings(10, clock=lambda: now[0])

    assert sightings.sort({"a", "b"}) == ({"a", "b"}, [])
    now[0] = 105.0
    sightings.answered({"a"})
    now[0] = 110.0
    assert sightings.sort({"a", "b"}) == ({"a", "b"}, [])  # 10 s is not longer than 10 s
    now[0] = 110.5  # b never answered: counted from when it was first seen
    assert sightings.sort({"a", "b"}) == ({"a"}, ["b"])
    assert sightings.sort({"a", "b"}) == ({"a"}, [])  # reported once while it stays gone
    sightings.answered({"b"})
    assert sightings.sort({"a", "b", "c"}) == ({"a", "b", "c"}, [])  # b is back, and expected again
    now[0] = 121.0
    assert sightings.sort({"a", "b", "c"}) == (set(), ["a", "b", "c"])  # b gone again: reported again
    now[0] = 122.0
    assert sightings.sort({"c"}) == (set(), [])  # a and b removed from the set (SREM): forgotten
    assert sightings.sort({"a", "c"}) == ({"a"}, [])  # a seen anew starts a new window


def test_rabbitmq_with_the_management_api_measures_latency():
    proc = CeleryProc("worker", url="amqp://127.0.0.1//", management_url="http://127.0.0.1:15672", metric="latency")
    proc.validate()
    assert proc.redis_client() is None and proc.supports_latency


PASSWORD = "s3cretpw"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"amqp://guest:{PASSWORD}@host:port//", "bad Celery broker URL: its port is not a number from 0 to 65535"),
        (f"amqp://guest:{PASSWORD}@host:99999//", "bad Celery broker URL: its port is not a number from 0 to 65535"),
        (f"amqp://app:{PASSWORD}/vhost", r"its port is not a number from 0 to 65535 \(host"),  # host forgotten
        (f"sqs2://guest:{PASSWORD}@host//", "bad Celery broker URL: No such transport: sqs2.  Did you mean sqs?"),
        ("foo://x", "bad Celery broker URL: No such transport: foo"),
        (f"amqp://guest:{PASSWORD}@[::1//", "bad Celery broker URL: its host cannot be parsed"),
        (f"redis://:{PASSWORD}@[::1/0", "bad Redis URL: its host cannot be parsed"),
    ],
)
def test_a_broken_broker_url_fails_at_start_up_naming_the_proc_never_the_password(url, message):
    """Hosts that do not resolve: any I/O would fail differently (and slowly)."""
    with pytest.raises(ProcConfigError, match=message) as info:
        CeleryProc("worker", url=url).validate()
    assert str(info.value).startswith("proc 'worker': ") and PASSWORD not in str(info.value)


def test_the_apps_own_broken_broker_url_fails_at_start_up_too():
    from celery import Celery

    app = Celery("broken", broker=f"amqp://guest:{PASSWORD}@host:port//", set_as_current=False)
    with pytest.raises(ProcConfigError, match="proc 'worker': bad Celery broker URL: its port is not a number") as info:
        CeleryProc("worker", app=app).validate()
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize(
    ("management_url", "message"),
    [
        (f"https://guest:{PASSWORD}@host:port", "management_url must have a numeric port from 0 to 65535"),
        (f"https://guest:{PASSWORD}/", "management_url must have a numeric port"),  # host forgotten
        ("rabbit.example.com:15672", r"management_url must be an http:// or https:// URL with a host"),
        (f"https://guest:{PASSWORD}@[::1", "management_url is not a valid URL"),
        (15672, r"management_url must be an http\(s\) URL string, got int"),
    ],
)
def test_a_broken_management_url_fails_at_start_up_never_quoting_it(management_url, message):
    proc = CeleryProc("worker", url="amqp://guest:guest@host//", management_url=management_url)
    with pytest.raises(ProcConfigError, match=f"proc 'worker': {message}") as info:
        proc.validate()
    assert PASSWORD not in str(info.value)


def test_a_broker_url_that_is_not_a_string_fails_at_start_up():
    with pytest.raises(ProcConfigError, match="proc 'worker': the broker URL must be a string, got int"):
        CeleryProc("worker", url=6379).validate()
