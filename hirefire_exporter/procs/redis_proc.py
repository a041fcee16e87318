"""Procs that read Redis: they declare the commands they need, and whoever reads them batches the commands.

A :class:`RedisProc` never talks to Redis itself. It says which read-only commands measure its queues
(:meth:`~RedisProc.depth_commands`), optionally which follow-up commands find the oldest job's age or read what the
first replies named, such as RQ's worker hashes (:meth:`~RedisProc.latency_commands`), and how to turn the replies
into a :class:`Reading`. :func:`read_redis_procs` sends the commands of any number of procs that share one Redis
server in one round trip (plus one more for the follow-ups), so the cost of a cycle is one round trip per server, not
one per queue or per proc: in a few calls of a read-only server-side script where the server allows it, else
pipelined (:mod:`~hirefire_exporter.procs.redis_script`). A command is a tuple ``("LLEN", key)``, or a
:class:`~hirefire_exporter.procs.redis_script.ReadFunction` and its arguments for a read with logic on the server.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..redaction import describe_error, register, register_url, url_problem
from ..settings_check import Seconds
from .base import Proc, ProcConfigError, Reading
from .redis_script import execute

if TYPE_CHECKING:
    from redis import Redis

#: A Redis command and its arguments, e.g. ``("LLEN", "rq:queue:default")``.
Command = tuple[Any, ...]


class RedisProc(Proc):
    """A proc whose queues live in Redis. Give it ``connection`` (a ``redis.Redis``) or ``url``."""

    connection: Redis | None = None
    url: str | None = None
    #: Socket timeouts for a client this proc builds from ``url`` (a user's own ``connection`` keeps its own).
    socket_timeout: float = 5.0
    option_checks = {"socket_timeout": Seconds(positive=True)}

    _client: Redis | None = None

    def redis_client(self) -> Redis | None:
        """The client to read with, or ``None`` when this proc's queues are not in Redis. Does no I/O."""
        if self.connection is not None:
            if not callable(getattr(self.connection, "pipeline", None)):
                kind = type(self.connection).__name__
                raise ProcConfigError(
                    f"proc {self.name!r}: `connection` must be a redis.Redis client, got {kind} (give a URL as `url`)"
                )
            return self.connection
        if self._client is None:
            self._client = self.default_client()
        return self._client

    def default_client(self) -> Redis | None:
        """The client to build (once) when no ``connection`` is given: from ``url`` here. Backends with settings of
        their own override it; ``None`` means this proc's queues are not in Redis. Does no I/O."""
        if not self.url:
            raise ProcConfigError(f"proc {self.name!r}: needs a Redis `connection` or `url`")
        return self.new_client(self.url)

    def new_client(self, url: str | None = None, **options: Any) -> Redis:
        """A client for this proc's own use, from ``url`` or ``redis.Redis`` keyword ``options``. Does no I/O."""
        options.setdefault("socket_timeout", self.socket_timeout)
        return build_client(f"proc {self.name!r}", url, **options)

    def validate(self) -> None:
        super().validate()
        client = self.redis_client()
        if client is not None:  # a client given ready-made (or a Huey instance's) has a password of its own
            register(getattr(getattr(client, "connection_pool", None), "connection_kwargs", {}).get("password"))

    def queue_scope(self) -> Any:
        """The backend and the Redis server (see :meth:`Proc.queue_scope`)."""
        return self.redis_scope(self.redis_client())

    def redis_scope(self, client: Redis | None) -> Any:
        """The backend and the server of ``client``, the one holding the proc's queues (a proc that is read on its
        own may have no :meth:`redis_client` to batch with)."""
        return (Proc.queue_scope(self), None if client is None else server_key(client))

    def depth_commands(self, now: float) -> list[Command]:
        """The read-only commands that count this proc's jobs (one per key)."""
        raise NotImplementedError

    def failure(self, depth: list[Any]) -> Exception | None:
        """The reply to :meth:`depth_commands` that fails this proc, if any: by default its first error. A backend
        whose commands include some it can do without overrides it."""
        return next((r for r in depth if isinstance(r, Exception)), None)

    def latency_commands(self, depth: list[Any]) -> list[Command]:
        """Follow-up commands, given the replies to :meth:`depth_commands`: those that find the oldest waiting jobs,
        and any others that depend on the first replies (RQ's worker hashes). Sent in one second round trip."""
        return []

    def build_reading(self, depth: list[Any], latency: list[Any], now: float) -> Reading:
        """Turn the replies into a Reading. ``latency`` replies may be exceptions (garbage, expired jobs)."""
        raise NotImplementedError

    def read(self, cache: dict[str, Any]) -> Reading:
        client = self.redis_client()
        assert client is not None
        result = read_redis_procs(client, [self], time.time())[0]
        if isinstance(result, BaseException):
            raise result
        return result


