"""What one collection cycle costs the broker, and how long it takes: hirefire-exporter, the raw-pipeline lower bound
and the alternatives, side by side on a private redis-server, at 10, 100 and 1,000 RQ queues.

    /work/venv/bin/python bench/cycle.py            # ~2 minutes on an idle machine; --quick: ~30 s
    /work/venv/bin/python bench/cycle.py --json out.json

Every tool runs in a subprocess (the alternatives in their own venvs, see bench/alternatives.py) that builds its
long-lived objects, runs a warm-up cycle, then N timed cycles. Per tool and size:

- cycle time: median over the timed cycles, as a ratio to the raw pipeline's median. Each tool alternates cycle by
  cycle with the raw pipeline in one process (driver.py ``--paired-with``, in the tool's own venv, so with the same
  redis-py), so that a busy machine slows both alike;
- round trips and connections opened per cycle: counted by wrapping the socket class inside the driver (see
  driver.py ``--count``), in a separate run so that the counting never adds to the times;
- commands per cycle: ``INFO commandstats`` deltas (CONFIG RESETSTAT before the timed cycles), and how many of them
  write to Redis (flagged ``write`` by ``COMMAND INFO``).

Then the scale checks: 1 job vs 1,000,000 jobs in one queue, and 1,000 queues in 1 proc vs 100 procs of 10 queues.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from alternatives import ALTERNATIVES, ensure  # noqa: E402
from support import command_stats, fill_queue, make_rq_queues, private_redis, queue_names  # noqa: E402

DRIVER = HERE / "driver.py"


@dataclass
class Row:
    label: str
    queues: int
    procs: int = 1
    median: float = 0.0  # seconds per cycle
    round_trips: float = 0.0
    connections: float = 0.0
    commands: float = 0.0
    writes: float = 0.0
    result: object = None
    broker_usec: float = 0.0  # commandstats usec: time Redis spent executing this cycle's commands
    baseline: float = 0.0  # the raw pipeline's median in the same process (or the 1-job case, in the scale table)
    versions: str = ""
    by_command: dict[str, float] = field(default_factory=dict)


class Bench:
    def __init__(self, port: int, tmp: str) -> None:
        self.port = port
        self.commands_file = Path(tmp) / "raw-commands.json"
        self.client = redis.Redis(port=port)
        self._write_flag: dict[str, bool] = {}

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def is_write(self, command: str) -> bool:
        base = command.split("|")[0]
        if base not in self._write_flag:
            info = self.client.execute_command("COMMAND", "INFO", base).get(base) or {}
            self._write_flag[base] = "write" in info.get("flags", [])
        return self._write_flag[base]

    def drive(self, python: str, kind: str, queues: int, cycles: int, procs: int = 1, **options) -> dict:
        """Run the driver; returns its JSON plus Redis's command statistics over the timed cycles. ``options``:
        prefix, count (bool), paired_with, paired_prefix, paired_procs (see driver.py)."""
        args = [python, str(DRIVER), kind, "--url", self.url, "--queues", str(queues)]
        args += ["--procs", str(procs), "--cycles", str(cycles), "--commands", str(self.commands_file)]
        for key, value in options.items():
            flag = "--" + key.replace("_", "-")
            args += [flag] if value is True else [] if value in (False, None) else [flag, str(value)]
        process = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            line = process.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"{kind}: driver failed: {line}{process.stderr.read()[-2000:]}")
            self.client.config_resetstat()
            process.stdin.write("go\n")
            process.stdin.flush()
            out = json.loads(process.stdout.readline())
            out["stats"], out["usec"] = command_stats(self.client)
            return out
        finally:
            process.kill()
            process.wait()

    def paired(
        self, kind: str, other: str, queues: int, cycles: int, python: str = "", **options
    ) -> tuple[float, float]:
        """Medians of two kinds timed cycle by cycle in one process (ours vs raw, 1 job vs a million...)."""
        out = self.drive(python or sys.executable, kind, queues, cycles, paired_with=other, **options)
        return statistics.median(out["times"]), statistics.median(out["times_paired"])

    def write_commands(self, queues: int, prefix: str = "bench") -> None:
        """The raw kind's commands: what RQProc reads on these queues as plain commands, as its pipeline path sends
        them (per queue its counts and its worker set, then, for the queues found non-empty, the script that finds
        each one's oldest live job, loaded once; the benchmark's queues have no worker, so no worker hash is read);
        hirefire-exporter itself sends the same reads in calls of its server-side script."""
        from hirefire_exporter.procs.redis_script import plain_commands
        from hirefire_exporter.procs.rq import _FIRST_LIVE, RQProc, _Queue

        proc = RQProc("worker", queues=queue_names(queues, prefix))
        reads = proc.depth_commands(time.time())
        depth = [command for read in reads for command in plain_commands(read)]
        replies = [_Queue([1] * 8, None, []) for _ in range(queues)]  # every queue non-empty, no worker registered
        walks = proc.latency_commands(replies)  # one walk per queue
        walks = [command for walk in walks for command in plain_commands(walk)]
        load = ("SCRIPT", "LOAD", _FIRST_LIVE.script)  # the script its EVALSHA names
        self.commands_file.write_text(json.dumps({"depth": depth, "load": load, "walks": walks}))

    def measure(self, label: str, python: str, kind: str, queues: int, cycles: int, procs: int = 1, **kw) -> Row:
        timed = self.drive(python, kind, queues, cycles, procs, **kw)
        usec = timed.pop("usec")
        counted = self.drive(python, kind, queues, 2, procs, count=True, **kw)
        stats = timed["stats"]
        return Row(
            label=label,
            queues=queues,
            procs=procs,
            median=statistics.median(timed["times"]),
            round_trips=counted["round_trips"],
            connections=counted["connections"],
            commands=sum(stats.values()) / cycles,
            writes=sum(n for c, n in stats.items() if self.is_write(c)) / cycles,
            result=timed["result"],
            versions=timed.get("versions", ""),
            broker_usec=sum(usec.values()) / cycles,
            by_command={c: n / cycles for c, n in sorted(stats.items())},
        )


def cycles_for(queues: int, quick: bool, slow: bool = False) -> int:
    base = {1: 200, 10: 40, 100: 20, 1000: 8}.get(queues, 5)
    if slow:  # the alternatives that make a round trip per command
        base = max(3, base // 4)
    return max(3, base // 4) if quick else base


def compare(bench: Bench, sizes: list[int], quick: bool, skip: set[str]) -> list[Row]:
    me = sys.executable
    alternatives = []
    for alt in ALTERNATIVES:
        if alt.key in skip:
            print(f"  skipping {alt.label}: --skip", file=sys.stderr)
            continue
        python, status = ensure(alt)
        if python is None:
            print(f"  skipping {alt.label}: {status} (create it with: python bench/alternatives.py)", file=sys.stderr)
            continue
        alternatives.append((alt, str(python)))
    rows: list[Row] = []
    for size in sizes:
        bench.client.flushall()
        make_rq_queues(bench.client, queue_names(size))
        print(f"  {size} queues ...", file=sys.stderr)
        bench.write_commands(size)
        raw = bench.measure("raw pipeline (lower bound)", me, "raw", size, 3)
        ours = bench.measure("hirefire-exporter", me, "ours", size, 3)
        ours.median, raw.median = bench.paired("ours", "raw", size, 2 * cycles_for(size, quick))
        ours.baseline = raw.baseline = raw.median
        rows += [raw, ours]
        for alt, python in alternatives:
            row = bench.measure(alt.label, python, alt.key, size, 3)
            cycles = cycles_for(size, quick, slow=True)
            row.median, row.baseline = bench.paired(alt.key, "raw", size, cycles, python=python)
            rows.append(row)
    return rows


def scale(bench: Bench, quick: bool) -> list[Row]:
    """Cost with 1 vs 1,000,000 queued jobs, and 1,000 queues in one proc vs spread over 100 procs."""
    me = sys.executable
    print("  scale ...", file=sys.stderr)
    bench.client.flushall()
    fill_queue(bench.client, "one-0000", 1)
    fill_queue(bench.client, "many-0000", 10_000 if quick else 1_000_000)
    jobs = bench.client.llen("rq:queue:many-0000")
    one = bench.measure("1 queue, 1 job", me, "ours", 1, 3, prefix="one")
    many = bench.measure(f"1 queue, {jobs:,} jobs", me, "ours", 1, 3, prefix="many")
    many.median, one.median = bench.paired("ours", "ours", 1, cycles_for(1, quick), prefix="many", paired_prefix="one")
    one.baseline = many.baseline = one.median
    bench.client.flushall()
    make_rq_queues(bench.client, queue_names(1000))
    bench.write_commands(1000)
    rows = [one, many]
    for procs in (1, 100):
        row = bench.measure(f"1,000 queues in {procs} proc{'s of 10' if procs > 1 else ''}", me, "ours", 1000, 3, procs)
        row.median, row.baseline = bench.paired("ours", "raw", 1000, 2 * cycles_for(1000, quick), procs=procs)
        rows.append(row)
    return rows


def idle_check(port: int) -> list[tuple[str, dict[str, int]]]:
    """A cycle right after another, and one after 31 s idle: the second must not add a round trip (redis-py's
    health_check_interval used to add a PING after 30 s idle, which is every cycle when HireFire polls once a
    minute)."""
    from hirefire_exporter.collection import Collection
    from hirefire_exporter.procs.rq import RQProc

    client = redis.Redis(port=port)
    client.flushall()
    make_rq_queues(client, queue_names(10))
    collection = Collection([RQProc("worker", queues=queue_names(10), url=f"redis://127.0.0.1:{port}/0")], max_age=0)
    collection.collect()
    found = []
    for label, pause in (("right after a cycle", 0), ("after 31 s idle", 31)):
        time.sleep(pause)
        client.config_resetstat()
        collection.collect()
        found.append((label, command_stats(client)[0]))
    collection.close()
    return found


def print_idle(found: list[tuple[str, dict[str, int]]]) -> None:
    print("\n| hirefire-exporter, 10 queues | commands of the cycle |\n|---|---|")
    for label, calls in found:
        print(f"| {label} | {', '.join(f'{c} {n}' for c, n in sorted(calls.items()))} |")


def print_comparison(rows: list[Row]) -> None:
    raw = {r.queues: r.median for r in rows if r.label.startswith("raw")}  # in our venv
    print(
        "\n| queues | tool | cycle time vs raw pipeline | round trips | connections opened | commands | writes "
        "| broker µs |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r.queues:,} | {r.label} | {r.median / r.baseline:.2f}x | {_n(r.round_trips)} | "
            f"{_n(r.connections)} | {_n(r.commands)} | {_n(r.writes)} | {_n(round(r.broker_usec))} |"
        )
    print("\nraw pipeline medians on this machine (for scale only): ", end="")
    print(", ".join(f"{q:,} queues {t * 1000:.2f} ms" for q, t in raw.items()))
    print("versions (each tool is compared with the raw pipeline run by the same redis-py, in its venv):")
    for label, found in {r.label: r.versions for r in rows if not r.label.startswith("raw")}.items():
        print(f"  {label}: {found}")


def print_scale(rows: list[Row]) -> None:
    print("\n| hirefire-exporter, one cycle | cycle time | round trips | commands | broker µs |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        versus = "the 1-job case" if "job" in r.label else "the raw pipeline"
        print(
            f"| {r.label} | {r.median / r.baseline:.2f}x {versus} | {_n(r.round_trips)} | {_n(r.commands)} "
            f"| {_n(round(r.broker_usec))} |"
        )


def _n(value: float) -> str:
    return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer cycles, no 1,000-queue comparison, 10,000 jobs not 1,000,000 (~30 s)",
    )
    parser.add_argument("--sizes", help="queue counts to compare (default 10,100,1000; quick: 10,100)")
    parser.add_argument(
        "--skip", default="", help="alternatives to leave out (hirefire11,hirefire-resource,rq-exporter)"
    )
    parser.add_argument("--no-scale", action="store_true", help="leave out the scale checks")
    parser.add_argument("--idle", action="store_true", help="also check a cycle after 31 s idle (adds 31 s)")
    parser.add_argument("--json", help="also write every figure (with per-command counts) to this file")
    args = parser.parse_args()
    sizes = [int(s) for s in (args.sizes or ("10,100" if args.quick else "10,100,1000")).split(",") if s]
    with private_redis() as port, tempfile.TemporaryDirectory() as tmp:
        print(f"bench: private redis-server on 127.0.0.1:{port}", file=sys.stderr)
        bench = Bench(port, tmp)
        rows = compare(bench, sizes, args.quick, set(filter(None, args.skip.split(","))))
        scale_rows = [] if args.no_scale else scale(bench, args.quick)
        idle = idle_check(port) if args.idle else []
    print_comparison(rows)
    if scale_rows:
        print_scale(scale_rows)
    if idle:
        print_idle(idle)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows + scale_rows], indent=1, default=str))


if __name__ == "__main__":
    main()
