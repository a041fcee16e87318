"""The ``hirefire-exporter`` command: ``collect`` and ``serve``, configured by TOML, flags and environment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import free_port
from support import wait_until

from hirefire_exporter.cli import main

rq = pytest.importorskip("rq")


def write_config(tmp_path, redis_url: str, extra: str = "") -> str:
    path = tmp_path / "exporter.toml"
    path.write_text(
        f"""
token = "file-token"
{extra}
[[procs]]
name = "worker"
backend = "rq"
url = "{redis_url}"
queues = ["high", "default"]

[[procs]]
name = "urgent"
backend = "rq"
url = "{redis_url}"
queues = ["urgent"]
metric = "latency"
"""
    )
    return str(path)


def test_collect_prints_the_hirefire_json_from_a_toml_config(tmp_path, redis_conn, redis_url, capsys):
    for name, n in (("high", 2), ("default", 1)):
        for _ in range(n):
            rq.Queue(name, connection=redis_conn).enqueue("rq_jobs.noop")
    assert main(["collect", "--config", write_config(tmp_path, redis_url)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == [{"name": "worker", "value": 3, "quantity": 3}, {"name": "urgent", "value": 0.0, "quantity": 0.0}]


def test_broker_urls_can_come_from_the_environment(tmp_path, redis_conn, redis_url, monkeypatch, capsys):
    """A settings file in a ConfigMap names the variable; the URL and its password stay in a Secret."""
    rq.Queue("default", connection=redis_conn).enqueue("rq_jobs.noop")
    monkeypatch.setenv("WORKER_REDIS_URL", redis_url)
    path = tmp_path / "exporter.toml"
    path.write_text('[[procs]]\nname = "worker"\nbackend = "rq"\nurl = "${WORKER_REDIS_URL}"\nqueues = ["default"]\n')
    assert main(["collect", "--config", str(path)]) == 0
    assert json.loads(capsys.readouterr().out) == [{"name": "worker", "value": 1, "quantity": 1}]


def test_collect_exits_non_zero_when_a_proc_failed(tmp_path, capsys):
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    assert main(["collect", "--config", write_config(tmp_path, url), "--timeout", "2"]) == 1
    captured = capsys.readouterr()
    assert "proc 'worker' failed" in captured.err
    assert "hunter2" not in captured.out + captured.err


def test_configuration_errors_exit_2_with_one_clear_message(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[procs]]\nname = "worker"\nbackend = "sidekiq"\n')
    assert main(["collect", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "backend must be one of" in err and "'sidekiq'" in err
    assert main(["collect", "--procs", "nowhere.Proc"]) == 2
    assert "--procs: cannot import 'nowhere'" in capsys.readouterr().err


def test_procs_from_hirefire_procs_in_the_environment(monkeypatch, capsys):
    monkeypatch.setenv("HIREFIRE_PROCS", "nowhere.Proc")
    assert main(["collect"]) == 2
    assert "HIREFIRE_PROCS: cannot import 'nowhere'" in capsys.readouterr().err


def test_serve_answers_on_port_and_stops_cleanly_on_sigterm(tmp_path, redis_conn, redis_url):
    rq.Queue("default", connection=redis_conn).enqueue("rq_jobs.noop")
    port = free_port()
    env = {**os.environ, "PORT": str(port)}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hirefire_exporter.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--config",
            write_config(tmp_path, redis_url),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return urllib.request.urlopen(base + "/hirefire/test", timeout=1).status == 200
            except OSError:
                return False

        wait_until(up, what="the server to answer")
        with urllib.request.urlopen(base + "/hirefire/file-token/info", timeout=5) as response:
            assert json.loads(response.read())[0] == {"name": "worker", "value": 1, "quantity": 1}
        with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
            assert 'hirefire_proc_jobs{proc="worker"} 1.0' in response.read().decode()
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        assert server.wait(10) == 0
        assert time.monotonic() - started < 10
        output = server.stdout.read()
        assert "received SIGTERM, stopping" in output and "Traceback" not in output
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_metrics_can_be_switched_off_for_a_public_server(tmp_path, redis_conn, redis_url):
    from werkzeug.test import Client

    from hirefire_exporter.app import create_app
    from hirefire_exporter.config import load_settings

    from_file = load_settings(config=write_config(tmp_path, redis_url, extra="metrics = false"))
    from_flag = load_settings(config=write_config(tmp_path, redis_url), metrics=False)  # what --no-metrics passes
    for settings in (from_file, from_flag):
        client = Client(create_app(settings.procs, **settings.app_options()))
        assert client.get("/metrics").status_code == 404
        assert client.get("/hirefire/file-token/info").status_code == 200
    assert main(["serve", "--no-metrics", "--procs", "nowhere.P"]) == 2  # the flag parses; the bad proc stops it


def test_a_bad_port_or_log_level_in_the_environment_is_one_line_naming_it(monkeypatch, capsys):
    monkeypatch.setenv("PORT", "abc")
    assert main(["collect", "--procs", "nowhere.P"]) == 2  # $PORT matters to serve only
    assert "cannot import 'nowhere'" in capsys.readouterr().err
    assert main(["serve", "--procs", "nowhere.P"]) == 2
    err = capsys.readouterr().err
    assert err == "hirefire-exporter: configuration error: PORT must be a TCP port number from 1 to 65535, got 'abc'\n"
    monkeypatch.setenv("HIREFIRE_LOG_LEVEL", "chatty")
    assert main(["collect", "--procs", "nowhere.P"]) == 2
    assert (
        "HIREFIRE_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'chatty'"
        in capsys.readouterr().err
    )
