"""The ``queues`` library (0.6.3), read from its storage: the library itself is Python 2 only.

- Redis backend (``QUEUE_BACKEND = "redisd"``): each queue is a plain list named exactly after the queue (RPUSH,
  LPOP/BLPOP). One LLEN per queue, pipelined with every other proc on the same Redis server: ``queued`` jobs.
- beanstalkd backend (``QUEUE_BACKEND = "beanstalkd"``): each queue is a tube. The library's own ``len()`` reads the
  server-wide ready count (every tube's jobs); here each tube is read with ``stats-tube``, all tubes of a proc over
  one connection per cycle: ``ready`` jobs are ``queued``, ``reserved`` ones ``started`` (a worker holds them), both
  counted; ``delayed`` ones are ``scheduled`` (they become ready on their own) and ``buried`` ones are reported,
  neither counted.

Defaults come from the library's own settings, read as it read them (Django settings when Django is configured,
else environment variables): ``QUEUE_BACKEND``, ``QUEUE_REDIS_CONNECTION`` (``host:port``), ``QUEUE_REDIS_DB``,
``QUEUE_REDIS_TIMEOUT``, ``QUEUE_BEANSTALKD_CONNECTION`` (``host:port``). Its other backends (dummy, memcached,
sqs, zenqueued) are not supported.
"""

from __future__ import annotations

import os
from typing import Any

from ..settings_check import PORT, Integer, OrNone, Seconds, Text, did_you_mean
from . import beanstalk
from .base import ProcConfigError, QueueReading, Reading
from .redis_proc import Command, RedisProc

#: ``queue_backend`` values (the library's module names, plus ``redis``) -> the storage read.
BACKENDS = {"redis": "redis", "redisd": "redis", "beanstalkd": "beanstalkd", "beanstalk": "beanstalkd"}
UNSUPPORTED = {
    "dummy": "it keeps jobs in the memory of the process that runs them: no other process can read them",
    "memcached": "memcached-protocol queue servers (Starling, MemcacheQ...) are not supported",
    "sqs": "Amazon SQS is not supported",
    "zenqueued": "zenqueue cannot tell a queue's length",
}
#: beanstalkd job states -> the states reported here.
BEANSTALK_STATES = {"ready": "queued", "reserved": "started", "delayed": "scheduled", "buried": "buried"}
BEANSTALK_COUNTED = frozenset({"queued", "started"})
BEANSTALK_PORT = 11300
_DATABASE = Integer(0, 1_000_000, "a Redis database number")


def library_setting(name: str) -> str | None:
    """A ``queues`` setting: from Django settings when Django is in use, else from the environment."""
    try:
        from django.conf import settings
    except ImportError:
        settings = None
    if settings is not None and (settings.configured or os.environ.get("DJANGO_SETTINGS_MODULE")):
        try:
            value = getattr(settings, name, None)
        except Exception:  # settings that cannot be loaded: the library fell back to the environment too
            value = None
        if value is not None:
            return str(value)
    return os.environ.get(name) or None


