"""The Django middleware with Django's test clients (WSGI and ASGI), backed by real Redis."""

from __future__ import annotations

import asyncio
import json

import adapter_contract as contract
import pytest
from conftest import free_port

from hirefire_exporter.procs.rq import RQProc

django = pytest.importorskip("django")
pytest.importorskip("rq")

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
JOBS = 4
ORDERS = {"/orders": (200, b"orders")}
DJANGO_404 = (
    b'\n<!doctype html>\n<html lang="en">\n<head>\n  <title>Not Found</title>\n</head>\n<body>\n'
    b"  <h1>Not Found</h1><p>The requested resource was not found on this server.</p>\n</body>\n</html>\n"
)


def orders(request):
    return HttpResponse("orders")


async def async_orders(request):
    return HttpResponse("async orders")


urlpatterns = [path("orders", orders), path("async-orders", async_orders), path("metrics", orders)]

_fresh_registry = pytest.fixture(autouse=True)(contract.fresh_registry)


@pytest.fixture
def worker(redis_conn) -> RQProc:
    return contract.rq_worker(redis_conn, JOBS)


def getter(client: Client) -> contract.Get:
    def get(path: str, headers: contract.Headers) -> contract.Reply:
        response = client.get(path, headers=headers)
        return contract.Reply(response.status_code, response.headers, response.content)

    return get


def async_getter(client: AsyncClient) -> contract.AsyncGet:
    async def get(path: str, headers: contract.Headers) -> contract.Reply:
        response = await client.get(path, headers=headers)
        return contract.Reply(response.status_code, response.headers, response.content)

    return get


def test_info_header_test_metrics_and_tokens(worker):
    with override_settings(
        MIDDLEWARE=MIDDLEWARE, HIREFIRE_PROCS=[worker], HIREFIRE_TOKEN="s3cret", HIREFIRE_METRICS=True
    ):
        contract.check(contract.serves_hirefire(JOBS, metrics=True, host=ORDERS), getter(Client()))


def test_other_requests_pass_through_and_metrics_is_off_by_default(worker):
    own = {**ORDERS, "/metrics": (200, b"orders"), "/hirefire-pricing": (404, DJANGO_404)}  # Django's 404, not ours
    with override_settings(MIDDLEWARE=MIDDLEWARE, HIREFIRE_PROCS=[worker], HIREFIRE_TOKEN="s3cret"):
        contract.check(contract.serves_hirefire(JOBS, metrics=False, host=own), getter(Client()))


def test_the_token_falls_back_to_the_environment(worker, monkeypatch):
    monkeypatch.setenv("HIREFIRE_TOKEN", "from-env")
    with override_settings(MIDDLEWARE=MIDDLEWARE, HIREFIRE_PROCS=[worker]):
        client = Client()
        assert json.loads(client.get("/hirefire/from-env/info").content) == contract.worker_info(JOBS)
        assert client.get("/hirefire/development/info").status_code == 404


def test_dotted_paths_as_in_the_old_package(worker, monkeypatch):
    monkeypatch.setattr(DottedWorker, "connection", worker.connection)
    with override_settings(MIDDLEWARE=MIDDLEWARE, HIREFIRE_PROCS=[f"{__name__}.DottedWorker"], HIREFIRE_TOKEN="t"):
        assert json.loads(Client().get("/hirefire/t/info").content) == contract.worker_info(JOBS)


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
    with override_settings(MIDDLEWARE=MIDDLEWARE, HIREFIRE_PROCS=[down], HIREFIRE_TOKEN="t", HIREFIRE_METRICS=True):
        contract.check(contract.broker_down(metrics=True, host=ORDERS), getter(Client()))


def test_queue_time_setting(worker, capsys):
    options = {"HIREFIRE_PROCS": [worker], "HIREFIRE_QUEUE_TIME": True, "HIREFIRE_METRICS": True}
    with override_settings(MIDDLEWARE=MIDDLEWARE, **options):
        contract.check(contract.measures_queue_time("/orders", b"orders", metrics=True), getter(Client()))
    assert len(contract.router_lines(capsys.readouterr().out)) == 1


def test_under_asgi_a_stalled_cycle_does_not_hold_up_other_requests(worker):
    stalled = contract.Stalled()
    procs = [worker, stalled]
    with override_settings(MIDDLEWARE=MIDDLEWARE, HIREFIRE_PROCS=procs, HIREFIRE_TOKEN="t", HIREFIRE_TIMEOUT=10):
        get = async_getter(AsyncClient())
        asyncio.run(contract.serves_while_stalled(get, stalled, JOBS, ("/async-orders", b"async orders")))


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
        assert asyncio.run(scenario()) == (200, contract.worker_info(JOBS), b"orders")


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


@pytest.mark.parametrize(("setting", "value"), [("HIREFIRE_TIMEOUT", float("nan")), ("HIREFIRE_MAX_AGE", float("inf"))])
def test_a_duration_setting_that_is_not_a_number_of_seconds_fails_at_start_up(worker, setting, value):
    with (
        override_settings(MIDDLEWARE=MIDDLEWARE, HIREFIRE_PROCS=[worker], **{setting: value}),
        pytest.raises(
            ImproperlyConfigured, match=f"^{setting} must be a number of seconds (from 0 to|above 0 and up to) 31536000"
        ),
    ):
        WSGIHandler()
