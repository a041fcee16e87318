"""No byte sequence of a configured password or token comes out of the exporter, however the URL is broken.

Properties over generated passwords (any printable characters, ``/ # ? @ : %`` and spaces included, non-ASCII,
4 to 40 characters) and broken URL shapes (not percent-encoded, host or port left out, password read as the port,
two ``@``, mistyped schemes), for every backend that takes a URL, on every way out: the configuration error, the
command line's stdout and stderr with every log record at DEBUG, the log records and answers of a collection
against a broker that refuses, rejects the password or cannot be resolved, and the error of a procs module that
reads ``REDIS_URL`` from the environment and fails at import.

What "a byte sequence of the password" means here (:func:`leaks`): the password in any of the forms it is printed
in (as is, percent-encoded or decoded, ``repr()``'d); and, because an unencoded ``/ ? # @ :`` splits it into pieces
that parsers read as a port, a host or a path, every piece (and every prefix and suffix cut at such a character) of
4 characters or more anywhere, and every piece of any length quoted as a whole value (``'ab'``). A piece that is a
port number is not one. So that a hit is a leak and not a coincidence, a password is only drawn when none of this
appears in the URL's own scaffold or in what the same path prints for a neutral password.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
from conftest import REDIS_DB, REDIS_HOST, REDIS_PORT, free_port
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from werkzeug.test import Client

from hirefire_exporter.app import create_app
from hirefire_exporter.cli import main
from hirefire_exporter.loading import load_proc
from hirefire_exporter.procs.base import Proc, ProcConfigError
from hirefire_exporter.redaction import SECRETS, SecretRegistry

PROPERTY = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
#: A port nothing listens on (refused at once), and a name no resolver knows.
CLOSED = free_port()
AMQP_PORT = 5672
HOSTS = {
    "refused": ("127.0.0.1", CLOSED),
    "wrong password": (REDIS_HOST, REDIS_PORT),  # the real brokers: reachable, the password is wrong
    "unresolvable": ("nohost.invalid", 6379),
}
DELIMITERS = re.compile(r"[:/?#\[\]@;]")


# What counts as a leak


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and int(text) <= 65535


def needles(password: str) -> set[str]:
    """Every string whose presence in an output is a leak of ``password`` (see the module docstring)."""
    found = {password, quote(password, safe=""), repr(password)[1:-1]}
    decoded = unquote(password)
    if len(decoded) >= 4:
        found.add(decoded)
    cuts = [m.start() for m in DELIMITERS.finditer(password)]
    pieces = set(DELIMITERS.split(password))
    pieces |= {password[:cut] for cut in cuts} | {password[cut + 1 :] for cut in cuts}
    for piece in pieces:
        if piece:
            found |= {f"'{piece}'", f'"{piece}"'}
        if len(piece) >= 4 and not _is_port(piece):
            found |= {piece, piece.lower()}
    return found


def leaks(password: str, *texts: str) -> list[str]:
    text = "\n".join(texts)
    return sorted(needle for needle in needles(password) if needle in text)


# URL shapes


@dataclass(frozen=True)
class Backend:
    name: str
    scheme: str
    path: str  # the database or vhost
    broker_port: int

    def table(self, url: str, token: str = "") -> str:
        options = {
            "rq": 'backend = "rq"',
            "celery-redis": 'backend = "celery"',
            "celery-amqp": 'backend = "celery"',
            "hotqueue": 'backend = "hotqueue"',
            "queues": 'backend = "queues"',
            "huey": 'backend = "huey"\nstorage = "redis"',
            "dramatiq-redis": 'backend = "dramatiq"',
            "dramatiq-amqp": 'backend = "dramatiq"',
        }[self.name]
        token_line = f"token = {json.dumps(token)}\n" if token else ""
        return f'{token_line}[[procs]]\nname = "worker"\n{options}\nqueues = ["default"]\nurl = {json.dumps(url)}\n'

    def proc(self, url: str):
        from hirefire_exporter.loading import BACKENDS, import_dotted

        kind = self.name.partition("-")[0]
        cls = import_dotted(BACKENDS[kind], "test")
        extra = {"storage": "redis"} if kind == "huey" else {}
        return cls("worker", queues=["default"], url=url, socket_timeout=1.0, **extra)


BACKENDS = [
    Backend("rq", "redis", f"/{REDIS_DB}", REDIS_PORT),
    Backend("celery-redis", "redis", f"/{REDIS_DB}", REDIS_PORT),
    Backend("celery-amqp", "amqp", "//", AMQP_PORT),
    Backend("hotqueue", "redis", f"/{REDIS_DB}", REDIS_PORT),
    Backend("queues", "redis", f"/{REDIS_DB}", REDIS_PORT),
    Backend("huey", "redis", f"/{REDIS_DB}", REDIS_PORT),
    Backend("dramatiq-redis", "redis", f"/{REDIS_DB}", REDIS_PORT),
    Backend("dramatiq-amqp", "amqp", "/%2F", AMQP_PORT),
]

#: name -> URL template; {s} scheme, {pw} password, {host}, {port}, {path}
SHAPES = {
    "not encoded": "{s}://user:{pw}@{host}:{port}{path}",
    "percent-encoded": "{s}://user:{qpw}@{host}:{port}{path}",
    "no user": "{s}://:{pw}@{host}:{port}{path}",
    "port left out": "{s}://user:{pw}@{host}{path}",
    "host left out": "{s}://user:{pw}{path}",
    "password read as the port": "{s}://:{pw}{path}",
    "two @": "{s}://user:{pw}@{pw}@{host}:{port}{path}",
    "scheme with one slash": "{s}:/user:{pw}@{host}:{port}{path}",
    "scheme without colon": "{s}//user:{pw}@{host}:{port}{path}",
    "scheme with three slashes": "{s}:///user:{pw}@{host}:{port}{path}",
    "scheme without slashes": "{s}:user:{pw}@{host}:{port}{path}",
    "misspelt scheme": "{s}x://user:{pw}@{host}:{port}{path}",
}
#: Shapes that still parse into a host and a port (for collection and HTTP), given a password without / ? # [ ].
PARSING = ["not encoded", "percent-encoded", "no user", "port left out", "two @"]
#: Without an '@', a number after the ':' is a port and the URL a valid one: such a password cannot be told apart.
NO_AT = {"host left out", "password read as the port"}


def build(shape: str, backend: Backend, host: str, password: str) -> str:
    address, port = HOSTS[host]
    port = backend.broker_port if host == "wrong password" else port
    return SHAPES[shape].format(
        s=backend.scheme, pw=password, qpw=quote(password, safe=""), host=address, port=port, path=backend.path
    )


def plausible(shape: str, password: str) -> bool:
    """Whether the shape keeps the password a password (see :data:`NO_AT`): in a URL without '@', a password with
    an '@' makes the text after it the host, and one that starts with a number is a port."""
    if shape in NO_AT:
        port = re.match(r"[0-9]+(?=[:/?#\[\]@;]|$)", password)
        return "@" not in password and not (port and _is_port(port.group()))
    return True


def fails(backend: Backend, shape: str, host: str) -> bool:
    """Whether the broker refuses the URL: the test Redis has no password, and takes one given without a user."""
    return not (backend.scheme == "redis" and host == "wrong password" and shape == "no user")


PRINTABLE = st.characters(blacklist_categories=("Cc", "Cs", "Co", "Cn", "Zl", "Zp"))
URL_SYNTAX = st.sampled_from(list("/#?@:% %[]"))
passwords = st.text(
    st.one_of(URL_SYNTAX, st.characters(min_codepoint=0x21, max_codepoint=0x7E), PRINTABLE), min_size=4, max_size=40
).filter(lambda p: p.strip())
#: Passwords a URL still parses with (no '/', '?', '#' or '[', which end the host part, nor ';', which separates
#: Celery's failover URLs).
parsing_passwords = passwords.filter(lambda p: not set(p) & set("/?#[];"))
#: HireFire tokens (marked, so that a password drawn alike does not hold one).
tokens = st.text(
    st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"), min_size=8, max_size=32
).map(lambda text: f"tok-{text}-en")


def neutral(password: str) -> str:
    """A password of the same length made of a letter the outputs are checked against."""
    return "Q" * len(password)


def fresh() -> None:
    """Each example starts with no registered secret, as a new process would (conftest clears after each test)."""
    SECRETS.clear()


# Configuration errors


def configuration_error(backend: Backend, url: str) -> str:
    try:
        load_proc(backend.proc(url))
    except ProcConfigError as exc:
        return str(exc)
    return ""


@PROPERTY
@given(
    password=passwords,
    backend=st.sampled_from(BACKENDS),
    shape=st.sampled_from(sorted(SHAPES)),
    host=st.sampled_from(sorted(HOSTS)),
)
def test_no_configuration_error_quotes_any_part_of_the_password(password, backend, shape, host):
    assume(plausible(shape, password))
    url = build(shape, backend, host, password)
    scaffold = build(shape, backend, host, "") + configuration_error(backend, build(shape, backend, host, "Q"))
    assume(not leaks(password, scaffold))
    fresh()
    message = configuration_error(backend, url)
    assert not leaks(password, message), (url, message)


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        # a port followed by the sentence's punctuation is still a port
        ("API http://127.0.0.1:15672: HTTP Error 401", "API http://127.0.0.1:15672: HTTP Error 401"),
        ("(at http://127.0.0.1:15672), then", "(at http://127.0.0.1:15672), then"),
        ("see redis://h:6379.", "see redis://h:6379."),
        # a password read as the port is masked however the sentence goes on
        ("API redis://app:Hunt3rSecret: failed", "API redis://app:*** failed"),
        ("(redis://app:Hunt3rSecret), then", "(redis://app:*** then"),
        ("redis://app:123:secret/0", "redis://app:***/0"),
        ("redis://app:1234!/0", "redis://app:***/0"),
        ("redis://app:123abc: x", "redis://app:*** x"),
    ],
)
def test_unknown_urls_keep_their_port_and_lose_their_password(text, scrubbed):
    assert SECRETS.scrub(text) == scrubbed


@pytest.mark.parametrize(
    ("url", "password"),
    [
        ("redis://:abc/def@127.0.0.1:6394/0", "abc/def"),
        ("redis://:abc#def@127.0.0.1:6394/0", "abc#def"),
        ("redis://:abc?def@127.0.0.1:6394/0", "abc?def"),
        ("redis://:abc?def@nohost.invalid:6394/0", "abc?def"),
        ("redis://app:Hunt3rSecret/0", "Hunt3rSecret"),
    ],
)
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b.scheme == "redis"], ids=lambda b: b.name)
def test_the_reviews_urls_fail_naming_neither_the_password_nor_a_piece_of_it(backend, url, password):
    message = configuration_error(backend, url)
    assert "proc 'worker': bad Redis URL: its port is not a number from 0 to 65535" in message, message
    assert not leaks(password, message) and "abc" not in message and "def@" not in message


def test_an_amqp_password_with_a_hash_fails_naming_no_part_of_it():
    message = configuration_error(BACKENDS[2], "amqp://guest:abc#def@127.0.0.1:5672//")
    assert "proc 'worker': bad Celery broker URL: its port is not a number" in message, message
    assert "abc" not in message and "def" not in message


# The command line, in process (capsys, caplog at DEBUG)


def run_cli(tmp_path: Path, capsys, caplog, config: str, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    caplog.clear()
    path = tmp_path / "exporter.toml"
    path.write_text(config, encoding="utf-8")
    code = main(["collect", "--config", str(path), "--timeout", "1", *args])
    captured = capsys.readouterr()
    records = "\n".join(f"{r.getMessage()}\n{r.exc_text or ''}\n{r.stack_info or ''}" for r in caplog.records)
    return code, "\n".join((captured.out, captured.err, caplog.text, records))


@pytest.fixture
def cli(tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # main() installs its own
    caplog.set_level(logging.DEBUG)
    cache: dict[tuple, str] = {}

    def run(config_for, key: tuple, password: str) -> tuple[int, str, str]:
        """(exit code, everything printed or logged, the same for a neutral password of the same length)."""
        if key not in cache:
            cache[key] = run_cli(tmp_path, capsys, caplog, config_for(neutral(password)))[1]
        fresh()
        code, output = run_cli(tmp_path, capsys, caplog, config_for(password))
        return code, output, cache[key]

    return run


@settings(PROPERTY, max_examples=80)
@given(
    password=passwords,
    token=tokens,
    backend=st.sampled_from(BACKENDS),
    shape=st.sampled_from(sorted(SHAPES)),
    host=st.sampled_from(sorted(HOSTS)),
)
def test_the_command_line_prints_and_logs_no_part_of_a_password_or_the_token(
    cli, password, token, backend, shape, host
):
    assume(plausible(shape, password) and fails(backend, shape, host))
    assume(not leaks(password, build(shape, backend, host, "")) and token not in password)
    code, output, baseline = cli(
        lambda pw: backend.table(build(shape, backend, host, pw), token),
        (backend, shape, host, len(password)),
        password,
    )
    assume(not leaks(password, baseline))
    assert code in (1, 2), output  # a configuration error, or a proc that failed: never a 0 reading
    assert not leaks(password, output), (build(shape, backend, host, password), leaks(password, output), output)
    assert token not in output


# A collection and its answers (Werkzeug test client over create_app)


class QuotingProc(Proc):
    """A user's own proc that reads ``REDIS_URL`` and fails quoting it, as is and ``repr()``'d."""

    queues = ["default"]

    def quantity(self, **kwargs) -> int:
        url = os.environ["REDIS_URL"]
        raise ConnectionError(f"cannot reach {url!r}: no answer from {url}")


@settings(PROPERTY, max_examples=80)
@given(
    password=parsing_passwords,
    token=tokens,
    backend=st.sampled_from(BACKENDS),
    shape=st.sampled_from(PARSING),
    host=st.sampled_from(sorted(HOSTS)),
)
def test_a_failed_collection_logs_and_answers_no_part_of_a_password_or_the_token(
    caplog, monkeypatch, password, token, backend, shape, host
):
    """A backend's proc whose broker refuses, rejects the password or cannot be resolved, beside a user's proc that
    fails quoting the same URL from the environment: every log record at every level, the procs' errors, and the
    answers of ``/hirefire/<token>/info``, ``/hirefire`` and ``/metrics``."""
    caplog.set_level(logging.DEBUG)
    assume(not leaks(password, build(shape, backend, host, "")) and token not in password)
    assume(fails(backend, shape, host))

    def outputs(pw: str) -> str:
        caplog.clear()
        url = build(shape, backend, host, pw)
        monkeypatch.setenv("REDIS_URL", url)
        app = create_app([backend.proc(url), QuotingProc("custom")], token=token, timeout=1)
        try:
            client = Client(app)
            info = client.get(f"/hirefire/{token}/info")
            header = client.get("/hirefire", headers={"HireFire-Token": token})
            metrics = client.get("/metrics")
            errors = [status.error or "" for status in app.collection.latest.procs]
        finally:
            app.collection.close()
        assert info.status_code == header.status_code == 503 and metrics.status_code == 200
        assert 'hirefire_proc_up{proc="worker"} 0.0' in metrics.text
        assert 'hirefire_proc_up{proc="custom"} 0.0' in metrics.text
        records = [f"{r.getMessage()}\n{r.exc_text or ''}" for r in caplog.records]
        series = re.sub(r" \S+$", "", metrics.text, flags=re.MULTILINE)  # the values: durations, timestamps
        return "\n".join([info.text, header.text, series, caplog.text, *records, *errors])

    baseline = outputs(neutral(password))
    assume(not leaks(password, baseline))
    fresh()
    output = outputs(password)
    assert not leaks(password, output), (build(shape, backend, host, password), leaks(password, output), output)
    assert token not in output
    assert sum(r.levelno >= logging.WARNING for r in caplog.records) >= 2  # both failures were logged, scrubbed


# A procs module that reads REDIS_URL and fails at import

MODULES = {
    "README": """
        import os
        import redis
        from hirefire_exporter.procs.rq import RQProc

        client = redis.Redis.from_url(os.environ["REDIS_URL"])

        class WorkerProc(RQProc):
            name = "worker"
            queues = ["default"]
            connection = client
    """,
    "quotes the URL": """
        import os
        raise RuntimeError(f"cannot reach {os.environ['REDIS_URL']}")
    """,
    "quotes its repr": """
        import os
        raise ValueError("bad broker: %r" % (os.environ["REDIS_URL"],))
    """,
}
_names = itertools.count()


@settings(PROPERTY, max_examples=80)
@given(
    password=passwords,
    shape=st.sampled_from(sorted(SHAPES)),
    host=st.sampled_from(sorted(HOSTS)),
    module=st.sampled_from(sorted(MODULES)),
)
def test_a_procs_module_failing_with_the_environments_url_prints_no_part_of_its_password(
    tmp_path_factory, capsys, caplog, monkeypatch, password, shape, host, module
):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    caplog.set_level(logging.DEBUG)
    assume(plausible(shape, password))
    backend = BACKENDS[0]
    assume(not leaks(password, build(shape, backend, host, "") + MODULES[module]))
    directory = tmp_path_factory.mktemp("procs")
    monkeypatch.syspath_prepend(str(directory))

    def run(pw: str) -> str:
        """Everything printed and logged (whatever the exit code: a mistyped scheme can make the user's own client
        read localhost)."""
        name = f"leaky_procs_{next(_names)}"
        (directory / f"{name}.py").write_text(textwrap.dedent(MODULES[module]))
        monkeypatch.setenv("REDIS_URL", build(shape, backend, host, pw))
        capsys.readouterr()
        caplog.clear()
        main(["collect", "--procs", f"{name}.WorkerProc", "--timeout", "1"])
        captured = capsys.readouterr()
        return "\n".join((captured.out, captured.err, caplog.text))

    assume(not leaks(password, run(neutral(password))))
    fresh()
    output = run(password)
    assert not leaks(password, output), (build(shape, backend, host, password), output)


# The rule for short secrets, and the log filter


def test_a_short_password_is_masked_where_it_stands_as_a_value_and_leaves_other_words_alone():
    secrets = SecretRegistry(environ={})
    secrets.register_url("redis://app:x@broker:6379/0")
    message = "proc 'worker': expected a number, got 'x'; from redis://app:x@broker:6379/0 at x=3"
    assert (
        secrets.scrub(message)
        == "proc 'worker': expected a number, got '***'; from redis://app:***@broker:6379/0 at x=3"
    )


def test_the_environments_urls_and_tokens_are_secrets_before_any_configuration_is_read():
    secrets = SecretRegistry(
        environ={
            "CELERY_BROKER_URL": "amqp://guest:s3cr/et@mq:5672//",
            "HIREFIRE_TOKEN": "t0ken-x",
            "PATH": "/usr/bin:/bin",
        }
    )
    assert secrets.scrub("from amqp://guest:s3cr/et@mq: got 's3cr', token t0ken-x in /usr/bin") == (
        "from amqp://guest:***@mq: got '***', token *** in /usr/bin"
    )


def test_a_logged_traceback_is_scrubbed_for_every_handler(caplog, monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://app:Hunt3rSecret@broker/0")
    log = logging.getLogger("hirefire_exporter")
    try:
        raise ConnectionError(f"cannot reach {os.environ['REDIS_URL']!r} (password 'Hunt3rSecret')")
    except ConnectionError:
        log.exception("proc %r: read failed with %s", "worker", "Hunt3rSecret")
    (record,) = caplog.records
    assert "Hunt3rSecret" not in caplog.text and record.exc_info is None
    assert "ConnectionError: cannot reach 'redis://app:***@broker/0' (password '***')" in record.exc_text


def test_an_uncaught_exception_the_command_prints_is_scrubbed(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://app:Zebra-Cake-42@mq//")
    main(["collect", "--procs", "nowhere.WorkerProc"])
    try:
        raise OSError("cannot bind: amqp://app:Zebra-Cake-42@mq//, password 'Zebra-Cake-42'")
    except OSError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    err = capsys.readouterr().err
    assert "OSError: cannot bind: amqp://app:***@mq//, password '***'" in err and "Zebra" not in err


# Real processes


def run_command(tmp_path: Path, env: dict[str, str], *args: str, config: str | None = None) -> str:
    if config is not None:
        (tmp_path / "exporter.toml").write_text(config)
        args = ("--config", str(tmp_path / "exporter.toml"), *args)
    done = subprocess.run(
        [sys.executable, "-m", "hirefire_exporter.cli", "collect", "--log-level", "DEBUG", "--timeout", "1", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path]), **env},
    )
    assert done.returncode in (1, 2), done.stdout + done.stderr
    return done.stdout + done.stderr


def test_the_commands_output_holds_no_password_from_a_procs_module_that_fails_at_import(tmp_path):
    (tmp_path / "myapp_procs.py").write_text(textwrap.dedent(MODULES["README"]))
    output = run_command(tmp_path, {"REDIS_URL": "redis://app:Hunt3rSecret/0"}, "--procs", "myapp_procs.WorkerProc")
    assert "cannot import 'myapp_procs'" in output and "(at myapp_procs.py:6)" in output
    assert "Hunt3rSecret" not in output


def test_the_commands_output_holds_no_piece_of_the_reviews_passwords(tmp_path):
    for url in ("redis://:abc/def@127.0.0.1:6394/0", "redis://:abc#def@nohost.invalid:6394/0"):
        output = run_command(tmp_path, {}, config=BACKENDS[0].table(url))
        assert "bad Redis URL" in output and "abc" not in output and "def@" not in output
    output = run_command(tmp_path, {}, config=BACKENDS[2].table("amqp://guest:abc#def@127.0.0.1:5672//"))
    assert "bad Celery broker URL" in output and "abc" not in output


def test_other_libraries_log_lines_printed_by_the_command_are_scrubbed(tmp_path):
    """A third-party logger (here the user's own) that logs the environment's URL at import and at collection."""
    (tmp_path / "chatty_procs.py").write_text(
        textwrap.dedent(
            """
            import logging, os
            from hirefire_exporter.procs.base import Proc

            logging.getLogger("chatty").warning("connecting to %s", os.environ["BROKER_URL"])

            class WorkerProc(Proc):
                name = "worker"
                queues = ["default"]

                def quantity(self, **kwargs):
                    password = os.environ["BROKER_URL"].split("@")[0].split(":")[2]
                    logging.getLogger("chatty.read").debug("password %r", password)
                    raise ConnectionError("refused by " + os.environ["BROKER_URL"])
            """
        )
    )
    output = run_command(
        tmp_path, {"BROKER_URL": "amqp://app:Zebra-Cake-42@mq//"}, "--procs", "chatty_procs.WorkerProc"
    )
    assert "WARNING chatty: connecting to amqp://app:***@mq//" in output
    assert "DEBUG chatty.read: password '***'" in output and "refused by amqp://app:***@mq//" in output
    assert "Zebra" not in output and "Cake" not in output
