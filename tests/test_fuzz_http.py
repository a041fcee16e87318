"""Fuzzing the HTTP surface: whatever arrives, no 500, no traceback, no secret, and no hint about the token.

Two layers are fuzzed with hypothesis: the WSGI app itself (raw environs, so paths and headers can hold any byte,
as a WSGI server passes them on decoded as latin-1), and the standalone server (``hirefire-exporter serve``) over
real sockets with raw bytes. Both run over the real Redis, with one proc whose broker is down and whose URL carries a
password that must never come out. The ``X-Request-Start`` parser and the WSGI middleware that reads it are fuzzed
the same way.
"""

from __future__ import annotations

import ast
import hmac
import inspect
import io
import json
import logging
import socket
import subprocess
import sys
import textwrap
import time
from urllib.parse import quote

import pytest
from conftest import REDIS_DB, free_port
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support import wait_until
from werkzeug.test import create_environ, run_wsgi_app

from hirefire_exporter import hirefire
from hirefire_exporter.app import ExporterApp
from hirefire_exporter.collection import Collection
from hirefire_exporter.procs.base import Proc
from hirefire_exporter.procs.rq import RQProc

rq = pytest.importorskip("rq")

TOKEN = "Tok3n-fuzz-0123456789abcdef"
BROKER_PASSWORD = "hunter2-broker-pw"
SECRETS = (TOKEN, BROKER_PASSWORD)
LEAKS = ("Traceback", 'File "', "hirefire_exporter/", "site-packages", *SECRETS)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class Fixed(Proc):
    queues = ["default"]

    def quantity(self, **kwargs) -> int:
        return 4


