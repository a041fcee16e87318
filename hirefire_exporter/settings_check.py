"""Every setting's type and range, checked in one place.

A *kind* says what a setting holds. ``kind.check(value, where)`` takes a Python value (from TOML, a keyword
argument, Django settings, a proc's options) and ``kind.parse(text, where)`` the text of a command-line flag or an
environment variable; both return the value to use or raise :class:`ProcConfigError` with one line that starts with
``where`` (the setting as the user wrote it: ``--threads``, ``HIREFIRE_TIMEOUT``, ``--config x.toml: timeout``,
``proc 'worker': socket_timeout``). Text is converted, Python values are not: ``timeout = "5"`` in TOML is refused, as
is ``true`` where a number belongs.

The command line and the TOML file (:mod:`hirefire_exporter.config`), ``create_app`` and the framework adapters
(:func:`collection_options`), the token (:data:`TOKEN`, used by :class:`hirefire_exporter.hirefire.Token`) and the
procs (``option_checks`` in :mod:`hirefire_exporter.procs`) all use these kinds. Nothing here does I/O.
"""

from __future__ import annotations

import difflib
import math
import string
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol
from urllib.parse import urlsplit

from .redaction import register, register_url

#: The longest duration any setting takes: longer than anyone waits, short enough for every clock, socket and wait
#: primitive (1e308 seconds overflows them all).
MAX_SECONDS = 365 * 24 * 3600


def fail(message: str) -> NoReturn:
    """Raise the configuration error every entry point turns into one line (exit status 2 on the command line)."""
    from .procs.base import ProcConfigError  # defined there (its public home since the old API); procs import us

    raise ProcConfigError(message)


