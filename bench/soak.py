"""Soak: `hirefire-exporter serve` under concurrent scrapes for minutes while its broker goes down, hangs and slows.

    /work/venv/bin/python bench/soak.py                 # 5 minutes, 16 scrapers, 20 s fault phases
    /work/venv/bin/python bench/soak.py --duration 14 --phase 2 --scrapers 8    # the short variant (a test runs it)

Set-up, all on loopback and private (the machine's shared brokers are never touched): a redis-server of its own with
known queues (RQ ``default`` 7 jobs, Huey ``soak`` 5 tasks), a fault proxy in front of it, and the exporter serving
three procs: ``worker`` (RQ) and ``huey`` read through the proxy, ``direct`` (RQ queue ``other``, 3 jobs) read straight
from the server; a proc's last reading is served for half a phase (``stale_after``), then it is reported as failed.
The proxy cycles through phases: pass, stall (accepts, never answers), pass, cut (refused), pass,
slow 0.1 s per reply (within the timeout), pass, slow 3 s per reply (beyond it).

Every answer is checked: ``/metrics`` always 200, ``direct`` always up with exactly 3 jobs, the proxied procs either
absent or exactly 7 and 5 (never another number); ``/info`` either 200 with exactly [7, 5, 3] or 503 naming only
proxied procs. The server's memory (RSS), threads and file descriptors are sampled every few seconds, and so are the
exporter's connections on the private Redis (CLIENT LIST). Exit status 1 when any answer was wrong or a resource grew
between the first and the last third of the run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import redis  # noqa: E402
from faultproxy import FaultProxy, RedisProcess, free_port, wait_port  # noqa: E402

TOKEN = "soak-token"
EXPECTED = {"worker": 7, "huey": 5, "direct": 3}
PROXIED = {"worker", "huey"}
PHASES = [("pass", 0.0), ("stall", 0.0), ("pass", 0.0), ("cut", 0.0), ("pass", 0.0), ("slow", 0.1), ("pass", 0.0)]
PHASES += [("slow", 3.0)]


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    statuses: Counter = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def record(self, what: str, seconds: float, problem: str | None) -> None:
        with self.lock:
            self.statuses[what] += 1
            self.latencies.append(seconds)
            if problem and len(self.wrong) < 50:
                self.wrong.append(problem)
            elif problem:
                self.wrong.append("...")


def check_metrics(status: int, body: str) -> str | None:
    if status != 200:
        return f"/metrics answered {status}"
    jobs, up = {}, {}
    for line in body.splitlines():
        if line.startswith("hirefire_proc_jobs{"):
            jobs[line.split('"')[1]] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("hirefire_proc_up{"):
            up[line.split('"')[1]] = float(line.rsplit(" ", 1)[1])
    if up.get("direct") != 1.0 or jobs.get("direct") != EXPECTED["direct"]:
        return f"/metrics: direct proc up={up.get('direct')} jobs={jobs.get('direct')}"
    for name, value in jobs.items():
        if value != EXPECTED[name]:
            return f"/metrics: {name} reported {value}, truth is {EXPECTED[name]}"
    if set(up) != set(EXPECTED):
        return f"/metrics: hirefire_proc_up for {sorted(up)}"
    return None


def check_info(status: int, body: str) -> str | None:
    data = json.loads(body)
    if status == 200:
        values = {entry["name"]: entry["value"] for entry in data}
        return None if values == EXPECTED else f"/info 200 with {values}"
    if status == 503:
        return None if data["procs"] and set(data["procs"]) <= PROXIED else f"/info 503 naming {data['procs']}"
    return f"/info answered {status}"


def scraper(port: int, stop: threading.Event, tally: Tally, index: int) -> None:
    """One keep-alive client, alternating Prometheus and HireFire requests (both routes) until ``stop``."""
    paths = ["/metrics", f"/hirefire/{TOKEN}/info", "/hirefire"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    n = index
    while not stop.is_set():
        path = paths[n % len(paths)]
        n += 1
        headers = {"HireFire-Token": TOKEN} if path == "/hirefire" else {}
        started = time.monotonic()
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            body = response.read().decode()
        except (OSError, http.client.HTTPException) as exc:
            tally.record("error", time.monotonic() - started, f"{path}: {type(exc).__name__}: {exc}")
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            continue
        seconds = time.monotonic() - started
        check = check_metrics if path == "/metrics" else check_info
        tally.record(f"{path.split('/')[1] or path} {response.status}", seconds, check(response.status, body))
    conn.close()


def proc_stats(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return {
        "rss_kb": rss,
        "threads": len(os.listdir(f"/proc/{pid}/task")),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


def redis_clients(admin: redis.Redis) -> int:
    me = admin.client_id()
    return sum(1 for c in admin.client_list() if int(c["id"]) != me)


def fill(server: RedisProcess) -> None:
    from rq import Queue

    client = server.client()
    for _ in range(EXPECTED["worker"]):
        Queue("default", connection=client).enqueue("rq_jobs.noop")
    for _ in range(EXPECTED["direct"]):
        Queue("other", connection=client).enqueue("rq_jobs.noop")
    for n in range(EXPECTED["huey"]):
        client.lpush("huey.redis.soak", f"task {n}")
    client.close()


def config(tmp: str, proxy: FaultProxy, server: RedisProcess, stale_after: float) -> str:
    path = Path(tmp) / "soak.toml"
    path.write_text(
        f"""
