"""Settings for the standalone exporter: one table (:data:`OPTIONS`) from which the command-line flags and their
``--help``, the TOML keys and the environment variables all come, so that they cannot drift apart.

Precedence, for every setting alike: command-line flag, then the ``--config`` TOML file, then the environment, then
the default. Every value given anywhere is checked (type and range, :mod:`hirefire_exporter.settings_check`), even
one a higher layer overrides; the environment is read only for the settings of the command being run (``$PORT`` is
nothing to ``collect``). TOML file (every key optional but ``procs``)::

    token = "..."
    max_age = 5
    procs = ["myapp.procs.WorkerProc"]   # dotted paths, and/or tables:

    [[procs]]
    name = "worker"
    backend = "rq"
    url = "${REDIS_URL}"               # from the environment (see hirefire_exporter.interpolation)
    queues = ["high", "default", "low"]
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .auth import METRICS_TOKEN, WEB_CONFIG
from .interpolation import expand
from .loading import proc_from_table, split_paths
from .procs.base import Proc, ProcConfigError
from .settings_check import (
    LOG_LEVEL,
    PORT,
    SHARE_URL,
    TIMING,
    TOKEN,
    Boolean,
    Integer,
    Kind,
    Text,
    collection_options,
    fail,
    refuse_unknown,
)

SERVE = frozenset({"serve"})
BOTH = frozenset({"serve", "collect"})


class _Procs:
    """``procs``: comma-separated dotted paths as text; in TOML a list of dotted paths and ``[[procs]]`` tables."""

    metavar = "PATHS"

    def check(self, value: Any, where: str) -> list[Proc | str]:
        if isinstance(value, str):
            return self.parse(value, where)
        if not isinstance(value, list | tuple):
            fail(f"{where}: procs must be a list of dotted paths or [[procs]] tables")
        procs: list[Proc | str] = []
        for index, entry in enumerate(value):
            if isinstance(entry, str | Proc | type):
                procs.append(entry)
            elif isinstance(entry, Mapping):
                try:
                    procs.append(proc_from_table(entry, index))
                except ProcConfigError as exc:
                    raise ProcConfigError(f"{where}: {exc}") from None
            else:
                fail(f"{where}: procs[{index}] must be a dotted path or a table")
        return procs

    def parse(self, text: str, where: str) -> list[Proc | str]:
        return list(split_paths(text))


@dataclass(frozen=True)
class Option:
    """One setting: its name (the TOML key and the ``Settings`` attribute), what it holds, its default, its
    environment variable, its help, and the commands it applies to. The flag is ``--<name with dashes>``."""

    name: str
    kind: Kind
    default: Any
    env: str | None
    help: str
    commands: frozenset[str] = SERVE
    toml: bool = True

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option(
        "procs", _Procs(), None, "HIREFIRE_PROCS", "comma-separated dotted paths to Proc classes or instances", BOTH
    ),
    Option(
        "config",
        Text("a file name", metavar="FILE"),
        None,
        "HIREFIRE_CONFIG",
        "a TOML file of settings and [[procs]] (${NAME} in its strings: the environment variable)",
        BOTH,
        False,
    ),
    Option("token", TOKEN, None, "HIREFIRE_TOKEN", "the HireFire token (none: 'development', for local checks only)"),
    Option("max_age", TIMING["max_age"], 5.0, "HIREFIRE_MAX_AGE", "seconds a snapshot is served before a refresh"),
    Option(
        "stale_after",
        TIMING["stale_after"],
        60.0,
        "HIREFIRE_STALE_AFTER",
        "seconds a failed proc's last reading is still served (at least max_age)",
    ),
    Option("timeout", TIMING["timeout"], 3.0, "HIREFIRE_TIMEOUT", "seconds a cycle waits for a broker", BOTH),
    Option(
        "refresh_wait",
        TIMING["refresh_wait"],
        0.25,
        "HIREFIRE_REFRESH_WAIT",
        "the most seconds a request waits for a refresh already running",
    ),
    Option(
        "share",
        SHARE_URL,
        None,
        "HIREFIRE_SHARE_URL",
        "a redis://, rediss:// or unix:// URL where processes share one collection (empty: off)",
    ),
    Option("metrics", Boolean(), True, "HIREFIRE_METRICS", "serve /metrics"),
    Option(
        "web_config",
        WEB_CONFIG,
        None,
        "HIREFIRE_WEB_CONFIG",
        "a web configuration file (Prometheus exporter-toolkit format) whose basic_auth_users may read /metrics",
    ),
    Option(
        "metrics_token",
        METRICS_TOKEN,
        None,
        "HIREFIRE_METRICS_TOKEN",
        "a bearer token that may read /metrics (at least 16 characters)",
    ),
    Option(
        "host",
        Text("a host name or address", word=True, metavar="HOST"),
        "0.0.0.0",
        "HIREFIRE_HOST",
        "the address to listen on",
    ),
    Option("port", PORT, 9180, "PORT", "the TCP port to listen on"),
    Option("threads", Integer(1, 1024), 8, "HIREFIRE_THREADS", "server threads answering requests"),
    Option(
        "connection_limit",
        Integer(1, 1_000_000),
        2000,  # 1,000 idle or slow clients and room to spare (bench/connections.py); waitress slows past ~3,000
        "HIREFIRE_CONNECTION_LIMIT",
        "the most client connections open at once",
    ),
    Option("log_level", LOG_LEVEL, "INFO", "HIREFIRE_LOG_LEVEL", "DEBUG, INFO, WARNING, ERROR or CRITICAL", BOTH),
)
BY_NAME = {option.name: option for option in OPTIONS}
TOML_KEYS = frozenset(option.name for option in OPTIONS if option.toml)


@dataclass
class Settings:
    """Every setting's value (see :data:`OPTIONS`); ``sources`` names where each came from, for error messages
    (``--procs``, ``HIREFIRE_PROCS``, ``--config x.toml``...)."""

    procs: list[Proc | str]
    config: str | None
    token: str | None
    max_age: float
    stale_after: float
    timeout: float
    refresh_wait: float
    share: str | None
    metrics: bool
    web_config: str | None
    metrics_token: str | None
    host: str
    port: int
    threads: int
    connection_limit: int
    log_level: str
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def procs_setting(self) -> str:
        return self.sources.get("procs", "procs")

    def app_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`hirefire_exporter.app.create_app`."""
        return {
            "token": self.token,
            "max_age": self.max_age,
            "stale_after": self.stale_after,
            "timeout": self.timeout,
            "refresh_wait": self.refresh_wait,
            "share": self.share or "",  # resolved here: create_app must not read HIREFIRE_SHARE_URL again
            "metrics": self.metrics,
            "web_config": self.web_config,
            "metrics_token": self.metrics_token,
            "setting": self.procs_setting,
        }


