"""Broken configuration fails at start-up, with one clear line naming the culprit, and never a password.

Every case runs the real command line (``hirefire-exporter collect --config ...``): exit status 2, exactly one line on
stderr, no traceback, and the broker password of the URL (always ``s3cretpw`` here) nowhere in it. A bad value must
never survive start-up to turn into a failed read (or a wrong 0) on the first HireFire poll.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import free_port

from hirefire_exporter.app import create_app
from hirefire_exporter.cli import main
from hirefire_exporter.procs.base import ProcConfigError
from hirefire_exporter.procs.rq import RQProc

PASSWORD = "s3cretpw"


def rq_table(url: str = "redis://127.0.0.1:6379/0", extra: str = "", name: str = "worker") -> str:
    return f'[[procs]]\nname = "{name}"\nbackend = "rq"\nurl = "{url}"\n{extra}\n'


CASES = {
    # the file itself
    "bad TOML": ('[[procs]\nname = "worker"\n', "not valid TOML: Expected ']]'"),
    "not UTF-8": (b'token = "\xff\xfe"\n', "not UTF-8 text (byte 9)"),
    "unknown top-level key": ('tokn = "x"\n' + rq_table(), "unknown key 'tokn'; did you mean 'token'?"),
    "procs not a list": ('procs = {name = "worker"}\n', "procs must be a list of dotted paths or [[procs]] tables"),
    "no procs": ('token = "x"\n', "no procs configured"),
    # durations
    "negative timeout": ("timeout = -1\n" + rq_table(), "timeout must be a number of seconds above 0 and up"),
    "NaN timeout": (
        "timeout = nan\n" + rq_table(),
        "timeout must be a number of seconds above 0 and up to 31536000, got nan",
    ),
    "infinite stale_after": ("stale_after = inf\n" + rq_table(), "stale_after must be a number of seconds"),
    "huge timeout": ("timeout = 99999999999999999999\n" + rq_table(), "timeout must be a number of seconds"),
    "boolean max_age": ("max_age = true\n" + rq_table(), "max_age must be a number of seconds from 0 to 31536000"),
    # procs
    "unknown backend": (rq_table().replace('"rq"', '"sidekiq"'), "backend must be one of"),
    "missing backend": ('[[procs]]\nname = "worker"\n', "backend must be one of"),
    "duplicate names": (
        rq_table() + rq_table(extra='queues = ["other"]'),
        "two procs are named 'worker'; each Procfile entry needs its own",
    ),
    "bad proc name": (rq_table(name="web worker"), "the name must be a Procfile process type"),
    "unknown option (typo)": (rq_table(extra='queue = ["default"]'), "unknown option 'queue'"),
    "queues not a list": (rq_table(extra="queues = 5"), "queues must be a list of queue names, got 5"),
    "empty queue name": (rq_table(extra='queues = [""]'), "each entry of queues must be a queue name or pattern"),
    "unknown metric": (rq_table(extra='metric = "speed"'), "metric must be one of size, latency, got 'speed'"),
    "socket_timeout text": (rq_table(extra='socket_timeout = "5"'), "socket_timeout must be a number of seconds above"),
    "socket_timeout zero": (rq_table(extra="socket_timeout = 0"), "socket_timeout must be a number of seconds above 0"),
    "connection is a string": (
        '[[procs]]\nname = "worker"\nbackend = "rq"\nconnection = "redis://x/0"\n',
        "`connection` must be a redis.Redis client, got str",
    ),
    # URL syntax
    "URL not a string": (rq_table().replace('"redis://127.0.0.1:6379/0"', "6379"), "`url` must be a Redis URL string"),
    "empty URL": (rq_table(url=""), "needs a Redis `connection` or `url`"),
    "port not a number": (rq_table(url=f"redis://:{PASSWORD}@host:port/0"), "bad Redis URL: its port is not a number"),
    "port out of range": (
        rq_table(url=f"redis://:{PASSWORD}@host:99999/0"),
        "its port is not a number from 0 to 65535",
    ),
    "host forgotten": (
        rq_table(url=f"redis://app:{PASSWORD}/0"),
        "its port is not a number from 0 to 65535 (host left out?",
    ),
    "one-letter user": (rq_table(url=f"redis://u:{PASSWORD}@host:port/0"), "proc 'worker': bad Redis URL: its port"),
    "wrong scheme": (rq_table(url=f"http://app:{PASSWORD}@host/0"), "Redis URL must specify one of the following"),
    "database not a number": (rq_table(url=f"redis://:{PASSWORD}@host/zero"), "database in the Redis URL must be a"),
    "bad query option": (rq_table(url=f"redis://:{PASSWORD}@host/0?db=x"), "Invalid value for 'db'"),
    "broken IPv6": (rq_table(url=f"redis://:{PASSWORD}@[::1/0"), "bad Redis URL: its host cannot be parsed"),
    "huey bad URL": (
        f'[[procs]]\nname = "worker"\nbackend = "huey"\nstorage = "redis"\nurl = "redis://:{PASSWORD}@h:xx/0"\n',
        "its port is not a number from 0 to 65535",
    ),
    "celery Redis URL with a bad port": (
        f'[[procs]]\nname = "worker"\nbackend = "celery"\nurl = "redis://:{PASSWORD}@host:port/0"\n',
        "its port is not a number from 0 to 65535",
    ),
    "huey unknown storage": ('[[procs]]\nname = "worker"\nbackend = "huey"\nstorage = "mongo"\n', "`storage` one of"),
    "hotqueue bad URL": (
        f'[[procs]]\nname = "worker"\nbackend = "hotqueue"\nqueues = ["a"]\nurl = "redis://:{PASSWORD}@h:xx/0"\n',
        "its port is not a number from 0 to 65535",
    ),
}

CELERY_CASES = {
    "celery AMQP URL with a bad port": (
        f'[[procs]]\nname = "worker"\nbackend = "celery"\nurl = "amqp://guest:{PASSWORD}@host:port//"\n',
        "bad Celery broker URL: its port is not a number from 0 to 65535",
    ),
    "celery unknown transport": (
        f'[[procs]]\nname = "worker"\nbackend = "celery"\nurl = "sqs2://u:{PASSWORD}@host//"\n',
        "bad Celery broker URL: No such transport: sqs2",
    ),
}


def run_collect(tmp_path, capsys, content: str | bytes, *flags: str) -> tuple[int, str]:
    path = tmp_path / "exporter.toml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    code = main(["collect", "--config", str(path), "--timeout", "0.5", *flags])
    captured = capsys.readouterr()
    return code, captured.err


def assert_one_clear_line(code: int, err: str, expected: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("hirefire-exporter: configuration error: "), err
    assert expected in err
    assert "Traceback" not in err and PASSWORD not in err


@pytest.mark.parametrize(("content", "expected"), CASES.values(), ids=CASES.keys())
def test_broken_configuration_fails_at_start_up_with_one_clear_line(tmp_path, capsys, content, expected):
    assert_one_clear_line(*run_collect(tmp_path, capsys, content), expected)


@pytest.mark.parametrize(("content", "expected"), CELERY_CASES.values(), ids=CELERY_CASES.keys())
def test_broken_celery_urls_fail_at_start_up(tmp_path, capsys, content, expected):
    assert_one_clear_line(*run_collect(tmp_path, capsys, content), expected)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--timeout", "nan"], "--timeout must be a number of seconds"),
        (["--timeout", "-3"], "--timeout must be a number of seconds"),
        (["--timeout", "inf"], "--timeout must be a number of seconds"),
        (["--timeout", "1e20"], "--timeout must be a number of seconds"),
    ],
)
def test_bad_durations_on_the_command_line(tmp_path, capsys, flags, expected):
    assert_one_clear_line(*run_collect(tmp_path, capsys, rq_table(), *flags), expected)


def test_a_missing_config_file(tmp_path, capsys):
    code = main(["collect", "--config", str(tmp_path / "nope.toml")])
    assert_one_clear_line(code, capsys.readouterr().err, "nope.toml: cannot read it: No such file or directory")


def test_serve_refuses_to_start_and_never_listens(tmp_path):
    """The real process: exit status 2, one line on stderr, nothing listening on the port."""
    config = tmp_path / "exporter.toml"
    config.write_text(rq_table(url=f"redis://app:{PASSWORD}/0") + rq_table(name="worker"))
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "hirefire_exporter.cli", "serve", "--config", str(config), "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "configuration error" in done.stderr
    assert PASSWORD not in done.stderr and "Traceback" not in done.stderr


def test_the_python_api_raises_proc_config_error_naming_the_setting():
    with pytest.raises(ProcConfigError, match="HIREFIRE_PROCS: two procs are named 'worker'"):
        create_app([RQProc("worker", url="redis://h/0"), RQProc("worker", url="redis://h/1")], setting="HIREFIRE_PROCS")
    with pytest.raises(ProcConfigError) as info:
        create_app([RQProc("worker", url=f"redis://:{PASSWORD}@h:port/0")])
    assert PASSWORD not in str(info.value)
