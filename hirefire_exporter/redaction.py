"""Keep secrets out of everything the exporter prints, logs, raises or answers.

The secrets a process knows are held in one place, :data:`SECRETS`, and one function, :func:`scrub`, takes all of
them out of a text. Every path out goes through it: :class:`~hirefire_exporter.procs.base.ProcConfigError` scrubs its
message, :func:`describe_error` the failures the collection keeps and logs, :class:`SecretFilter` (on the
``hirefire_exporter`` logger, and on the handler of the command line) every log record with its traceback, and the
command line what it prints. The HTTP answers carry no error text at all.

What is secret:

- every password a configured URL may hold (:func:`register_url`), read every way a human or a parser may read it:
  an unencoded ``/``, ``?``, ``#`` or ``@`` splits a password into pieces that parsers take for a port, a path or a
  host, so each piece counts (:func:`url_passwords`); the user name is no secret and is kept;
- whole secrets (:func:`register`): the HireFire token, a Redis client's password;
- the environment, read again whenever it changes: ``HIREFIRE_TOKEN`` and every variable named like a secret
  (``*PASSWORD*``, ``*SECRET*``, ``*TOKEN*``, ``*_KEY``), and the passwords of every variable that holds a URL
  (``REDIS_URL``, ``CELERY_BROKER_URL``, ``*_URL``): a user's procs module reads them before the exporter has seen
  any configuration, and may fail with them in its message.

Each secret is replaced by ``***`` as it stands and in the forms it is printed in: percent-encoded or decoded,
``repr()``'d (escaped quotes, ``\\xe9``), as bytes, in JSON, lower-cased (as URL parsers do with a host). Longest
first, so a password never leaves a tail behind a shorter one.

Short secrets: a form of fewer than :data:`FREE_STANDING` characters is replaced only where it stands as a quoted
value (``'ab'``, ``"ab"``), because replacing ``a`` everywhere would mangle every message. The password of any text
shaped like a URL (``scheme://user:password@host``, and ``scheme://user:password/`` with the host left out, the
password read as a port) is masked whatever its length and whether it is known or not. Short passwords have nowhere
else to appear: the exporter's messages about a URL quote no part of it (:func:`url_problem`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import sysconfig
import threading
import traceback
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit

MASK = "***"
#: Forms of a secret at least this long are replaced wherever they appear; shorter ones only as a quoted value.
FREE_STANDING = 4

#: A URL's password, known or not: from the user's ':' to the LAST '@' before a space, a quote or another URL, as
#: URL parsers (urllib, redis-py, kombu) read it: a password holding an unencoded '@' must not leave its tail.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s\[\]'\"]*:)(?:(?!://)[^\s'\"])*@")
#: A URL with the host left out (``redis://app:password/0``): parsers read the password as the port. A number is one,
#: also where a sentence goes on after the URL (``http://host:15672: HTTP Error 401``, ``(http://host:15672),``): a
#: number and closing punctuation before a space or the end.
_URL_PORT_PASSWORD = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s\[\]'\"]*:)"
    r"(?![0-9]*(?:[/?#\s'\"]|$)|[0-9]+[.,:;!?)\]>]+(?:[\s'\"]|$))"
    r"[^/@\s'\"]+(?=[/\s'\"]|$)"
)
#: A scheme and its separator, however mistyped: ``redis://``, ``redis:/``, ``redis:///``, ``redis:``.
_SCHEME = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*:/*")
#: Where URL parsers cut a password that is not percent-encoded.
_DELIMITERS = re.compile(r"[:/?#\[\]@;]")
#: Passwords cut into more pieces than this are scrubbed of their pieces, heads and tails, not of every run.
_MAX_RUNS = 24
#: A port number (urllib takes any number of digits up to 65535) where a URL's port stands.
_PORT = re.compile(r"[0-9]+(?=[:/?#\[\]@;]|$)")
#: Query parameters and environment variables whose values are secrets.
_SECRET_PARAMETER = re.compile(r"pass|secret|token|credential", re.IGNORECASE)
_SECRET_VARIABLE = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|(?:^|_)(?:API_?)?KEY$", re.IGNORECASE)
_URL_VARIABLE = re.compile(r"_(?:URL|URI|DSN)S?$", re.IGNORECASE)


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and int(text) <= 65535


def _pieces(password: str) -> set[str]:
    """The password and every run of its pieces between URL delimiters: what a parser may take for a port, a host or
    a path and quote. A piece that is a port number is no secret on its own (the password as a whole still is)."""
    starts = [0, *(m.end() for m in _DELIMITERS.finditer(password))]
    ends = [*(m.start() for m in _DELIMITERS.finditer(password)), len(password)]
    if len(starts) <= _MAX_RUNS:
        runs = {password[a:b] for a in starts for b in ends if a < b}
    else:  # every run would make scrubbing slow: the pieces, and what a parser cuts (a head or a tail)
        runs = (
            {password[a:b] for a, b in zip(starts, ends)}
            | {password[:b] for b in ends}
            | {password[a:] for a in starts}
        )
    return {run for run in runs if not _is_port(run)} | {password}


@lru_cache(maxsize=4096)
def url_passwords(url: str) -> frozenset[str]:
    """Every reading of the password in ``url`` (and in each ``;``-separated failover URL), without the user name:

    - as a human meant it: from the user's ``:`` after the scheme to the LAST ``@``; without any ``@`` (host left out,
      ``redis://app:password/0``), the text after the ``:`` up to the first ``/``, unless it is a port number;
    - each run of its pieces between ``: / ? # [ ] @ ;`` (see :func:`_pieces`);
    - the parser's reading (urllib's, which redis-py and kombu use), and secret-named query parameters
      (``?password=...``).
    """
    found: set[str] = set()
    for part in {url, *url.split(";")}:
        scheme = _SCHEME.match(part)
        rest = part[scheme.end() :] if scheme else part
        userinfo, at, _ = rest.rpartition("@")
        if at:
            human = userinfo.partition(":")[2]
        else:
            human = rest.partition("/")[0].partition(":")[2]
            port = _PORT.match(human)
            if port and _is_port(port.group()):  # redis://host:6379/0, redis://host:6379?db=1: a port, not a password
                human = ""
        if human:
            found |= _pieces(human)
        try:
            parts = urlsplit(part.strip())
            found.add(parts.password or "")
            found.update(value for key, value in parse_qsl(parts.query) if _SECRET_PARAMETER.search(key))
        except ValueError:  # an unclosed IPv6 bracket: the human reading above covers it
            pass
    found.discard("")
    return frozenset(found)


@lru_cache(maxsize=4096)
def _forms(secret: str) -> frozenset[str]:
    """``secret`` as it may be printed: as is, decoded and encoded, quoted by ``repr()`` and JSON, as bytes."""
    forms: set[str] = set()
    for text in {secret, unquote(secret)}:
        forms |= {
            text,
            text.lower(),
            quote(text, safe=""),
            quote(text),
            quote_plus(text),
            repr(text)[1:-1],
            ascii(text)[1:-1],
            repr(text.encode("utf-8", "surrogateescape"))[2:-1],
            json.dumps(text)[1:-1],
            json.dumps(text, ensure_ascii=False)[1:-1],
        }
    forms.discard("")
    return frozenset(forms)


def environment_secrets(environ: Mapping[str, str]) -> frozenset[str]:
    """The secrets in an environment: variables named like secrets, and the passwords of those holding a URL (named
    ``*_URL``, ``*_URI``, ``*_DSN``, or whose value starts with a scheme)."""
    found: set[str] = set()
    for name, value in environ.items():
        if _SECRET_VARIABLE.search(name):
            found |= {value, value.strip()}
        if _URL_VARIABLE.search(name) or (_SCHEME.match(value) and ("//" in value or "@" in value)):
            found |= url_passwords(value)
    found.discard("")
    return frozenset(found)


def _pattern(secrets: Iterable[str]) -> re.Pattern[str] | None:
    forms = {form for secret in secrets for form in _forms(secret)}
    free = sorted((f for f in forms if len(f) >= FREE_STANDING), key=len, reverse=True)
    quoted = sorted((f for f in forms if len(f) < FREE_STANDING), key=len, reverse=True)
    alternatives = [re.escape(f) for f in free]
    if quoted:
        alternatives.append("(?<=['\"])(?:" + "|".join(map(re.escape, quoted)) + ")(?=['\"])")
    return re.compile("|".join(alternatives)) if alternatives else None


class SecretRegistry:
    """The secrets this process knows, and :meth:`scrub`, which takes them out of a text. Thread-safe."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._version = 0
        #: (registry version, environment items) -> pattern; replaced whole, read without the lock
        self._cached: tuple[int, tuple[tuple[str, str], ...], re.Pattern[str] | None] = (-1, (), None)

    def register(self, secret: Any) -> None:
        """A whole secret (a token, a password). Anything but a non-empty string is ignored."""
        if isinstance(secret, str) and secret.strip():
            self._add({secret, secret.strip()})

    def register_url(self, url: Any) -> None:
        """Every password ``url`` may hold (see :func:`url_passwords`). Anything but a string is ignored."""
        if isinstance(url, str) and url:
            self._add(url_passwords(url))

    def clear(self) -> None:
        """Forget every registered secret (the environment's are read again on every :meth:`scrub`). For tests."""
        with self._lock:
            self._secrets.clear()
            self._version += 1

    def _add(self, secrets: Iterable[str]) -> None:
        with self._lock:
            new = set(secrets) - self._secrets
            if new:
                self._secrets |= new
                self._version += 1

    def scrub(self, text: str) -> str:
        """``text`` without any known secret, and without the password of any URL in it."""
        if not text:
            return text
        pattern = self._current_pattern()
        if pattern is not None:
            text = pattern.sub(MASK, text)
        return redact(text)

    def _current_pattern(self) -> re.Pattern[str] | None:
        version, environment = self._version, tuple(self._environ.items())
        cached = self._cached
        if cached[0] == version and cached[1] == environment:
            return cached[2]
        with self._lock:
            secrets = self._secrets | environment_secrets(dict(environment))
        pattern = _pattern(secrets)
        self._cached = (version, environment, pattern)
        return pattern


