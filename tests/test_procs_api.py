"""The Proc API, as users of the old hirefire package wrote procs, and the start-up errors for bad ones."""

from __future__ import annotations

import sys
import types

import pytest

from hirefire_exporter import ClientProc, Proc, ProcConfigError
from hirefire_exporter.collection import Collection
from hirefire_exporter.loading import load_procs
from hirefire_exporter.procs.rq import RQProc


class WorkerProc(Proc):
    """Old style: declarative attributes and a quantity() that takes **kwargs."""

    name = "worker"
    queues = ["default"]

    def quantity(self, **kwargs):
        return 11


class PerQueueProc(ClientProc):
    name = "urgent_worker"
    queues = ["a", "b"]

    def client(self, queue):
        return {"a": [1, 2], "b": [3]}[queue]

    def quantity(self, **kwargs):
        return sum(len(client) for client in self.clients)


class BadQueuesProc(Proc):
    name = "worker"
    queues = 5

    def quantity(self, **kwargs):
        return 0


@pytest.fixture
def procs_module(monkeypatch):
    module = types.ModuleType("myapp_procs")
    module.WorkerProc = WorkerProc
    module.PerQueueProc = PerQueueProc
    module.instance = RQProc("rq-worker", queues="default", url="redis://127.0.0.1:1/0")
    module.not_a_proc = object()
    module.BadQueuesProc = BadQueuesProc
    monkeypatch.setitem(sys.modules, "myapp_procs", module)
    return module


def test_old_style_procs_from_dotted_paths_classes_and_instances(procs_module):
    procs = load_procs("myapp_procs.WorkerProc, myapp_procs.PerQueueProc,myapp_procs.instance", "HIREFIRE_PROCS")
    assert [p.name for p in procs] == ["worker", "urgent_worker", "rq-worker"]
    assert procs[2].queues == ["default"]  # a single queue name is accepted as a string
    snapshot = Collection(procs[:2]).collect()
    assert [(s.name, s.reading.quantity, s.reading.queues) for s in snapshot.procs] == [
        ("worker", 11, ()),
        ("urgent_worker", 3, ()),
    ]


def test_instances_override_class_attributes():
    proc = RQProc("worker", queues=["high", "low"], url="redis://localhost:6379/3", key_prefix="myapp")
    assert (proc.name, proc.queues, proc.url, proc.prefix) == (
        "worker",
        ["high", "low"],
        "redis://localhost:6379/3",
        "myapp",
    )
    assert RQProc.queues == ["default"]  # the class is untouched


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("myapp_procs.Missing", "HIREFIRE_PROCS: module 'myapp_procs' has no attribute 'Missing'"),
        ("no_such_module.WorkerProc", "HIREFIRE_PROCS: cannot import 'no_such_module' for 'no_such_module.WorkerProc'"),
        ("WorkerProc", "HIREFIRE_PROCS: 'WorkerProc' is not a dotted path"),
        ("myapp_procs.not_a_proc", "HIREFIRE_PROCS: 'myapp_procs.not_a_proc' is not a Proc subclass or instance"),
        ("myapp_procs.BadQueuesProc", "HIREFIRE_PROCS: BadQueuesProc(name='worker'): queues must be a list"),
    ],
)
def test_a_broken_proc_path_fails_at_start_up_naming_the_setting(procs_module, spec, message):
    with pytest.raises(ProcConfigError) as error:
        load_procs([spec], "HIREFIRE_PROCS")
    assert str(error.value).startswith(message)


@pytest.mark.parametrize(
    ("proc", "message"),
    [
        (RQProc("web worker"), "the name must be a Procfile process type"),
        (RQProc(""), "the name must be a Procfile process type"),
        (RQProc(None), "the name must be a Procfile process type"),
        (RQProc("worker", queues=[]), "needs at least one queue name"),
        (RQProc("worker", metric="speed"), "metric must be one of"),
        (Proc("worker", queues=["q"]), "must implement quantity() or read()"),
        (RQProc("worker"), "needs a Redis `connection` or `url`"),
    ],
)
def test_invalid_procs_fail_at_start_up_naming_the_proc(proc, message):
    with pytest.raises(ProcConfigError) as error:
        load_procs([proc], "HIREFIRE_PROCS")
    assert message in str(error.value)
    assert str(error.value).startswith("HIREFIRE_PROCS: ")


def test_unknown_options_and_duplicate_names_are_start_up_errors():
    with pytest.raises(ProcConfigError, match="unknown option 'queue'"):
        RQProc("worker", queue=["default"])
    with pytest.raises(ProcConfigError, match="two procs are named 'worker'"):
        load_procs([WorkerProc(), WorkerProc()])
    with pytest.raises(ProcConfigError, match="no procs configured"):
        load_procs([])
