"""What protecting /metrics costs a scrape, and what the live part of a gzipped body costs, side by side.

    /work/venv/bin/python bench/auth.py            # ~20 s

1. Server time of a cached /metrics scrape (10 queues), in-process (the WSGI app called with a prebuilt environ):
   open, bearer token, basic auth remembered after its first check, and basic auth checked by bcrypt every time
   (cost 10: what the cache saves).
2. A gzipped /metrics at 10,000 queues with the exporter's own counters (a live part, new on every scrape): the
   snapshot part compressed once and finished on a copy of its compressor, vs compressing the whole body per scrape.
"""

from __future__ import annotations

import base64
import gzip
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import bcrypt

from hirefire_exporter import auth
from hirefire_exporter.app import ExporterApp, create_app
from hirefire_exporter.collection import Collection
from hirefire_exporter.procs.base import Proc, QueueReading, Reading

PASSWORD = "bench-password"
TOKEN = "bench-token-0123456789abcdef"


class Queues(Proc):
    queues = ["q"]

    def __init__(self, name: str, count: int) -> None:
        super().__init__(name)
        self.count = count

    def read(self, cache):
        return Reading.from_queues([QueueReading(f"q{i}", {"queued": i, "started": 1}) for i in range(self.count)])


def environ(headers: dict[str, str]) -> dict:
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "SERVER_NAME": "b", "SERVER_PORT": "80"}
    env.update({"wsgi.url_scheme": "http", "wsgi.input": None, "QUERY_STRING": ""})
    env.update({"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers.items()})
    return env


def per_call(app: Callable, env: dict, seconds: float) -> float:
    """Median microseconds per call over batches lasting ``seconds`` in all."""
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(5):
            b"".join(app(dict(env), lambda status, headers, exc_info=None: None))
        times.append((time.perf_counter() - start) / 5 * 1e6)
    return statistics.median(times)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "web.yml"
        path.write_text(
            f'basic_auth_users:\n  prometheus: "{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()}"\n'
        )
        app = create_app(
            [Queues("worker", 10)], "t", max_age=3600, stale_after=7200, web_config=str(path), metrics_token=TOKEN
        )
        open_app = create_app([Queues("worker", 10)], "t", max_age=3600, stale_after=7200)
        basic = "Basic " + base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()
        rows = {
            "open": per_call(open_app, environ({}), 2),
            "bearer token": per_call(app, environ({"Authorization": f"Bearer {TOKEN}"}), 2),
            "basic auth, remembered": per_call(app, environ({"Authorization": basic}), 2),
        }
        uncached = auth.CACHE_SIZE
        auth.CACHE_SIZE = 0
        app.auth._verified.clear()
        rows["basic auth, bcrypt every time"] = per_call(app, environ({"Authorization": basic}), 3)
        auth.CACHE_SIZE = uncached
    print("1. server time of a cached /metrics scrape, 10 queues (median µs; ratio to open)")
    for name, micros in rows.items():
        print(f"   {name:32} {micros:10.0f} µs  x{micros / rows['open']:.1f}")

    collection = Collection([Queues("worker", 10_000)], max_age=3600, stale_after=7200)
    big = ExporterApp(collection, "t")
    collection.collect()
    env = environ({"Accept-Encoding": "gzip"})
    ours = per_call(big, env, 4)
    whole = big.exposition
    plain = whole.body("", False)[0]

    def compress_whole(env_, start_response):
        return [gzip.compress(whole.body("", False)[0])]

    theirs = per_call(compress_whole, env, 4)
    print(f"2. gzipped /metrics, 10,000 queues ({len(plain) / 1e6:.1f} MB) with live self-metrics (median ms)")
    for name, micros in (("snapshot part compressed once, live part on a compressor copy", ours),
                         ("whole body compressed on every scrape", theirs)):  # fmt: skip
        print(f"   {name:64} {micros / 1000:8.1f} ms  x{micros / ours:.0f}")


if __name__ == "__main__":
    main()
