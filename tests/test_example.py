"""The README's first command: the embedded example shows real, non-zero numbers with no broker installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from conftest import free_port
from support import wait_until

ROOT = Path(__file__).resolve().parent.parent


def test_the_example_app_serves_its_waiting_jobs_to_hirefire_and_prometheus(tmp_path):
    port = free_port()
    env = {**os.environ, "PORT": str(port), "DEMO_HUEY_DB": str(tmp_path / "demo.sqlite3")}
    env.pop("HIREFIRE_TOKEN", None)
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "huey_sqlite_app.py")],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"

    def get(path: str, method: str = "GET") -> str:
        with urllib.request.urlopen(urllib.request.Request(base + path, method=method), timeout=5) as response:
            return response.read().decode()

    def up() -> bool:
        try:
            return "Demo app" in get("/")
        except OSError:
            return False

    try:
        wait_until(up, what="the example app")
        assert json.loads(get("/hirefire/development/info")) == [{"name": "worker", "value": 5, "quantity": 5}]
        get("/enqueue?n=3", method="POST")
        assert 'hirefire_queue_jobs{proc="worker",queue="demo",state="queued"} ' in get("/metrics")
        assert "8 jobs waiting" in get("/")
    finally:
        server.terminate()
        server.wait(10)
