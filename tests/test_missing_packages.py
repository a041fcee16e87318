"""A package a broker needs that is not installed stops start-up with one line naming it and what to install (exit
2), instead of a traceback at start-up or a 503 on the first /info."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Runs the command line with ``module`` (argv[1]) made unimportable, as in an install without the extra that brings it.
WITHOUT = (
    "import sys; sys.modules[sys.argv.pop(1)] = None;"
    " from hirefire_exporter.cli import main; sys.exit(main(sys.argv[1:]))"
)


def collect_without(module: str, tmp_path: Path, table: str) -> subprocess.CompletedProcess:
    """``hirefire-exporter collect`` on one proc (TOML lines ``table``) with ``module`` missing."""
    config = tmp_path / "hirefire.toml"
    config.write_text(f'[[procs]]\nname = "worker"\n{table}\n')
    return subprocess.run(
        [sys.executable, "-c", WITHOUT, module, "collect", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HIREFIRE_TOKEN": "t"},
        cwd=ROOT,
    )


def one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("hirefire-exporter: configuration error:"), line
    return line


@pytest.mark.parametrize(
    ("table", "module", "extra"),
    [  # kombu's Redis transport, used for inspect broadcasts, needs `packaging`, which only celery[redis] brings
        ('backend = "celery"\nurl = "{redis}"\ninspect_statuses = ["active"]', "packaging", "celery[redis]"),
        ('backend = "celery"\nurl = "sqs://"', "botocore", "celery[sqs]"),  # any transport's client library
    ],
)
def test_a_missing_celery_transport_package_stops_start_up_with_one_line(tmp_path, redis_url, table, module, extra):
    line = one_line(collect_without("packaging", tmp_path, table.format(redis=redis_url)))
    assert f"transport needs the module {module!r}, which is not installed: pip install '{extra}'" in line, line


def test_a_celery_proc_that_reads_redis_itself_needs_no_kombu_transport(tmp_path, redis_url, redis_conn):
    redis_conn.lpush("celery", "{}")
    result = collect_without("packaging", tmp_path, f'backend = "celery"\nurl = "{redis_url}"')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [{"name": "worker", "value": 1, "quantity": 1}]


@pytest.mark.parametrize(
    "table",
    [
        'backend = "rq"',
        'backend = "hotqueue"',
        'backend = "queues"',
        'backend = "huey"\nstorage = "redis"',
        'backend = "celery"',
        'backend = "dramatiq"',
    ],
)
def test_a_missing_redis_package_stops_start_up_with_one_line(tmp_path, table):
    line = one_line(collect_without("redis", tmp_path, f'{table}\nurl = "redis://127.0.0.1:6379/0"\nqueues = ["q"]'))
    assert "needs the module 'redis', which is not installed: pip install redis" in line, line


@pytest.mark.parametrize("module", ["kombu", "pika"])
def test_dramatiq_on_rabbitmq_without_its_amqp_packages_stops_start_up_with_one_line(tmp_path, module):
    line = one_line(collect_without(module, tmp_path, 'backend = "dramatiq"\nurl = "amqp://127.0.0.1:5672/%2F"'))
    assert f"needs the module {module!r}, which is not installed: pip install 'hirefire-exporter[dramatiq]'" in line