def build_client(label: str, url: str | None = None, *, socket_timeout: float, **options: Any) -> Redis:
    """A Redis client from ``url`` or ``redis.Redis`` keyword ``options``; ``label`` names the setting in errors
    (``proc 'worker'``). Does no I/O. Raises :class:`ProcConfigError` (one line, no password) for bad settings.

    Socket timeouts bound every read; one immediate retry replaces redis-py's default backoff (which takes about
    3 s to give up on a refused connection, longer than a cycle's timeout), while still surviving a pooled
    connection the server closed while idle.
    """
    try:
        from redis import Redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError:
        raise ProcConfigError(
            f"{label} needs the module 'redis', which is not installed: pip install redis (or the backend's extra,"
            " such as 'hirefire-exporter[rq]')"
        ) from None

    defaults = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        # no health_check_interval: after 30 s idle (HireFire polls once a minute) it costs every cycle an extra
        # PING round trip; the pool already reconnects a connection the server closed, and the retry covers a
        # connection that dies mid-pipeline.
        "retry": Retry(NoBackoff(), 1),
    }
    options = {**defaults, **options}
    register_url(url)
    register(options.get("password"))
    if url is not None:
        _check_url(label, url)
    try:
        return Redis.from_url(url, **options) if url else Redis(**options)
    except (TypeError, ValueError) as exc:
        raise ProcConfigError(f"{label}: bad Redis connection settings: {describe_error(exc)}") from None


def _check_url(label: str, url: Any) -> None:
    """What redis-py lets through silently: a URL that is not a string, or a database that is not a number (read
    as database 0, someone else's queues)."""
    if not isinstance(url, str):
        raise ProcConfigError(f"{label}: `url` must be a Redis URL string, got {type(url).__name__}")
    problem = url_problem(url)
    if problem:
        raise ProcConfigError(f"{label}: bad Redis URL: {problem}")
    parts = urlsplit(url)
    db = parts.path.strip("/") if parts.scheme in ("redis", "rediss") else ""
    if db and not db.isdigit():  # not quoted: with an unencoded '/' in the password, the path is the password's tail
        raise ProcConfigError(
            f"{label}: the database in the Redis URL must be a number (the path after the host)"
            + (" (a password holding / must be percent-encoded: %2F)" if "@" in db else "")
        )


def server_key(client: Redis) -> tuple[Any, ...]:
    """Which keyspace a client reads: the server (its address, or for a Sentinel-managed client, which has none, the
    service name) and the database, whoever reads it and however. Procs with the same key read the same keys: one
    discovery scope (a queue named by one proc is not discovered by another), and a tracker store that is the
    broker's. An omitted port is Redis's 6379 (``redis://host/0`` and ``redis://host:6379/0`` are one server)."""
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    service, path = getattr(pool, "service_name", None), kwargs.get("path")
    tcp = service is None and not path
    return (
        service,
        kwargs.get("host") or ("localhost" if tcp else None),
        kwargs.get("port") or (6379 if tcp else None),
        path,
        int(kwargs.get("db") or 0),
    )


#: Connection options that change how a reply is read or how long a read may wait. Procs on one keyspace are sent
#: in one batch, through the first one's client, only where their clients agree on every one of these (and on TLS,
#: ``ssl*``, and the credentials): a client that decodes replies would decode another proc's (one non-UTF-8 byte
#: would fail every proc of the batch), a client without a socket timeout would remove another's.
BATCH_OPTIONS = (
    "decode_responses", "encoding", "encoding_errors", "protocol", "legacy_responses", "socket_read_size",
    "socket_timeout", "socket_connect_timeout", "socket_keepalive", "socket_keepalive_options",
    "health_check_interval", "retry", "retry_on_error", "retry_on_timeout", "redis_connect_func",
)  # fmt: skip