def shown(value: Any) -> str:
    """A value as an error message quotes it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _near(value: Any, choices: Iterable[str]) -> str | None:
    choices = list(choices)
    if not isinstance(value, str):
        return None
    close = difflib.get_close_matches(value, choices, n=1)
    if not close:  # 'INFO' for 'info', 'Queues' for 'queues'
        lowered = {choice.lower(): choice for choice in choices}
        close = [lowered[c] for c in difflib.get_close_matches(value.lower(), list(lowered), n=1)]
    return close[0] if close else None


def did_you_mean(value: Any, choices: Iterable[str]) -> str:
    """``"; did you mean 'queues'?"`` for a near miss among ``choices``, else ``""``."""
    near = _near(value, choices)
    return f"; did you mean {near!r}?" if near else ""


def refuse_unknown(given: Iterable[str], known: Collection[str], where: str, noun: str = "option") -> None:
    """Refuse names that are not in ``known``, naming the near miss: ``unknown option 'queue'; did you mean
    'queues'?``. ``where`` is a prefix such as ``"--config x.toml: "``."""
    unknown = [name for name in given if name not in known]
    if len(unknown) == 1:
        fail(f"{where}unknown {noun} {unknown[0]!r}{did_you_mean(unknown[0], known)}")
    if unknown:
        named = [
            f"{name!r} (did you mean {near!r}?)" if (near := _near(name, known)) else repr(name) for name in unknown
        ]
        fail(f"{where}unknown {noun}s {', '.join(named)}")


class Kind(Protocol):
    #: How ``--help`` names the value (``SECONDS``, ``N``...).
    metavar: str

    def check(self, value: Any, where: str) -> Any: ...

    def parse(self, text: str, where: str) -> Any: ...


@dataclass(frozen=True)
class Seconds:
    """A duration: a number (not a boolean, not text) from 0 (or above 0, when ``positive``) to a year."""

    positive: bool = False
    metavar: str = "SECONDS"

    @property
    def describe(self) -> str:
        if self.positive:
            return f"a number of seconds above 0 and up to {MAX_SECONDS}"
        return f"a number of seconds from 0 to {MAX_SECONDS}"

    def check(self, value: Any, where: str, shown_as: Any = None) -> float:
        number = _number(value)
        low_ok = number is not None and (number > 0 if self.positive else number >= 0)
        if number is None or not low_ok or not number <= MAX_SECONDS:
            fail(f"{where} must be {self.describe}, got {shown(value if shown_as is None else shown_as)}")
        return float(number)

    def parse(self, text: str, where: str) -> float:
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        return self.check(number, where, shown_as=text)


@dataclass(frozen=True)
class Integer:
    """A whole number from ``low`` to ``high`` (a float such as ``8.0`` is refused: it is a typo or a unit mix-up)."""

    low: int
    high: int
    what: str = "an integer"
    metavar: str = "N"

    @property
    def describe(self) -> str:
        return f"{self.what} from {self.low} to {self.high}"

    def check(self, value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not self.low <= value <= self.high:
            fail(f"{where} must be {self.describe}, got {shown(value)}")
        return value

    def parse(self, text: str, where: str) -> int:
        try:
            return self.check(int(text), where)
        except ValueError:  # not a number, or (ProcConfigError is a ValueError) out of range: quote the text
            fail(f"{where} must be {self.describe}, got {shown(text)}")


@dataclass(frozen=True)
class Boolean:
    metavar: str = "BOOL"

    _TEXT = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}

    def check(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            fail(f"{where} must be true or false, got {shown(value)}")
        return value

    def parse(self, text: str, where: str) -> bool:
        value = self._TEXT.get(text.strip().lower())
        if value is None:
            fail(f"{where} must be true or false (also yes/no, on/off, 1/0), got {shown(text)}")
        return value


@dataclass(frozen=True)
class Text:
    """A non-empty string, stripped of surrounding spaces unless ``exact`` (a Redis key prefix keeps them); with
    ``word``, also without spaces or control characters (a host name)."""

    what: str = "a non-empty string"
    word: bool = False
    exact: bool = False
    metavar: str = "TEXT"

    def check(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not (value if self.exact else value.strip()):
            fail(f"{where} must be {self.what}, got {shown(value)}")
        value = value if self.exact else value.strip()
        if self.word and not all(char.isprintable() and not char.isspace() for char in value):
            fail(f"{where} must be {self.what} without spaces or control characters, got {shown(value)}")
        return value

    def parse(self, text: str, where: str) -> str:
        return self.check(text, where)


@dataclass(frozen=True)
class Choice:
    """One of a few names; a near miss is named in the error."""

    choices: tuple[str, ...]
    case_sensitive: bool = True
    metavar: str = "NAME"

    def check(self, value: Any, where: str) -> str:
        key = value if self.case_sensitive or not isinstance(value, str) else value.strip().upper()
        if key not in self.choices:
            hint = did_you_mean(value, self.choices)
            fail(f"{where} must be one of {', '.join(self.choices)}, got {shown(value)}{hint}")
        return key

    def parse(self, text: str, where: str) -> str:
        return self.check(text, where)


@dataclass(frozen=True)
class OrNone:
    """``None`` or a value of ``kind``."""

    kind: Any
    metavar: str = ""

    def check(self, value: Any, where: str) -> Any:
        return None if value is None else self.kind.check(value, where)

    def parse(self, text: str, where: str) -> Any:
        return self.kind.parse(text, where)


#: The characters of a HireFire token: RFC 3986 ``pchar`` without percent-escapes, i.e. what a URL path segment holds
#: as written and an HTTP header carries unchanged. HireFire sends the token both ways (``/hirefire/<token>/info``
#: and the ``HireFire-Token`` header): ``tökén`` works in a path but not in a header, ``a/b`` (or ``?``, ``#``,
#: ``%``, a space) in a header but not in a path.
TOKEN_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@")


@dataclass(frozen=True)
class Token:
    """The HireFire token: a string of :data:`TOKEN_CHARACTERS`; empty or ``None`` means none. Errors never quote
    it, nor any character of it (it is registered as a secret before anything could quote it). Other tokens
    (``/metrics``' bearer token) subclass it with a :meth:`problem` of their own."""

    metavar: str = "TOKEN"

    def check(self, value: Any, where: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            fail(f"{where} must be a string, got {type(value).__name__}")
        register(value)  # before any message could quote it
        token = value.strip()
        if not token:
            return None
        problem = self.problem(token)
        if problem:
            fail(f"{where}: {problem}")
        return token

    def parse(self, text: str, where: str) -> str | None:
        return self.check(text, where)

    def problem(self, token: str) -> str | None:
        """Why ``token`` cannot be used, never quoting it; ``None`` when it can."""
        problem = _token_problem(token)
        if problem is None:
            return None
        return (
            "HireFire sends the token in a URL path and in the HireFire-Token header, so it may hold only ASCII"
            f" letters, digits and -._~!$&'()*+,;=:@; this one {problem}"
        )


def _token_problem(token: str) -> str | None:
    if not token.isascii():
        return "holds a non-ASCII character (an HTTP header cannot carry it)"
    if any(char.isspace() or not char.isprintable() for char in token):
        return "holds a space or a control character"
    if any(char in "/?#%" for char in token):
        return "holds '/', '?', '#' or '%' (they end or change a URL path segment)"
    if not TOKEN_CHARACTERS.issuperset(token):
        return "holds a character a URL path would have to escape"
    if set(token) == {"."}:
        return "is made of dots only ('.' and '..' are not path segments a URL keeps)"
    return None


@dataclass(frozen=True)
class ShareURL:
    """Where processes share one collection: a ``redis://``, ``rediss://`` or ``unix://`` URL; ``""`` means off and
    ``None`` not given. Errors never quote the URL (it may hold a password)."""

    metavar: str = "URL"

    def check(self, value: Any, where: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            fail(f"{where} must be a Redis URL string, got {type(value).__name__}")
        register_url(value)  # its password is a secret from now on, whatever else fails
        url = value.strip()
        if not url:
            return ""  # off (None: not given)
        problem = _share_url_problem(url)
        if problem:
            fail(f"{where} {problem} (the URL is not shown: it may hold a password)")
        return url

    def parse(self, text: str, where: str) -> str | None:
        return self.check(text, where)


def _share_url_problem(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        _ = parts.port  # parsed lazily
    except ValueError:
        return "is not a valid URL: check its port and brackets, and percent-encode '/', '?', '#' and '@' in a password"
    if parts.scheme not in ("redis", "rediss", "unix"):
        return "must be a redis://, rediss:// or unix:// URL"
    if "@" in parts.path + parts.query + parts.fragment:
        return "holds '@' after its host: percent-encode '/', '?', '#' and '@' in the password"
    if parts.scheme == "unix":
        return None if parts.path else "must name the socket's path (unix:///path/to/redis.sock)"
    database = parts.path.strip("/")
    if database and not database.isdigit():
        return "must name a database by its number (redis://host:6379/0)"
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if not isinstance(value, float) or math.isfinite(value) else None


#: Kinds shared by several settings.
PORT = Integer(1, 65535, "a TCP port number", "PORT")
TOKEN = Token()
SHARE_URL = ShareURL()
LOG_LEVEL = Choice(("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), case_sensitive=False, metavar="LEVEL")

#: The collection's timing options: name -> kind (see :func:`collection_options`).
TIMING = {
    "max_age": Seconds(),
    "stale_after": Seconds(),
    "timeout": Seconds(positive=True),
    "refresh_wait": Seconds(),
}


def collection_options(labels: Mapping[str, str] | None = None, **values: Any) -> dict[str, Any]:
    """Check the collection options every entry point takes (``max_age``, ``stale_after``, ``timeout``,
    ``refresh_wait``, ``share``): each alone, then against each other. ``labels`` name where each came from (default:
    its own name). Returns the checked values.

    Bounds: ``max_age``, ``stale_after`` and ``refresh_wait`` from 0 to a year; ``timeout`` above 0 (0 would fail
    every read); ``stale_after`` at least ``max_age + refresh_wait + timeout``: a reading is judged when it is
    served, and while a broker is slow it is only replaced that often, so a shorter ``stale_after`` would refuse a
    healthy proc's reading (a 503) between refreshes. This also catches a wait given in milliseconds.
    """
    labels = labels or {}
    checked: dict[str, Any] = {}
    for name, value in values.items():
        kind = SHARE_URL if name == "share" else TIMING[name]
        checked[name] = kind.check(value, labels.get(name, name))
    parts = ("max_age", "refresh_wait", "timeout")
    if "stale_after" in checked and all(name in checked for name in parts):
        least = sum(checked[name] for name in parts)
        if checked["stale_after"] < least:
            named = " + ".join(labels.get(name, name) for name in parts)
            figures = " + ".join(f"{checked[name]:g}" for name in parts)
            fail(
                f"{labels.get('stale_after', 'stale_after')} = {checked['stale_after']:g} must be at least {named}"
                f" = {figures} = {least:g}: while a broker is slow a reading is only replaced that often, and one older"
                " than stale_after is never served"
            )
    return checked
