"""Huey: pending, due and scheduled tasks on RedisHuey, PriorityRedisHuey, SqliteHuey and any other storage."""

from __future__ import annotations

import sys
import time
import types
from datetime import UTC, datetime, timedelta

import pytest
from support import command_counts

from hirefire_exporter.collection import Collection
from hirefire_exporter.config import load_settings
from hirefire_exporter.loading import load_procs
from hirefire_exporter.procs.base import ProcConfigError
from hirefire_exporter.procs.huey import HueyProc

huey = pytest.importorskip("huey")


def fill(instance) -> None:
    """3 tasks waiting, 1 scheduled task whose time has come, 1 scheduled for tomorrow.

    A Huey consumer moves a task with an ETA from the queue to the schedule (``add_schedule``), and moves it back when
    its time comes: here the test plays the consumer's part for the two scheduled tasks.
    """

    @instance.task()
    def add(a, b):
        return a + b

    for i in range(3):
        add(i, i)
    instance.add_schedule(add.s(1, 1, eta=datetime.now(UTC) - timedelta(minutes=1)))
    instance.add_schedule(add.s(2, 2, delay=86400))


def jobs(snapshot) -> dict[str, dict[str, int]]:
    return {q.name: dict(q.jobs) for q in snapshot.procs[0].reading.queues}


EXPECTED = {"queued": 3, "due": 1, "scheduled": 1}


def test_redis_huey_counts_waiting_and_due_tasks(redis_url, redis_conn):
    instance = huey.RedisHuey("emails", url=redis_url)
    fill(instance)
    snapshot = Collection([HueyProc("worker", huey=instance)]).collect()
    assert jobs(snapshot) == {"emails": EXPECTED}
    assert snapshot.procs[0].reading.quantity == 4
    assert snapshot.procs[0].reading.latency is None  # a plain Redis list records no enqueue time


def test_priority_redis_huey_counts_and_measures_the_head_jobs_age(redis_url, redis_conn):
    instance = huey.PriorityRedisHuey("reports", url=redis_url)

    @instance.task(priority=5)
    def urgent():
        return 1

    fill(instance)
    urgent()
    later = time.time() + 90
    snapshot = Collection([HueyProc("worker", huey=instance, metric="latency")], clock=lambda: later).collect()

    assert jobs(snapshot) == {"reports": {**EXPECTED, "queued": 4}}
    assert 89 <= snapshot.procs[0].reading.latency <= 91
    assert 89 <= snapshot.value(snapshot.procs[0]) <= 91


def test_sqlite_huey_counts_without_any_server(tmp_path):
    instance = huey.SqliteHuey("jobs", filename=str(tmp_path / "huey.db"))
    fill(instance)
    snapshot = Collection([HueyProc("worker", huey=instance)]).collect()
    assert jobs(snapshot) == {"jobs": EXPECTED}
    assert snapshot.procs[0].up and snapshot.procs[0].reading.quantity == 4


def test_several_huey_queues_on_one_redis_in_one_round_trip(private_redis):
    port = private_redis.connection_pool.connection_kwargs["port"]
    for name in ("a", "b"):
        fill(huey.RedisHuey(name, port=port))
    private_redis.config_resetstat()
    proc = HueyProc("worker", huey=huey.RedisHuey("a", port=port), queues=["a", "b", "missing"])
    snapshot = Collection([proc]).collect()
    assert jobs(snapshot) == {"a": EXPECTED, "b": EXPECTED, "missing": {"queued": 0, "due": 0, "scheduled": 0}}
    counts = command_counts(private_redis)
    assert counts.pop("script|load", 0) <= 1  # the reader script, loaded once per server and process
    assert counts == {"llen": 3, "zcount": 6, "evalsha_ro": 1, "role": 1}  # one script call (and ROLE)


def test_any_other_storage_through_huey_counting_api():
    instance = huey.MemoryHuey("memory", immediate=False)
    fill(instance)
    reading = Collection([HueyProc("worker", huey=instance)]).collect().procs[0].reading
    assert reading.quantity == 3  # Huey's API cannot tell due from later scheduled tasks: only pending count
    assert dict(reading.queues[0].jobs) == {"queued": 3, "due": 0, "scheduled": 2}


def test_huey_instance_from_a_dotted_path_and_from_toml(tmp_path, monkeypatch):
    filename = str(tmp_path / "huey.db")
    module = types.ModuleType("huey_dotted_app")
    module.huey = huey.SqliteHuey("jobs", filename=filename)
    monkeypatch.setitem(sys.modules, "huey_dotted_app", module)
    fill(module.huey)

    (proc,) = load_procs([HueyProc("worker", huey="huey_dotted_app.huey")])
    assert proc.queues == ["jobs"] and proc.quantity() == 4

    config = tmp_path / "exporter.toml"
    config.write_text(
        f'[[procs]]\nname = "worker"\nbackend = "huey"\nstorage = "sqlite"\nfilename = "{filename}"\n'
        'queues = ["jobs"]\n'
    )
    settings = load_settings(config=str(config))
    (proc,) = load_procs(settings.procs)
    assert proc.quantity() == 4


def test_bad_huey_configuration_is_a_start_up_error():
    with pytest.raises(ProcConfigError, match=r"cannot import Huey instance 'nowhere\.huey'"):
        load_procs([HueyProc("worker", huey="nowhere.huey")])
    with pytest.raises(ProcConfigError, match="needs `huey`"):
        load_procs([HueyProc("worker", queues=["x"])])
    with pytest.raises(ProcConfigError, match="cannot measure job latency"):
        load_procs([HueyProc("worker", huey=huey.MemoryHuey("m"), metric="latency")])