def batch_key(client: Redis) -> tuple[Any, ...]:
    """Which clients may read for one another: those on one keyspace (:func:`server_key`) with the same connection
    kind, TLS, credentials (a proc with a stale password must fail on its own, not ride on its neighbour's; the user
    ``default`` is no user named) and :data:`BATCH_OPTIONS`, each option's effective value (a client given none has
    its connection class's default)."""
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    defaults = _connection_defaults(pool.connection_class)
    names = sorted({*BATCH_OPTIONS, *(name for name in kwargs if name.startswith("ssl"))})
    options = tuple((name, _comparable(kwargs.get(name, defaults.get(name)))) for name in names)
    username = kwargs.get("username")
    return (
        server_key(client),
        type(pool),
        pool.connection_class,
        None if username == "default" else username,
        kwargs.get("password"),
        kwargs.get("credential_provider"),
        options,
    )


@lru_cache(maxsize=64)
def _connection_defaults(connection_class: type) -> dict[str, Any]:
    """The defaults of a connection class's keyword arguments, its bases' included (``SSLConnection`` passes most
    on to ``Connection``)."""
    defaults: dict[str, Any] = {}
    for cls in reversed(connection_class.__mro__):
        try:
            parameters = inspect.signature(cls.__init__).parameters.values()
        except (TypeError, ValueError):
            continue
        defaults.update((p.name, p.default) for p in parameters if p.default is not p.empty)
    return defaults


def _comparable(value: Any) -> Any:
    """An option's value as something two clients' can be compared by: a ``Retry`` by its policy (each URL-built client
    has one of its own), a list as a tuple, a value of any other kind by identity (unknown: assume it differs)."""
    if value is None or isinstance(value, str | bytes | int | float | type):
        return value
    if isinstance(value, list | tuple | frozenset | set):
        items = [_comparable(v) for v in value]
        return tuple(items) if isinstance(value, list | tuple) else frozenset(items)
    if type(value).__name__ == "Retry" and hasattr(value, "_retries"):
        backoff = getattr(value, "_backoff", None)
        state = tuple(sorted((k, _comparable(v)) for k, v in vars(backoff).items())) if backoff is not None else ()
        return ("Retry", value._retries, type(backoff), state, _comparable(getattr(value, "_supported_errors", ())))
    return ("object", id(value))


def read_redis_procs(client: Redis, procs: Sequence[RedisProc], now: float) -> list[Reading | Exception]:
    """Read every proc in one round trip (plus one for latency lookups, when any proc needs them).

    A connection failure raises (it concerns every proc on the server). A bad reply (a key of the wrong type, a
    command the server refuses) fails only the proc it belongs to.
    """
    plans = [proc.depth_commands(now) for proc in procs]
    depth = execute(client, plans)
    follow_ups: list[list[Command]] = []
    failures: list[Exception | None] = []
    for proc, replies in zip(procs, depth):
        commands: list[Command] = []
        try:
            failed = proc.failure(replies)
            if failed is None:
                commands = proc.latency_commands(replies)
        except Exception as exc:  # garbage in one proc's replies fails that proc only
            failed = exc
        follow_ups.append(commands)
        failures.append(failed)
    latency = execute(client, follow_ups)

    results: list[Reading | Exception] = []
    for proc, failed, replies, lat in zip(procs, failures, depth, latency):
        if failed is not None:
            results.append(failed)
            continue
        try:
            results.append(proc.build_reading(replies, lat, now))
        except Exception as exc:  # a proc's parsing bug or garbage must not sink its neighbours
            results.append(exc)
    return results


def pipelined(client: Redis, commands: list[Command]) -> list[Any]:
    """Read ``commands`` in one round trip and return the replies. Raises on a connection failure, and with the first
    refused command's error (a key of the wrong type): for a proc that reads two servers, either failure is its own."""
    replies = execute(client, [commands])[0]
    failed = next((r for r in replies if isinstance(r, Exception)), None)
    if failed is not None:
        raise failed
    return replies


def as_text(value: Any) -> str | None:
    """A reply as text, whether the client decodes responses or not."""
    if value is None or isinstance(value, Exception):
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def age_since(timestamp: float, now: float) -> float | None:
    """Seconds from ``timestamp`` to ``now``, never negative (clocks of producers and exporter differ); ``None`` for a
    timestamp that is no time at all (NaN, infinite: garbage that would put ``Infinity`` in HireFire's JSON)."""
    age = now - timestamp
    return max(0.0, age) if math.isfinite(age) else None


def parse_utc(value: Any) -> float | None:
    """An ISO-8601 UTC timestamp (``2026-11-22T05:00:00.123456Z``) as unix seconds; ``None`` when unparsable."""
    text = as_text(value)
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
