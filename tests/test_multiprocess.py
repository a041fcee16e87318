"""The request queue-time histogram under a real multi-worker gunicorn (prometheus_client's multiprocess mode), and
the ``dyno`` label on Heroku."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import free_port
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support import wait_until

from hirefire_exporter.contrib import gunicorn as hooks
from hirefire_exporter.queue_time import COLLECTOR, QueueTimer

pytest.importorskip("gunicorn")
rq = pytest.importorskip("rq")

ROOT = Path(__file__).parent.parent
WORKERS = 4
REQUESTS = 60
JOBS = 3

#: The user's app: a WSGI app behind the exporter's middleware, its own multiprocess gauge, and the pid of the
#: worker that answered in a header (for the test to tell workers apart).
APP = """
import os

from prometheus_client import Gauge

from hirefire_exporter.contrib.wsgi import HireFireMiddleware
from hirefire_exporter.procs.rq import RQProc

ALIVE = Gauge("host_app_workers", "The host app's own live gauge.", multiprocess_mode="livesum")
ALIVE.set(1)


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


exporter = HireFireMiddleware(
    hello,
    [RQProc("worker", queues=["default"], url=os.environ["TEST_REDIS_URL"])],
    "s3cret",
    metrics=True,
    queue_time=True,
)


def app(environ, start_response):
    def with_pid(status, headers, exc_info=None):
        return start_response(status, [*headers, ("X-Worker-Pid", str(os.getpid()))], exc_info)

    return exporter(environ, with_pid)
"""

CONFIG = """
from hirefire_exporter.contrib.gunicorn import child_exit, on_starting  # noqa: F401
"""


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, int, str]:
    """(status, answering worker's pid, body) over a fresh connection, so that any worker may take it."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, int(response.getheader("X-Worker-Pid", "0")), response.read().decode()
    finally:
        connection.close()


def get_many(port: int, path: str, count: int, headers: dict[str, str] | None = None) -> list[tuple[int, int, str]]:
    """``count`` GETs, 8 at a time: one client after another would always find the same idle worker first."""
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda _: get(port, path, headers), range(count)))


def families(text: str) -> dict[str, list]:
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def request_count(text: str) -> dict[str, float]:
    """``{dyno label: _count}`` of the queue-time histogram in one /metrics body."""
    return {
        sample.labels.get("dyno", ""): sample.value
        for sample in families(text)["hirefire_request_queue_seconds"]
        if sample.name == "hirefire_request_queue_seconds_count"
    }


def leave_a_previous_run(directory: Path) -> None:
    """What a gunicorn run that served 5 requests leaves in the directory."""
    code = "from hirefire_exporter.queue_time import QueueTimer\nfor _ in range(5): QueueTimer().observe('t=1.7e9')"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    assert list(directory.glob("histogram_*.db"))


