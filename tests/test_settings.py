"""Every setting is checked in one place, whichever way it is given, and a bad one stops start-up with one line.

The refusals run the real command (``python -m hirefire_exporter``) as a subprocess: exit status 2, nothing on
stdout, exactly one line on stderr naming the setting as the user wrote it, no traceback, and never the token or a
password. Each class of input is tried in every shape the review found and its siblings, through every source
(flag, environment variable, TOML key) that the setting has.
"""

from __future__ import annotations

import http.client
import inspect
import json
import math
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import free_port
from hypothesis import given, settings
from hypothesis import strategies as st

from hirefire_exporter import config, hirefire
from hirefire_exporter.app import create_app
from hirefire_exporter.cli import main
from hirefire_exporter.contrib import exporter_app
from hirefire_exporter.procs.base import Proc, ProcConfigError
from hirefire_exporter.procs.queues import QueuesProc
from hirefire_exporter.server import close_server
from hirefire_exporter.settings_check import TOKEN_CHARACTERS

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "s3cretpw"
PREFIX = "hirefire-exporter: configuration error: "


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any exporter setting, importing this checkout's package."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIREFIRE_") and k != "PORT"}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hirefire_exporter", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env or clean_env(),
        cwd=cwd,
    )


def assert_refused(done: subprocess.CompletedProcess, names: str, *secrets: str) -> str:
    """Exit 2, one line naming ``names`` (the setting as given), no traceback, no secret. Returns the line."""
    err = done.stderr
    assert done.returncode == 2, (done.returncode, err)
    assert done.stdout == ""
    assert err.count("\n") == 1 and err.startswith(PREFIX), err
    assert "Traceback" not in err
    assert names in err, err
    for secret in secrets:
        assert secret not in err, err
    return err


