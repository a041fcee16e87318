"""The dispatcher against a real HTTP server on loopback: body, headers, tuning, re-buffering, shutdown."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from support import wait_until

from hirefire_exporter import __version__
from hirefire_exporter.dispatcher import Dispatcher, normalize_url


class FakeHireFire:
    """A local HTTP server standing in for HireFire: records POSTs, answers with chosen statuses and headers."""

    def __init__(self) -> None:
        self.posts: list[tuple[Any, dict]] = []
        self.statuses: list[int] = []  # answered in order, then 200
        self.headers: dict[str, str] = {}
        self.gate = threading.Event()
        self.gate.set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.gate.wait(10)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.posts.append((self.headers, body))  # case-insensitive, as HTTP is
                status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                for name, value in outer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hirefire() -> Iterator[FakeHireFire]:
    server = FakeHireFire()
    yield server
    server.close()


def test_the_buffer_is_posted_as_json_by_second_with_token_and_resource_headers(hirefire):
    dispatcher = Dispatcher(hirefire.url, "s3cret", interval=3600)
    for ms, at in ((12, 1_700_000_000.2), (30, 1_700_000_000.9), (7, 1_700_000_001.1)):
        dispatcher.add(ms, at)
    assert dispatcher.dispatch() is True
    dispatcher.stop(flush=False)
    ((headers, body),) = hirefire.posts
    assert body == {"1700000000": [12, 30], "1700000001": [7]}
    assert headers["Content-Type"] == "application/json"
    assert headers["HireFire-Token"] == "s3cret"
    assert headers["HireFire-Resource"] == f"Python-hirefire-exporter-{__version__}"
    assert dispatcher.pending() == {}


def test_the_background_thread_sends_and_stop_flushes_the_rest(hirefire):
    dispatcher = Dispatcher(hirefire.url, "t", interval=0.05)
    dispatcher.add(5, 1_700_000_000)
    assert dispatcher.running
    wait_until(lambda: hirefire.posts, what="the first POST")
    dispatcher.interval = 3600  # next loop waits an hour: only stop() can send what comes now
    wait_until(lambda: dispatcher.dispatched >= 1, what="the first dispatch to finish")
    dispatcher.add(6, 1_700_000_002)
    dispatcher.stop()
    assert not dispatcher.running
    assert [body for _, body in hirefire.posts] == [{"1700000000": [5]}, {"1700000002": [6]}]
    dispatcher.add(9)  # after stop: dropped, no thread comes back
    assert not dispatcher.running and dispatcher.pending() == {}


def test_the_server_tunes_interval_timeout_and_ttl(hirefire):
    hirefire.headers = {
        "HireFire-Resource-Dispatch-Interval": "7",
        "HireFire-Resource-Dispatch-Timeout": "2",
        "HireFire-Resource-Buffer-TTL": "120",
    }
    dispatcher = Dispatcher(hirefire.url, "t", interval=3600)
    dispatcher.add(1, 1_700_000_000)
    dispatcher.dispatch()
    dispatcher.stop(flush=False)
    assert (dispatcher.interval, dispatcher.timeout, dispatcher.ttl) == (7.0, 2.0, 120.0)


def test_nonsense_tuning_headers_are_ignored(hirefire):
    hirefire.headers = {"HireFire-Resource-Dispatch-Interval": "soon", "HireFire-Resource-Buffer-TTL": "-5"}
    dispatcher = Dispatcher(hirefire.url, "t", interval=3600)
    dispatcher.add(1, 1_700_000_000)
    dispatcher.dispatch()
    dispatcher.stop(flush=False)
    assert (dispatcher.interval, dispatcher.ttl) == (3600, 60.0)


def test_a_failed_post_rebuffers_what_is_within_the_ttl_and_logs_without_the_token(hirefire, caplog):
    now = 1_700_000_100.0
    dispatcher = Dispatcher(hirefire.url, "s3cret", interval=3600, ttl=60, clock=lambda: now)
    dispatcher.add(11, now - 90)  # older than the TTL: HireFire would drop it anyway
    dispatcher.add(22, now - 30)
    hirefire.statuses = [500]
    with caplog.at_level(logging.WARNING, "hirefire_exporter"):
        assert dispatcher.dispatch() is False
    assert "could not dispatch request queue times" in caplog.text and "500" in caplog.text
    assert "s3cret" not in caplog.text
    assert dispatcher.pending() == {1_700_000_070: [22]}
    dispatcher.add(33, now)
    assert dispatcher.dispatch() is True
    dispatcher.stop(flush=False)
    assert [body for _, body in hirefire.posts] == [
        {"1700000010": [11], "1700000070": [22]},
        {"1700000070": [22], "1700000100": [33]},
    ]


def test_an_unreachable_server_is_a_logged_failure_not_an_exception():
    from conftest import free_port

    dispatcher = Dispatcher(f"http://127.0.0.1:{free_port()}/", "t", interval=3600, timeout=1)
    dispatcher.add(3)
    assert dispatcher.dispatch() is False
    dispatcher.stop(flush=False)
    assert list(dispatcher.pending().values()) == [[3]]  # kept for the next attempt: still within the TTL


def test_adding_never_waits_for_a_post_in_flight(hirefire):
    hirefire.gate.clear()  # the server holds every POST until the gate opens
    dispatcher = Dispatcher(hirefire.url, "t", interval=0.01)
    dispatcher.add(1, 1_700_000_000)
    wait_until(lambda: dispatcher.pending() == {}, what="the thread to take the buffer")
    for ms in range(100):  # a POST is stuck in flight: requests still only append
        dispatcher.add(ms, 1_700_000_001)
    assert not hirefire.posts and len(dispatcher.pending()[1_700_000_001]) == 100
    hirefire.gate.set()
    dispatcher.stop()
    assert hirefire.posts[0][1] == {"1700000000": [1]}
    assert sum(len(values) for _, body in hirefire.posts for values in body.values()) == 101


def test_a_token_is_required_and_urls_without_a_scheme_get_https():
    with pytest.raises(ValueError, match="HIREFIRE_TOKEN"):
        Dispatcher("logdrain.hirefire.io", "")
    assert normalize_url("logdrain.hirefire.io") == "https://logdrain.hirefire.io/"
    assert normalize_url("http://127.0.0.1:8000/x") == "http://127.0.0.1:8000/x"


def test_queue_times_from_an_adapter_reach_hirefire(hirefire, monkeypatch):
    from werkzeug.test import Client
    from werkzeug.wrappers import Response

    from hirefire_exporter import contrib
    from hirefire_exporter.contrib.wsgi import QueueTimeMiddleware

    monkeypatch.setenv("HIREFIRE_DISPATCH_URL", hirefire.url)
    monkeypatch.setenv("HIREFIRE_TOKEN", "s3cret")
    timer = contrib.queue_timer(log=False)
    assert contrib.queue_timer(log=False) is timer  # one per process
    client = Client(QueueTimeMiddleware(Response("ok"), timer))
    try:
        for header in ("t=1700000000000", "garbage", "1700000000.5"):
            assert client.get("/", headers={"X-Request-Start": header}).status_code == 200
        timer.dispatcher.stop()
    finally:
        contrib.reset()
    ((headers, body),) = hirefire.posts
    assert headers["HireFire-Token"] == "s3cret"
    values = [ms for second in body.values() for ms in second]
    assert len(values) == 2 and all(isinstance(ms, int) and ms > 0 for ms in values)


def test_a_request_racing_stop_never_brings_the_thread_back(hirefire):
    """stop() landing while a request is in add() (here: from the clock add() reads) leaves the dispatcher stopped."""
    dispatcher = Dispatcher(hirefire.url, "t", interval=3600, clock=lambda: stop_then(1_700_000_000))

    def stop_then(now: float) -> float:
        dispatcher.stop(flush=False)
        return now

    dispatcher.add(5)
    assert (dispatcher.running, dispatcher.pending()) == (False, {})


def test_the_token_given_to_an_adapter_is_the_one_dispatched(hirefire, monkeypatch):
    """HIREFIRE_DISPATCH_URL with the token passed to the adapter (no HIREFIRE_TOKEN in the environment)."""
    from werkzeug.test import Client
    from werkzeug.wrappers import Response

    from hirefire_exporter import contrib
    from hirefire_exporter.contrib.wsgi import HireFireMiddleware
    from hirefire_exporter.procs.base import Proc

    class Idle(Proc):
        queues = ["default"]

        def quantity(self, **kwargs: Any) -> int:
            return 0

    monkeypatch.setenv("HIREFIRE_DISPATCH_URL", hirefire.url)
    monkeypatch.delenv("HIREFIRE_TOKEN", raising=False)
    try:
        app = HireFireMiddleware(Response("ok"), [Idle("worker")], "from-the-app", queue_time=True)
        assert Client(app).get("/", headers={"X-Request-Start": "t=1700000000000"}).status_code == 200
        app.queue_timer.dispatcher.stop()
    finally:
        contrib.reset()
    ((headers, body),) = hirefire.posts
    assert (headers["HireFire-Token"], [len(values) for values in body.values()]) == ("from-the-app", [1])
