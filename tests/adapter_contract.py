"""The HTTP contract every framework adapter keeps (Django, Flask, Tornado, WSGI, ASGI), written once.

A contract is a scenario: a generator that yields the requests to make, ``(path, headers)``, receives each answer as
a :class:`Reply` and asserts on it. Each adapter's tests send those requests with the framework's own client through
:func:`check` (synchronous clients) or :func:`acheck` (asynchronous ones), so the same assertions run for all of them
and fail for the one whose adapter broke.
"""

from __future__ import annotations

import asyncio
import gc
import json
import threading
from collections.abc import Awaitable, Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from support import samples

from hirefire_exporter import contrib
from hirefire_exporter.procs.base import Proc
from hirefire_exporter.procs.rq import RQProc

Headers = Mapping[str, str]


@dataclass(frozen=True)
class Reply:
    """An answer as any framework's test client gives it; ``headers`` must look names up case-insensitively."""

    status: int
    headers: Headers
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


Scenario = Generator[tuple[str, Headers], Reply, None]
Get = Callable[[str, Headers], Reply]
AsyncGet = Callable[[str, Headers], Awaitable[Reply]]

INFO_HEADERS = {"Content-Type": "application/json", "Cache-Control": "must-revalidate, private, max-age=0"}
STAMPED = {"X-Request-Start": "t=1700000000000"}  # a router stamp long ago: one queue-time observation
UNSTAMPED = {"X-Request-Start": "not a time"}  # garbage: no observation, and the request is still served


def check(scenario: Scenario, get: Get) -> None:
    """Run ``scenario`` with a synchronous ``get(path, headers) -> Reply``."""
    try:
        request = next(scenario)
        while True:
            request = scenario.send(get(*request))
    except StopIteration:
        pass


async def acheck(scenario: Scenario, get: AsyncGet) -> None:
    """Run ``scenario`` with an asynchronous ``get(path, headers) -> Reply``."""
    try:
        request = next(scenario)
        while True:
            request = scenario.send(await get(*request))
    except StopIteration:
        pass


def worker_info(jobs: int) -> list[dict[str, Any]]:
    """HireFire's JSON for the ``worker`` proc of :func:`rq_worker`."""
    return [{"name": "worker", "value": jobs, "quantity": jobs}]


def serves_hirefire(
    jobs: int,
    *,
    metrics: bool,
    host: Mapping[str, tuple[int, bytes]],
    token: str = "s3cret",
    prefix: str = "",
) -> Scenario:
    """HireFire's routes with the right and wrong tokens, ``/metrics`` when enabled, and the host app's own paths
    (``host``: path -> (status, body) the app itself answers) untouched. ``prefix``: where the routes are mounted."""
    expected = worker_info(jobs)
    info = yield f"{prefix}/hirefire/{token}/info", {}
    assert info.status == 200, info.body
    assert info.json() == expected
    assert {name: info.headers.get(name) for name in INFO_HEADERS} == INFO_HEADERS
    assert info.headers.get("HireFire-Resource", "").startswith("Python-hirefire-exporter-")
    by_header = yield f"{prefix}/hirefire", {"HireFire-Token": token}
    assert by_header.status == 200, by_header.body
    assert by_header.json() == expected
    found = yield f"{prefix}/hirefire/test", {}
    assert (found.status, found.text) == (200, "HireFire Middleware Found!")
    assert (yield f"{prefix}/hirefire/wrong/info", {}).status == 404
    assert (yield f"{prefix}/hirefire", {"HireFire-Token": token[:-1]}).status == 404
    assert (yield f"{prefix}/hirefire", {}).status == 404
    if metrics:
        scrape = yield f"{prefix}/metrics", {}
        assert samples(scrape.text, "hirefire_proc_jobs") == {("worker",): float(jobs)}
    else:
        assert "/metrics" in host, "with metrics off, show what the app's own /metrics answers"
    for path, (status, body) in host.items():
        reply = yield path, {}
        assert (path, reply.status, reply.body) == (path, status, body)


def broker_down(*, metrics: bool, host: Mapping[str, tuple[int, bytes]], token: str = "t") -> Scenario:
    """With proc ``worker``'s broker unreachable: a 503 naming it, never a 0, and the host app keeps working."""
    info = yield f"/hirefire/{token}/info", {}
    assert info.status == 503, info.body
    assert info.json()["procs"] == ["worker"]
    if metrics:
        scrape = (yield "/metrics", {}).text
        assert samples(scrape, "hirefire_proc_up") == {("worker",): 0.0}
        assert samples(scrape, "hirefire_proc_jobs") == {}
    for path, (status, body) in host.items():
        reply = yield path, {}
        assert (path, reply.status, reply.body) == (path, status, body)


def measures_queue_time(path: str, body: bytes, *, metrics: bool) -> Scenario:
    """One stamped and one garbage-stamped request to the host app: both served, one observation (on ``/metrics``'
    histogram when ``metrics``)."""

    def observed(scrape: Reply) -> float:
        return samples(scrape.text, "hirefire_request_queue_seconds_count")[()]

    before = observed((yield "/metrics", {})) if metrics else 0.0
    for headers in (STAMPED, UNSTAMPED):
        reply = yield path, headers
        assert (reply.status, reply.body) == (200, body)
    if metrics:
        assert observed((yield "/metrics", {})) == before + 1


def router_lines(out: str) -> list[str]:
    """The queue-time log lines in captured output; each must read ``[hirefire:router] queue={ms}ms``."""
    lines = [line for line in out.splitlines() if line.startswith("[hirefire:router]")]
    for line in lines:
        assert line.startswith("[hirefire:router] queue=") and line.endswith("ms"), line
    return lines


class Stalled(Proc):
    """A proc whose broker hangs until the test opens the gate."""

    queues = ["default"]

    def __init__(self) -> None:
        super().__init__("stalled")
        self.gate = threading.Event()
        self.entered = threading.Event()

    def quantity(self, **kwargs: Any) -> int:
        self.entered.set()
        self.gate.wait(10)
        return 7


async def serves_while_stalled(get: AsyncGet, stalled: Stalled, jobs: int, host: tuple[str, bytes], token="t") -> None:
    """While a cycle waits on ``stalled``'s broker, the host app (``host``: path and body) still answers; then
    HireFire gets both procs. For adapters on an event loop: the cycle must not block it."""
    info = asyncio.ensure_future(get(f"/hirefire/{token}/info", {}))
    for _ in range(500):  # until the cycle hangs on the stalled broker
        if stalled.entered.is_set():
            break
        await asyncio.sleep(0.01)
    other = await get(host[0], {})
    stalled_meanwhile = stalled.entered.is_set() and not info.done()
    stalled.gate.set()
    assert (other.status, other.body, stalled_meanwhile) == (200, host[1], True)
    assert (await info).json() == [*worker_info(jobs), {"name": "stalled", "value": 7, "quantity": 7}]


def fresh_registry() -> Iterator[None]:
    """Each adapter test module's autouse fixture: forget the process's shared exporters after every test."""
    yield
    contrib.reset()
    gc.collect()  # close what this test left behind now, not during a later test that counts fds


def rq_worker(connection: Any, jobs: int) -> RQProc:
    """Proc ``worker`` on RQ queue ``default`` holding ``jobs`` jobs (each adapter's tests use their own count)."""
    import rq

    queue = rq.Queue("default", connection=connection)
    for _ in range(jobs):
        queue.enqueue("rq_jobs.noop")
    return RQProc("worker", connection=connection)
