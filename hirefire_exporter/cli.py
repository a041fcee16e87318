"""The ``hirefire-exporter`` command: ``serve`` (HTTP server) and ``collect`` (one cycle, printed)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

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
        # a server that cannot listen raises ProcConfigError too: one line, exit 2
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
    from .server import serve

    return serve(
        app,
        host=settings.host,
        port=settings.port,
        threads=settings.threads,
        connection_limit=settings.connection_limit,
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
