"""The ``hirefire-exporter`` command: ``serve`` (HTTP server) and ``collect`` (one cycle, printed)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__, hirefire
from .app import ExporterApp, create_app
from .config import load_settings
from .procs.base import ProcConfigError
from .redaction import excepthook, install, scrub

log = logging.getLogger("hirefire_exporter")


def _log_level(value: str) -> str:
    level = value.strip().upper()
    if level not in logging.getLevelNamesMapping():
        raise argparse.ArgumentTypeError(f"unknown log level {value!r} (DEBUG, INFO, WARNING, ERROR or CRITICAL)")
    return level


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hirefire-exporter", description=__doc__)
    parser.add_argument("--version", action="version", version=f"hirefire-exporter {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--procs", help="comma-separated dotted paths to Proc classes or instances (HIREFIRE_PROCS)")
        p.add_argument("--config", help="a TOML file with settings and [[procs]] tables")
        p.add_argument("--timeout", type=float, help="seconds a cycle waits for a broker (default 3)")
        # string defaults go through `type` too: a bad environment variable is a usage error, not a traceback
        p.add_argument("--log-level", type=_log_level, default=os.environ.get("HIREFIRE_LOG_LEVEL", "INFO"))

    serve = commands.add_parser("serve", help="serve /metrics and /hirefire/<token>/info over HTTP")
    common(serve)
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=os.environ.get("PORT", "9180"), help="default: $PORT or 9180")
    serve.add_argument("--token", help="the HireFire token (default: HIREFIRE_TOKEN)")
    serve.add_argument("--max-age", type=float, help="seconds a snapshot is served before a new cycle (default 5)")
    serve.add_argument("--stale-after", type=float, help="seconds a failed proc's last reading is served (default 60)")
    serve.add_argument("--threads", type=int, default=8, help="server worker threads (default 8)")
    serve.add_argument("--no-metrics", dest="metrics", action="store_false", default=None, help="do not serve /metrics")

    collect = commands.add_parser("collect", help="run one cycle, print the HireFire JSON, exit 1 if a proc failed")
    common(collect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # other libraries' records too, as this command prints them
        install(handler)
    sys.excepthook = excepthook
    try:
        settings = load_settings(
            config=args.config,
            procs=args.procs,
            timeout=args.timeout,
            token=getattr(args, "token", None),
            max_age=getattr(args, "max_age", None),
            stale_after=getattr(args, "stale_after", None),
            metrics=getattr(args, "metrics", None),
        )
        app = create_app(settings.procs, **settings.app_options())
    except ProcConfigError as exc:
        print(f"hirefire-exporter: configuration error: {scrub(str(exc))}", file=sys.stderr)
        return 2
    if args.command == "collect":
        return _collect(app)
    return _serve(app, args.host, args.port, args.threads)


def _collect(app: ExporterApp) -> int:
    snapshot = app.collection.collect()
    app.collection.close()
    status, body = hirefire.info(snapshot)
    print(json.dumps(body, indent=2))
    for proc in snapshot.procs:
        if not proc.up:
            print(scrub(f"proc {proc.name!r} failed: {proc.error}"), file=sys.stderr)
    return 0 if status == 200 and all(p.up for p in snapshot.procs) else 1


def _serve(app: ExporterApp, host: str, port: int, threads: int) -> int:
    from waitress.server import create_server

    server = create_server(app, host=host, port=port, threads=threads, ident="hirefire-exporter")

    def stop(signum: int, _frame: Any) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info(
        "hirefire-exporter %s serving on http://%s:%s/ (procs: %s)",
        __version__,
        host,
        port,
        ", ".join(p.name for p in app.collection.procs),
    )
    try:
        server.run()
    except SystemExit:
        pass
    finally:
        server.close()
        app.collection.close()
        log.info("stopped")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
