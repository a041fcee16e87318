"""Opt-in protection of ``/metrics``: HTTP basic auth with bcrypt hashes and/or a bearer token.

Basic auth users come from a web configuration file in the format of Prometheus' exporter-toolkit (the
``--web.config.file`` of node_exporter and the others), so one file and one ``htpasswd -nBC 10`` habit serve every
exporter of a fleet::

    basic_auth_users:
      prometheus: $2y$10$...

The bearer token (``metrics_token``) is for places with nothing but environment variables (Heroku config vars).
Either one admits a request; with neither configured ``/metrics`` is open, as before.

Every check takes the same path whatever the credentials: an unknown user is checked against a dummy hash as costly
as the costliest real one, and a refusal for a user with a cheaper hash is padded with that check too (no timing
tells which users exist); tokens are compared with :func:`hmac.compare_digest`. A bcrypt check costs ~100 ms or more
by design, so successful checks are remembered (as exporter-toolkit does), keyed by an HMAC of the credentials under
a key of this process (no password is kept), in a bounded table, and only one check runs at a time: a request that
finds one running is refused at once, so a flood of wrong passwords never holds the threads that serve HireFire and
the probes. A malformed
``Authorization`` header (bad base64, no colon, not UTF-8, too long) is a refusal, never an error. No credential is
logged or quoted in an error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .settings_check import Token, fail, refuse_unknown, shown

#: A bcrypt hash as exporter-toolkit accepts it (``htpasswd -B`` writes ``$2y$``, Python's bcrypt ``$2b$``); match
#: it with ``fullmatch`` (``$`` would let a trailing newline in, and the right password would then never match).
BCRYPT_HASH = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
#: The longest ``Authorization`` header looked at; a longer one is refused unread.
MAX_HEADER = 4096
#: bcrypt uses at most this many bytes of a password (longer ones are refused, as Go's bcrypt does).
MAX_PASSWORD = 72
#: Successful basic-auth checks remembered at once (least recently used forgotten first).
CACHE_SIZE = 256
REALM = "hirefire-exporter"
#: The shortest bearer token accepted: guessing it must be hopeless over the network.
MIN_TOKEN = 16
_INSTALL = "pip install 'hirefire-exporter[auth]'"
_KNOWN_KEYS = ("basic_auth_users", "tls_server_config", "http_server_config")


def _bcrypt() -> Any:
    try:
        import bcrypt
    except ImportError:
        fail(f"basic_auth_users needs the bcrypt package: {_INSTALL}")
    return bcrypt


def read_web_config(path: str, where: str) -> dict[str, bytes]:
    """The basic-auth users of an exporter-toolkit web configuration file (user -> bcrypt hash), checked: a file
    that cannot be read, is not YAML, holds settings this exporter does not serve (TLS: terminate it in front, as
    Heroku's router does) or a malformed hash stops start-up with one line naming ``where`` (never a hash)."""
    try:
        import yaml
    except ImportError:
        fail(f"{where}: reading a web configuration file needs the pyyaml package: {_INSTALL}")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"{where}: cannot read it: {exc.strerror}")
    except UnicodeDecodeError as exc:
        fail(f"{where}: not UTF-8 text (byte {exc.start})")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        fail(f"{where}: not valid YAML{at}")
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        fail(f"{where}: must be a YAML mapping with basic_auth_users")
    refuse_unknown(data, _KNOWN_KEYS, f"{where}: ", "key")
    for served_elsewhere in ("tls_server_config", "http_server_config"):
        if data.get(served_elsewhere):
            fail(
                f"{where}: {served_elsewhere} is not supported: terminate TLS and set headers in front of the exporter"
            )
    users = data.get("basic_auth_users") or {}
    if not isinstance(users, Mapping):
        fail(f"{where}: basic_auth_users must map user names to bcrypt hashes")
    checked: dict[str, bytes] = {}
    for user, hashed in users.items():
        if not isinstance(user, str) or not user or ":" in user:
            fail(f"{where}: basic_auth_users: a user name must be a non-empty string without ':'")
        match = BCRYPT_HASH.fullmatch(hashed) if isinstance(hashed, str) else None
        if match is None or not 4 <= int(match.group(1)) <= 31:
            fail(
                f"{where}: basic_auth_users: {user!r} needs a bcrypt hash ($2y$10$ and 53 more characters, from"
                " `htpasswd -nBC 10 USER`, a cost from 04 to 31), not a password"
            )
        checked[user] = match.string.encode("ascii")
    if users:
        _bcrypt()
    return checked