class ErrorRecords(logging.Handler):
    """Keeps every log record, to prove that no request logged an error (a 500 is logged with its traceback)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(self.format(r) + (r.exc_text or "") for r in self.records)


@pytest.fixture(scope="module")
def records():
    handler = ErrorRecords()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("hirefire_exporter")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


@pytest.fixture(scope="module")
def apps(redis_server, records):
    """A healthy app (RQ on the real Redis with 3 jobs, plus a custom proc) and one with a proc whose broker is
    down behind a password-bearing URL."""
    import redis

    host, port = redis_server
    url = f"redis://{host}:{port}/{REDIS_DB}"
    connection = redis.Redis.from_url(url)
    connection.flushdb()
    for _ in range(3):
        rq.Queue("default", connection=connection).enqueue("rq_jobs.noop")
    healthy = ExporterApp(
        Collection([RQProc("worker", url=url), Fixed("mailer")], max_age=3600, stale_after=7200), TOKEN
    )
    down_url = f"redis://app:{BROKER_PASSWORD}@127.0.0.1:{free_port()}/0"
    failing = ExporterApp(
        Collection([Fixed("mailer"), RQProc("worker", url=down_url, socket_timeout=1)], max_age=3600, stale_after=7200),
        TOKEN,
    )
    yield {"healthy": healthy, "failing": failing}
    for app in (healthy, failing):
        app.collection.close()
    connection.flushdb()
    connection.close()


def call(app: ExporterApp, method: str, path: str, headers: dict[str, str], body: bytes = b"", query: str = ""):
    """Run the app on a raw environ: ``path`` and header values are WSGI strings (bytes decoded as latin-1)."""
    environ = create_environ(method=method)
    environ.update(
        PATH_INFO=path,
        QUERY_STRING=query,
        REQUEST_METHOD=method,
        CONTENT_LENGTH=str(len(body)),
        **{"wsgi.input": io.BytesIO(body)},
    )
    for name, value in headers.items():
        key = name.upper().replace("-", "_")
        environ[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"] = value
    app_iter, status, response_headers = run_wsgi_app(app, environ, buffered=True)
    body = b"".join(app_iter)
    return int(status.split()[0]), dict(response_headers), body


def assert_clean(status: int, headers: dict, body: bytes) -> None:
    text = body.decode("latin-1") + json.dumps(headers)
    assert status != 500 and status < 600
    for leak in LEAKS:
        assert leak not in text, f"{leak!r} in a {status} response"


def latin1(max_size: int = 200) -> st.SearchStrategy[str]:
    """Any WSGI string: any bytes a client can send, decoded as latin-1."""
    return st.binary(max_size=max_size).map(lambda b: b.decode("latin-1"))


METHODS = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT", "BREW"])
ROUTES = st.sampled_from(
    ["/metrics", "/hirefire", "/hirefire/test", "/healthz", f"/hirefire/{TOKEN}/info", "/hirefire/x/info", "/"]
)
PATHS = st.one_of(
    ROUTES,
    ROUTES.flatmap(lambda r: latin1(40).map(lambda s: r + s)),
    latin1(300).map(lambda s: "/" + s),
    st.text(max_size=100).map(lambda s: "/hirefire/" + quote(s, safe="") + "/info"),
    st.integers(1, 3).map(lambda n: "/hirefire/" + "A" * 10**n * 100 + "/info"),
)
HEADER_NAMES = st.sampled_from(
    ["HireFire-Token", "X-Request-Start", "Accept", "Accept-Encoding", "Content-Type", "Host", "Cookie", "X-Junk"]
)
HEADERS = st.dictionaries(HEADER_NAMES, st.one_of(latin1(), st.just(TOKEN), st.just(" " + TOKEN)), max_size=5)


@FUZZ
@given(
    which=st.sampled_from(["healthy", "failing"]),
    method=METHODS,
    path=PATHS,
    headers=HEADERS,
    query=latin1(60),
    body=st.one_of(st.just(b""), st.binary(max_size=200), st.just(b"\xff" * 1_000_000)),
)
@example(which="healthy", method="GET", path="/metrics", headers={"Accept": "\xff;q=\x00"}, query="", body=b"")
@example(which="healthy", method="GET", path="/metrics", headers={}, query="name[]=\xff&name[]=", body=b"")
@example(which="healthy", method="GET", path="/metrics", headers={"Accept-Encoding": "gzip;q=x"}, query="", body=b"")
def test_no_request_gets_a_500_a_traceback_or_a_secret(apps, records, which, method, path, headers, query, body):
    status, response_headers, data = call(apps[which], method, path, headers, body, query)
    assert_clean(status, response_headers, data)
    assert status in (200, 404, 405, 503)
    if status == 200 and path.startswith("/hirefire") and path != "/hirefire/test":
        # figures only behind the exact token, on the exact routes
        sent = headers.get("HireFire-Token") if path.rstrip("/") == "/hirefire" else path.split("/")[2]
        assert sent == TOKEN and method in ("GET", "HEAD")
    assert not [r for r in records.records if r.levelno >= logging.ERROR], records.text()


@FUZZ
@given(
    candidate=st.one_of(
        latin1(80),
        st.text(max_size=80).map(lambda t: t.encode("utf-8", "surrogatepass").decode("latin-1")),  # UTF-8, as sent
        st.sampled_from([TOKEN[:-1], TOKEN + "x", TOKEN.upper()]),
    )
)
@example(candidate="")
@example(candidate="development")
def test_a_wrong_token_is_answered_exactly_like_an_unknown_path(apps, candidate):
    app = apps["healthy"]
    unknown = call(app, "GET", "/no/such/path", {})
    by_header = call(app, "GET", "/hirefire", {"HireFire-Token": candidate})
    if candidate == TOKEN:
        assert by_header[0] == 200
        return
    assert by_header == unknown
    path = "/hirefire/" + candidate + "/info"
    if "/" not in candidate and candidate:
        assert call(app, "GET", path, {}) == unknown
        assert call(app, "HEAD", path, {}) == call(app, "HEAD", "/no/such/path", {})
        # other methods: the route answers 405 whether the token is right or wrong
        assert call(app, "POST", path, {}) == call(app, "POST", f"/hirefire/{TOKEN}/info", {})


def test_the_right_token_on_both_routes_returns_the_figures(apps):
    for path, headers in ((f"/hirefire/{TOKEN}/info", {}), ("/hirefire", {"HireFire-Token": TOKEN})):
        status, _, data = call(apps["healthy"], "GET", path, headers)
        assert (status, json.loads(data)) == (
            200,
            [{"name": "worker", "value": 3, "quantity": 3}, {"name": "mailer", "value": 4, "quantity": 4}],
        )
        status, _, data = call(apps["failing"], "GET", path, headers)
        assert (status, json.loads(data)["procs"]) == (503, ["worker"])


def test_tokens_are_compared_with_hmac_compare_digest_only(apps, monkeypatch):
    """Structural proof of the constant-time check (no timing measurement): every comparison goes through
    ``hmac.compare_digest``, whatever the candidate's length, and the method compares nothing else."""
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    for candidate in ("x", TOKEN[:-1], TOKEN + "-longer", TOKEN):
        call(apps["healthy"], "GET", f"/hirefire/{candidate}/info", {})
        call(apps["healthy"], "GET", "/hirefire", {"HireFire-Token": candidate})
    sent = [b for _, b in calls]
    expected = {a for a, _ in calls}
    assert expected == {TOKEN.encode()}
    assert sent == [c.encode() for c in ("x", TOKEN[:-1], TOKEN + "-longer", TOKEN) for _ in range(2)]

    tree = ast.parse(textwrap.dedent(inspect.getsource(hirefire.Token.matches)))
    compares = [node for node in ast.walk(tree) if isinstance(node, ast.Compare)]
    assert all(isinstance(op, ast.Is) for node in compares for op in node.ops)  # only `candidate is None`
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in ("startswith", "find")]


