"""The ASGI middleware on Starlette with httpx's ASGI client, backed by real Redis."""

from __future__ import annotations

import asyncio
import gc
import json
import threading

import pytest
from conftest import free_port
from support import samples

from hirefire_exporter import contrib
from hirefire_exporter.procs.base import Proc
from hirefire_exporter.procs.rq import RQProc

starlette = pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")
rq = pytest.importorskip("rq")

from starlette.applications import Starlette  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from hirefire_exporter.contrib.asgi import HireFireMiddleware, QueueTimeMiddleware  # noqa: E402

WORKER = [{"name": "worker", "value": 6, "quantity": 6}]


async def orders(request) -> PlainTextResponse:
    return PlainTextResponse("orders")


def starlette_app(**kwargs) -> Starlette:
    return Starlette(routes=[Route("/orders", orders), Route("/metrics", orders)], **kwargs)


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
    for _ in range(6):
        queue.enqueue("rq_jobs.noop")
    return RQProc("worker", connection=redis_conn)


def run(app, scenario):
    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await scenario(client)

    return asyncio.run(main())


def test_info_header_test_metrics_and_tokens_on_starlette(worker):
    app = starlette_app(middleware=[Middleware(HireFireMiddleware, procs=[worker], token="s3cret", metrics=True)])

    async def scenario(client: httpx.AsyncClient) -> None:
        info = await client.get("/hirefire/s3cret/info")
        assert (info.status_code, info.headers["content-type"], info.json()) == (200, "application/json", WORKER)
        assert info.headers["cache-control"] == "must-revalidate, private, max-age=0"
        assert (await client.get("/hirefire", headers={"HireFire-Token": "s3cret"})).json() == WORKER
        assert (await client.get("/hirefire/test")).text == "HireFire Middleware Found!"
        assert (await client.get("/hirefire/wrong/info")).status_code == 404
        assert (await client.get("/hirefire", headers={"HireFire-Token": "s3cre"})).status_code == 404
        assert samples((await client.get("/metrics")).text, "hirefire_proc_jobs") == {("worker",): 6.0}
        assert (await client.get("/orders")).text == "orders"

    run(app, scenario)


def test_wrapping_any_asgi_app_leaves_its_routes_alone(worker):
    app = HireFireMiddleware(starlette_app(), [worker], "s3cret")

    async def scenario(client: httpx.AsyncClient) -> None:
        assert (await client.get("/metrics")).text == "orders"  # the app's own /metrics: ours is off by default
        assert (await client.get("/hirefire-pricing")).status_code == 404
        assert (await client.get("/hirefire/s3cret/info")).json() == WORKER

    run(app, scenario)


def test_the_event_loop_keeps_serving_while_a_cycle_is_stalled(worker):
    gate = threading.Event()
    stalled = Stalled(gate)
    app = HireFireMiddleware(starlette_app(), [worker, stalled], "t", timeout=10)

    async def scenario(client: httpx.AsyncClient):
        info = asyncio.ensure_future(client.get("/hirefire/t/info"))
        for _ in range(500):  # until the cycle hangs on the stalled broker
            if stalled.entered.is_set():
                break
            await asyncio.sleep(0.01)
        other = await client.get("/orders")
        stalled_meanwhile = stalled.entered.is_set() and not info.done()
        gate.set()
        return (await info).json(), other.text, stalled_meanwhile

    info, other, stalled_meanwhile = run(app, scenario)
    assert other == "orders" and stalled_meanwhile
    assert info == [*WORKER, {"name": "stalled", "value": 7, "quantity": 7}]


def test_a_broker_outage_is_a_503_and_the_app_keeps_working():
    down = RQProc("worker", url=f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1)
    app = HireFireMiddleware(starlette_app(), [down], "t")

    async def scenario(client: httpx.AsyncClient) -> None:
        info = await client.get("/hirefire/t/info")
        assert info.status_code == 503 and info.json()["procs"] == ["worker"]
        assert (await client.get("/orders")).text == "orders"

    run(app, scenario)


def test_queue_time_middleware_feeds_the_histogram_on_metrics(worker):
    timer = contrib.queue_timer(log=False)
    app = QueueTimeMiddleware(HireFireMiddleware(starlette_app(), [worker], "t", metrics=True), timer)

    async def scenario(client: httpx.AsyncClient) -> tuple[float, float]:
        def count(text: str) -> float:
            return samples(text, "hirefire_request_queue_seconds_count")[()]

        before = count((await client.get("/metrics")).text)
        await client.get("/orders", headers={"X-Request-Start": "t=1700000000000"})
        await client.get("/orders", headers={"X-Request-Start": "t=yesterday"})
        return before, count((await client.get("/metrics")).text)

    before, after = run(app, scenario)
    assert after == before + 1


def test_the_dispatch_setting_needs_a_token(monkeypatch):
    monkeypatch.delenv("HIREFIRE_TOKEN", raising=False)
    with pytest.raises(contrib.ProcConfigError, match="HIREFIRE_TOKEN"):
        contrib.queue_timer(dispatch_url="http://127.0.0.1:9/")
    assert json.dumps(contrib.queue_timer(dispatch_url="").dispatcher) == "null"


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
        assert (await client.get("/hirefire/t/info")).json() == WORKER

    run(app, scenario)
