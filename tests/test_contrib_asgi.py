"""The ASGI middleware on Starlette with httpx's ASGI client, backed by real Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import adapter_contract as contract
import pytest
from conftest import free_port

from hirefire_exporter import contrib
from hirefire_exporter.procs.rq import RQProc

starlette = pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")
pytest.importorskip("rq")

from starlette.applications import Starlette  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from hirefire_exporter.contrib.asgi import HireFireMiddleware, QueueTimeMiddleware  # noqa: E402

JOBS = 6
ORDERS = {"/orders": (200, b"orders")}

_fresh_registry = pytest.fixture(autouse=True)(contract.fresh_registry)


@pytest.fixture
def worker(redis_conn) -> RQProc:
    return contract.rq_worker(redis_conn, JOBS)


async def orders(request) -> PlainTextResponse:
    return PlainTextResponse("orders")


def starlette_app(**kwargs) -> Starlette:
    return Starlette(routes=[Route("/orders", orders), Route("/metrics", orders)], **kwargs)


def run(app, scenario: Callable[[httpx.AsyncClient], Awaitable[Any]]) -> Any:
    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await scenario(client)

    return asyncio.run(main())


def getter(client: httpx.AsyncClient) -> contract.AsyncGet:
    async def get(path: str, headers: contract.Headers) -> contract.Reply:
        response = await client.get(path, headers=dict(headers))
        return contract.Reply(response.status_code, response.headers, response.content)

    return get


def check(app, scenario: contract.Scenario) -> None:
    run(app, lambda client: contract.acheck(scenario, getter(client)))


def test_info_header_test_metrics_and_tokens_on_starlette(worker):
    app = starlette_app(middleware=[Middleware(HireFireMiddleware, procs=[worker], token="s3cret", metrics=True)])
    check(app, contract.serves_hirefire(JOBS, metrics=True, host=ORDERS))


def test_wrapping_any_asgi_app_leaves_its_routes_alone(worker):
    app = HireFireMiddleware(starlette_app(), [worker], "s3cret")
    own = {**ORDERS, "/metrics": (200, b"orders"), "/hirefire-pricing": (404, b"Not Found")}  # ours is off by default
    check(app, contract.serves_hirefire(JOBS, metrics=False, host=own))


def test_the_event_loop_keeps_serving_while_a_cycle_is_stalled(worker):
    stalled = contract.Stalled()
    app = HireFireMiddleware(starlette_app(), [worker, stalled], "t", timeout=10)
    run(app, lambda client: contract.serves_while_stalled(getter(client), stalled, JOBS, ("/orders", b"orders")))


def test_a_broker_outage_is_a_503_and_the_app_keeps_working():
    down = RQProc("worker", url=f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1)
    app = HireFireMiddleware(starlette_app(), [down], "t", metrics=True)
    check(app, contract.broker_down(metrics=True, host=ORDERS))


def test_queue_time_middleware_feeds_the_histogram_on_metrics(worker, capsys):
    timer = contrib.queue_timer(log=True)
    app = QueueTimeMiddleware(HireFireMiddleware(starlette_app(), [worker], "t", metrics=True), timer)
    check(app, contract.measures_queue_time("/orders", b"orders", metrics=True))
    assert len(contract.router_lines(capsys.readouterr().out)) == 1


def test_the_dispatch_setting_needs_a_token(monkeypatch):
    monkeypatch.delenv("HIREFIRE_TOKEN", raising=False)
    with pytest.raises(contrib.ProcConfigError, match="HIREFIRE_TOKEN"):
        contrib.queue_timer(dispatch_url="http://127.0.0.1:9/")
    assert json.dumps(contrib.queue_timer(dispatch_url="").dispatcher) == "null"


@pytest.mark.parametrize(("root_path", "path"), [("/hire", "/hirefire/t/info"), ("/hire", "/hire/hirefire/t/info")])
def test_a_mount_point_is_stripped_only_as_a_whole_path_segment(worker, root_path, path):
    """Servers that leave root_path out of path (the older convention) and those that put it in both reach /info."""
    app = HireFireMiddleware(starlette_app(), [worker], "t")

    async def main() -> tuple[int, bytes]:
        transport = httpx.ASGITransport(app=app, root_path=root_path)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            reply = await client.get(path)
        return reply.status_code, reply.content

    assert asyncio.run(main()) == (200, json.dumps(contract.worker_info(JOBS)).encode())


def test_lifespan_and_head_requests(worker):
    from contextlib import asynccontextmanager

    events = []

    @asynccontextmanager
    async def lifespan(app):
        events.append("startup")
        yield
        events.append("shutdown")

    app = HireFireMiddleware(starlette_app(lifespan=lifespan), [worker], "t")

    async def lifespan_round_trip() -> list[str]:
        """What an ASGI server does at start and stop: the messages must reach the app through the middleware."""
        incoming = asyncio.Queue()
        for message in ("lifespan.startup", "lifespan.shutdown"):
            incoming.put_nowait({"type": message})
        sent: list[str] = []

        async def send(message) -> None:
            sent.append(message["type"])

        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, incoming.get, send)
        return sent

    assert asyncio.run(lifespan_round_trip()) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert events == ["startup", "shutdown"]

    async def scenario(client: httpx.AsyncClient) -> None:
        head = await client.head("/hirefire/t/info")
        assert (head.status_code, head.content, head.headers["content-type"]) == (200, b"", "application/json")
        assert (await client.get("/hirefire/t/info")).json() == contract.worker_info(JOBS)

    run(app, scenario)