def toml(value: object) -> str:
    """A Python value written as TOML."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, list):
        return "[" + ", ".join(map(toml, value)) + "]"
    return json.dumps(value)  # strings (JSON escapes are TOML escapes) and numbers


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "exporter.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


# The refusals through the real command: declared here, run all at once (in parallel) by the ``refusals`` fixture,
# reported one test each.


@dataclass(frozen=True)
class Refusal:
    args: tuple[str, ...]
    names: str  # what the one line must say (the setting as given, and the rule)
    env: tuple[tuple[str, str], ...] = ()
    toml: str | None = None  # a --config file's text
    secrets: tuple[str, ...] = ()


REFUSALS: dict[str, Refusal] = {}


def refusal(key: str, *args: str, names: str, env: dict[str, str] | None = None, **options) -> str:
    assert key not in REFUSALS, key
    REFUSALS[key] = Refusal(("serve", "--procs", "nowhere.P", *args), names, tuple((env or {}).items()), **options)
    return key


@pytest.fixture(scope="module")
def refusals(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    def one(key: str) -> subprocess.CompletedProcess:
        case = REFUSALS[key]
        args = case.args
        if case.toml is not None:
            path = tmp_path_factory.mktemp("config") / "exporter.toml"
            path.write_text(case.toml, encoding="utf-8")
            args = (*args, "--config", str(path))
        return run(*args, env=clean_env(**dict(case.env)))

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(REFUSALS, pool.map(one, REFUSALS)))


# Numbers: every duration and every integer setting, every bad shape, every source

DURATIONS = ["max_age", "stale_after", "timeout", "refresh_wait"]
BAD_SECONDS_TEXT = ["-1", "nan", "inf", "1e308", "abc", ""]
BAD_SECONDS_TOML = [-1, float("nan"), float("inf"), 1e308, 10**20, "5", True, [1]]
INTEGERS = {
    "threads": ["0", "-1", "1025", "1.5", "abc"],
    "connection_limit": ["0", "-1", "1000001", "2.0"],
    "port": ["0", "-1", "65536", "70000", "1e3", "http"],
}
BAD_INTEGERS_TOML = [0, -1, 1.5, "8", True, 10**30]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


for name in DURATIONS:
    for value in BAD_SECONDS_TEXT + (["0"] if name == "timeout" else []):
        refusal(f"{flag(name)}={value}", f"{flag(name)}={value}", names=f"{flag(name)} must be a number of seconds")
    for value in BAD_SECONDS_TOML + ([0] if name == "timeout" else []):
        refusal(f"toml {name} = {toml(value)}", toml=f"{name} = {toml(value)}\n", names=f": {name} must be a number of")
    env_name = config.BY_NAME[name].env
    refusal(f"{env_name}=1e308", env={env_name: "1e308"}, names=f"{env_name} must be a number of seconds")
for name, values in INTEGERS.items():
    for value in values:
        refusal(f"{flag(name)}={value}", f"{flag(name)}={value}", names=f"{flag(name)} must be ")
    for value in BAD_INTEGERS_TOML:
        refusal(f"toml {name} = {toml(value)}", toml=f"{name} = {toml(value)}\n", names=f": {name} must be ")
    env_name = config.BY_NAME[name].env
    refusal(f"{env_name}=0", env={env_name: "0"}, names=f"{env_name} must be ")
refusal(
    "stale_after under max_age from the file",
    "--stale-after",
    "10",
    toml="max_age = 30\n",
    names=": max_age + refresh_wait + timeout = 30 + 0.25 + 3 = 33.25",
)
refusal(
    "the default stale_after under max_age",
    env={"HIREFIRE_MAX_AGE": "120"},
    names="stale_after = 60 must be at least HIREFIRE_MAX_AGE + refresh_wait + timeout = 120 + 0.25 + 3 = 123.25",
)
refusal(
    "refresh_wait in milliseconds",
    "--refresh-wait=250",
    names="stale_after = 60 must be at least max_age + --refresh-wait + timeout = 5 + 250 + 3 = 258",
)
for text in ("maybe", "2"):
    refusal(f"HIREFIRE_METRICS={text}", env={"HIREFIRE_METRICS": text}, names="HIREFIRE_METRICS must be true or false")
for value in (1, "true", [True]):
    refusal(f"toml metrics = {toml(value)}", toml=f"metrics = {toml(value)}\n", names=": metrics must be true or false")
for value in ("", " ", "local host", "bad\x01host"):
    refusal(f"--host={value!r}", f"--host={value}", names="--host must be a host name or address")


@pytest.mark.parametrize("entry", ["create_app", "exporter_app", "Collection"])
def test_every_python_entry_point_holds_the_same_timing_rule(entry):
    from hirefire_exporter.collection import Collection

    build = {"create_app": create_app, "exporter_app": exporter_app, "Collection": Collection}[entry]
    procs = [Constant("worker")]
    with pytest.raises(ProcConfigError, match=r"^stale_after = 8 must be at least max_age \+ refresh_wait \+ timeout"):
        build(procs, max_age=5, stale_after=8)
    with pytest.raises(ProcConfigError, match=r"^timeout must be a number of seconds above 0"):
        build(procs, timeout=0)
    build(procs, max_age=5, stale_after=8.25)  # exactly enough


# Proc names and tube names: '$' matched before a trailing newline


@pytest.mark.parametrize("name", ["worker\n", "worker\r\n", "\nworker", "work er", "worker\x00"])
def test_a_proc_name_with_a_newline_or_space_is_refused(tmp_path, name):
    path = write(tmp_path, f'[[procs]]\nname = {toml(name)}\nbackend = "rq"\nurl = "redis://127.0.0.1/0"\n')
    assert_refused(run("collect", "--config", path), "the name must be a Procfile process type")


@pytest.mark.parametrize("queue", ["emails\n", "emails\r\n"])
def test_a_beanstalkd_tube_name_with_a_trailing_newline_is_refused(queue):
    with pytest.raises(ProcConfigError, match="not beanstalkd tube names"):
        QueuesProc("worker", queues=[queue], host="127.0.0.1").validate()


# Tokens: only what HireFire can present both in the path and in the header

SECRET_TOKEN = "Zq8Kw3Mv7Tn"
UNPRESENTABLE = [
    "tökén",
    "a/b",
    "a?b",
    "a#b",
    "a%20b",
    "a b",
    "a\tb",
    "a\x01b",
    "a\x7fb",
    'a"b',
    "a<b>",
    "a\\b",
    "a{b}",
]
UNPRESENTABLE += ["a|b", "a^b", "a`b", "a[b]", "ab\u200bcd", "\u00e9t\u00e9"]
PIECES = (SECRET_TOKEN[:5], SECRET_TOKEN[5:])


def secret(shape: str) -> str:
    return SECRET_TOKEN[:5] + shape + SECRET_TOKEN[5:]


for shape in UNPRESENTABLE:
    refusal(f"--token {shape!r}", "--token", secret(shape), names="--token: HireFire sends the token", secrets=PIECES)
for shape in ("tökén", "a/b", "a b", "a%2Fb"):
    refusal(
        f"HIREFIRE_TOKEN={shape!r}",
        env={"HIREFIRE_TOKEN": secret(shape)},
        names="HIREFIRE_TOKEN: HireFire sends",
        secrets=PIECES,
    )
refusal("HIREFIRE_TOKEN=..", env={"HIREFIRE_TOKEN": ".."}, names="HIREFIRE_TOKEN: HireFire sends the token")
for value in ([SECRET_TOKEN], 5, True, secret("/"), secret("ö")):
    refusal(f"toml token = {toml(value)}", toml=f"token = {toml(value)}\n", names=": token", secrets=PIECES)
refusal(
    "toml token = {a = ...}",
    toml=f"token = {{a = {toml(SECRET_TOKEN)}}}\n",
    names=": token must be a string",
    secrets=PIECES,
)


@pytest.mark.parametrize("entry", ["create_app", "exporter_app", "environment"])
def test_every_entry_point_refuses_the_token_without_quoting_it(entry, monkeypatch):
    token = secret("/")
    proc = Constant("worker")
    with pytest.raises(ProcConfigError) as info:
        if entry == "create_app":
            create_app([proc], token)
        elif entry == "exporter_app":
            exporter_app([proc], token)
        else:
            monkeypatch.setenv("HIREFIRE_TOKEN", token)
            create_app([proc])
    assert SECRET_TOKEN[:5] not in str(info.value) and SECRET_TOKEN[5:] not in str(info.value)


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=40).filter(lambda t: not TOKEN_CHARACTERS.issuperset(t.strip()) and t.strip()))
def test_any_token_outside_the_presentable_characters_is_refused_in_words_that_never_depend_on_it(token):
    with pytest.raises(ProcConfigError) as info:
        hirefire.Token(token)
    assert str(info.value) in TOKEN_MESSAGES  # one of a few fixed sentences: nothing of the token can be in it


def token_message(token: str) -> str:
    with pytest.raises(ProcConfigError) as info:
        hirefire.Token(token)
    return str(info.value)


TOKEN_MESSAGES = {token_message(example) for example in ("ö", "a b", "a/b", 'a"b', "..")}


class Constant(Proc):
    queues = ["default"]

    def quantity(self, **kwargs):
        return 7


def test_a_token_of_every_allowed_character_works_in_the_path_and_in_the_header():
    """Over a real server and raw HTTP (the path as HireFire writes it, not re-encoded by a client)."""
    from waitress.server import create_server

    token = "".join(sorted(TOKEN_CHARACTERS))
    server = create_server(create_app([Constant("worker")], token), host="127.0.0.1", port=free_port(), threads=2)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for path, headers in ((f"/hirefire/{token}/info", {}), ("/hirefire", {"HireFire-Token": token})):
            connection = http.client.HTTPConnection("127.0.0.1", server.effective_port, timeout=5)
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            assert (response.status, json.loads(response.read())) == (
                200,
                [{"name": "worker", "value": 7, "quantity": 7}],
            )
            connection.close()
    finally:
        close_server(server, thread)


# The share URL: checked at start-up, never quoted

BAD_SHARE = {
    "http://h:6379/0": "must be a redis://, rediss:// or unix:// URL",
    f"redis://:ab/{PASSWORD}@127.0.0.1:6379/0": "is not a valid URL",
    f"redis://:{PASSWORD}@127.0.0.1:port/0": "is not a valid URL",
    f"redis://:{PASSWORD}@127.0.0.1/zero": "must name a database by its number",
    f"redis://:12?{PASSWORD}@127.0.0.1/0": "holds '@' after its host",
    f"redis://:12#{PASSWORD}@127.0.0.1/0": "holds '@' after its host",
    f"redis://:12/{PASSWORD}@127.0.0.1/0": "holds '@' after its host",
    f"redis://:{PASSWORD}@[::1/0": "is not a valid URL",
    "unix://": "must name the socket's path",
    f"{PASSWORD}@127.0.0.1": "must be a redis://, rediss:// or unix:// URL",
}
for index, (url, expected) in enumerate(BAD_SHARE.items()):
    refusal(f"--share #{index}", "--share", url, names=f"--share {expected}", secrets=(PASSWORD,))
    refusal(
        f"HIREFIRE_SHARE_URL #{index}",
        env={"HIREFIRE_SHARE_URL": url},
        names=f"HIREFIRE_SHARE_URL {expected}",
        secrets=(PASSWORD,),
    )
for value in (5, [f"redis://:{PASSWORD}@h/0"], True):
    refusal(
        f"toml share = {type(value).__name__}",
        toml=f"share = {toml(value)}\n",
        names=": share must be a Redis URL string",
        secrets=(PASSWORD,),
    )


@pytest.mark.parametrize("key", list(REFUSALS))
def test_a_bad_setting_stops_the_real_command_with_one_line(refusals, key):
    case = REFUSALS[key]
    assert_refused(refusals[key], case.names, *case.secrets)


def test_an_empty_share_means_off_and_a_good_one_is_passed_to_the_app(tmp_path):
    path = write(tmp_path, 'procs = ["x.Y"]\nshare = ""\n')
    assert config.load_settings(config=path, environ={}).share == ""
    loaded = config.load_settings(config=path, environ={"HIREFIRE_SHARE_URL": "rediss://:pw@h:6380/2"})
    assert loaded.share == "" and loaded.app_options()["share"] == ""  # the file's "" (off) is above the environment
    loaded = config.load_settings(procs="x.Y", environ={"HIREFIRE_SHARE_URL": "rediss://:pw@h:6380/2"})
    assert loaded.app_options()["share"] == "rediss://:pw@h:6380/2"


# Numeric and choice options of every backend


PROC_OPTIONS = [
    ("rq", "socket_timeout", [0, -1, float("nan"), float("inf"), 1e308, "5", True]),
    ("rq", "key_prefix", [5, "", "rq job", True]),
    ("celery", "inspect_timeout", [0, -1, float("nan"), 1e308, "1", True]),
    ("celery", "inspect_forget_after", [0, 1e308, "300"]),
    ("celery", "workers", [0, -1, 1.5, "2", True, 10**6]),
    ("celery", "simple_queues", ["yes", 1]),
    ("celery", "tracker", ["yes", 1]),
    ("celery", "tracker_url", [5, "http://x", "redis"]),
    ("huey", "tracker", ["true"]),
    ("huey", "tracker_url", [True, "amqp://h"]),
    ("hotqueue", "socket_timeout", [0, 1e308, "5"]),
    ("huey", "socket_timeout", [0, 1e308]),
    ("queues", "port", [0, -1, 65536, "11300", True, 1.5]),
    ("queues", "host", [5, "", "bean stalk"]),
    ("dramatiq", "heartbeat_timeout", [0, -1, float("nan"), 1e308, "60", True]),
    ("dramatiq", "namespace", [5, "", True]),
    ("dramatiq", "management_url", [5, "ftp://h"]),
]
EXTRA = {
    "rq": 'url = "redis://127.0.0.1/0"\n',
    "celery": 'url = "redis://127.0.0.1/0"\n',
    "hotqueue": 'url = "redis://127.0.0.1/0"\nqueues = ["a"]\n',
    "huey": 'storage = "redis"\nurl = "redis://127.0.0.1/0"\nqueues = ["a"]\n',
    "queues": 'queue_backend = "beanstalkd"\nqueues = ["a"]\n',
    "dramatiq": 'url = "amqp://127.0.0.1:5672/%2F"\nqueues = ["a"]\n',
}


def proc_table(backend: str, extra: str) -> str:
    return f'[[procs]]\nname = "worker"\nbackend = "{backend}"\n{EXTRA[backend]}{extra}\n'


@pytest.mark.parametrize(
    ("backend", "option", "value"), [(b, o, v) for b, o, values in PROC_OPTIONS for v in values], ids=str
)
def test_every_numeric_and_typed_proc_option_is_checked_at_start_up(tmp_path, capsys, backend, option, value):
    path = write(tmp_path, proc_table(backend, f"{option} = {toml(value)}"))
    assert main(["collect", "--config", path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(PREFIX) and f"proc 'worker': {option} must be " in err, err


@pytest.mark.parametrize(
    "options",
    [
        "{priority_steps = 3}",
        "{priority_steps = []}",
        '{priority_steps = ["a"]}',
        "{priority_steps = [0, 256]}",
        "{priority_steps = [0, true]}",
        '{sep = ""}',
        "{sep = 5}",
        "{global_keyprefix = 5}",
        '{unacked_key = ["u"]}',
    ],
)
def test_celery_transport_options_kombu_could_not_use_are_refused(tmp_path, capsys, options):
    path = write(tmp_path, proc_table("celery", f"transport_options = {options}"))
    assert main(["collect", "--config", path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "proc 'worker': transport option" in err, err


def test_a_proc_option_sample_through_the_real_command(tmp_path):
    path = write(tmp_path, proc_table("rq", "socket_timeout = 1e308"))
    assert_refused(
        run("collect", "--config", path), "proc 'worker': socket_timeout must be a number of seconds above 0"
    )


def test_the_queues_library_timeout_setting_is_checked(monkeypatch):
    monkeypatch.setenv("QUEUE_REDIS_CONNECTION", "127.0.0.1:6379")
    monkeypatch.setenv("QUEUE_REDIS_TIMEOUT", "1e308")
    with pytest.raises(ProcConfigError, match="proc 'worker': QUEUE_REDIS_TIMEOUT must be a number of seconds above 0"):
        QueuesProc("worker", queues=["a"], queue_backend="redis").validate()


# Typos name what was meant


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('tokn = "x"\n', "unknown key 'tokn'; did you mean 'token'?"),
        ("max_ages = 5\n", "unknown key 'max_ages'; did you mean 'max_age'?"),
        (
            "threds = 4\nmaxage = 1\n",
            "unknown keys 'threds' (did you mean 'threads'?), 'maxage' (did you mean 'max_age'?)",
        ),
        ('[[proc]]\nname = "w"\n', "unknown key 'proc'; did you mean 'procs'?"),
        (proc_table("rq", 'queue = ["a"]'), "unknown option 'queue'; did you mean 'queues'?"),
        (proc_table("rq", "sockettimeout = 1"), "unknown option 'sockettimeout'; did you mean 'socket_timeout'?"),
        ('[[procs]]\nnmae = "w"\nbackend = "rq"\n', "unknown option 'nmae'; did you mean 'name'?"),
        ('[[procs]]\nname = "w"\nbakend = "rq"\n', "unknown option 'bakend'; did you mean 'backend'?"),
        ('[[procs]]\nname = "w"\nbackend = "celry"\n', "got 'celry'; did you mean 'celery'?"),
        ('[[procs]]\nname = "w"\nbackend = "reddis"\n', "backend names the job library, not the broker"),
        (
            proc_table("rq", 'metric = "latncy"'),
            "metric must be one of size, latency, got 'latncy'; did you mean 'latency'?",
        ),
        (proc_table("celery", 'inspect_statuses = ["actve"]'), "did you mean 'active'?"),
        (proc_table("queues", "").replace('"beanstalkd"', '"beanstalk_d"'), "did you mean 'beanstalkd'?"),
    ],
)
def test_a_typo_says_what_was_meant(tmp_path, capsys, text, expected):
    assert main(["collect", "--config", write(tmp_path, text)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err


def test_a_huey_storage_typo_says_what_was_meant():
    from hirefire_exporter.procs.huey import HueyProc

    with pytest.raises(
        ProcConfigError, match="storage must be one of redis, priority_redis, sqlite, got 'reddis'; did"
    ):
        HueyProc("worker", queues=["a"], storage="reddis", url="redis://127.0.0.1/0").validate()
    with pytest.raises(ProcConfigError, match="unknown option 'storge'; did you mean 'storage'"):
        HueyProc("worker", storge="redis")


# One table: flags, help, TOML keys, environment variables and the Python API agree


def test_help_shows_every_setting_with_its_default_and_environment_variable(capsys):
    for command in ("serve", "collect"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for option in config.OPTIONS:
            if command not in option.commands:
                assert option.flag not in text
                continue
            default = {None: "none", True: "true", 5.0: "5", 60.0: "60", 3.0: "3"}.get(option.default, option.default)
            assert option.flag in text and f"(default: {default}; env {option.env}" in text, option.name


def test_the_settings_and_the_python_api_have_the_table_s_names_and_defaults():
    fields = set(inspect.signature(config.Settings).parameters) - {"sources"}
    assert fields == set(config.BY_NAME)
    for function in (create_app, exporter_app):
        for name, parameter in inspect.signature(function).parameters.items():
            if parameter.default is inspect.Parameter.empty or name == "metrics":  # adapters: no /metrics by default
                continue
            if name in config.BY_NAME:
                assert parameter.default == config.BY_NAME[name].default, (function.__name__, name)
    envs = [option.env for option in config.OPTIONS]
    assert len(envs) == len(set(envs))


# name: (environment text, TOML value, flag text, the values they stand for)
LAYERS = {
    "token": ("from-env", "from-toml", "from-flag", ("from-env", "from-toml", "from-flag")),
    "max_age": ("7", 8, "9", (7.0, 8.0, 9.0)),
    "stale_after": ("70", 80, "90", (70.0, 80.0, 90.0)),
    "timeout": ("1.5", 2, "2.5", (1.5, 2.0, 2.5)),
    "refresh_wait": ("0", 0.5, "1", (0.0, 0.5, 1.0)),
    "share": ("redis://e/0", "unix:///t.sock", "rediss://f:6380", ("redis://e/0", "unix:///t.sock", "rediss://f:6380")),
    "metrics": ("off", True, False, (False, True, False)),
    "web_config": ("env.yml", "toml.yml", "flag.yml", ("env.yml", "toml.yml", "flag.yml")),
    "metrics_token": ("e" * 16, "t" * 20, "f" * 32, ("e" * 16, "t" * 20, "f" * 32)),
    "host": ("127.0.0.2", "127.0.0.3", "::1", ("127.0.0.2", "127.0.0.3", "::1")),
    "port": ("8001", 8002, "8003", (8001, 8002, 8003)),
    "threads": ("2", 3, "4", (2, 3, 4)),
    "connection_limit": ("10", 20, "30", (10, 20, 30)),
    "log_level": ("debug", "WARNING", "error", ("DEBUG", "WARNING", "ERROR")),
    "procs": ("env.P", ["toml.P"], "flag.P,other.P", (["env.P"], ["toml.P"], ["flag.P", "other.P"])),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_flags_over_the_file_over_the_environment_over_the_default(tmp_path, monkeypatch, name):
    env_text, toml_value, flag, (from_env, from_toml, from_flag) = LAYERS[name]
    monkeypatch.chdir(tmp_path)
    for web_config in LAYERS["web_config"][3]:  # files to name (with no users: checked, protecting nothing)
        (tmp_path / web_config).write_text("basic_auth_users: {}\n")
    option = config.BY_NAME[name]
    environ = {option.env: env_text, "HIREFIRE_PROCS": "x.P"} if name != "procs" else {option.env: env_text}
    path = write(tmp_path, f"{name} = {toml(toml_value)}\n")
    assert getattr(config.load_settings(procs="x.P"), name) == (option.default if name != "procs" else ["x.P"])
    assert getattr(config.load_settings(environ=environ), name) == from_env
    assert getattr(config.load_settings(config=path, environ=environ), name) == from_toml
    loaded = config.load_settings(flags={name: flag, "config": path}, environ=environ)
    assert getattr(loaded, name) == from_flag
    assert loaded.sources[name] == option.flag
    assert set(LAYERS) == set(config.BY_NAME) - {"config"}


def test_the_config_file_can_come_from_the_environment(tmp_path):
    path = write(tmp_path, 'procs = ["toml.P"]\nthreads = 3\n')
    loaded = config.load_settings(environ={"HIREFIRE_CONFIG": path})
    assert (loaded.procs, loaded.threads, loaded.sources["threads"]) == (["toml.P"], 3, f"--config {path}: threads")


def test_serve_only_settings_in_the_environment_do_not_concern_collect():
    loaded = config.load_settings("collect", environ={"PORT": "abc", "HIREFIRE_THREADS": "0", "HIREFIRE_PROCS": "x.P"})
    assert (loaded.port, loaded.threads) == (9180, 8)


# The import path: the project directory, as gunicorn, celery and huey_consumer have it


def write_project(tmp_path: Path) -> Path:
    package = tmp_path / "myapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "procs.py").write_text(
        "from hirefire_exporter.procs.base import Proc\n\n"
        "class WorkerProc(Proc):\n    name = 'worker'\n    queues = ['default']\n\n"
        "    def quantity(self, **kwargs):\n        return 4\n"
    )
    return tmp_path


def test_the_console_script_imports_procs_from_the_working_directory(tmp_path):
    """``python -P`` starts as a console script does: without the working directory on ``sys.path``."""
    script = "import sys; from hirefire_exporter.cli import main; sys.exit(main())"
    done = subprocess.run(
        [sys.executable, "-P", "-c", script, "collect", "--procs", "myapp.procs.WorkerProc"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        cwd=write_project(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [{"name": "worker", "value": 4, "quantity": 4}]


def test_python_dash_m_hirefire_exporter_runs_the_command(tmp_path):
    done = run("collect", "--procs", "myapp.procs.WorkerProc", cwd=write_project(tmp_path))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [{"name": "worker", "value": 4, "quantity": 4}]
    assert run("--version").stdout.startswith("hirefire-exporter ")
