"""The ``queues`` library: its Redis lists and its beanstalkd tubes, read directly (the library is Python 2 only).

Jobs are written exactly as queues 0.6.3 writes them: RPUSH onto a list named after the queue (Redis backend), or
``use <tube>`` + ``put`` (beanstalkd backend). A worker's part (reserve, bury) is played over the same protocol.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from conftest import free_port, port_open, unavailable
from support import command_counts, count_round_trips, samples, wait_until
from werkzeug.test import Client

from hirefire_exporter.app import create_app
from hirefire_exporter.collection import Collection
from hirefire_exporter.config import load_settings
from hirefire_exporter.loading import load_procs
from hirefire_exporter.procs.base import ProcConfigError
from hirefire_exporter.procs.beanstalk import Connection
from hirefire_exporter.procs.hotqueue import HotQueueProc
from hirefire_exporter.procs.queues import QueuesProc

SETTINGS = ("QUEUE_BACKEND", "QUEUE_REDIS_CONNECTION", "QUEUE_REDIS_DB", "QUEUE_REDIS_TIMEOUT")


@pytest.fixture(autouse=True)
def no_library_settings(monkeypatch):
    """Tests start without the library's settings in the environment; the ones that need them set them."""
    for name in (*SETTINGS, "QUEUE_BEANSTALKD_CONNECTION", "DJANGO_SETTINGS_MODULE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def beanstalkd() -> Iterator[tuple[str, int]]:
    """A beanstalkd of this test's own on a free loopback port (no write-ahead log: nothing survives it)."""
    binary = shutil.which("beanstalkd")
    if binary is None:
        unavailable("beanstalkd", "no beanstalkd binary on PATH (Debian/Ubuntu: apt-get install beanstalkd)")
    port = free_port()
    process = subprocess.Popen(
        [binary, "-l", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", port):
            if process.poll() is not None or time.monotonic() > deadline:
                unavailable("beanstalkd", f"the beanstalkd started for the test did not come up on port {port}")
            time.sleep(0.02)
        yield "127.0.0.1", port
    finally:
        process.terminate()
        process.wait(10)


class Beanstalk:
    """Producer and worker for the tests, over the exporter's tiny client: ``put`` as queues' ``write()`` does,
    ``reserve``/``bury`` as a worker does. A job reserved on a connection stays reserved until it closes."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.connection = Connection(*address, timeout=5)

    def ok(self, line: str, expected: str, body: bytes | None = None) -> list[str]:
        words, _ = self.connection.request(line, body)
        assert words[0] == expected, (line, words)
        return words

    def put(self, tube: str, n: int = 1, delay: int = 0) -> None:
        self.ok(f"use {tube}", "USING")
        for i in range(n):
            self.ok(f"put 1024 {delay} 60 5", "INSERTED", b"job-%d" % i)

    def reserve(self, tube: str) -> str:
        self.ok(f"watch {tube}", "WATCHING")
        return self.ok("reserve-with-timeout 0", "RESERVED")[1]

    def bury(self, tube: str) -> None:
        self.ok(f"bury {self.reserve(tube)} 1024", "BURIED")

    def server_stats(self) -> dict[str, str]:
        _, body = self.connection.request("stats")
        return dict(line.split(": ", 1) for line in body.decode().splitlines() if ": " in line)

    def close(self) -> None:
        self.connection.close()


def tubes(address: tuple[str, int], *names: str) -> QueuesProc:
    """A proc reading ``names`` from the beanstalkd at ``address``."""
    return QueuesProc("worker", queues=list(names), host=address[0], port=address[1])


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# Redis backend


def test_redis_lists_named_after_each_queue_exact_counts(redis_conn, redis_url):
    redis_conn.rpush("default", *["job"] * 3)
    redis_conn.rpush("thumbnails", *["job"] * 5)
    redis_conn.lpop("thumbnails")  # a worker read one (queues' read() is an LPOP)
    client = Client(create_app([QueuesProc("worker", queues=["default", "thumbnails", "nothing"], url=redis_url)], "t"))

    info = client.get("/hirefire/t/info")
    metrics = client.get("/metrics").get_data(as_text=True)

    assert json.loads(info.data) == [{"name": "worker", "value": 7, "quantity": 7}]
    assert samples(metrics, "hirefire_queue_jobs") == {
        ("worker", "default", "queued"): 3.0,
        ("worker", "thumbnails", "queued"): 4.0,
        ("worker", "nothing", "queued"): 0.0,
    }
    assert samples(metrics, "hirefire_proc_latency_seconds") == {}  # the lists hold bare messages: no timestamps


def test_redis_from_the_librarys_own_settings(redis_conn, monkeypatch):
    redis_conn.rpush("default", "a", "b")
    kwargs = redis_conn.connection_pool.connection_kwargs
    monkeypatch.setenv("QUEUE_BACKEND", "redisd")
    monkeypatch.setenv("QUEUE_REDIS_CONNECTION", f"{kwargs['host']}:{kwargs['port']}")
    monkeypatch.setenv("QUEUE_REDIS_DB", str(kwargs["db"]))
    monkeypatch.setenv("QUEUE_REDIS_TIMEOUT", "2.5")

    class WorkerQueuesProc(QueuesProc):  # the old package's example, unchanged
        name = "worker"
        queues = ["default", "thumbnails"]

    (proc,) = load_procs([WorkerQueuesProc])
    assert proc.quantity() == 2
    assert proc.redis_client().connection_pool.connection_kwargs["socket_timeout"] == 2.5


def test_hotqueue_and_queues_procs_on_one_redis_share_one_round_trip(private_redis, monkeypatch):
    port = private_redis.connection_pool.connection_kwargs["port"]
    private_redis.rpush("default", "x", "y")
    private_redis.rpush("hotqueue:emails", "z")
    url = f"redis://127.0.0.1:{port}/0"
    procs = [QueuesProc("worker", queues=["default", "other"], url=url), HotQueueProc("mailer", ["emails"], url=url)]
    collection = Collection(procs)
    collection.collect()  # the first cycle opens the connection (its handshake is not what is measured here)
    private_redis.config_resetstat()
    sends = count_round_trips(monkeypatch)

    snapshot = collection.collect()

    assert [s.reading.quantity for s in snapshot.procs] == [2, 1]
    assert len(sends) == 1  # both procs' commands went out in one pipeline
    assert command_counts(private_redis) == {"llen": 3, "evalsha_ro": 1, "role": 1}  # one script call (and ROLE)


def test_a_key_of_the_wrong_type_fails_only_that_proc(redis_conn, redis_url):
    redis_conn.hset("settings", "a", "b")  # not a queue: some other data under the queue's name
    redis_conn.rpush("default", "job")
    procs = [
        QueuesProc("broken", queues=["default", "settings"], url=redis_url),
        QueuesProc("worker", queues=["default"], url=redis_url),
        HotQueueProc("mailer", queues=["emails"], url=redis_url),
    ]
    client = Client(create_app(procs, "t"))

    info = client.get("/hirefire/t/info")
    metrics = client.get("/metrics").get_data(as_text=True)

    assert info.status_code == 503 and json.loads(info.data)["procs"] == ["broken"]
    assert samples(metrics, "hirefire_proc_up") == {("broken",): 0.0, ("worker",): 1.0, ("mailer",): 1.0}
    assert samples(metrics, "hirefire_proc_jobs") == {("worker",): 1.0, ("mailer",): 0.0}


# beanstalkd backend


def test_beanstalkd_counts_per_tube_and_state(beanstalkd):
    producer, worker = Beanstalk(beanstalkd), Beanstalk(beanstalkd)
    try:
        producer.put("emails", 3)
        producer.put("emails", 1, delay=3600)
        producer.put("reports", 3)
        producer.put("elsewhere", 4)  # another tube on the same server: queues' own len() would count it
        worker.reserve("reports")  # held by a worker
        worker.bury("reports")
        client = Client(create_app([tubes(beanstalkd, "emails", "reports", "nothing")], "t"))

        info = client.get("/hirefire/t/info")
        metrics = client.get("/metrics").get_data(as_text=True)

        # emails: 3 ready; reports: 1 ready + 1 reserved (the buried and the delayed one are not counted)
        assert json.loads(info.data) == [{"name": "worker", "value": 5, "quantity": 5}]
        expected = {
            "emails": {"queued": 3, "started": 0, "scheduled": 1, "buried": 0},
            "reports": {"queued": 1, "started": 1, "scheduled": 0, "buried": 1},
            "nothing": {"queued": 0, "started": 0, "scheduled": 0, "buried": 0},
        }
        assert samples(metrics, "hirefire_queue_jobs") == {
            ("worker", tube, state): float(n) for tube, states in expected.items() for state, n in states.items()
        }
        # beanstalkd forgets an empty tube nobody watches (every idle tube once its workers are scaled to zero):
        # a tube it does not have may or may not be a typo, so no hirefire_queue_found series for it
        assert samples(metrics, "hirefire_queue_found") == {("worker", "emails"): 1.0, ("worker", "reports"): 1.0}

        worker.close()  # the worker goes away: beanstalkd puts its reserved job back in the ready queue
        reports = Collection([tubes(beanstalkd, "reports")])
        wait_until(lambda: reports.collect().procs[0].reading.queues[0].jobs["started"] == 0, what="the release")
        assert dict(reports.collect().procs[0].reading.queues[0].jobs) == {
            "queued": 2,
            "started": 0,
            "scheduled": 0,
            "buried": 1,
        }
    finally:
        producer.close()
        worker.close()


def test_beanstalkd_one_connection_per_cycle_closed_afterwards(beanstalkd):
    observer = Beanstalk(beanstalkd)
    try:
        observer.put("emails", 2)
        collection = Collection([tubes(beanstalkd, "emails", "reports")], max_age=0)
        collection.collect()  # start the worker threads before counting descriptors
        before, fds = observer.server_stats(), open_fds()
        for _ in range(20):
            assert collection.snapshot().procs[0].reading.quantity == 2
        after = observer.server_stats()

        assert int(after["total-connections"]) - int(before["total-connections"]) == 20
        assert int(after["cmd-stats-tube"]) - int(before["cmd-stats-tube"]) == 40  # 2 tubes x 20 cycles
        wait_until(lambda: observer.server_stats()["current-connections"] == "1", what="connections to close")
        assert open_fds() <= fds  # never more (sockets other tests left to time out may close meanwhile)
        collection.close()
    finally:
        observer.close()


def test_beanstalkd_from_the_librarys_own_settings_and_from_toml(
    beanstalkd, redis_conn, redis_url, tmp_path, monkeypatch
):
    producer = Beanstalk(beanstalkd)
    try:
        producer.put("default", 2)
        redis_conn.rpush("default", "job")
        host, port = beanstalkd
        monkeypatch.setenv("QUEUE_BACKEND", "beanstalkd")
        monkeypatch.setenv("QUEUE_BEANSTALKD_CONNECTION", f"{host}:{port}")

        class WorkerQueuesProc(QueuesProc):
            name = "worker"
            queues = ["default"]

        assert WorkerQueuesProc().quantity() == 2

        config = tmp_path / "exporter.toml"
        config.write_text(
            f'[[procs]]\nname = "tubes"\nbackend = "queues"\nhost = "{host}"\nport = {port}\nqueues = ["default"]\n\n'
            f'[[procs]]\nname = "lists"\nbackend = "queues"\nurl = "{redis_url}"\nqueues = ["default"]\n\n'
            f'[[procs]]\nname = "env"\nbackend = "queues"\nqueue_backend = "beanstalkd"\nqueues = ["default"]\n'
        )
        procs = load_procs(load_settings(config=str(config)).procs)
        assert [(p.name, p.storage(), p.quantity()) for p in procs] == [
            ("tubes", "beanstalkd", 2),
            ("lists", "redis", 1),
            ("env", "beanstalkd", 2),
        ]
    finally:
        producer.close()


def test_beanstalkd_down_is_a_failed_proc_never_zero():
    client = Client(create_app([QueuesProc("worker", queues=["default"], host="127.0.0.1", port=free_port())], "t"))

    info = client.get("/hirefire/t/info")
    metrics = client.get("/metrics").get_data(as_text=True)

    assert info.status_code == 503 and json.loads(info.data)["procs"] == ["worker"]
    assert samples(metrics, "hirefire_proc_up") == {("worker",): 0.0}
    assert samples(metrics, "hirefire_proc_jobs") == {} and samples(metrics, "hirefire_queue_jobs") == {}


def test_a_server_that_never_answers_times_out_without_leaking_the_socket():
    # A listening socket nobody accepts from: the connection succeeds (backlog) and no reply ever comes.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        proc = QueuesProc("worker", queues=["default"], host="127.0.0.1", port=port, socket_timeout=0.3)
        collection = Collection([proc], timeout=5)
        collection.collect()
        fds = open_fds()
        status = collection.collect().procs[0]
        assert not status.up and status.reading is None
        assert status.error == f"TimeoutError: beanstalkd at 127.0.0.1:{port}: no complete reply within 0.3s"
        assert 0.3 <= status.duration < 5  # ended by the socket timeout, not by the cycle's
        assert open_fds() <= fds  # never more (sockets other tests left to time out may close meanwhile)
        collection.close()


def test_bad_configuration_is_a_start_up_error_naming_the_proc(monkeypatch, redis_url):
    def error(**options) -> str:
        with pytest.raises(ProcConfigError) as caught:
            load_procs([QueuesProc("worker", queues=options.pop("queues", ["default"]), **options)])
        return str(caught.value)

    assert "'worker': needs `queue_backend`" in error()
    assert "no other process can read them" in error(queue_backend="dummy")
    assert "'sqs' is not supported" in error(queue_backend="sqs")
    assert "unknown queues backend 'rabbit'" in error(queue_backend="rabbit")
    assert "url do not apply to the beanstalkd backend" in error(queue_backend="beanstalkd", url=redis_url)
    assert "host do not apply to the redis backend" in error(url=redis_url, host="localhost")
    assert "not beanstalkd tube names: ['-dash', 'two words']" in error(host="h", queues=["-dash", "two words", "ok"])
    assert "each entry of queues must be a queue name" in error(
        host="h", queues=[object()]
    )  # no queues.queues.Queue on Py3
    monkeypatch.setenv("QUEUE_BACKEND", "redisd")
    assert "needs a Redis `url` or the QUEUE_REDIS_CONNECTION setting" in error()
    monkeypatch.setenv("QUEUE_REDIS_CONNECTION", "localhost")
    assert "QUEUE_REDIS_CONNECTION must be host:port (such as localhost:6379), got 'localhost'" in error()
    monkeypatch.setenv("QUEUE_BACKEND", "beanstalkd")
    assert "needs a beanstalkd `host` or the QUEUE_BEANSTALKD_CONNECTION setting" in error()
