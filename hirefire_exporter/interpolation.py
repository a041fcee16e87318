"""Environment references in the settings file's values: ``url = "${REDIS_URL}"``, as docker-compose writes them.

Heroku and other platforms rotate the broker's password in a config var (``REDIS_URL``, ``RABBITMQ_URL``,
``CLOUDAMQP_URL``); a committed TOML file names the variable instead of copying the password. Every string value of
the file (top-level settings, ``[[procs]]`` options, list entries, nested tables; never keys, numbers or booleans) is
expanded once, when the file is read, so that every consumer (``serve``, ``collect``, the sharing digest) sees the
same values:

- ``${NAME}``: the variable's value (``NAME``: ``[A-Za-z_][A-Za-z0-9_]*``), whole or inside a value
  (``"${REDIS_URL}/2"``, ``"redis://:${REDIS_PASSWORD}@host:6379/0"``); unset or empty (blank) stops start-up;
- ``${NAME:-default}``: the default (text up to the ``}``, not expanded) where the variable is unset or blank;
- ``$$``: one ``$``. Any other ``$`` is kept as it stands (``"pa$word"``); a ``${`` that is none of the above stops
  start-up.

Errors name the key and the variable, never a value. Each expanded value's URL passwords are registered as secrets
(:func:`hirefire_exporter.redaction.register_url`) before anything can print them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from .redaction import register_url
from .settings_check import fail

_REFERENCE = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|(?P<bad>\{))")


def expand(data: Mapping[str, Any], environ: Mapping[str, str], where: str) -> dict[str, Any]:
    """``data`` (a parsed TOML document) with the references of its string values replaced from ``environ``.
    ``where`` prefixes every error (``"--config hirefire.toml: "``)."""
    return {key: _value(value, (key,), environ, where) for key, value in data.items()}


def _value(value: Any, path: tuple[str | int, ...], environ: Mapping[str, str], where: str) -> Any:
    if isinstance(value, str):
        return _string(value, path, environ, where) if "$" in value else value
    if isinstance(value, Mapping):
        return {key: _value(item, (*path, key), environ, where) for key, item in value.items()}
    if isinstance(value, list):
        return [_value(item, (*path, index), environ, where) for index, item in enumerate(value)]
    return value


def _string(text: str, path: tuple[str | int, ...], environ: Mapping[str, str], where: str) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group("bad") is not None or "${" in (match.group("default") or ""):  # no nesting: ${A:-${B}}
            fail(
                f"{where}{key(path)}: '${{' must start ${{NAME}} or ${{NAME:-default}} (NAME: letters, digits and _, "
                "not starting with a digit); write $$ for a literal $"
            )
        name = match.group("name")
        if name is None:
            return "$"
        value = environ.get(name)
        if value is not None and value.strip():
            return value
        if match.group("default") is not None:
            return match.group("default")
        state = "not set" if value is None else "empty"
        fail(f"{where}{key(path)}: ${{{name}}} is {state} in the environment")

    expanded = _REFERENCE.sub(replace, text)
    register_url(expanded)
    return expanded


def key(path: Sequence[str | int]) -> str:
    """A value's place in the file as errors name it: ``share``, ``[[procs]] #1 url``, ``[[procs]] #2 queues #3``,
    ``[[procs]] #1 transport_options.sep`` (entries of a list counted from 1, as the procs are)."""
    pieces = list(path)
    head = ""
    if len(pieces) > 2 and pieces[0] == "procs" and isinstance(pieces[1], int):
        head, pieces = f"[[procs]] #{pieces[1] + 1} ", pieces[2:]
    text = ""
    for piece in pieces:
        text += f" #{piece + 1}" if isinstance(piece, int) else (f".{piece}" if text else piece)
    return head + text
