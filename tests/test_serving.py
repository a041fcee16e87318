"""Serving apart from collecting: no request waits on a stalled broker while a usable reading exists, staleness is
judged when a reading is served, concurrent scrapes of a new snapshot share one encoding, and the standalone server
stops promptly even while a read hangs.

These run the exporter on a real server (waitress) in front of a private redis-server that the test stops with
SIGSTOP, as a broker failover does: connections stay open and nothing answers.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from faultproxy import RedisProcess, wait_port
from support import http_get, samples, wait_until, without_requests
from werkzeug.test import Client

from hirefire_exporter import prometheus
from hirefire_exporter.app import ExporterApp
from hirefire_exporter.collection import Collection
from hirefire_exporter.contrib.wsgi import HireFireMiddleware
from hirefire_exporter.procs.base import Proc, QueueReading, Reading
from hirefire_exporter.procs.rq import RQProc
from hirefire_exporter.server import close_server

rq = pytest.importorskip("rq")
waitress_server = pytest.importorskip("waitress.server")

TOKEN = "serving-token"
INFO = f"/hirefire/{TOKEN}/info"


@pytest.fixture
def own_redis(killable_redis: RedisProcess) -> RedisProcess:
    return killable_redis


def enqueue(server: RedisProcess, n: int) -> None:
    with server.client() as connection:
        for _ in range(n):
            rq.Queue("default", connection=connection).enqueue("rq_jobs.noop")


def host_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"host app"]


class Served:
    """A WSGI app on a real waitress server with ``threads`` threads, in this process."""

    def __init__(self, app, threads: int = 4) -> None:
        self.server = waitress_server.create_server(app, host="127.0.0.1", port=0, threads=threads)
        self.port = self.server.effective_port
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def get(self, path: str, timeout: float = 30) -> tuple[int, bytes]:
        return http_get(self.port, path, timeout)

    def close(self) -> None:
        close_server(self.server, self.thread)


def test_a_stalled_broker_never_holds_the_host_apps_own_routes(own_redis):
    """8 scrapers poll the exporter embedded in a 4-thread app while its Redis is stopped: the host app's own
    route keeps answering at once, and the exporter answers from the last reading instead of waiting out the
    broker's timeout (5 s here) on the host's threads."""
    enqueue(own_redis, 3)
    proc = RQProc("worker", url=own_redis.url, socket_timeout=30)
    app = HireFireMiddleware(host_app, [proc], TOKEN, metrics=True, max_age=0.2, timeout=5)
    served = Served(app, threads=4)
    try:
        assert json.loads(served.get(INFO)[1]) == [{"name": "worker", "value": 3, "quantity": 3}]
        own_redis.pause()
        stop = threading.Event()
        exporter_times: list[float] = []
        exporter_answers: list[tuple[int, bytes]] = []

        def scrape(path: str) -> None:
            while not stop.is_set():
                start = time.monotonic()
                exporter_answers.append(served.get(path))
                exporter_times.append(time.monotonic() - start)

        with ThreadPoolExecutor(8) as pool:
            for i in range(8):
                pool.submit(scrape, INFO if i % 2 else "/metrics")
            host_times = []
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                start = time.monotonic()
                assert served.get("/") == (200, b"host app")
                host_times.append(time.monotonic() - start)
                time.sleep(0.05)
            stop.set()
        own_redis.resume()
    finally:
        served.close()
    assert len(host_times) > 20  # one every 50 ms when nothing waits
    # Waiting on the broker would cost the 5 s timeout per exporter request and stall the host behind them.
    assert max(host_times) < 1.5, max(host_times)
    assert max(exporter_times) < 1.5, max(exporter_times)
    infos = [json.loads(body) for status, body in exporter_answers if body.startswith(b"[")]
    assert infos and all(info == [{"name": "worker", "value": 3, "quantity": 3}] for info in infos)


def test_a_reading_is_never_served_past_stale_after_judged_when_served(own_redis):
    """stale_after 2 s: once the broker stops, no 200 carries the old reading for a request sent more than 2 s
    after the last read that could have succeeded; then /info answers 503 (never 0)."""
    enqueue(own_redis, 4)
    proc = RQProc("worker", url=own_redis.url, socket_timeout=30)
    app = ExporterApp(Collection([proc], max_age=0.5, stale_after=2, timeout=1), TOKEN)
    served = Served(app)
    try:
        assert json.loads(served.get(INFO)[1])[0]["value"] == 4
        paused_at = time.time()  # every reading this process holds was taken before now
        own_redis.pause()
        answers = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            sent = time.time()
            status, body = served.get(INFO)
            answers.append((sent - paused_at, status, json.loads(body)))
            time.sleep(0.02)
        own_redis.resume()
    finally:
        served.close()
    late_200s = [(round(t, 3), body) for t, status, body in answers if status == 200 and t > 2.0]
    assert late_200s == []
    assert all(body[0]["value"] == 4 for t, status, body in answers if status == 200)
    assert answers[-1][1] == 503 and answers[-1][2]["procs"] == ["worker"]


def test_with_a_healthy_broker_what_is_served_is_never_older_than_max_age_plus_refresh_wait(own_redis):
    enqueue(own_redis, 2)
    proc = RQProc("worker", url=own_redis.url)
    collection = Collection([proc], max_age=0.5, refresh_wait=0.25, timeout=2)
    client = Client(ExporterApp(collection, TOKEN))
    ages = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        before = time.time()
        text = client.get("/metrics").get_data(as_text=True)
        ages.append(before - samples(text, "hirefire_collection_timestamp_seconds")[()])
        time.sleep(0.03)
    assert collection.cycles >= 4  # polling kept it fresh, one cycle per max_age
    assert max(ages) <= 0.5 + 0.25 + 0.1, max(ages)


class Hanging(Proc):
    """A proc whose first read blocks until released: what a process's first cycle on a stalled broker is like."""

    queues = ["default"]

    def __init__(self) -> None:
        super().__init__("worker")
        self.release = threading.Event()

    def quantity(self, **kwargs) -> int:
        self.release.wait(30)
        return 5


