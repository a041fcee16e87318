"""The alternatives a user would pick instead, each in its own venv (their pins conflict with ours and each other).

``python bench/alternatives.py`` creates the venvs under ``$HIREFIRE_BENCH_VENVS`` (default ``/work/bench-venvs``,
else ``~/.cache/hirefire-bench-venvs``); ``bench/cycle.py`` calls :func:`ensure` itself and skips, with the reason, an
alternative whose venv cannot be built (no network, a yanked pin...). The venvs are never part of the repository.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Alternative:
    key: str  # venv directory name and table label
    label: str
    requirements: tuple[str, ...]
    check: str  # a module to import to tell the venv works


ALTERNATIVES = (
    Alternative("hirefire11", "HireFire 1.1 RQProc", ("HireFire==1.1", "rq>=2,<3", "redis>=5,<6"), "hirefire.procs.rq"),
    Alternative(
        "hirefire-resource",
        "hirefire-resource (rq macro)",
        ("hirefire-resource", "redis>=5"),
        "hirefire_resource.macro.rq",
    ),
    Alternative("rq-exporter", "rq-exporter", ("rq-exporter", "rq>=2,<3", "redis>=5,<6"), "rq_exporter.collector"),
)


def venvs_root() -> Path:
    configured = os.environ.get("HIREFIRE_BENCH_VENVS")
    if configured:
        return Path(configured)
    if Path("/work").is_dir():
        return Path("/work/bench-venvs")
    return Path.home() / ".cache" / "hirefire-bench-venvs"


def python_of(alt: Alternative) -> Path:
    return venvs_root() / alt.key / "bin" / "python"


def ensure(alt: Alternative) -> tuple[Path | None, str]:
    """The venv's python, creating the venv when missing; ``(None, reason)`` when it cannot be built."""
    python = python_of(alt)
    if python.exists() and _works(python, alt.check):
        return python, "ready"
    try:
        venv.create(python.parent.parent, with_pip=True, clear=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *alt.requirements],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        )
    except subprocess.CalledProcessError as exc:
        return None, f"pip install {' '.join(alt.requirements)} failed: {exc.stderr.strip().splitlines()[-1:]}"
    except Exception as exc:
        return None, f"cannot create its venv: {exc}"
    if not _works(python, alt.check):
        return None, f"installed, but `import {alt.check}` fails"
    return python, "created"


def _works(python: Path, module: str) -> bool:
    result = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True, timeout=60)
    return result.returncode == 0


if __name__ == "__main__":
    failed = False
    for alternative in ALTERNATIVES:
        path, status = ensure(alternative)
        failed |= path is None
        print(f"{alternative.label:32} {status}{'' if path is None else f': {path}'}")
    sys.exit(1 if failed else 0)