class QueuesProc(RedisProc):
    """A proc for the ``queues`` library's Redis and beanstalkd backends.

    Declarative, with the library's settings (``QUEUE_BACKEND`` ...) in the environment::

        class WorkerQueuesProc(QueuesProc):
            name = "worker"
            queues = ["default", "thumbnails"]

    or explicit: ``QueuesProc("worker", queues=["default"], url="redis://localhost:6379/0")`` (``queue_backend`` is
    then ``redis``), ``QueuesProc("worker", queues=["default"], host="localhost", port=11300)`` (``beanstalkd``).
    ``queues`` holds queue names: ``queues.queues.Queue`` objects cannot exist on Python 3.
    """

    #: ``redis`` (also ``redisd``, the library's name) or ``beanstalkd``; default: from ``url``/``connection``
    #: (redis) or ``host`` (beanstalkd), else the ``QUEUE_BACKEND`` setting. (Not ``backend``: in TOML that key
    #: already says ``backend = "queues"``.)
    queue_backend: str | None = None
    #: beanstalkd server; default: the ``QUEUE_BEANSTALKD_CONNECTION`` setting (``host:port``).
    host: str | None = None
    port: int | None = None
    option_checks = {
        "queue_backend": OrNone(Text("a queues backend name")),
        "host": OrNone(Text("a host name or address", word=True)),
        "port": OrNone(PORT),
    }

    _storage: str | None = None

    def storage(self) -> str:
        """``redis`` or ``beanstalkd``: which storage this proc reads (resolved once). Does no I/O."""
        if self._storage is None:
            self._storage = self._resolve_storage()
        return self._storage

    def _resolve_storage(self) -> str:
        explicit = self.queue_backend
        if explicit is None:
            if self.url or self.connection is not None:
                explicit = "redis"
            elif self.host:
                explicit = "beanstalkd"
        name = explicit or library_setting("QUEUE_BACKEND")
        if name is None:
            raise ProcConfigError(
                f"proc {self.name!r}: needs `queue_backend` (redis or beanstalkd), a Redis `url`, a beanstalkd `host`, "
                "or the QUEUE_BACKEND setting"
            )
        key = name.strip().lower().rpartition(".")[2]  # "queues.backends.redisd" names the same module
        if key in UNSUPPORTED:
            raise ProcConfigError(
                f"proc {self.name!r}: the queues backend {name!r} is not supported: {UNSUPPORTED[key]}"
            )
        if key not in BACKENDS:
            hint = did_you_mean(key, [*BACKENDS, *UNSUPPORTED]) or "; use redis or beanstalkd"
            raise ProcConfigError(f"proc {self.name!r}: unknown queues backend {name!r}{hint}")
        storage = BACKENDS[key]
        wrong = ("host", "port") if storage == "redis" else ("url", "connection")
        misplaced = [option for option in wrong if getattr(self, option) is not None]
        if misplaced:
            raise ProcConfigError(f"proc {self.name!r}: {', '.join(misplaced)} do not apply to the {storage} backend")
        return storage

    def validate(self) -> None:
        super().validate()
        if self.storage() == "beanstalkd":
            bad = [q for q in self.queues if not beanstalk.TUBE_NAME.fullmatch(q)]
            if bad:
                raise ProcConfigError(f"proc {self.name!r}: not beanstalkd tube names: {bad!r}")
            self.beanstalk_address()

    def discovery_problem(self) -> str | None:
        return (
            "the queues library cannot discover its queues (a queue is a plain Redis list named after it, which"
            " nothing tells apart from other keys, or a beanstalkd tube, forgotten while idle): name them"
        )

    # Redis

    def default_client(self) -> Any:
        """None for beanstalkd; from ``url``, else from the library's ``QUEUE_REDIS_*`` settings."""
        if self.storage() != "redis":
            return None
        if self.url:
            return super().default_client()
        connection = library_setting("QUEUE_REDIS_CONNECTION")
        if connection is None:
            raise ProcConfigError(f"proc {self.name!r}: needs a Redis `url` or the QUEUE_REDIS_CONNECTION setting")
        host, port = _host_port(connection, "QUEUE_REDIS_CONNECTION", self.name)
        where = f"proc {self.name!r}: "
        db = _DATABASE.parse(library_setting("QUEUE_REDIS_DB") or "0", where + "QUEUE_REDIS_DB")
        timeout_text = library_setting("QUEUE_REDIS_TIMEOUT")
        timeout = self.socket_timeout
        if timeout_text is not None:
            timeout = Seconds(positive=True).parse(timeout_text, where + "QUEUE_REDIS_TIMEOUT")
        return self.new_client(host=host, port=port, db=db, socket_timeout=timeout, socket_connect_timeout=timeout)

    def depth_commands(self, now: float) -> list[Command]:
        return [("LLEN", q) for q in self.queues]

    def build_reading(self, depth: list[Any], latency: list[Any], now: float) -> Reading:
        return Reading.from_queues(QueueReading(q, {"queued": int(n)}) for q, n in zip(self.queues, depth))

    # beanstalkd

    def beanstalk_address(self) -> tuple[str, int]:
        """``(host, port)`` of the beanstalkd server. Does no I/O."""
        if self.host:
            return self.host, BEANSTALK_PORT if self.port is None else self.port
        if self.port is not None:
            raise ProcConfigError(f"proc {self.name!r}: `port` needs `host`")
        connection = library_setting("QUEUE_BEANSTALKD_CONNECTION")
        if connection is None:
            raise ProcConfigError(
                f"proc {self.name!r}: needs a beanstalkd `host` or the QUEUE_BEANSTALKD_CONNECTION setting"
            )
        return _host_port(connection, "QUEUE_BEANSTALKD_CONNECTION", self.name)

    def read(self, cache: dict[str, Any]) -> Reading:
        if self.storage() == "redis":
            return super().read(cache)
        host, port = self.beanstalk_address()
        with beanstalk.Connection(host, port, timeout=self.socket_timeout) as connection:
            stats = connection.stats_tubes(self.queues)
        return Reading.from_queues(_tube_reading(q, stats[q]) for q in self.queues)


def _tube_reading(tube: str, counts: dict[str, int] | None) -> QueueReading:
    """A tube's counts. beanstalkd forgets a tube that has no jobs once no client watches it, which an idle tube is
    whenever its workers are scaled to zero: a tube it does not have has 0 jobs, and may or may not be a typo
    (``found`` None)."""
    jobs = {BEANSTALK_STATES[state]: count for state, count in (counts or dict.fromkeys(beanstalk.STATES, 0)).items()}
    return QueueReading(tube, jobs, BEANSTALK_COUNTED, found=True if counts is not None else None)


def _host_port(value: str, setting: str, proc: str | None) -> tuple[str, int]:
    host, sep, port = value.strip().rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = 0
    if not sep or not host or not 0 < number < 65536:
        raise ProcConfigError(f"proc {proc!r}: {setting} must be host:port (such as localhost:6379), got {value!r}")
    return host, number
