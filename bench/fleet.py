"""Serving at fleet scale (issue 10): a host app's own routes while its broker stalls, collections per max_age for
a fleet with and without a shared store, and /metrics at 10,000 queues while snapshots keep changing.

    /work/venv/bin/python bench/fleet.py            # ~3 minutes; --quick: ~1.5 minutes

1. Host route: a Flask app embedding the exporter (the blueprint, `metrics=True`, `max_age=1`) on waitress with 4
   threads, as the issue's user ran it. 4 clients time the app's own `/orders` on keep-alive connections while
   8 scrapers poll `/hirefire/<token>/info` and `/metrics` without pause; first with a healthy Redis, then with
   that Redis (a private redis-server) SIGSTOPped for the whole phase.
2. Collections per max_age: 1, 3 and 10 `hirefire-exporter serve` processes on the same configuration
   (100 RQ queues, `max_age 1`), each polled by its own HireFire-like client every 0.1 s, without and with
   `--share` (a second private redis-server as the store). Collections are counted on the broker (LINDEX runs once
   per queue per cycle), not taken from the processes.
3. /metrics throughput: `hirefire-exporter serve` on 10,000 RQ queues (a ~5 MB body), 8 concurrent keep-alive
   scrapers, with a snapshot that never changes (`max_age 3600`) and with one that changes every second
   (`max_age 1`): requests per second, latency and how many different snapshots were served.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.util
import json
import os
import signal
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from serve import TOKEN, collections, percentile, scrape_storm, server  # noqa: E402
from support import free_port, make_rq_queues, private_redis, queue_names  # noqa: E402

EXPORTER = str(Path(sys.executable).with_name("hirefire-exporter"))
SHARING = importlib.util.find_spec("hirefire_exporter.sharing") is not None

HOST_APP = """
import sys

import waitress
from flask import Flask

from hirefire_exporter.contrib.flask.blueprint import build_hirefire_blueprint
from hirefire_exporter.procs.rq import RQProc

redis_port, port, queues = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
app = Flask("host")


@app.get("/orders")
def orders():
    return "the host app's own page"


proc = RQProc("worker", queues=queues, url=f"redis://127.0.0.1:{redis_port}/0")
app.register_blueprint(build_hirefire_blueprint(sys.argv[4], [proc], metrics=True, max_age=1.0, share=""))
waitress.serve(app, host="127.0.0.1", port=port, threads=4, _quiet=True)
"""


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


# --- 1. the host app's own route, healthy and stalled broker -----------------------------------------------------


def host_route(redis_port: int, queues: list[str], seconds: float, tmp: str) -> None:
    script = Path(tmp) / "host_app.py"
    script.write_text(textwrap.dedent(HOST_APP))
    port = free_port()
    broker = redis.Redis(port=redis_port)
    pid = broker.info("server")["process_id"]
    scrapers = [(f"/hirefire/{TOKEN}/info", True)] * 4 + [("/metrics", True)] * 4
    rows = []
    with server([sys.executable, str(script), str(redis_port), str(port), ",".join(queues), TOKEN], port):
        for phase in ("healthy", "stalled"):
            if phase == "stalled":
                os.kill(pid, signal.SIGSTOP)
            try:
                with ThreadPoolExecutor(1) as pool:
                    polling = pool.submit(scrape_storm, port, scrapers, seconds)
                    own = scrape_storm(port, [("/orders", True)] * 4, seconds)
                    scraped = polling.result()
            finally:
                if phase == "stalled":
                    os.kill(pid, signal.SIGCONT)
            rows.append((phase, own, scraped))
    print(f"\n### 1. The host app's own route (Flask + waitress, 4 threads), 8 scrapers polling, {seconds:g} s each\n")
    print("| broker | /orders p50 | p99 | max | /orders served | scrapes answered (non-200) |")
    print("|---|---:|---:|---:|---:|---:|")
    for phase, own, scraped in rows:
        print(
            f"| {phase} | {ms(percentile(own.latencies, 0.5))} | {ms(percentile(own.latencies, 0.99))} | "
            f"{ms(max(own.latencies, default=float('nan')))} | {own.requests:,} | {scraped.requests:,} "
            f"({scraped.errors}) |"
        )
    (_, healthy, _), (_, stalled, _) = rows
    print(
        f"\nstalled vs healthy: p50 {percentile(stalled.latencies, 0.5) / percentile(healthy.latencies, 0.5):.2f}x, "
        f"p99 {percentile(stalled.latencies, 0.99) / percentile(healthy.latencies, 0.99):.2f}x"
    )


# --- 2. collections per max_age, with and without a shared store -------------------------------------------------


def serve_config(tmp: str, name: str, redis_port: int, queues: list[str], max_age: float, timeout: float = 3.0) -> str:
    path = Path(tmp) / f"{name}.toml"
    path.write_text(
        f'token = "{TOKEN}"\nmax_age = {max_age}\ntimeout = {timeout}\nstale_after = {max(60.0, max_age * 2)}\n\n'
        f'[[procs]]\nname = "worker"\nbackend = "rq"\nurl = "redis://127.0.0.1:{redis_port}/0"\n'
        f"queues = {json.dumps(queues)}\n"
    )
    return str(path)


@contextlib.contextmanager
def fleet(config: str, count: int, share: str | None) -> Iterator[list[int]]:
    """``count`` `hirefire-exporter serve` processes on one configuration; yields their ports."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            port = free_port()
            args = [EXPORTER, "serve", "--config", config, "--host", "127.0.0.1", "--port", str(port)]
            args += ["--log-level", "WARNING", "--share", share or ""]
            stack.enter_context(server(args, port))
            ports.append(port)
        yield ports