def test_the_first_request_of_a_process_waits_for_its_first_cycle_up_to_the_timeout_and_never_reads_zero():
    proc = Hanging()
    client = Client(ExporterApp(Collection([proc], timeout=0.5, max_age=60, stale_after=120), TOKEN))
    start = time.monotonic()
    info = client.get(INFO)
    assert info.status_code == 503 and json.loads(info.data)["procs"] == ["worker"]
    assert 0.5 <= time.monotonic() - start < 5
    proc.release.set()


def test_concurrent_scrapes_of_a_new_snapshot_wait_for_one_encoding(monkeypatch):
    class ManyQueues(Proc):
        queues = ["q"]

        def read(self, cache):
            queues = [QueueReading(f"q{i}", {"queued": i, "started": 1}, latency=1.0) for i in range(3000)]
            return Reading.from_queues(queues)

    renders: list[int] = []
    original = prometheus.render

    def counting_render(snapshot, now):
        renders.append(1)
        return original(snapshot, now)

    monkeypatch.setattr(prometheus, "render", counting_render)
    collection = Collection([ManyQueues("worker")], max_age=3600, stale_after=7200)
    app = ExporterApp(collection, TOKEN)
    collection.collect()
    barrier = threading.Barrier(8)

    def scrape(gzipped: bool) -> bytes:
        barrier.wait()
        headers = {"Accept-Encoding": "gzip"} if gzipped else {}
        return Client(app).get("/metrics", headers=headers).data

    for _ in range(2):  # the first snapshot, then a new one
        renders.clear()
        with ThreadPoolExecutor(8) as pool:
            bodies = list(pool.map(scrape, [False] * 4 + [True] * 4))
        assert len(renders) == 2  # one encoding per compression, not one per scrape
        unzipped = [without_requests(gzip.decompress(b)) for b in bodies[4:]]
        assert set(unzipped) == {without_requests(bodies[0])} and len(set(map(without_requests, bodies[:4]))) == 1
        collection.collect()


@pytest.mark.parametrize(
    ("accept_encoding", "gzipped"),
    [("gzip", True), ("gzip;q=0", False), ("deflate, gzip;q=0.5", True), ("*", True), ("*;q=0", False), ("", False)],
)
def test_metrics_honours_accept_encoding_q_values(accept_encoding, gzipped):
    collection = Collection([Hanging()], max_age=3600, stale_after=7200)
    collection.procs[0].release.set()
    client = Client(ExporterApp(collection, TOKEN))
    response = client.get("/metrics", headers={"Accept-Encoding": accept_encoding})
    assert (response.headers.get("Content-Encoding") == "gzip") is gzipped
    body = gzip.decompress(response.data) if gzipped else response.data
    assert b"hirefire_proc_up" in body


def test_serve_exits_within_two_seconds_of_sigterm_while_a_read_hangs(own_redis, tmp_path):
    """A read blocked on a stopped broker (socket_timeout 60 s) must not keep the process alive after SIGTERM."""
    config = tmp_path / "hirefire.toml"
    config.write_text(
        f'[[procs]]\nname = "worker"\nbackend = "rq"\nurl = "{own_redis.url}"\nqueues = ["default"]\n'
        "socket_timeout = 60\n"
    )
    from conftest import free_port

    port = free_port()
    env = {**os.environ, "HIREFIRE_TOKEN": TOKEN}
    process = subprocess.Popen(
        [sys.executable, "-m", "hirefire_exporter.cli", "serve", "--config", str(config), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_port(port)
        own_redis.pause()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", INFO)  # the first cycle: its read hangs on the stopped broker
        wait_until(lambda: len(_threads(process.pid)) > 1, what="the read thread")
        time.sleep(0.5)
        start = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(10)
        assert time.monotonic() - start < 2.0
        assert process.returncode == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        own_redis.resume()


def _threads(pid: int) -> list[str]:
    return os.listdir(f"/proc/{pid}/task")
