"""The Django middleware with Django's test clients (WSGI and ASGI), backed by real Redis."""

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

django = pytest.importorskip("django")
rq = pytest.importorskip("rq")

from django.conf import settings  # noqa: E402

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="tests",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=[],
        INSTALLED_APPS=[],
        DATABASES={},
    )
    django.setup()

from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.core.handlers.wsgi import WSGIHandler  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.test import AsyncClient, Client, override_settings  # noqa: E402
from django.urls import path  # noqa: E402

MIDDLEWARE = ["hirefire_exporter.contrib.django.middleware.HireFireMiddleware"]
WORKER = [{"name": "worker", "value": 4, "quantity": 4}]


def orders(request):
    return HttpResponse("orders")


async def async_orders(request):
    return HttpResponse("async orders")


urlpatterns = [path("orders", orders), path("async-orders", async_orders), path("metrics", orders)]


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
    for _ in range(4):
        queue.enqueue("rq_jobs.noop")
    return RQProc("worker", connection=redis_conn)


def test_info_header_test_metrics_and_tokens(worker):
    with override_settings(
        MIDDLEWARE=MIDDLEWARE, HIREFIRE_PROCS=[worker], HIREFIRE_TOKEN="s3cret", HIREFIRE_METRICS=True
    ):
        client = Client()
        info = client.get("/hirefire/s3cret/info")
        assert (info.status_code, info["Content-Type"], json.loads(info.content)) == (200, "application/json", WORKER)
        assert info["Cache-Control"] == "must-revalidate, private, max-age=0"
        assert json.loads(client.get("/hirefire", headers={"HireFire-Token": "s3cret"}).content) == WORKER
        assert client.get("/hirefire/test").content == b"HireFire Middleware Found!"
        assert client.get("/hirefire/wrong/info").status_code == 404
        assert samples(client.get("/metrics").content.decode(), "hirefire_proc_jobs") == {("worker",): 4.0}
        assert client.get("/orders").content == b"orders"


def test_other_requests_pass_through_and_metrics_is_off_by_default(worker):
    with override_settings(MIDDLEWARE=MIDDLEWARE, HIREFIRE_PROCS=[worker], HIREFIRE_TOKEN="s3cret"):
        client = Client()
        assert client.get("/metrics").content == b"orders"  # the app's own /metrics route
        assert client.get("/orders").content == b"orders"
        assert client.get("/hirefire-pricing").status_code == 404  # Django's 404, not the exporter's


def test_the_token_falls_back_to_the_environment(worker, monkeypatch):
    monkeypatch.setenv("HIREFIRE_TOKEN", "from-env")
    with override_settings(MIDDLEWARE=MIDDLEWARE, HIREFIRE_PROCS=[worker]):
        client = Client()
        assert json.loads(client.get("/hirefire/from-env/info").content) == WORKER
        assert client.get("/hirefire/development/info").status_code == 404


def test_dotted_paths_as_in_the_old_package(worker, monkeypatch):
    monkeypatch.setattr(DottedWorker, "connection", worker.connection)
    with override_settings(MIDDLEWARE=MIDDLEWARE, HIREFIRE_PROCS=[f"{__name__}.DottedWorker"], HIREFIRE_TOKEN="t"):
        assert json.loads(Client().get("/hirefire/t/info").content) == WORKER


class DottedWorker(RQProc):
    name = "worker"
    queues = ["default"]


@pytest.mark.parametrize(
    ("procs", "message"),
    [
        (["mysite.nope.WorkerProc"], "HIREFIRE_PROCS: cannot import 'mysite.nope'"),
        ([], "HIREFIRE_PROCS: set it"),
        ([f"{__name__}.orders"], "HIREFIRE_PROCS: .* is not a Proc"),
    ],
)
def test_misconfiguration_fails_at_start_up_naming_the_setting(procs, message):
    with (
        override_settings(MIDDLEWARE=MIDDLEWARE, HIREFIRE_PROCS=procs),
        pytest.raises(ImproperlyConfigured, match=message),
    ):
        WSGIHandler()  # what gunicorn's import of wsgi.py does: loads the middleware


def test_a_broker_outage_is_a_503_and_the_site_keeps_working():
    down = RQProc("worker", url=f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1)
    with override_settings(MIDDLEWARE=MIDDLEWARE, HIREFIRE_PROCS=[down], HIREFIRE_TOKEN="t"):
        client = Client()
        info = client.get("/hirefire/t/info")
        assert info.status_code == 503 and json.loads(info.content)["procs"] == ["worker"]
        assert client.get("/orders").content == b"orders"


def test_queue_time_setting(worker, capsys):
    with override_settings(MIDDLEWARE=MIDDLEWARE, HIREFIRE_PROCS=[worker], HIREFIRE_QUEUE_TIME=True):
        client = Client()
        assert client.get("/orders", headers={"X-Request-Start": "t=1700000000000"}).content == b"orders"
        assert client.get("/orders", headers={"X-Request-Start": "12:00"}).content == b"orders"
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[hirefire:router]")]
    assert len(lines) == 1


def test_under_asgi_a_stalled_cycle_does_not_hold_up_other_requests(worker):
    gate = threading.Event()
    stalled = Stalled(gate)

    async def scenario() -> tuple[bytes, bytes, bool]:
        client = AsyncClient()
        info = asyncio.create_task(client.get("/hirefire/t/info"))
        for _ in range(500):  # until the cycle hangs on the stalled broker
            if stalled.entered.is_set():
                break
            await asyncio.sleep(0.01)
        other = await client.get("/async-orders")
        stalled_meanwhile = not info.done() and not gate.is_set()
        gate.set()
        return (await info).content, other.content, stalled_meanwhile

    procs = [worker, stalled]
    with override_settings(MIDDLEWARE=MIDDLEWARE, HIREFIRE_PROCS=procs, HIREFIRE_TOKEN="t", HIREFIRE_TIMEOUT=10):
        info, other, stalled_meanwhile = asyncio.run(scenario())
    assert other == b"async orders" and stalled_meanwhile
    assert json.loads(info) == [*WORKER, {"name": "stalled", "value": 7, "quantity": 7}]


def test_the_asgi_middleware_in_front_of_djangos_asgi_handler(worker):
    import httpx
    from django.core.asgi import get_asgi_application

    from hirefire_exporter.contrib.asgi import HireFireMiddleware as AsgiMiddleware

    async def scenario() -> tuple[int, object, bytes]:
        app = AsgiMiddleware(get_asgi_application(), [worker], "s3cret")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            info = await client.get("/hirefire/s3cret/info")
            other = await client.get("/orders")
        return info.status_code, info.json(), other.content

    with override_settings(MIDDLEWARE=[]):
        assert asyncio.run(scenario()) == (200, WORKER, b"orders")


def test_dispatching_without_a_token_fails_at_start_up(worker, monkeypatch):
    monkeypatch.delenv("HIREFIRE_TOKEN", raising=False)
    with (
        override_settings(
            MIDDLEWARE=MIDDLEWARE,
            HIREFIRE_PROCS=[worker],
            HIREFIRE_QUEUE_TIME=True,
            HIREFIRE_DISPATCH_URL="http://127.0.0.1:9/",
        ),
        pytest.raises(ImproperlyConfigured, match="HIREFIRE_DISPATCH_URL is set but there is no HireFire token"),
    ):
        WSGIHandler()