@pytest.fixture
def gunicorn(tmp_path, redis_conn, redis_url, request):
    """A real ``gunicorn -w 4`` serving APP with the exporter's hooks, multiprocess mode and ``DYNO=web.1``;
    yields (port, multiprocess directory). ``request.param``: extra gunicorn arguments."""
    for _ in range(JOBS):
        rq.Queue("default", connection=redis_conn).enqueue("rq_jobs.noop")
    (tmp_path / "hostapp.py").write_text(textwrap.dedent(APP))
    (tmp_path / "gunicorn.conf.py").write_text(CONFIG)
    directory = tmp_path / "metrics"
    directory.mkdir()
    leave_a_previous_run(directory)
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("HIREFIRE_DISPATCH_URL", "PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")
    }
    env |= {
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
        "DYNO": "web.1",
        "TEST_REDIS_URL": redis_url,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
    }
    command = [sys.executable, "-m", "gunicorn", "-c", str(tmp_path / "gunicorn.conf.py"), "-w", str(WORKERS)]
    server = subprocess.Popen(
        [*command, "-b", f"127.0.0.1:{port}", *getattr(request, "param", []), "hostapp:app"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,  # the timer's [hirefire:router] lines
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def up() -> bool:
            try:
                return get(port, "/hirefire/test")[0] == 200
            except OSError:
                assert server.poll() is None, server.stderr.read()
                return False

        wait_until(up, timeout=30, what="gunicorn to answer")
        yield port, directory
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def scrape_every_worker(port: int, expected: float, workers: int, exclude: set[int] = frozenset()) -> set[int]:
    """Scrape /metrics until ``workers`` different workers (none of ``exclude``) have answered; every scrape must
    show ``expected`` requests for dyno web.1 and the snapshot's job count. Returns the pids that answered."""
    answered: set[int] = set()
    for _ in range(25):
        for status, pid, body in get_many(port, "/metrics", 16):
            assert status == 200
            assert request_count(body) == {"web.1": expected}, f"worker {pid}"
            # the snapshot part: the exporter's own collector, not a multiprocess value, and no dyno label on it
            (jobs,) = families(body)["hirefire_proc_jobs"]
            assert (jobs.labels, jobs.value) == ({"proc": "worker"}, JOBS)
            assert "host_app_workers" not in body  # the host app's own metrics are not the exporter's to serve
            # per-process counters would jump between workers (false resets): only the build info is served
            assert "hirefire_exporter_build_info{" in body and "hirefire_exporter_requests_total" not in body
            answered.add(pid)
        if len(answered - exclude) >= workers:
            return answered
    raise AssertionError(f"only workers {sorted(answered)} answered 400 scrapes")


@pytest.mark.parametrize("gunicorn", [[], ["--preload"]], indirect=True, ids=["fork-then-load", "preload"])
def test_every_worker_serves_the_whole_groups_request_count(gunicorn):
    port, directory = gunicorn
    stamp = {"X-Request-Start": f"t={time.time() - 0.05:.3f}"}
    answers = get_many(port, "/", REQUESTS, stamp)
    assert {(status, body) for status, _, body in answers} == {(200, "hello")}
    workers = scrape_every_worker(port, REQUESTS, WORKERS)
    status, _, body = get(port, "/metrics?name[]=hirefire_request_queue_seconds_count&name[]=hirefire_proc_jobs")
    assert status == 200 and request_count(body) == {"web.1": REQUESTS} and "hirefire_proc_jobs" in body

    # A worker killed outright: its requests stay counted, and the master's child_exit hook drops its live gauge.
    victim = min(workers)
    assert (directory / f"gauge_livesum_{victim}.db").exists()
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: not (directory / f"gauge_livesum_{victim}.db").exists(), what="child_exit to run")
    scrape_every_worker(port, REQUESTS, 1, exclude=workers)  # the replacement worker counts them too
    get(port, "/", stamp)
    scrape_every_worker(port, REQUESTS + 1, WORKERS)


def test_on_heroku_the_histogram_carries_the_dyno_and_only_it(monkeypatch):
    QueueTimer().observe(f"t={time.time():.3f}")
    registry = CollectorRegistry()
    registry.register(COLLECTOR)
    monkeypatch.delenv("DYNO", raising=False)
    plain = families(generate_latest(registry).decode())["hirefire_request_queue_seconds"]
    monkeypatch.setenv("DYNO", "web.2")
    labelled = families(generate_latest(registry).decode())["hirefire_request_queue_seconds"]
    assert [s.labels for s in labelled] == [{"dyno": "web.2", **s.labels} for s in plain]
    assert [s.value for s in labelled] == [s.value for s in plain]
    assert all("dyno" not in s.labels for s in plain)


def test_the_gunicorn_hooks_do_nothing_without_multiprocess_mode(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "unrelated.db").write_text("keep")
    hooks.on_starting(SimpleNamespace())
    hooks.child_exit(SimpleNamespace(), SimpleNamespace(pid=os.getpid()))
    assert (tmp_path / "unrelated.db").read_text() == "keep"