@dataclass(frozen=True)
class WebConfig:
    """The ``web_config`` setting: a file name, read and checked when the setting is (see :func:`read_web_config`)."""

    metavar: str = "FILE"

    def check(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            fail(f"{where} must be a file name, got {shown(value)}")
        read_web_config(value.strip(), f"{where} {value.strip()}")
        return value.strip()

    def parse(self, text: str, where: str) -> str:
        return self.check(text, where)


@dataclass(frozen=True)
class BearerToken(Token):
    """The ``metrics_token`` setting: printable ASCII without spaces, at least :data:`MIN_TOKEN` characters."""

    def problem(self, token: str) -> str | None:
        if not token.isascii() or not all(char.isprintable() and not char.isspace() for char in token):
            return "a bearer token may hold only printable ASCII characters without spaces"
        if len(token) < MIN_TOKEN:
            return f"a bearer token needs at least {MIN_TOKEN} characters (try `openssl rand -hex 32`)"
        return None


WEB_CONFIG = WebConfig()
METRICS_TOKEN = BearerToken()


class Auth:
    """Who may read ``/metrics``: basic-auth ``users`` (name -> bcrypt hash) and/or a bearer ``token``."""

    def __init__(self, users: Mapping[str, bytes] | None = None, token: str | None = None) -> None:
        self.users = dict(users or {})
        self.token = token.encode("ascii") if token else None
        self._bcrypt = _bcrypt() if self.users else None
        self._dummy = b""
        #: The users whose hash is cheaper than the costliest: their refusals are padded to its cost.
        self._cheaper: frozenset[str] = frozenset()
        if self.users:  # as costly as the costliest real hash: an unknown user takes as long as a known one
            costs = {user: int(h[4:6]) for user, h in self.users.items()}  # $2y$<cost>$, checked at reading
            self._dummy = self._bcrypt.hashpw(secrets.token_bytes(16), self._bcrypt.gensalt(max(costs.values())))
            self._cheaper = frozenset(user for user, cost in costs.items() if cost < max(costs.values()))
        #: One bcrypt check at a time: a flood of wrong passwords costs one core, never every thread that serves
        #: HireFire and the probes (a check that finds another running refuses at once).
        self._checking = threading.Lock()
        self._key = secrets.token_bytes(32)  # of this process: the cache's keys say nothing outside it
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, web_config: str | None, token: str | None) -> Auth | None:
        """The protection the settings ask for, or None when they ask for none."""
        users = read_web_config(web_config, f"web_config {web_config}") if web_config else {}
        return cls(users, token) if users or token else None

    @property
    def challenges(self) -> list[str]:
        """The ``WWW-Authenticate`` values of a 401: one per scheme this exporter accepts."""
        found = [f'Basic realm="{REALM}", charset="UTF-8"'] if self.users else []
        return found + ([f'Bearer realm="{REALM}"'] if self.token else [])

    def allows(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header (the WSGI environ's latin-1 text, or None) admits the request."""
        if not header or len(header) > MAX_HEADER:
            return False
        scheme, _, credentials = header.strip().partition(" ")
        scheme, credentials = scheme.lower(), credentials.strip()
        if scheme == "bearer":
            return self.token is not None and hmac.compare_digest(_bytes(credentials), self.token)
        if scheme == "basic" and self.users:
            return self._basic(credentials)
        return False

    def _basic(self, credentials: str) -> bool:
        try:
            decoded = base64.b64decode(_bytes(credentials), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):  # bad base64, not UTF-8 (UnicodeDecodeError is a ValueError)
            return False
        user, colon, password = decoded.partition(":")
        if not colon:
            return False
        secret = password.encode("utf-8")
        key = hmac.new(self._key, user.encode("utf-8") + b"\0" + secret, hashlib.sha256).digest()
        with self._lock:
            if key in self._verified:
                self._verified.move_to_end(key)
                return True
        hashed = self.users.get(user)
        assert self._bcrypt is not None
        if not self._checking.acquire(blocking=False):
            return False
        try:
            ok = self._bcrypt.checkpw(secret[:MAX_PASSWORD], hashed if hashed is not None else self._dummy)
            if not ok and user in self._cheaper:  # as long as any other refusal: the timing tells no user apart
                self._bcrypt.checkpw(secret[:MAX_PASSWORD], self._dummy)
        finally:
            self._checking.release()
        if not ok or hashed is None or len(secret) > MAX_PASSWORD:
            return False
        with self._lock:
            self._verified[key] = None
            while len(self._verified) > CACHE_SIZE:
                self._verified.popitem(last=False)
        return True


def _bytes(text: str) -> bytes:
    """Header text as bytes to compare: ASCII stays itself, anything else can never equal an ASCII secret."""
    return text.encode("utf-8", "surrogatepass")