class Broken(Collection):
    """A collection whose cycle crashes: the app's last line of defence (a 500) is all that is left to test."""

    def snapshot(self):
        raise RuntimeError("a bug")


def test_an_internal_error_is_a_bare_500_and_its_log_line_hides_the_token(records):
    app = ExporterApp(Broken([Fixed("mailer")]), TOKEN)
    before = len(records.records)
    status, _, data = call(app, "GET", f"/hirefire/{TOKEN}/info", {})
    assert status == 500 and b"Traceback" not in data and TOKEN.encode() not in data
    (record,) = records.records[before:]
    assert record.getMessage() == "hirefire-exporter: error while serving /hirefire/<token>/info"
    assert TOKEN not in records.text()
    records.records[before:] = []  # the fuzz tests assert that nothing else logged an error


# X-Request-Start


queue_time = pytest.importorskip("hirefire_exporter.queue_time")

STAMPS = st.one_of(
    latin1(100),
    st.binary(max_size=100),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**30), 10**30).map(str),
    st.integers(0, 10**20).map(lambda n: f"t={n}"),
    st.floats(1e9, 1e11).map(lambda f: f"t={f:.6f}"),
    st.floats(1e12, 1e14).map(lambda f: f"{f:.0f}, {f:.0f}"),
    st.sampled_from(["", "t=", "t=nan", "1e400", "-1e400", "0x1p40", "1_700_000_000_000", "9" * 5000]),
    st.just("\u0661\u0667" + "\u0660" * 11),  # 1700000000000 in Arabic-Indic digits: float() accepts it
)


@FUZZ
@given(value=STAMPS, now=st.floats(1.7e9, 1.8e9))
def test_x_request_start_garbage_is_ignored_and_good_stamps_give_a_non_negative_queue_time(value, now):
    started = queue_time.parse_request_start(value)
    assert started is None or 1e9 <= started < 1e11
    seconds = queue_time.queue_seconds(value, now)
    assert seconds is None or seconds >= 0.0
    assert (seconds is None) == (started is None)


@FUZZ
@given(value=latin1(120), path=st.sampled_from(["/", "/app/page", "/hirefire/test"]))
def test_the_wsgi_middleware_answers_every_request_whatever_its_x_request_start(value, path, capsys):
    from hirefire_exporter.contrib.wsgi import HireFireMiddleware

    def inner(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"app"]

    timer = queue_time.QueueTimer(log=True)
    wrapped = HireFireMiddleware(inner, [Fixed("mailer")], TOKEN, queue_time=timer)
    status, _, data = call(wrapped, "GET", path, {"X-Request-Start": value})  # type: ignore[arg-type]
    assert status == 200 and data == (b"HireFire Middleware Found!" if path == "/hirefire/test" else b"app")
    lines = capsys.readouterr().out.splitlines()
    assert all(line.startswith("[hirefire:router] queue=") and line.endswith("ms") for line in lines)
    wrapped.exporter.collection.close()


@FUZZ
@given(
    headers=st.lists(
        st.tuples(st.sampled_from([b"x-request-start", b"X-Request-Start", b"x"]), st.binary()), max_size=3
    )
)
def test_asgi_scopes_with_any_x_request_start_bytes_are_measured_or_ignored(headers):
    timer = queue_time.QueueTimer(log=False)
    seconds = timer.observe_scope({"type": "http", "headers": headers})
    assert seconds is None or seconds >= 0.0


# The standalone server, over real sockets


@pytest.fixture(scope="module")
def server(redis_server, tmp_path_factory):
    """``hirefire-exporter serve`` on a free port, logging at DEBUG to a file the tests read afterwards."""
    import redis

    host, port = redis_server
    url = f"redis://{host}:{port}/{REDIS_DB}"
    connection = redis.Redis.from_url(url)
    connection.flushdb()
    for _ in range(2):
        rq.Queue("default", connection=connection).enqueue("rq_jobs.noop")
    tmp = tmp_path_factory.mktemp("serve")
    config = tmp / "exporter.toml"
    config.write_text(
        f"""
token = "{TOKEN}"
max_age = 1
timeout = 2
[[procs]]
name = "worker"
backend = "rq"
url = "{url}"
[[procs]]
name = "down"
backend = "rq"
url = "redis://app:{BROKER_PASSWORD}@127.0.0.1:{free_port()}/0"
"""
    )
    http_port = free_port()
    log = tmp / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hirefire_exporter.cli",
                "serve",
                "--config",
                str(config),
                "--host",
                "127.0.0.1",
                "--port",
                str(http_port),
                "--log-level",
                "DEBUG",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_until(lambda: _port_open(http_port), 15, "the server to listen")
    yield http_port, process, log
    process.terminate()
    process.wait(10)
    connection.flushdb()
    connection.close()


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, read until the server closes the connection (or stops sending)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may answer (431, 400) and close before reading everything
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
    return b"".join(chunks)


