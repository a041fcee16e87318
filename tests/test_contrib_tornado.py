"""The Tornado handlers on a real Tornado server on loopback, backed by real Redis."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
from collections.abc import Awaitable, Callable

import pytest
from conftest import free_port
from support import samples

from hirefire_exporter import contrib
from hirefire_exporter.procs.base import Proc
from hirefire_exporter.procs.rq import RQProc

tornado = pytest.importorskip("tornado")
rq = pytest.importorskip("rq")

from tornado.httpclient import AsyncHTTPClient, HTTPResponse  # noqa: E402
from tornado.httpserver import HTTPServer  # noqa: E402
from tornado.testing import bind_unused_port  # noqa: E402
from tornado.web import Application, RequestHandler  # noqa: E402

from hirefire_exporter.contrib.tornado.handlers import hirefire_handlers, queue_time_transform  # noqa: E402

WORKER = [{"name": "worker", "value": 2, "quantity": 2}]
Fetch = Callable[..., Awaitable[HTTPResponse]]


class Orders(RequestHandler):
    def get(self) -> None:
        self.write("orders")


class Stalled(Proc):
    """A proc whose broker hangs until the test opens the gate."""

    queues = ["default"]

    def __init__(self, gate: threading.Event) -> None:
        super().__init__("stalled")
        self.gate = gate
        self.entered = threading.Event()

    def quantity(self, **kwargs) -> int:
        self.entered.set()
        self.gate.wait(10)
        return 7


@pytest.fixture(autouse=True)
def _fresh_registry():
    yield
    contrib.reset()
    gc.collect()  # close what this test left behind now, not during a later test that counts fds


@pytest.fixture
def worker(redis_conn) -> RQProc:
    queue = rq.Queue("default", connection=redis_conn)
    for _ in range(2):
        queue.enqueue("rq_jobs.noop")
    return RQProc("worker", connection=redis_conn)


def serve(app: Application, scenario: Callable[[Fetch], Awaitable[object]]) -> object:
    """Run ``scenario(fetch)`` against ``app`` served by a real HTTPServer on a loopback port."""

    async def main() -> object:
        sock, port = bind_unused_port()
        server = HTTPServer(app)
        server.add_sockets([sock])
        client = AsyncHTTPClient()

        def fetch(path: str, **kwargs) -> Awaitable[HTTPResponse]:
            return client.fetch(f"http://127.0.0.1:{port}{path}", raise_error=False, **kwargs)

        try:
            return await scenario(fetch)
        finally:
            server.stop()
            await server.close_all_connections()
            client.close()

    return asyncio.run(main())


def test_info_header_test_metrics_and_tokens(worker):
    app = Application([(r"/orders", Orders), *hirefire_handlers("s3cret", [worker], metrics=True)])

    async def scenario(fetch: Fetch) -> None:
        info = await fetch("/hirefire/s3cret/info")
        assert (info.code, info.headers["Content-Type"]) == (200, "application/json")
        assert json.loads(info.body) == WORKER
        header = await fetch("/hirefire", headers={"HireFire-Token": "s3cret"})
        assert json.loads(header.body) == WORKER
        assert (await fetch("/hirefire/test")).body == b"HireFire Middleware Found!"
        assert (await fetch("/hirefire/wrong/info")).code == 404
        assert (await fetch("/hirefire")).code == 404
        metrics = (await fetch("/metrics")).body.decode()
        assert samples(metrics, "hirefire_proc_jobs") == {("worker",): 2.0}
        assert (await fetch("/orders")).body == b"orders"

    serve(app, scenario)


def test_metrics_is_not_mounted_unless_asked_for(worker):
    app = Application([(r"/orders", Orders), *hirefire_handlers("s3cret", [worker])])

    async def scenario(fetch: Fetch) -> None:
        assert (await fetch("/metrics")).code == 404
        assert json.loads((await fetch("/hirefire/s3cret/info")).body) == WORKER

    serve(app, scenario)


def test_the_ioloop_keeps_serving_while_a_cycle_is_stalled(worker):
    gate = threading.Event()
    stalled = Stalled(gate)
    app = Application([(r"/orders", Orders), *hirefire_handlers("t", [worker, stalled], timeout=10)])

    async def scenario(fetch: Fetch) -> tuple[bytes, bytes, bool]:
        info = asyncio.ensure_future(fetch("/hirefire/t/info"))
        for _ in range(500):  # until the cycle hangs on the stalled broker
            if stalled.entered.is_set():
                break
            await asyncio.sleep(0.01)
        other = await fetch("/orders")
        stalled_meanwhile = stalled.entered.is_set() and not info.done()
        gate.set()
        return (await info).body, other.body, stalled_meanwhile

    info, other, stalled_meanwhile = serve(app, scenario)
    assert other == b"orders" and stalled_meanwhile
    assert json.loads(info) == [*WORKER, {"name": "stalled", "value": 7, "quantity": 7}]


def test_a_broker_outage_is_a_503_and_other_handlers_keep_working():
    down = RQProc("worker", url=f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1)
    app = Application([(r"/orders", Orders), *hirefire_handlers("t", [down])])

    async def scenario(fetch: Fetch) -> None:
        info = await fetch("/hirefire/t/info")
        assert info.code == 503 and json.loads(info.body)["procs"] == ["worker"]
        assert (await fetch("/orders")).body == b"orders"

    serve(app, scenario)


def test_queue_time_transform_measures_every_request(worker, capsys):
    app = Application([(r"/orders", Orders), *hirefire_handlers("t", [worker])])
    app.add_transform(queue_time_transform())

    async def scenario(fetch: Fetch) -> None:
        assert (await fetch("/orders", headers={"X-Request-Start": "t=1700000000000"})).body == b"orders"
        assert (await fetch("/orders", headers={"X-Request-Start": "later"})).body == b"orders"

    serve(app, scenario)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[hirefire:router]")]
    assert len(lines) == 1
