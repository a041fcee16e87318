"""The ``hirefire-exporter`` command: ``serve`` (HTTP server) and ``collect`` (one cycle, printed)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import __version__, hirefire
from .config import BY_NAME, OPTIONS, Option, Settings, load_settings
from .procs.base import ProcConfigError
from .redaction import excepthook, install, scrub
from .settings_check import Boolean

if TYPE_CHECKING:
    from .app import ExporterApp

log = logging.getLogger("hirefire_exporter")


def _default(option: Option) -> str:
    value = option.default
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def _parser() -> argparse.ArgumentParser:
    """Flags and their help from :data:`hirefire_exporter.config.OPTIONS`, the one table of settings."""
    parser = argparse.ArgumentParser(
        prog="hirefire-exporter",
        description=__doc__,
        epilog="Precedence: flag, then the --config TOML file, then the environment, then the default.",
    )
    parser.add_argument("--version", action="version", version=f"hirefire-exporter {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    helps = {
        "serve": "serve /metrics and /hirefire/<token>/info over HTTP",
        "collect": "run one cycle, print the HireFire JSON, exit 1 if a proc failed",
    }
    for command, summary in helps.items():
        sub = commands.add_parser(command, help=summary, description=summary)
        for option in OPTIONS:
            if command not in option.commands:
                continue
            where = f"env {option.env}" + (f"; TOML {option.name}" if option.toml else "")
            text = f"{option.help} (default: {_default(option)}; {where})".replace("%", "%%")
            if isinstance(option.kind, Boolean):  # --metrics / --no-metrics
                sub.add_argument(option.flag, dest=option.name, action=argparse.BooleanOptionalAction, help=text)
            else:  # every value is checked by load_settings, so that a bad one is one line naming the flag
                sub.add_argument(option.flag, dest=option.name, metavar=option.kind.metavar, help=text)
    return parser


def _import_from_working_directory() -> None:
    """Make the working directory importable, as gunicorn, celery and huey_consumer do: ``--procs
    myapp.procs.WorkerProc`` run from the project directory finds ``myapp`` (a console script's ``sys.path`` starts
    with the script's own directory instead)."""
    cwd = os.getcwd()
    if all(os.path.abspath(entry) != cwd for entry in sys.path):
        sys.path.insert(0, cwd)


def main(argv: Sequence[str] | None = None) -> int:
    _import_from_working_directory()
    args = _parser().parse_args(argv)
    flags = {name: value for name, value in vars(args).items() if name in BY_NAME}
    sys.excepthook = excepthook
    try:
        settings = load_settings(args.command, flags)
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        for handler in logging.getLogger().handlers:  # other libraries' records too, as this command prints them
            install(handler)
        from .app import create_app  # here: a refused setting answers without loading the web stack

        app = create_app(settings.procs, **settings.app_options())
        if args.command == "collect":
            return _collect(app)
        # Bind failures are the server module's (on its way): once it raises ProcConfigError, this block prints them.
        return _serve(app, settings)
    except ProcConfigError as exc:
        print(f"hirefire-exporter: configuration error: {scrub(' '.join(str(exc).split()))}", file=sys.stderr)
        return 2


def _collect(app: ExporterApp) -> int:
    snapshot = app.collection.collect()
    app.collection.close()
    status, body = hirefire.info(snapshot, app.collection.clock())
    print(json.dumps(body, indent=2))
    for proc in snapshot.procs:
        if not proc.up:
            print(scrub(f"proc {proc.name!r} failed: {proc.error}"), file=sys.stderr)
    return 0 if status == 200 and all(p.up for p in snapshot.procs) else 1


def _serve(app: ExporterApp, settings: Settings) -> int:
    from waitress.server import create_server
    from waitress.task import ThreadedTaskDispatcher

    class Dispatcher(ThreadedTaskDispatcher):
        """Waits at most a second for requests in flight on stop (waitress waits 5 s): a request held by a first
        cycle on a stalled broker must not delay SIGTERM."""

        def shutdown(self, cancel_pending: bool = True, timeout: float = 1.0) -> bool:
            return super().shutdown(cancel_pending, timeout)

    dispatcher = Dispatcher()
    dispatcher.set_thread_count(settings.threads)
    host, port = settings.host, settings.port
    server = create_server(
        app,
        host=host,
        port=port,
        threads=settings.threads,
        connection_limit=settings.connection_limit,
        ident="hirefire-exporter",
        _dispatcher=dispatcher,
    )

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