def status_of(response: bytes) -> int | None:
    if not response.startswith(b"HTTP/1."):
        return None
    return int(response.split(b" ", 2)[1])


RAW_METHODS = st.one_of(METHODS.map(str.encode), st.binary(min_size=1, max_size=10).filter(lambda b: b" " not in b))
RAW_TARGETS = st.one_of(
    ROUTES.map(str.encode),
    st.binary(max_size=200).map(lambda b: b"/" + b.replace(b" ", b"").replace(b"\r", b"").replace(b"\n", b"")),
    st.just(b"/hirefire/" + TOKEN.encode() + b"/info"),
)
RAW_HEADER = st.tuples(
    st.sampled_from([b"HireFire-Token", b"X-Request-Start", b"Accept", b"Transfer-Encoding", b"Content-Length", b"X"]),
    st.one_of(st.binary(max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")), st.just(TOKEN.encode())),
)


@settings(max_examples=120, deadline=None)
@given(
    method=RAW_METHODS,
    target=RAW_TARGETS,
    version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9", b""]),
    headers=st.lists(RAW_HEADER, max_size=4),
    body=st.binary(max_size=100),
)
def test_raw_http_requests_to_the_standalone_server(server, method, target, version, headers, body):
    port, process, _ = server
    lines = [b" ".join(p for p in (method, target, version) if p)]
    lines += [name + b": " + value for name, value in headers]
    lines += [b"Connection: close"]
    response = raw_request(port, b"\r\n".join(lines) + b"\r\n\r\n" + body)
    status = status_of(response)
    assert status is None or status != 500
    text = response.decode("latin-1")
    for leak in LEAKS:
        assert leak not in text
    assert process.poll() is None


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (b"GET /" + b"a" * 1_000_000 + b" HTTP/1.1\r\nConnection: close\r\n\r\n", 431),
        (b"GET /metrics HTTP/1.1\r\nX-Big: " + b"x" * 1_000_000 + b"\r\nConnection: close\r\n\r\n", 431),
        (b"POST /hirefire/test HTTP/1.1\r\nContent-Length: 5000000\r\n\r\n" + b"\xff" * 5_000_000, 405),
        (b"GET /hirefire/\xff\xfe\x00/info HTTP/1.1\r\nConnection: close\r\n\r\n", 400),
        (b"GET /hirefire HTTP/1.1\r\nHireFire-Token: \xff\xfe" + TOKEN.encode() + b"\r\n\r\n", 404),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) * 4, None),  # TLS: closed
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 404),
        (b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nboom\r\n0\r\n\r\n", 400),
    ],
    ids=["1MB-path", "1MB-header", "5MB-body", "non-utf8-path", "non-utf8-token", "tls", "http2", "bad-chunked"],
)
def test_huge_and_binary_input_to_the_standalone_server(server, request_bytes, expected):
    port, process, _ = server
    response = raw_request(port, request_bytes)
    assert status_of(response) == expected
    for leak in LEAKS:
        assert leak not in response.decode("latin-1")
    assert process.poll() is None


def test_the_standalone_server_still_answers_correctly_and_logged_no_secret(server):
    """Runs last in this module: after everything above, the right answers, and a log without secrets or tracebacks."""
    port, _, log = server
    response = raw_request(port, f"GET /hirefire/{TOKEN}/info HTTP/1.1\r\nConnection: close\r\n\r\n".encode())
    assert status_of(response) == 503
    assert json.loads(response.split(b"\r\n\r\n", 1)[1])["procs"] == ["down"]
    metrics = raw_request(port, b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n").decode()
    assert 'hirefire_proc_jobs{proc="worker"} 2.0' in metrics and 'hirefire_proc_up{proc="down"} 0.0' in metrics
    time.sleep(0.2)
    text = log.read_text(encoding="latin-1")
    assert "read failed" in text  # the broker failure was logged (at DEBUG and above)...
    assert BROKER_PASSWORD not in text and TOKEN not in text  # ...without its password, and no token anywhere
    assert "Traceback" not in text
