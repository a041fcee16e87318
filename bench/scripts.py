"""Issue 13: the reads in a read-only server-side script, side by side with what they replace and what counts less.

    /work/venv/bin/python bench/scripts.py            # ~3 minutes on an idle machine; --quick: ~1 minute

On a private redis-server (bench/support.py), each figure a median over cycles run by bench/driver.py:

- RQ at 1,000 and 10,000 queues (3 waiting, 1 running, 1 due job each): hirefire-exporter (script) against
  hirefire-exporter reading with plain pipelined commands (as where scripts are refused); against the raw pipeline of
  the same commands; and against hirefire-resource's ``job_queue_size`` (LLEN and the due ZCOUNT per queue: no
  running jobs, no latency), each pair alternating cycle by cycle in one process, with and without hiredis;
- Celery, 100 queues with kombu's 4 priority lists holding stamped messages, a ``metric = "latency"`` proc: against a
  bare pipeline of LLEN on every priority list (the counts alone, no latency);
- how long Redis is held by one call at 10,000 RQ queues: SLOWLOG (from 1 ms up) over the cycles, the longest call
  and how many exceed 5 ms, and the mean call (INFO commandstats); beside it, two controls for a machine that stalls
  (the raw pipeline's single commands in SLOWLOG, ``redis-cli --intrinsic-latency``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from alternatives import Alternative, ensure  # noqa: E402
from cycle import Bench  # noqa: E402
from support import CpuSteal, make_rq_queues, private_redis, queue_names  # noqa: E402

#: hirefire-resource in a venv of its own with hiredis, where hirefire-exporter runs too (from this checkout: it needs
#: nothing but redis-py to read): the two alternate cycle by cycle in one process, with the same redis-py, with and
#: without hiredis.
SIDE_BY_SIDE = Alternative(
    "hirefire-resource-hiredis",
    "hirefire-resource (rq macro) + hiredis",
    ("hirefire-resource", "redis>=5", "hiredis"),
    "hirefire_resource.macro.rq",
)


def rq_rows(bench: Bench, sizes: list[int], cycles: int) -> list[str]:
    hr_python, status = ensure(SIDE_BY_SIDE)
    if hr_python is None:
        print(f"  skipping hirefire-resource: {status}", file=sys.stderr)
    os.environ["PYTHONPATH"] = str(HERE.parent)  # hirefire-exporter from this checkout, in any venv
    rows = []
    for size in sizes:
        bench.client.flushall()
        make_rq_queues(bench.client, queue_names(size))
        bench.write_commands(size)
        print(f"  RQ, {size:,} queues ...", file=sys.stderr)
        script, pipeline = bench.paired("ours", "ours-pipeline", size, cycles)
        ours_raw, raw = bench.paired("ours", "raw", size, cycles)
        plain, plain_pipeline = bench.paired("ours", "ours-pipeline", size, cycles, no_hiredis=True)
        calls = bench.drive(sys.executable, "ours", size, 2)["stats"].get("evalsha_ro", 0) / 2
        rows.append(f"| {size:,} | script vs pipeline (hiredis) | {script / pipeline:.2f}x | {_ms(script)} |")
        rows.append(f"| {size:,} | same, pure-Python parser | {plain / plain_pipeline:.2f}x | {_ms(plain)} |")
        rows.append(f"| {size:,} | script vs raw pipeline of the same commands | {ours_raw / raw:.2f}x | |")
        rows.append(f"| {size:,} | script calls per cycle (EVALSHA_RO, one round trip) | {calls:,.0f} | |")
        if hr_python is None:
            continue
        for parser, options in (("hiredis", {}), ("pure-Python parser", {"no_hiredis": True})):
            ours, hr = bench.paired("ours", "hirefire-resource", size, cycles, python=str(hr_python), **options)
            rows.append(
                f"| {size:,} | script vs hirefire-resource, both {parser} | {ours / hr:.2f}x "
                f"| {_ms(ours)} vs {_ms(hr)} |"
            )
    return rows


def celery_rows(bench: Bench, cycles: int) -> list[str]:
    print("  Celery, 100 queues x 4 priority lists ...", file=sys.stderr)
    bench.client.flushall()
    names = queue_names(100, "celery")
    pipe = bench.client.pipeline(transaction=False)
    stamp = time.time() - 30
    for name in names:
        for key in (name, f"{name}\x06\x163", f"{name}\x06\x166", f"{name}\x06\x169"):
            for _ in range(2):
                message = {"body": "W1tdLCB7fSwge31d", "headers": {"hirefire_enqueued_at": stamp, "task": "t"}}
                message["properties"] = {"delivery_tag": "x", "priority": 0}
                pipe.lpush(key, json.dumps(message))
    pipe.execute()
    ours, raw = bench.paired("ours-celery", "raw-llen", 100, cycles, prefix="celery")
    commands = bench.drive(sys.executable, "ours-celery", 100, 2, prefix="celery")["stats"]
    per_cycle = ", ".join(f"{name} {n / 2:,.0f}" for name, n in sorted(commands.items()))
    return [
        f"| 100 x 4 | latency proc (script) vs LLEN pipeline | {ours / raw:.2f}x | {_ms(ours)} vs {_ms(raw)} |",
        f"| 100 x 4 | commands per cycle (inside the script included) | {per_cycle} | |",
    ]


def slowlog_rows(bench: Bench, cycles: int) -> list[str]:
    """SLOWLOG from 1 ms up (the commands a script runs are logged too, each a few µs: a lower threshold would fill
    the log with them), and the mean call from INFO commandstats. Two controls tell a long call from a stalled
    machine: the raw pipeline of the same reads as single commands (each a few µs: one logged above 1 ms was held up
    by the machine, not by its own work), and ``redis-cli --intrinsic-latency`` (the longest a spinning process here
    waited for the CPU)."""
    print("  SLOWLOG at 10,000 RQ queues ...", file=sys.stderr)
    bench.client.flushall()
    make_rq_queues(bench.client, queue_names(10_000))
    bench.write_commands(10_000)
    bench.client.config_set("slowlog-max-len", 10_000)
    steal = CpuSteal()
    out, entries = _slowlogged(bench, "ours", cycles)
    calls = out["stats"].get("evalsha_ro", 0)
    mean = out["usec"].get("evalsha_ro", 0) / max(calls, 1)
    raw, raw_entries = _slowlogged(bench, "raw", cycles)
    commands = sum(raw["stats"].values())
    stalls = _intrinsic_latency(5 if cycles > 2 else 3)
    return [
        f"| 10,000 | longest single call (SLOWLOG over {cycles} cycles, {calls:,} calls) | {_longest(entries)} "
        f"| mean {mean:,.0f} µs, {_over(entries)}; CPU stolen meanwhile: {steal} |",
        f"| 10,000 | control: longest single command of the raw pipeline (same cycles, {commands:,} commands of a few "
        f"µs each) | {_longest(raw_entries)} | {_over(raw_entries)} |",
        f"| | control: longest wait for the CPU of a spinning process (`redis-cli --intrinsic-latency`) | {stalls} | |",
    ]


def _slowlogged(bench: Bench, kind: str, cycles: int) -> tuple[dict, list[dict]]:
    """A driver run of ``kind`` and the SLOWLOG entries (from 1 ms up) its cycles left."""
    bench.client.config_set("slowlog-log-slower-than", 1000)
    bench.client.slowlog_reset()
    out = bench.drive(sys.executable, kind, 10_000, cycles)
    entries = bench.client.slowlog_get(10_000)
    bench.client.config_set("slowlog-log-slower-than", 10_000)
    return out, [e for e in entries if not e["command"].upper().startswith((b"CONFIG", b"SLOWLOG", b"INFO"))]


def _longest(entries: list[dict]) -> str:
    return f"{max((e['duration'] for e in entries), default=0):,} µs"


def _over(entries: list[dict]) -> str:
    return f"{len(entries)} above 1,000 µs, {sum(e['duration'] > 5000 for e in entries)} above 5,000 µs"


def _intrinsic_latency(seconds: int) -> str:
    """``redis-cli --intrinsic-latency``'s worst wait, in µs ('n/a' without redis-cli)."""
    try:
        text = subprocess.run(
            ["redis-cli", "--intrinsic-latency", str(seconds)], capture_output=True, text=True, timeout=seconds + 10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"
    worst = [line.split()[-2] for line in text.splitlines() if line.startswith("Max latency so far")]
    return f"{int(worst[-1]):,} µs in {seconds} s" if worst else "n/a"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer cycles and rounds (~1 minute)")
    parser.add_argument("--sizes", default="1000,10000", help="RQ queue counts (default 1000,10000)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    cycles = 4 if args.quick else 10
    steal = CpuSteal()
    with private_redis() as port, tempfile.TemporaryDirectory() as tmp:
        print(f"bench: private redis-server on 127.0.0.1:{port}", file=sys.stderr)
        bench = Bench(port, tmp)
        rows = rq_rows(bench, sizes, cycles)
        rows += celery_rows(bench, 4 * cycles)
        rows += slowlog_rows(bench, cycles // 2)
    print(f"\nload average while it ran (1 min): {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; stolen by the")
    print(f"hypervisor: {steal} (figures taken while it is high are stretched at random, SLOWLOG's longest first)")
    print("\n| queues | what | ratio or figure | medians |\n|---:|---|---:|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
