"""The Tornado handlers on a real Tornado server on loopback, backed by real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import adapter_contract as contract
import pytest
from conftest import free_port

from hirefire_exporter.procs.rq import RQProc

tornado = pytest.importorskip("tornado")
pytest.importorskip("rq")

from tornado.httpclient import AsyncHTTPClient  # noqa: E402
from tornado.httpserver import HTTPServer  # noqa: E402
from tornado.testing import bind_unused_port  # noqa: E402
from tornado.web import Application, RequestHandler  # noqa: E402

from hirefire_exporter.contrib.tornado.handlers import hirefire_handlers, queue_time_transform  # noqa: E402

JOBS = 2
ORDERS = {"/orders": (200, b"orders")}
TORNADO_404 = b"<html><title>404: Not Found</title><body>404: Not Found</body></html>"

_fresh_registry = pytest.fixture(autouse=True)(contract.fresh_registry)


@pytest.fixture
def worker(redis_conn) -> RQProc:
    return contract.rq_worker(redis_conn, JOBS)


class Orders(RequestHandler):
    def get(self) -> None:
        self.write("orders")


def serve(app: Application, scenario: Callable[[contract.AsyncGet], Awaitable[None]]) -> None:
    """Run ``scenario(get)`` against ``app`` served by a real HTTPServer on a loopback port."""

    async def main() -> None:
        sock, port = bind_unused_port()
        server = HTTPServer(app)
        server.add_sockets([sock])
        client = AsyncHTTPClient()

        async def get(path: str, headers: contract.Headers) -> contract.Reply:
            response = await client.fetch(f"http://127.0.0.1:{port}{path}", headers=dict(headers), raise_error=False)
            return contract.Reply(response.code, response.headers, response.body)

        try:
            await scenario(get)
        finally:
            server.stop()
            await server.close_all_connections()
            client.close()

    asyncio.run(main())


def check(app: Application, scenario: contract.Scenario) -> None:
    serve(app, lambda get: contract.acheck(scenario, get))


def test_info_header_test_metrics_and_tokens(worker):
    app = Application([(r"/orders", Orders), *hirefire_handlers("s3cret", [worker], metrics=True)])
    check(app, contract.serves_hirefire(JOBS, metrics=True, host=ORDERS))


def test_metrics_is_not_mounted_unless_asked_for(worker):
    app = Application([(r"/orders", Orders), *hirefire_handlers("s3cret", [worker])])
    check(app, contract.serves_hirefire(JOBS, metrics=False, host={**ORDERS, "/metrics": (404, TORNADO_404)}))


def test_the_ioloop_keeps_serving_while_a_cycle_is_stalled(worker):
    stalled = contract.Stalled()
    app = Application([(r"/orders", Orders), *hirefire_handlers("t", [worker, stalled], timeout=10)])
    serve(app, lambda get: contract.serves_while_stalled(get, stalled, JOBS, ("/orders", b"orders")))


def test_a_broker_outage_is_a_503_and_other_handlers_keep_working():
    down = RQProc("worker", url=f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1)
    app = Application([(r"/orders", Orders), *hirefire_handlers("t", [down], metrics=True)])
    check(app, contract.broker_down(metrics=True, host=ORDERS))


def test_queue_time_transform_measures_every_request(worker, capsys):
    app = Application([(r"/orders", Orders), *hirefire_handlers("t", [worker], metrics=True)])
    app.add_transform(queue_time_transform())
    check(app, contract.measures_queue_time("/orders", b"orders", metrics=True))
    assert len(contract.router_lines(capsys.readouterr().out)) == 1
