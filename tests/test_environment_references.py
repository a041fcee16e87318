"""``${NAME}`` in the settings file: a committed TOML names the config var (``url = "${REDIS_URL}"``) and the
password stays in the environment. Through the real command: the numbers read with the expanded URL, the one-line
refusals of a missing or empty variable, the password out of every output, the same digest in every process."""

from __future__ import annotations

import contextlib
import datetime
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from conftest import REDIS_DB, free_port
from support import wait_until
from test_settings import ROOT, assert_refused, clean_env, run, write

from hirefire_exporter import config, fingerprint
from hirefire_exporter.interpolation import expand
from hirefire_exporter.loading import load_procs
from hirefire_exporter.redaction import MASK, scrub

rq = pytest.importorskip("rq")

HUSH = "Hu5hHush-pw"  # a bare password in a variable named like no secret: only its registration keeps it out
RQ_TOML = """
[[procs]]
name = "worker"
backend = "rq"
url = "{url}"
queues = ["high", "default"]

[[procs]]
name = "urgent"
backend = "rq"
url = "{url}"
queues = ["urgent"]
"""


def enqueue(redis_conn, **counts: int) -> None:
    for queue, count in counts.items():
        for _ in range(count):
            rq.Queue(queue, connection=redis_conn).enqueue("rq_jobs.noop")