def poll(ports: list[int], seconds: float, interval: float = 0.1) -> int:
    """One HireFire-like client per process, GETting /info every ``interval``; returns the non-200 answers."""
    deadline = time.monotonic() + seconds
    failures = []

    def client(port: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        bad = 0
        while time.monotonic() < deadline:
            conn.request("GET", f"/hirefire/{TOKEN}/info")
            response = conn.getresponse()
            response.read()
            bad += response.status != 200
            time.sleep(interval)
        conn.close()
        failures.append(bad)

    threads = [threading.Thread(target=client, args=(port,)) for port in ports]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(failures)


def shared_collections(redis_port: int, store_port: int, queues: list[str], seconds: float, tmp: str) -> None:
    max_age = 1.0
    config = serve_config(tmp, "fleet", redis_port, queues, max_age)
    broker, store = redis.Redis(port=redis_port), redis.Redis(port=store_port)
    modes = [("not shared", None)] + ([("shared", f"redis://127.0.0.1:{store_port}/0")] if SHARING else [])
    results: dict[tuple[int, str], tuple[float, int, int]] = {}
    for count in (1, 3, 10):
        for mode, share in modes:
            with fleet(config, count, share) as ports:
                poll(ports, 2.0)  # every process has had its first snapshot
                broker.config_resetstat()
                store.config_resetstat()
                failures = poll(ports, seconds)
                cycles = collections(broker, len(queues))
                store_calls = sum(v["calls"] for k, v in store.info("commandstats").items() if "config" not in k)
            results[count, mode] = (cycles / (seconds / max_age), store_calls, failures)
    print(f"\n### 2. Collections per max_age ({max_age:g} s), each process polled every 0.1 s for {seconds:g} s\n")
    print("| processes | not shared | shared | shared vs not | store commands per second (shared) | non-200 |")
    print("|---:|---:|---:|---:|---:|---:|")
    for count in (1, 3, 10):
        alone, _, bad = results[count, "not shared"]
        if SHARING:
            shared, calls, bad_shared = results[count, "shared"]
            cells = f"{shared:.2f} | {shared / alone:.2f}x | {calls / seconds:,.0f} | {bad} / {bad_shared}"
        else:
            cells = "pending | - | - | " + str(bad)
        print(f"| {count} | {alone:.2f} | {cells} |")
    if not SHARING:
        print("\n(shared: pending, hirefire_exporter.sharing is not in this checkout yet)")


# --- 3. /metrics at 10,000 queues while snapshots keep changing --------------------------------------------------


def changing_snapshots(redis_port: int, queue_count: int, seconds: float, tmp: str) -> None:
    names = queue_names(queue_count, prefix="big")
    make_rq_queues(redis.Redis(port=redis_port), names)
    rows = []
    for label, max_age in (("steady (max_age 3600 s)", 3600.0), ("changing (max_age 1 s)", 1.0)):
        config = serve_config(tmp, f"big{max_age:g}", redis_port, names, max_age, timeout=10.0)
        port = free_port()
        args = [EXPORTER, "serve", "--config", config, "--host", "127.0.0.1", "--port", str(port)]
        with server([*args, "--log-level", "WARNING", "--share", ""], port):
            stamps: set[bytes] = set()
            storm = scrape_storm(port, [("/metrics", True)] * 8, seconds, snapshot_stamps(stamps))
        rows.append((label, storm, len(stamps)))
    print(f"\n### 3. /metrics at {queue_count:,} RQ queues, 8 concurrent keep-alive scrapers, {seconds:g} s\n")
    print("| snapshot | scrapes/s | p50 | p99 | max | different snapshots served | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, storm, snapshots in rows:
        print(
            f"| {label} | {storm.requests / storm.seconds:,.1f} | {ms(percentile(storm.latencies, 0.5))} | "
            f"{ms(percentile(storm.latencies, 0.99))} | {ms(max(storm.latencies, default=float('nan')))} | "
            f"{snapshots} | {storm.errors} |"
        )
    (_, steady, _), (_, changing, _) = rows
    ratio = (changing.requests / changing.seconds) / (steady.requests / steady.seconds)
    print(f"\nchanging vs steady throughput: {ratio:.2f}x")


def snapshot_stamps(stamps: set[bytes]) -> Callable[[bytes], None]:
    """An ``on_body`` for scrape_storm noting each /metrics body's hirefire_collection_timestamp_seconds."""
    marker = b"\nhirefire_collection_timestamp_seconds "

    def note(body: bytes) -> None:
        at = body.rfind(marker)
        if at >= 0:
            stamps.add(body[at + len(marker) : body.index(b"\n", at + 1)])

    return note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter phases (~1.5 minutes)")
    parser.add_argument("--seconds", type=float, help="length of each phase (default 10, quick 5)")
    parser.add_argument("--queues", type=int, default=10_000, help="queues for part 3 (default 10,000)")
    args = parser.parse_args()
    seconds = args.seconds or (5.0 if args.quick else 10.0)
    names = queue_names(100)
    with private_redis() as port, private_redis() as store_port, tempfile.TemporaryDirectory() as tmp:
        print(f"bench: private redis-servers on 127.0.0.1:{port} (broker) and :{store_port} (store)", file=sys.stderr)
        make_rq_queues(redis.Redis(port=port), names)
        host_route(port, names, seconds, tmp)
        shared_collections(port, store_port, names, seconds, tmp)
        changing_snapshots(port, args.queues, seconds, tmp)


if __name__ == "__main__":
    main()
