"""Procs that read Redis: they declare the commands they need, and whoever reads them pipelines the commands.

A :class:`RedisProc` never talks to Redis itself. It says which read-only commands measure its queues
(:meth:`~RedisProc.depth_commands`), optionally which follow-up commands find the oldest job's age
(:meth:`~RedisProc.latency_commands`), and how to turn the replies into a :class:`Reading`. :func:`read_redis_procs`
sends the commands of any number of procs that share one Redis server in one pipelined round trip (plus one more for
latency), so the cost of a cycle is one round trip per server, not one per queue or per proc.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..redaction import describe_error
from .base import Proc, ProcConfigError, Reading

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

    _client: Redis | None = None

    def redis_client(self) -> Redis | None:
        """The client to read with, or ``None`` when this proc's queues are not in Redis. Does no I/O."""
        if self.connection is not None:
            return self.connection
        if self._client is None:
            if not self.url:
                raise ProcConfigError(f"proc {self.name!r}: needs a Redis `connection` or `url`")
            self._client = self.new_client(self.url)
        return self._client

    def new_client(self, url: str | None = None, **options: Any) -> Redis:
        """A client for this proc's own use, from ``url`` or ``redis.Redis`` keyword ``options``. Does no I/O.

        Socket timeouts bound every read; one immediate retry replaces redis-py's default backoff (which takes about
        3 s to give up on a refused connection, longer than a cycle's timeout), while still surviving a pooled
        connection the server closed while idle.
        """
        from redis import Redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        defaults = {
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.socket_timeout,
            "health_check_interval": 30,
            "retry": Retry(NoBackoff(), 1),
        }
        options = {**defaults, **options}
        try:
            return Redis.from_url(url, **options) if url else Redis(**options)
        except (TypeError, ValueError) as exc:
            raise ProcConfigError(f"proc {self.name!r}: bad Redis connection settings: {describe_error(exc)}") from None

    def validate(self) -> None:
        super().validate()
        self.redis_client()

    def depth_commands(self, now: float) -> list[Command]:
        """The read-only commands that count this proc's jobs (one per key)."""
        raise NotImplementedError

    def latency_commands(self, depth: list[Any]) -> list[Command]:
        """Follow-up commands that find the oldest waiting jobs, given the replies to :meth:`depth_commands`."""
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


def server_key(client: Redis) -> tuple[Any, ...]:
    """Which Redis server (and database) a client talks to: procs with the same key share one pipeline."""
    kwargs = client.connection_pool.connection_kwargs
    return (
        kwargs.get("host"),
        kwargs.get("port"),
        kwargs.get("path"),
        kwargs.get("db", 0),
        kwargs.get("username"),
    )


def read_redis_procs(client: Redis, procs: Sequence[RedisProc], now: float) -> list[Reading | Exception]:
    """Read every proc in one pipelined round trip (plus one for latency lookups, when any proc needs them).

    A connection failure raises (it concerns every proc on the server). A bad reply (a key of the wrong type, a
    command the server refuses) fails only the proc it belongs to.
    """
    plans = [proc.depth_commands(now) for proc in procs]
    depth = _pipelined(client, plans)
    follow_ups: list[list[Command]] = []
    for proc, replies in zip(procs, depth):
        failed = next((r for r in replies if isinstance(r, Exception)), None)
        follow_ups.append([] if failed else proc.latency_commands(replies))
    latency = _pipelined(client, follow_ups) if any(follow_ups) else [[] for _ in procs]

    results: list[Reading | Exception] = []
    for proc, replies, lat in zip(procs, depth, latency):
        failed = next((r for r in replies if isinstance(r, Exception)), None)
        if failed is not None:
            results.append(failed)
            continue
        try:
            results.append(proc.build_reading(replies, lat, now))
        except Exception as exc:  # a proc's parsing bug or garbage must not sink its neighbours
            results.append(exc)
    return results


def _pipelined(client: Redis, plans: list[list[Command]]) -> list[list[Any]]:
    pipe = client.pipeline(transaction=False)
    for commands in plans:
        for command in commands:
            pipe.execute_command(*command)
    replies = pipe.execute(raise_on_error=False)
    out, start = [], 0
    for commands in plans:
        out.append(replies[start : start + len(commands)])
        start += len(commands)
    return out


def as_text(value: Any) -> str | None:
    """A reply as text, whether the client decodes responses or not."""
    if value is None or isinstance(value, Exception):
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def age_since(timestamp: float, now: float) -> float:
    """Seconds from ``timestamp`` to ``now``, never negative (clocks of producers and exporter differ)."""
    return max(0.0, now - timestamp)


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
