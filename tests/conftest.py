"""Shared fixtures: real brokers on loopback.

Under CI (``CI=true``) a broker that cannot be reached is a test failure. Elsewhere the suite starts a throwaway
``redis-server`` when one is on PATH, and otherwise skips broker tests with the reason.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REDIS_HOST = os.environ.get("HIREFIRE_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("HIREFIRE_TEST_REDIS_PORT", "6379"))
#: Tests flush this database (only this one); pick another to keep parallel runs apart.
REDIS_DB = int(os.environ.get("HIREFIRE_TEST_REDIS_DB", "1"))
AMQP_URL = os.environ.get("HIREFIRE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def unavailable(service: str, reason: str) -> None:
    """Fail under CI, skip elsewhere."""
    message = f"{service} is not reachable: {reason}"
    if CI:
        pytest.fail(message + " (CI=true: a missing service is a failure, not a skip)")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[tuple[str, int]]:
    """(host, port) of a running Redis: the machine's, or one started for this session."""
    if port_open(REDIS_HOST, REDIS_PORT):
        yield REDIS_HOST, REDIS_PORT
        return
    if CI:
        unavailable("Redis", f"nothing listens on {REDIS_HOST}:{REDIS_PORT}")
    yield from start_redis_server()


@pytest.fixture(scope="session")
def private_redis_server() -> Iterator[tuple[str, int]]:
    """A redis-server of the test session's own, for counting commands (INFO commandstats) with nobody else on it."""
    yield from start_redis_server()


@pytest.fixture
def private_redis(private_redis_server: tuple[str, int]):
    """A client on the private server, flushed and with its command statistics reset."""
    import redis

    host, port = private_redis_server
    client = redis.Redis(host=host, port=port)
    client.flushall()
    client.config_resetstat()
    yield client
    client.close()


def start_redis_server() -> Iterator[tuple[str, int]]:
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("Redis", "no redis-server on PATH to start a private one")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while not port_open("127.0.0.1", port):
                if time.monotonic() > deadline:
                    unavailable("Redis", "the redis-server started for the tests did not come up")
                time.sleep(0.05)
            yield "127.0.0.1", port
        finally:
            proc.terminate()
            proc.wait(10)


@pytest.fixture
def redis_url(redis_server: tuple[str, int]) -> str:
    host, port = redis_server
    return f"redis://{host}:{port}/{REDIS_DB}"


@pytest.fixture
def redis_conn(redis_url: str):
    """A client on the test database, flushed before the test."""
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def amqp_url() -> str:
    from urllib.parse import urlparse

    parsed = urlparse(AMQP_URL)
    if not port_open(parsed.hostname or "127.0.0.1", parsed.port or 5672):
        unavailable("RabbitMQ", f"nothing listens on {parsed.hostname}:{parsed.port or 5672}")
    return AMQP_URL


@pytest.fixture
def workers() -> Iterator[list]:
    """Worker processes a test starts (anything with ``stop()``): append them, they are stopped at teardown."""
    started: list = []
    yield started
    for worker in started:
        worker.stop()


@pytest.fixture(autouse=True)
def _forget_secrets() -> Iterator[None]:
    """Forget the secrets a test registered (a password ``x`` of one test would mask ``'x'`` in the next one's
    messages), as the end of its process would."""
    yield
    from hirefire_exporter.redaction import SECRETS

    SECRETS.clear()


@pytest.fixture
def killable_redis() -> Iterator:
    """A started redis-server of the test's own (``faultproxy.RedisProcess``): the test may pause it (SIGSTOP), kill
    it and start it again; it is stopped at teardown."""
    from faultproxy import RedisProcess

    try:
        server = RedisProcess().start()
    except FileNotFoundError:
        unavailable("redis-server", "this test stops, kills or pauses a redis-server of its own")
    try:
        yield server
    finally:
        server.stop()


# The RabbitMQ management API (a private RabbitMQ node with the management plugin, or
# HIREFIRE_TEST_RABBITMQ_MANAGEMENT_URL with HIREFIRE_TEST_RABBITMQ_MANAGEMENT_AMQP_URL), one node per session for
# every test module (Celery's and Dramatiq's).


@pytest.fixture(scope="session")
def management():
    """(amqp_url, management_url) of a RabbitMQ with the management plugin whose statistics refresh every 0.2 s."""
    if os.environ.get("HIREFIRE_TEST_RABBITMQ_MANAGEMENT_URL"):
        yield (
            os.environ["HIREFIRE_TEST_RABBITMQ_MANAGEMENT_AMQP_URL"],
            os.environ["HIREFIRE_TEST_RABBITMQ_MANAGEMENT_URL"],
        )
        return
    with _private_node() as urls:
        yield urls


@pytest.fixture(scope="session")
def management_without_statistics():
    """Like ``management``, on a node that collects no queue statistics (Prometheus-only setups turn them off)."""
    with _private_node("management_agent.disable_metrics_collector = true\n") as urls:
        yield urls


@contextmanager
def _private_node(extra_config: str = "") -> Iterator[tuple[str, str]]:
    """A throwaway RabbitMQ node with the management plugin on free loopback ports: (amqp_url, management_url)."""
    server = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # the node script itself (/usr/sbin/... is a wrapper)
    if not os.path.exists(server):
        server = shutil.which("rabbitmq-server") or server
    if not os.path.exists(server):
        unavailable("RabbitMQ management API", "no HIREFIRE_TEST_RABBITMQ_MANAGEMENT_URL and no rabbitmq-server")
    amqp_port, http_port, dist_port = free_port(), free_port(), free_port()
    node = f"hf-node-{uuid.uuid4().hex[:8]}@localhost"
    with tempfile.TemporaryDirectory() as tmp:
        with open(f"{tmp}/rabbitmq.conf", "w") as f:
            f.write(
                f"listeners.tcp.default = 127.0.0.1:{amqp_port}\nmanagement.tcp.port = {http_port}\n"
                "management.tcp.ip = 127.0.0.1\nloopback_users = none\ncollect_statistics_interval = 200\n"
                + extra_config
            )
        with open(f"{tmp}/enabled_plugins", "w") as f:
            f.write("[rabbitmq_management].\n")
        env = dict(
            os.environ,
            RABBITMQ_NODENAME=node,
            RABBITMQ_CONFIG_FILE=f"{tmp}/rabbitmq",
            RABBITMQ_ENABLED_PLUGINS_FILE=f"{tmp}/enabled_plugins",
            RABBITMQ_MNESIA_BASE=f"{tmp}/mnesia",
            RABBITMQ_LOG_BASE=f"{tmp}/log",
            RABBITMQ_DIST_PORT=str(dist_port),
            RABBITMQ_PID_FILE=f"{tmp}/pid",
        )
        process = subprocess.Popen(
            [server], env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        management_url = f"http://guest:guest@127.0.0.1:{http_port}"
        try:
            deadline = time.monotonic() + 60
            while not _management_up(http_port):
                if process.poll() is not None or time.monotonic() > deadline:
                    (pytest.fail if CI else pytest.skip)("the private RabbitMQ node did not start")
                time.sleep(0.2)
            yield f"amqp://guest:guest@127.0.0.1:{amqp_port}//", management_url
        finally:
            _stop_group(process.pid)
            process.wait(10)


def _stop_group(group: int) -> None:
    """Kill the throwaway node: its process group holds the start script and the Erlang VM it spawns."""
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _management_up(port: int) -> bool:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/overview")
    request.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")  # guest:guest
    try:
        with urllib.request.urlopen(request, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False