def load_settings(
    command: str = "serve",
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    **values: Any,
) -> Settings:
    """The settings of ``command`` (``serve`` or ``collect``), checked: from ``flags`` (option name -> the flag's
    text, or a bool for on/off flags), over the TOML file of the ``config`` setting (its ``${NAME}`` references read
    from ``environ`` too), over ``environ`` (default ``os.environ``; only the command's own settings), over the
    defaults. ``values`` are Python values, taken as flags
    are (``load_settings(config="x.toml", metrics=False)``). Raises :class:`ProcConfigError` naming the setting."""
    environ = os.environ if environ is None else environ
    flags = dict(flags or {})
    chosen: dict[str, tuple[Any, str]] = {  # option name -> (value, where it came from)
        option.name: (option.default, option.name)
        for option in OPTIONS  # a default is named by its bare name
    }

    def take(option: Option, raw: Any, where: str, text: bool) -> None:
        """``text``: from a flag or the environment, converted; else a Python or TOML value, only checked."""
        chosen[option.name] = (option.kind.parse(raw, where) if text else option.kind.check(raw, where), where)

    for option in OPTIONS:  # the environment, lowest of the given layers
        raw = environ.get(option.env or "", "")
        if command in option.commands and raw.strip():
            take(option, raw, option.env or option.name, text=True)
    refuse_unknown([*flags, *values], BY_NAME, "", "setting")
    config = next((layer["config"] for layer in (values, flags) if layer.get("config") is not None), None)
    if config is not None:
        take(BY_NAME["config"], config, "--config", text=False)
    path = chosen["config"][0]
    if path is not None:
        for key, value in _read_toml(path, environ).items():
            take(BY_NAME[key], value, f"--config {path}" + ("" if key == "procs" else f": {key}"), text=False)
    for name, raw in flags.items():
        if raw is not None:
            take(BY_NAME[name], raw, BY_NAME[name].flag, text=isinstance(raw, str))
    for name, value in values.items():
        if value is not None:
            take(BY_NAME[name], value, name, text=False)

    timing = (*TIMING, "share")
    collection_options({name: chosen[name][1] for name in timing}, **{name: chosen[name][0] for name in timing})
    if not chosen["procs"][0]:
        fail("no procs configured: use --procs, HIREFIRE_PROCS or [[procs]] in a --config file")
    settings = Settings(**{name: value for name, (value, _) in chosen.items()})
    settings.sources = {name: where for name, (_, where) in chosen.items()}
    return settings


def _read_toml(path: str, environ: Mapping[str, str]) -> dict[str, Any]:
    """The file's settings, its keys checked against :data:`TOML_KEYS`, its ``${NAME}`` references replaced from
    ``environ`` (:mod:`hirefire_exporter.interpolation`); values are checked by the caller."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        fail(f"--config {path}: cannot read it: {exc.strerror}")
    except UnicodeDecodeError as exc:
        fail(f"--config {path}: not UTF-8 text (byte {exc.start})")
    except tomllib.TOMLDecodeError as exc:
        fail(f"--config {path}: not valid TOML: {exc}")
    refuse_unknown(data, TOML_KEYS, f"--config {path}: ", "key")
    return expand(data, environ, f"--config {path}: ")
