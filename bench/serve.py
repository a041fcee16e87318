"""Serving scrapes: storms of concurrent scrapers against `hirefire-exporter serve` and rq-exporter's server, what a
cached scrape costs, and memory over many scrapes.

    /work/venv/bin/python bench/serve.py            # ~1.5 minutes; --quick: ~30 s

1. Scrape storm: 50 concurrent scrapers (20 HireFire on /hirefire/<token>/info, 20 Prometheus on /metrics, each on a
   keep-alive connection, and 10 health checks on /healthz with a new connection per request) against
   `hirefire-exporter serve --max-age 2` for a fixed time. Collections are counted from Redis's command statistics
   (SISMEMBER runs once per queue per cycle), so single flight is checked on the broker, not trusted from our counter.
   Server threads and sockets (from /proc) before and after.
2. Served /metrics under the same 50-way concurrency, ours vs rq-exporter's server (`python -m rq_exporter`, run from
   its venv), each on the same RQ queues: throughput, client-side latency, server CPU and Redis commands per scrape.
3. Server time of a cached scrape, in-process: the WSGI app called with a prebuilt environ, per endpoint (no HTTP,
   no client overhead in the figure).
4. Memory: RSS of this process over 100,000 in-process scrapes (the WSGI app called directly, alternating /info and
   /metrics on 10 queues, max_age 0.05 s so that collection cycles keep running too).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from alternatives import ALTERNATIVES, ensure  # noqa: E402
from support import (  # noqa: E402
    command_stats,
    cpu_seconds,
    free_port,
    make_rq_queues,
    private_redis,
    queue_names,
    rss_bytes,
    tcp_connections,
    threads_of,
)

TOKEN = "bench-token"


@dataclass
class Storm:
    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    by_path: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def scrape_storm(
    port: int, scrapers: list[tuple[str, bool]], seconds: float, on_body: Callable[[bytes], None] | None = None
) -> Storm:
    """Each scraper is (path, keep_alive): it requests ``path`` in a loop for ``seconds``; ``on_body`` sees every
    body."""
    storm = Storm()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    start = threading.Barrier(len(scrapers) + 1)

    def scraper(path: str, keep_alive: bool) -> None:
        latencies, errors, conn = [], 0, None
        start.wait()
        while time.monotonic() < deadline:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            began = time.perf_counter()
            try:
                conn.request("GET", path, headers={"Connection": "keep-alive" if keep_alive else "close"})
                response = conn.getresponse()
                body = response.read()
                if on_body is not None:
                    on_body(body)
                if response.status != 200:
                    errors += 1
            except (OSError, http.client.HTTPException):
                errors += 1
                conn.close()
                conn = None
                continue
            latencies.append(time.perf_counter() - began)
            if not keep_alive:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()
        with lock:
            storm.requests += len(latencies)
            storm.errors += errors
            storm.latencies += latencies
            storm.by_path[path] = storm.by_path.get(path, 0) + len(latencies)

    threads = [threading.Thread(target=scraper, args=s, daemon=True) for s in scrapers]
    for t in threads:
        t.start()
    start.wait()
    began = time.monotonic()
    for t in threads:
        t.join()
    storm.seconds = time.monotonic() - began
    return storm


@contextlib.contextmanager
def server(args: list[str], port: int) -> Iterator[subprocess.Popen]:
    """Run a server until the block ends. Its stderr goes to a file: a pipe nobody drains fills up under a storm of
    log lines (waitress warns about its task queue) and then blocks the server."""
    log = tempfile.TemporaryFile("w+")
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, text=True)
    try:
        for _ in range(200):
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/metrics")
                conn.getresponse().read()
                conn.close()
                break
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"server exited: {log.read()[-2000:]}")
            time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            print(f"warning: {args[0]} did not stop within 10 s of SIGTERM; killed", file=sys.stderr)
            process.kill()
            process.wait()
        log.seek(0)
        queued = sum("Task queue depth" in line for line in log)
        if queued:
            print(f"  ({Path(args[0]).name}: waitress warned {queued} times that requests queued for a thread)")
        log.close()


def our_server(redis_port: int, queues: list[str], max_age: float, tmp: str) -> tuple[list[str], int]:
    """The command line of `hirefire-exporter serve` over one RQ proc (declared in TOML), and its port."""
    config = Path(tmp) / "bench.toml"
    config.write_text(
        f'token = "{TOKEN}"\nmax_age = {max_age}\n\n[[procs]]\nname = "worker"\nbackend = "rq"\n'
        f'url = "redis://127.0.0.1:{redis_port}/0"\nqueues = {json.dumps(queues)}\n'
    )
    port = free_port()
    exe = str(Path(sys.executable).with_name("hirefire-exporter"))
    options = f"--host 127.0.0.1 --port {port} --log-level WARNING".split()
    return [exe, "serve", "--config", str(config), *options], port


def _ratio(value: float) -> str:
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.4f}x"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def collections(client: redis.Redis, queues: int) -> float:
    calls, _ = command_stats(client)
    return calls.get("sismember", 0) / queues


def storm_against_ours(client: redis.Redis, port: int, queues: list[str], seconds: float, tmp: str) -> None:
    max_age = 2.0
    args, http_port = our_server(port, queues, max_age, tmp)
    mixed = [(f"/hirefire/{TOKEN}/info", True)] * 20 + [("/metrics", True)] * 20 + [("/healthz", False)] * 10
    with server(args, http_port) as process:
        time.sleep(0.5)
        before = threads_of(process.pid), tcp_connections(process.pid), len(client.client_list())
        client.config_resetstat()
        cpu = cpu_seconds(process.pid)
        storm = scrape_storm(http_port, mixed, seconds)
        cpu = cpu_seconds(process.pid) - cpu
        cycles = collections(client, len(queues))
        time.sleep(1.0)
        after = threads_of(process.pid), tcp_connections(process.pid), len(client.client_list())
        print(
            f"\n### 50 concurrent scrapers, {seconds:.0f} s, `hirefire-exporter serve --max-age {max_age:g}`, "
            f"{len(queues)} RQ queues\n"
        )
        print("| figure | value |\n|---|---:|")
        print(
            f"| requests served (info / metrics / healthz) | {storm.requests:,} "
            f"({' / '.join(f'{storm.by_path.get(path, 0):,}' for path in dict.fromkeys(p for p, _ in mixed))}) |"
        )
        print(f"| errors | {storm.errors} |")
        print(f"| throughput | {storm.requests / storm.seconds:,.0f} req/s |")
        print(
            f"| client latency p50 / p99 | {percentile(storm.latencies, 0.5) * 1000:.2f} / "
            f"{percentile(storm.latencies, 0.99) * 1000:.2f} ms |"
        )
        print(f"| collections (from Redis commandstats) | {cycles:g} (max_age allows {seconds / max_age:.0f} + 1) |")
        print(f"| server CPU per request, collections included | {cpu / max(storm.requests, 1) * 1e6:,.0f} µs |")
        print(f"| server threads before / after | {before[0]} / {after[0]} |")
        print(f"| server sockets before / after | {before[1]} / {after[1]} |")
        print(f"| Redis client connections before / after | {before[2]} / {after[2]} |")


@dataclass
class Served:
    label: str
    storm: Storm
    cpu: float
    commands: int


def metrics_storm(client: redis.Redis, args: list[str], port: int, seconds: float, label: str) -> Served:
    with server(args, port) as process:
        time.sleep(0.5)
        client.config_resetstat()
        cpu = cpu_seconds(process.pid)
        storm = scrape_storm(port, [("/metrics", True)] * 50, seconds)
        cpu = cpu_seconds(process.pid) - cpu
        calls, _ = command_stats(client)
    return Served(label, storm, cpu, sum(calls.values()))


def served_comparison(client: redis.Redis, port: int, queues: list[str], seconds: float, tmp: str) -> None:
    results = []
    args, http_port = our_server(port, queues, 5.0, tmp)
    results.append(metrics_storm(client, args, http_port, seconds, "hirefire-exporter serve (max_age 5 s)"))
    alt = next(a for a in ALTERNATIVES if a.key == "rq-exporter")
    python, status = ensure(alt)
    if python is None:
        print(f"\nskipping rq-exporter's server: {status} (create it with: python bench/alternatives.py)")
    else:
        rq_port = free_port()
        rq_args = [str(python), "-m", "rq_exporter", "--redis-url", f"redis://127.0.0.1:{port}/0"]
        rq_args += ["--host", "127.0.0.1", "--port", str(rq_port), "--log-level", "WARNING"]
        results.append(metrics_storm(client, rq_args, rq_port, seconds, "rq-exporter (collects on every scrape)"))
    ours = results[0].storm
    print(f"\n### /metrics, 50 concurrent keep-alive scrapers, {seconds:.0f} s, {len(queues)} RQ queues\n")
    print(
        "| server | throughput vs ours | latency p50 / p99 vs ours | server CPU per scrape vs ours "
        "| Redis commands per scrape | errors |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    base_rate = ours.requests / ours.seconds
    base_cpu = results[0].cpu / max(ours.requests, 1)
    p50, p99 = percentile(ours.latencies, 0.5), percentile(ours.latencies, 0.99)
    for r in results:
        s = r.storm
        n = max(s.requests, 1)
        print(
            f"| {r.label} | {_ratio(s.requests / s.seconds / base_rate)} | "
            f"{percentile(s.latencies, 0.5) / p50:.1f}x / {percentile(s.latencies, 0.99) / p99:.1f}x | "
            f"{r.cpu / n / base_cpu:.1f}x | {r.commands / n:,.1f} | {s.errors} |"
        )
    print(
        f"\nours, absolute on this machine: {base_rate:,.0f} scrapes/s, p50 {p50 * 1000:.2f} ms, "
        f"{base_cpu * 1e6:,.0f} µs server CPU per scrape"
    )


def wsgi_call(app, environ: dict) -> tuple[str, bytes]:
    """Call a WSGI app the way a server does, with a prebuilt environ; returns the status and the body."""
    environ = dict(environ, **{"wsgi.input": io.BytesIO()})
    status = []
    body = app(environ, lambda s, headers, exc_info=None: status.append(s))
    try:
        return status[0], b"".join(body)
    finally:
        getattr(body, "close", lambda: None)()


def in_process(port: int, queues: list[str], scrapes: int) -> None:
    from werkzeug.test import EnvironBuilder

    from hirefire_exporter.app import create_app
    from hirefire_exporter.procs.rq import RQProc

    def environ(path: str, **headers: str) -> dict:
        return EnvironBuilder(path=path, headers=headers).get_environ()

    proc = RQProc("worker", queues=queues, url=f"redis://127.0.0.1:{port}/0")
    app = create_app([proc], TOKEN, max_age=3600, stale_after=7200)
    paths = {
        "/hirefire/<token>/info": environ(f"/hirefire/{TOKEN}/info"),
        "/metrics": environ("/metrics"),
        "/metrics (Prometheus: OpenMetrics, gzip)": environ(
            "/metrics", Accept="application/openmetrics-text; version=1.0.0", **{"Accept-Encoding": "gzip"}
        ),
        "/healthz": environ("/healthz"),
    }
    wsgi_call(app, paths["/metrics"])  # the one collection; every call below serves the cached snapshot
    print(f"\n### Server time of a cached scrape (the WSGI app called in-process, {len(queues)} RQ queues)\n")
    print("| endpoint | median | p99 | body |\n|---|---:|---:|---:|")
    for label, env in paths.items():
        times: list[float] = []
        until = time.monotonic() + 3.0
        while len(times) < 1000 and (len(times) < 50 or time.monotonic() < until):
            began = time.perf_counter()
            status, body = wsgi_call(app, env)
            times.append(time.perf_counter() - began)
            assert status.startswith("200"), status
        print(
            f"| {label} | {statistics.median(times) * 1e6:,.0f} µs | {percentile(times, 0.99) * 1e6:,.0f} µs "
            f"| {len(body):,} B |"
        )
    assert app.collection.cycles == 1, app.collection.cycles
    app.collection.close()


def memory(port: int, queues: list[str], scrapes: int) -> None:
    from werkzeug.test import EnvironBuilder

    from hirefire_exporter.app import create_app
    from hirefire_exporter.procs.rq import RQProc

    proc = RQProc("worker", queues=queues, url=f"redis://127.0.0.1:{port}/0")
    app = create_app([proc], TOKEN, max_age=0.05)
    info = EnvironBuilder(path=f"/hirefire/{TOKEN}/info").get_environ()
    metrics = EnvironBuilder(path="/metrics").get_environ()
    for _ in range(1000):
        wsgi_call(app, info)
        wsgi_call(app, metrics)
    samples = [(0, rss_bytes())]
    threads_before = threading.active_count()
    step = scrapes // 10
    cycles_before = app.collection.cycles
    for i in range(1, scrapes + 1):
        wsgi_call(app, info if i % 2 else metrics)
        if i % step == 0:
            samples.append((i, rss_bytes()))
    cycles = app.collection.cycles - cycles_before
    threads_after = threading.active_count()
    app.collection.close()
    start, end = samples[0][1], samples[-1][1]
    peak = max(rss for _, rss in samples)
    print(
        f"\n### Memory over {scrapes:,} scrapes (WSGI app in-process, {len(queues)} RQ queues, {cycles:,} cycles ran)\n"
    )
    print("| scrapes | " + " | ".join(f"{n:,}" for n, _ in samples) + " |")
    print("|---|" + "---:|" * len(samples))
    print("| RSS MiB | " + " | ".join(f"{rss / 2**20:.1f}" for _, rss in samples) + " |")
    print(
        f"\nRSS growth {(end - start) / 2**20:+.2f} MiB ({(end - start) / start * 100:+.1f}%), peak "
        f"{peak / 2**20:.1f} MiB; threads {threads_before} -> {threads_after}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter storms, 10,000 scrapes for memory (~30 s)")
    parser.add_argument("--queues", type=int, default=100, help="RQ queues to serve (default 100)")
    parser.add_argument("--seconds", type=float, help="storm length (default 10, quick 4)")
    parser.add_argument("--scrapes", type=int, help="scrapes for the memory check (default 100,000, quick 10,000)")
    args = parser.parse_args()
    seconds = args.seconds or (4.0 if args.quick else 10.0)
    scrapes = args.scrapes or (10_000 if args.quick else 100_000)
    names = queue_names(args.queues)
    with private_redis() as port, tempfile.TemporaryDirectory() as tmp:
        print(f"bench: private redis-server on 127.0.0.1:{port}", file=sys.stderr)
        client = redis.Redis(port=port)
        make_rq_queues(client, names)
        storm_against_ours(client, port, names, seconds, tmp)
        served_comparison(client, port, names, seconds, tmp)
        in_process(port, names, scrapes)
        memory(port, names[:10], scrapes)


if __name__ == "__main__":
    main()
