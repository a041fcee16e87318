"""Settings for the standalone exporter: command-line options over a TOML file over the environment.

TOML file (every key optional but ``procs``)::

    token = "..."            # else HIREFIRE_TOKEN
    max_age = 5              # seconds a snapshot is served before a new cycle
    stale_after = 60         # seconds a failed proc's last reading is still served
    timeout = 3              # seconds one cycle waits for a broker
    metrics = true           # false: no /metrics route
    procs = ["myapp.procs.WorkerProc"]   # dotted paths, and/or tables:

    [[procs]]
    name = "worker"
    backend = "rq"
    url = "redis://localhost:6379/0"
    queues = ["high", "default", "low"]
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .loading import proc_from_table, split_paths
from .procs.base import Proc, ProcConfigError
from .redaction import register

_NUMBERS = ("max_age", "stale_after", "timeout")


@dataclass
class Settings:
    """The exporter's settings; ``procs_setting`` names where the procs came from, for error messages."""

    procs: list[Proc | str] = field(default_factory=list)
    token: str | None = None
    max_age: float = 5.0
    stale_after: float = 60.0
    timeout: float = 3.0
    metrics: bool = True
    procs_setting: str = "HIREFIRE_PROCS"

    def app_options(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "max_age": self.max_age,
            "stale_after": self.stale_after,
            "timeout": self.timeout,
            "metrics": self.metrics,
            "setting": self.procs_setting,
        }


def load_settings(config: str | None = None, procs: str | None = None, **overrides: Any) -> Settings:
    """Settings from the environment (``HIREFIRE_PROCS``, ``HIREFIRE_TOKEN``), then ``config`` (a TOML file), then
    ``procs`` (comma-separated dotted paths) and ``overrides`` (non-None keyword values)."""
    register(overrides.get("token"))  # before anything can fail quoting it
    settings = Settings(procs=list(split_paths(os.environ.get("HIREFIRE_PROCS", ""))))
    if config:
        _apply_toml(settings, config)
    if procs:
        settings.procs, settings.procs_setting = list(split_paths(procs)), "--procs"
    for key, value in overrides.items():
        if value is not None:
            if key in _NUMBERS:
                value = parse_seconds(value, f"--{key.replace('_', '-')}")
            setattr(settings, key, value)
    if not settings.procs:
        raise ProcConfigError("no procs configured: use --procs, HIREFIRE_PROCS or [[procs]] in a --config file")
    return settings


#: Longer than anyone waits, short enough for every clock and wait primitive (a year).
_MAX_SECONDS = 365 * 24 * 3600.0


def parse_seconds(value: Any, where: str) -> float:
    """A duration setting: a number from 0 to a year (NaN, infinity or 1e20 would unbound or break the timeout)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= _MAX_SECONDS:
        raise ProcConfigError(f"{where} must be a number of seconds from 0 to {_MAX_SECONDS:.0f}, got {value!r}")
    return float(value)


def _apply_toml(settings: Settings, path: str) -> None:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProcConfigError(f"--config {path}: cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ProcConfigError(f"--config {path}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProcConfigError(f"--config {path}: not valid TOML: {exc}") from None
    unknown = set(data) - {"procs", "token", "metrics", *_NUMBERS}
    if unknown:
        raise ProcConfigError(f"--config {path}: unknown keys {sorted(unknown)}")
    for key in _NUMBERS:
        if key in data:
            setattr(settings, key, parse_seconds(data[key], f"--config {path}: {key}"))
    if "token" in data:
        register(data["token"])
        settings.token = str(data["token"])
    if "metrics" in data:
        if not isinstance(data["metrics"], bool):
            raise ProcConfigError(f"--config {path}: metrics must be true or false, got {data['metrics']!r}")
        settings.metrics = data["metrics"]
    if "procs" in data:
        entries = data["procs"]
        if not isinstance(entries, list):
            raise ProcConfigError(f"--config {path}: procs must be a list of dotted paths or [[procs]] tables")
        procs: list[Proc | str] = []
        for index, entry in enumerate(entries):
            if isinstance(entry, str):
                procs.append(entry)
            elif isinstance(entry, dict):
                procs.append(proc_from_table(entry, index))
            else:
                raise ProcConfigError(f"--config {path}: procs[{index}] must be a dotted path or a table")
        settings.procs, settings.procs_setting = procs, f"--config {path}"