#: The process's secrets.
SECRETS = SecretRegistry()
register = SECRETS.register
register_url = SECRETS.register_url
scrub = SECRETS.scrub


def redact(text: str) -> str:
    """Mask the password of every URL in ``text``, known or not: ``scheme://user:***@host``, and
    ``scheme://user:***/`` where the host was left out and a parser read the password as the port."""
    text = _URL_PASSWORD.sub(rf"\g<head>{MASK}@", text)
    return _URL_PORT_PASSWORD.sub(rf"\g<head>{MASK}", text)


def describe_error(exc: BaseException, locate: bool = False) -> str:
    """A one-line, secret-free description of a failure, for logs and configuration errors. With ``locate``, where
    it happened in the user's code (the innermost frame outside the standard library and installed packages)."""
    message = scrub(str(exc))  # before whitespace is folded: the secret must be found as it stands
    described = f"{type(exc).__name__}: {' '.join(message.split()) or 'no message'}"
    where = _user_frame(exc.__traceback__) if locate else None
    return scrub(described)[:300] + (f" (at {where})" if where else "")


def _user_frame(tb: TracebackType | None) -> str | None:
    libraries = {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    ours = str(Path(__file__).parent)
    frames = [frame for frame in traceback.extract_tb(tb) if not frame.filename.startswith(("<", ours, *libraries))]
    if not frames:
        return None
    frame = frames[-1]
    path = Path(frame.filename)
    try:
        path = path.relative_to(Path.cwd())
    except ValueError:
        pass
    return scrub(f"{path}:{frame.lineno}")


def url_problem(url: str) -> str | None:
    """What keeps ``url`` from being parsed, said without quoting any of it (a piece of a password that is not
    percent-encoded is what a parser reads as the port, the host or the path); None when it parses."""
    hint = "host left out? A password holding / ? # @ or [ must be percent-encoded: %2F %3F %23 %40 %5B"
    try:
        parts = urlsplit(url)
    except ValueError:
        return f"its host cannot be parsed ({hint})"
    try:
        parts.port  # noqa: B018 (parsed lazily)
    except ValueError:
        return f"its port is not a number from 0 to 65535 ({hint})"
    return None


class SecretFilter(logging.Filter):
    """Scrubs a log record in place: its message (formatted with its arguments) and its traceback, which is rendered
    here and the exception dropped, so that no handler renders the raw one again (nor mails its frames' locals)."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: leave it to logging's own error report
            return True
        record.msg, record.args = scrub(message), ()
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self._formatter.formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


FILTER = SecretFilter()


def install(target: logging.Logger | logging.Handler) -> None:
    """Scrub every record ``target`` handles (once: installing twice is a no-op)."""
    if not any(isinstance(f, SecretFilter) for f in target.filters):
        target.addFilter(FILTER)


def excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    """A ``sys.excepthook`` that prints an uncaught exception's traceback scrubbed (for the command line)."""
    sys.stderr.write(scrub("".join(traceback.format_exception(kind, exc, tb))))


install(logging.getLogger("hirefire_exporter"))