token = "{TOKEN}"
max_age = 0.2
stale_after = {stale_after}
timeout = 0.5

[[procs]]
name = "worker"
backend = "rq"
url = "redis://{proxy.url_host}/0"
socket_timeout = 2

[[procs]]
name = "huey"
backend = "huey"
storage = "redis"
queues = ["soak"]
url = "redis://{proxy.url_host}/0"
socket_timeout = 2

[[procs]]
name = "direct"
backend = "rq"
url = "{server.url}"
queues = ["other"]
"""
    )
    return str(path)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def run(duration: float, phase_seconds: float, scrapers: int, sample_every: float) -> int:
    tally, stop = Tally(), threading.Event()
    samples: list[tuple[float, dict[str, int]]] = []
    with tempfile.TemporaryDirectory() as tmp, RedisProcess() as server:
        fill(server)
        with FaultProxy("127.0.0.1", server.port) as proxy:
            port = free_port()
            env = {**os.environ, "PYTHONPATH": str(HERE.parent / "tests")}
            settings = config(tmp, proxy, server, stale_after=phase_seconds / 2)
            command = [sys.executable, "-m", "hirefire_exporter.cli", "serve", "--config", settings]
            command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"]
            log = open(Path(tmp) / "server.log", "wb")  # closed below
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            admin = server.client()
            try:
                wait_port(port, timeout=20)
                threads = [threading.Thread(target=scraper, args=(port, stop, tally, i)) for i in range(scrapers)]
                for thread in threads:
                    thread.start()
                started = time.monotonic()
                next_sample = started
                phase_index = -1
                print(f"soak: {duration:.0f} s, {scrapers} scrapers, fault phases of {phase_seconds:g} s")
                while (elapsed := time.monotonic() - started) < duration:
                    index = int(elapsed // phase_seconds) % len(PHASES)
                    if index != phase_index:
                        phase_index = index
                        mode, delay = PHASES[index]
                        proxy.restore()
                        if mode == "stall":
                            proxy.stall()
                        elif mode == "cut":
                            proxy.cut()
                        elif mode == "slow":
                            proxy.slow(delay)
                    if time.monotonic() >= next_sample:
                        stats = proc_stats(process.pid) | {"redis_clients": redis_clients(admin)}
                        samples.append((elapsed, stats))
                        next_sample += sample_every
                    if process.poll() is not None:
                        tally.wrong.append(f"the server exited with status {process.returncode}")
                        break
                    time.sleep(0.05)
                proxy.restore()
            finally:
                stop.set()
                for thread in threads:
                    thread.join(60)
                process.terminate()
                process.wait(20)
                log.close()
                admin.close()
            server_log = (Path(tmp) / "server.log").read_text(errors="replace")
    return report(duration, tally, samples, server_log)


def report(duration: float, tally: Tally, samples: list[tuple[float, dict[str, int]]], server_log: str) -> int:
    total = sum(tally.statuses.values())
    print(f"\n{total} requests in {duration:.0f} s ({total / duration:.0f}/s)")
    for what, count in sorted(tally.statuses.items()):
        print(f"  {what:<24} {count:>8}")
    lat = tally.latencies
    print(
        f"latency: median {percentile(lat, 0.5) * 1000:.1f} ms, p99 {percentile(lat, 0.99) * 1000:.0f} ms, "
        f"max {max(lat, default=0) * 1000:.0f} ms"
    )
    print(f"\n{'t (s)':>7} {'RSS (MB)':>9} {'threads':>8} {'fds':>5} {'redis conns':>12}")
    for elapsed, s in samples:
        print(f"{elapsed:>7.0f} {s['rss_kb'] / 1024:>9.1f} {s['threads']:>8} {s['fds']:>5} {s['redis_clients']:>12}")
    failures = list(tally.wrong)
    if "Traceback" in server_log:
        failures.append("a traceback in the server's log")
    third = max(1, len(samples) // 3)
    if len(samples) >= 3:
        first, last = samples[:third], samples[-third:]
        limits = {"rss_kb": 16 * 1024, "threads": 2, "fds": 4, "redis_clients": 2}  # beyond noise, not a leak's slope
        for key, limit in limits.items():
            before, after = max(s[key] for _, s in first), max(s[key] for _, s in last)
            verdict = "flat" if after - before <= limit else "GREW"
            print(f"{key:>14}: first third max {before}, last third max {after}: {verdict}")
            if verdict == "GREW":
                failures.append(f"{key} grew from {before} to {after}")
    if failures:
        print(f"\nFAILED: {len(failures)} problems")
        for problem in failures[:20]:
            print(f"  {problem}")
        return 1
    print("\nOK: every answer correct, resources flat")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds (default 300)")
    parser.add_argument("--phase", type=float, default=20.0, help="seconds per fault phase (default 20)")
    parser.add_argument("--scrapers", type=int, default=16, help="concurrent keep-alive clients (default 16)")
    parser.add_argument("--sample", type=float, default=None, help="seconds between resource samples")
    args = parser.parse_args()
    sample = args.sample or max(1.0, args.duration / 30)
    sys.exit(run(args.duration, args.phase, args.scrapers, sample))


if __name__ == "__main__":
    main()
