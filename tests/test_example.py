"""The README's demo and Procfile.example, run as a reader runs them: real numbers, and a worker that does the work.

The demo's commands are read from the README itself, so the README and this test cannot drift apart.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from conftest import free_port
from docs_samples import ROOT, blocks, shell_commands
from support import wait_until

BIN = Path(sys.executable).parent


def http(url: str, method: str = "GET") -> str:
    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as response:
        return response.read().decode()


def answers(url: str) -> str | None:
    try:
        return http(url)
    except OSError:
        return None


def thumbnails(database: Path) -> int:
    """What the demo's jobs leave behind: one row per job a worker ran."""
    db = sqlite3.connect(database, timeout=10)
    try:
        return db.execute("SELECT COUNT(*) FROM thumbnail").fetchone()[0]
    except sqlite3.OperationalError:  # no job has run yet
        return 0
    finally:
        db.close()


def info(base: str) -> list[dict]:
    return json.loads(http(f"{base}/hirefire/development/info"))


@contextmanager
def started(command: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield process
        finally:
            process.terminate()
            process.wait(10)


def demo_env(tmp_path: Path, port: int) -> dict[str, str]:
    env = {**os.environ, "PORT": str(port), "DEMO_HUEY_DB": str(tmp_path / "demo.sqlite3"), "DEMO_JOB_SECONDS": "0.05"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("HIREFIRE_TOKEN", None)
    return env


def readme_demo() -> tuple[list[str], list[tuple[list[str], str | None]]]:
    """The command that starts the demo, and the commands of the second terminal, each with the output the README
    shows for it (a ``# ...`` line right after it)."""
    first, second = [b for b in blocks(ROOT / "README.md") if b.section.startswith("Try it")]
    start = next(c for c in shell_commands(first.code) if c[0] == "python")
    steps: list[tuple[list[str], str | None]] = []
    for line in second.code.splitlines():
        if line.startswith("# ") and steps:
            steps[-1] = (steps[-1][0], line[2:])
        else:
            steps += [(command, None) for command in shell_commands(line)]
    return start, steps


def test_the_readme_demo_serves_real_numbers_and_its_worker_runs_the_jobs(tmp_path):
    start, steps = readme_demo()
    port = free_port()
    env = demo_env(tmp_path, port)
    base = f"http://127.0.0.1:{port}"
    worker_log = tmp_path / "worker.log"
    with ExitStack() as stack:
        stack.enter_context(started([sys.executable, *start[1:]], env, tmp_path / "app.log"))
        wait_until(lambda: answers(base + "/"), what="the example app")
        assert "5 jobs waiting, 0 thumbnails made" in http(base + "/")
        output, consumers = "", 0
        for command, shown in steps:
            if command[0] == "curl":
                method = command[command.index("-X") + 1] if "-X" in command else "GET"
                url = next(w for w in command if "localhost:8000" in w).replace("localhost:8000", base)
                output = http(url, method)
                if shown is not None:
                    assert json.loads(output) == json.loads(shown)
            elif command[0] == "grep":
                assert command[1] in output
            elif command[0] == "huey_consumer":
                stack.enter_context(started([str(BIN / "huey_consumer"), *command[1:]], env, worker_log))
                consumers += 1
            else:
                raise AssertionError(f"the demo test does not know {command}")
        assert consumers, "the README's demo starts a worker"
        enqueued = 5 + 10  # the app's 5, and the README's POST of n=10

        def all_made() -> bool:
            log = worker_log.read_text()
            assert "not found in TaskRegistry" not in log, f"the worker discards the jobs:\n{log[-2000:]}"
            return thumbnails(tmp_path / "demo.sqlite3") == enqueued

        wait_until(all_made, timeout=60, what=f"{enqueued} thumbnails")
        wait_until(lambda: info(base)[0]["value"] == 0, timeout=30, what="/info to fall to 0")
        assert f"0 jobs waiting, {enqueued} thumbnails made" in http(base + "/")
    log = worker_log.read_text()
    assert "not found in TaskRegistry" not in log and "Traceback" not in log, log


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile.example").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip() and not line.startswith("#"))


def installed_only(tmp_path: Path) -> str:
    """An import path holding the package and nothing else of the repository, as after ``pip install``: a Procfile
    line finds ``examples`` only if the command itself looks in the working directory."""
    site = tmp_path / "site-packages"
    site.mkdir(parents=True)
    (site / "hirefire_exporter").symlink_to(ROOT / "hirefire_exporter")
    return str(site)


def test_procfile_example_runs_from_the_repository_root(tmp_path):
    entries = procfile()
    assert set(entries) == {"web", "worker", "exporter"}
    ports = {name: free_port() for name in entries}
    database = tmp_path / "demo.sqlite3"
    with ExitStack() as stack:
        for name, line in entries.items():
            env = demo_env(tmp_path, ports[name])
            env["PYTHONPATH"] = installed_only(tmp_path / name)
            stack.enter_context(started(["bash", "-c", f"exec {line}"], env, tmp_path / f"{name}.log"))
        web, exporter = f"http://127.0.0.1:{ports['web']}", f"http://127.0.0.1:{ports['exporter']}"
        for name, base in (("web", web), ("exporter", exporter)):
            try:
                wait_until(lambda base=base: answers(base + "/hirefire/test"), what=f"{name}: to answer")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{(tmp_path / f'{name}.log').read_text()[-2000:]}") from None
        http(web + "/enqueue?n=3", "POST")
        wait_until(lambda: thumbnails(database) == 3, timeout=60, what="the worker to run 3 jobs")
        for base in (web, exporter):
            wait_until(lambda base=base: info(base) == [{"name": "worker", "value": 0, "quantity": 0}], timeout=30)
        assert re.search(r'hirefire_proc_up\{proc="worker"\} 1\.0', http(web + "/metrics"))
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in entries}
    assert all("Traceback" not in log for log in logs.values()), logs