@contextlib.contextmanager
def serving(config_path: str, env: dict[str, str], *args: str) -> Iterator[tuple[Callable[[str], str | None], list]]:
    """``hirefire-exporter serve`` on a free port: yields a GET (the body, also of an error status; None while it does
    not listen) and a list that holds the server's log once it has stopped."""
    listen = free_port()
    command = ["serve", "--host", "127.0.0.1", "--config", config_path, *args]
    server = subprocess.Popen(
        [sys.executable, "-m", "hirefire_exporter", *command],
        env={**env, "PORT": str(listen)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def get(path: str) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{listen}{path}", timeout=5) as response:
                return response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.read().decode()
        except OSError:
            return None

    log: list[str] = []
    try:
        yield get, log
    finally:
        server.terminate()
        server.wait(10)
        log.append(server.stdout.read())


def test_collect_reads_the_queues_at_the_url_of_redis_url(tmp_path, redis_conn, redis_url):
    enqueue(redis_conn, high=3, default=2, urgent=1)
    path = write(tmp_path, RQ_TOML.format(url="${REDIS_URL}"))
    by_flag = run("collect", "--config", path, env=clean_env(REDIS_URL=redis_url))
    by_environment_alone = run("collect", env=clean_env(HIREFIRE_CONFIG=path, REDIS_URL=redis_url))
    for done in (by_flag, by_environment_alone):
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == [
            {"name": "worker", "value": 5, "quantity": 5},
            {"name": "urgent", "value": 1, "quantity": 1},
        ]


def test_serve_answers_with_references_inside_values_and_in_top_level_settings(tmp_path, redis_conn, redis_server):
    """``"${BASE}/${DB}"`` (two references inside one value), ``share`` and ``token`` from the environment."""
    enqueue(redis_conn, high=4, urgent=2)
    host, port = redis_server
    text = 'token = "${APP_TOKEN}"\nshare = "${BASE}/${DB}"\n' + RQ_TOML.format(url="${BASE}/${DB}")
    env = clean_env(APP_TOKEN="tok-from-env", BASE=f"redis://{host}:{port}", DB=str(REDIS_DB))
    with serving(write(tmp_path, text), env) as (get, log):
        info = wait_until(lambda: get("/hirefire/tok-from-env/info"), what="the server to answer")
        assert json.loads(info) == [
            {"name": "worker", "value": 4, "quantity": 4},
            {"name": "urgent", "value": 2, "quantity": 2},
        ]
        metrics = get("/metrics") or ""
        assert 'hirefire_proc_jobs{proc="worker"} 4.0' in metrics
        assert 'hirefire_proc_jobs{proc="urgent"} 2.0' in metrics
        assert redis_conn.keys("hirefire_exporter:*"), "nothing was shared at the expanded share URL"
    assert "Traceback" not in log[0]


def test_a_double_dollar_is_one_dollar_and_a_lone_dollar_stays(tmp_path, redis_conn, redis_url):
    enqueue(redis_conn, **{"cost$center": 2, "pa$t": 1})
    text = RQ_TOML.format(url="${REDIS_URL}").replace('["high", "default"]', '["cost$$center", "pa$t"]')
    done = run("collect", "--config", write(tmp_path, text), env=clean_env(REDIS_URL=redis_url))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0] == {"name": "worker", "value": 3, "quantity": 3}


def test_a_default_stands_in_for_an_unset_or_blank_variable_and_a_value_is_taken_as_it_is(tmp_path):
    path = write(tmp_path, 'procs = ["x.P"]\nshare = "${SHARE_URL:-}"\ntoken = "${T:-from-default}"\n')
    for environ in ({}, {"SHARE_URL": "", "T": " "}):
        loaded = config.load_settings(config=path, environ=environ)
        assert (loaded.share, loaded.token) == ("", "from-default")
    loaded = config.load_settings(config=path, environ={"SHARE_URL": "redis://h:6379/3", "T": "a$$b"})
    assert (loaded.share, loaded.token) == ("redis://h:6379/3", "a$$b")  # a value is not expanded again


# Refusals: exit 2, one line naming the key and the variable, never a value

REFUSED = {
    "unset in a proc": (RQ_TOML.format(url="${REDIS_URL}"), {}, "[[procs]] #1 url: ${REDIS_URL} is not set"),
    "empty": (RQ_TOML.format(url="${REDIS_URL}"), {"REDIS_URL": ""}, "[[procs]] #1 url: ${REDIS_URL} is empty"),
    "blank": (RQ_TOML.format(url="${REDIS_URL}"), {"REDIS_URL": "  "}, "[[procs]] #1 url: ${REDIS_URL} is empty"),
    "unset beside a set one": (
        RQ_TOML.format(url="redis://app:${HUSH}@${REDIS_HOST}/0"),
        {"HUSH": HUSH},
        "[[procs]] #1 url: ${REDIS_HOST} is not set",
    ),
    "unset at the top": (
        'share = "${SHARE}"\n' + RQ_TOML.format(url="redis://127.0.0.1/0"),
        {},
        ": share: ${SHARE} is not set",
    ),
    "unset in a list": (
        RQ_TOML.format(url="redis://127.0.0.1/0").replace('"default"]', '"${EXTRA_QUEUE}"]'),
        {},
        "[[procs]] #1 queues #2: ${EXTRA_QUEUE} is not set",
    ),
    "unset in a nested table": (
        '[[procs]]\nname = "w"\nbackend = "celery"\nurl = "redis://127.0.0.1/0"\n'
        'transport_options = {sep = "${SEP}"}\n',
        {},
        "[[procs]] #1 transport_options.sep: ${SEP} is not set",
    ),
    "unset in a dotted path": ('procs = ["${APP}.procs.WorkerProc"]\n', {}, ": procs #1: ${APP} is not set"),
    "malformed": (
        RQ_TOML.format(url="redis://app:${1PW}@127.0.0.1/0"),
        {},
        "[[procs]] #1 url: '${' must start ${NAME} or ${NAME:-default}",
    ),
    "unclosed": (RQ_TOML.format(url="${REDIS_URL"), {"REDIS_URL": "redis://127.0.0.1/0"}, "'${' must start"),
    "nested default": (  # docker-compose nests; here it would read the text ${B} as a URL or a queue name
        RQ_TOML.format(url="${A:-${REDIS_URL}}"),
        {"REDIS_URL": "redis://127.0.0.1/0"},
        "[[procs]] #1 url: '${' must start ${NAME} or ${NAME:-default}",
    ),
    "a number from a reference": ('timeout = "${T}"\nprocs = ["x.P"]\n', {"T": "5"}, ": timeout must be a number"),
}


@pytest.mark.parametrize("case", list(REFUSED))
@pytest.mark.parametrize("command", ["collect", "serve"])
def test_a_missing_empty_or_malformed_reference_stops_the_command_with_one_line(tmp_path, case, command):
    text, env, names = REFUSED[case]
    assert_refused(run(command, "--config", write(tmp_path, text), env=clean_env(**env)), names, HUSH)


def test_only_string_values_are_expanded_never_keys_numbers_or_dates():
    moment = datetime.datetime(2026, 1, 2, 3, 4, 5)
    data = {"a": 5, "b": 1.5, "c": True, "d": moment, "${K}": "${V}", "e": {"${K}": ["${V}", 7]}}
    assert expand(data, {"K": "key", "V": "value"}, "") == {
        "a": 5,
        "b": 1.5,
        "c": True,
        "d": moment,
        "${K}": "value",
        "e": {"${K}": ["value", 7]},
    }


# The password of an expanded value: a secret before anything can print it


def test_an_expanded_password_is_a_secret_as_soon_as_the_file_is_read(tmp_path):
    path = write(tmp_path, RQ_TOML.format(url="redis://app:${HUSH}@127.0.0.1:6379/0"))
    config.load_settings(config=path, environ={"HUSH": HUSH})
    assert scrub(f"the password is {HUSH}, quoted {HUSH!r}") == f"the password is {MASK}, quoted '{MASK}'"


def test_a_failed_read_prints_and_logs_no_part_of_the_expanded_password(tmp_path):
    """A wrong user for the real Redis (its read fails) and a server nobody listens on, logged at DEBUG."""
    text = (
        RQ_TOML.format(url="redis://nobody:${HUSH}@127.0.0.1:6379/0").rsplit("[[procs]]", 1)[0]
        + f'[[procs]]\nname = "urgent"\nbackend = "rq"\nurl = "redis://app:${{HUSH}}@127.0.0.1:{free_port()}/0"\n'
        + 'queues = ["urgent"]\n'
    )
    done = run(
        "collect", "--log-level", "DEBUG", "--timeout", "1", "--config", write(tmp_path, text), env=clean_env(HUSH=HUSH)
    )
    assert done.returncode == 1, done.stderr
    output = done.stdout + done.stderr
    assert "proc 'worker' failed: AuthenticationError" in output and "proc 'urgent' failed" in output
    assert HUSH not in output and "Hu5h" not in output


def test_serve_shows_no_part_of_the_expanded_password_in_metrics_readyz_or_its_log(tmp_path):
    text = RQ_TOML.format(url="redis://nobody:${HUSH}@127.0.0.1:6379/0")
    with serving(write(tmp_path, text), clean_env(HUSH=HUSH), "--log-level", "DEBUG", "--timeout", "1") as (get, log):
        metrics = wait_until(lambda: get("/metrics"), what="the server to answer")
        assert 'hirefire_proc_up{proc="worker"} 0.0' in metrics
        answers = metrics + (get("/readyz") or "") + (get("/hirefire/development/info") or "")
    assert "read failed: AuthenticationError" in log[0]
    assert HUSH not in answers + log[0] and "Hu5h" not in answers + log[0]


# The sharing digest: equal in every process with the same environment


DIGEST = (
    "import sys; from hirefire_exporter import config, fingerprint; from hirefire_exporter.loading import load_procs;"
    "s = config.load_settings('collect', config=sys.argv[1]); print(fingerprint.digest(load_procs(s.procs)))"
)


def test_processes_with_the_same_environment_get_the_same_digest_as_the_literal_file(tmp_path):
    path = write(tmp_path, RQ_TOML.format(url="${REDIS_URL}"))

    def digest_in_a_process(url: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", DIGEST, path],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_env(REDIS_URL=url),
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    url = f"redis://app:{HUSH}@127.0.0.1:6379/4"
    first, second = digest_in_a_process(url), digest_in_a_process(url)
    literal = tmp_path / "literal.toml"
    literal.write_text(RQ_TOML.format(url=url))
    procs = load_procs(config.load_settings("collect", config=str(literal), environ={}).procs)
    assert first == second == fingerprint.digest(procs)
    assert digest_in_a_process(url.replace(HUSH, "rotated-pw")) == first  # Heroku rotated the password: same data
    assert digest_in_a_process(url.replace("/4", "/5")) != first  # another database: another snapshot
