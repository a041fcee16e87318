"""HotQueue: each queue is a Redis list ``hotqueue:<name>`` (producers RPUSH, workers LPOP/BLPOP).

A worker holds a popped message in memory only and messages carry no timestamp, so the only thing to measure is
the list's length: ``queued`` jobs, one LLEN per queue, pipelined with every other proc on the same Redis server.
Measuring does not need the ``hotqueue`` package; :meth:`HotQueueProc.client` (the old API) does.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Any

from ..discovery import KeyScan
from ..settings_check import PORT, Integer, OrNone, Seconds
from .base import ClientProc, ProcConfigError, QueueReading, Reading
from .redis_proc import Command, RedisProc, server_key

#: ``connection_params`` that redis-py accepts unchecked and only fails on when reading.
_PARAM_CHECKS = {
    "port": PORT,
    "db": Integer(0, 1_000_000, "a Redis database number"),
    "socket_timeout": OrNone(Seconds(positive=True)),
    "socket_connect_timeout": OrNone(Seconds(positive=True)),
}


def key_for(queue: str) -> str:
    """The Redis key HotQueue stores ``queue`` in."""
    return f"hotqueue:{queue}"


class HotQueueProc(RedisProc, ClientProc):
    """A proc for HotQueue queues.

    As in the old ``hirefire`` package::

        class WorkerHotQueueProc(HotQueueProc):
            name = "worker"
            queues = ["myqueue"]
            connection_params = {"host": "localhost", "port": 6379, "db": 0}

    or ``HotQueueProc("worker", queues=["myqueue"], url="redis://localhost:6379/0")``, or with ``connection`` (a
    ``redis.Redis``). ``connection_params`` are ``redis.Redis`` keyword arguments (``host``, ``port``, ``db``,
    ``password``, ``unix_socket_path``...), exactly what ``HotQueue(name, **params)`` takes; left empty they mean
    Redis on localhost:6379, db 0, as they did in the old package. ``queues`` may also hold ``hotqueue.HotQueue``
    objects: their names are measured, on their own Redis connection unless the proc is given one.
    """

    #: ``redis.Redis`` keyword arguments (the old API); use one of ``connection``, ``url`` or this.
    connection_params: Mapping[str, Any] | None = None

    def __init__(self, *args: Any, **options: Any) -> None:
        if args and isinstance(args[0], Mapping):  # the old signature: HotQueueProc(connection_params, name, queues)
            if "connection_params" in options:
                raise ProcConfigError("HotQueueProc: connection_params given twice")
            options["connection_params"], args = args[0], args[1:]
        super().__init__(*args, **options)
        self.queues = self._queue_names(self.queues)

    def _queue_names(self, queues: list[Any]) -> list[Any]:
        """Replace HotQueue objects by their names, taking their Redis client when the proc has none."""
        hotqueue_class = _hotqueue_class()
        objects = [q for q in queues if hotqueue_class is not None and isinstance(q, hotqueue_class)]
        if not objects:
            return queues
        if self.connection is None and self.url is None and self.connection_params is None:
            clients = [q._HotQueue__redis for q in objects]  # HotQueue keeps its client private
            if len({server_key(c) for c in clients}) > 1:
                raise ProcConfigError(
                    f"proc {self.name!r}: its HotQueue objects use different Redis servers; give each server a proc"
                )
            self.connection = clients[0]
        return [q.name if q in objects else q for q in queues]

    def validate(self) -> None:
        given = [key for key in ("connection", "url", "connection_params") if getattr(self, key) is not None]
        if len(given) > 1:
            raise ProcConfigError(f"proc {self.name!r}: give one of `connection`, `url` or `connection_params`")
        super().validate()

    def default_client(self) -> Any:
        """From ``url``, else from ``connection_params`` (the old API)."""
        if self.url:
            return super().default_client()
        params = self.connection_params if self.connection_params is not None else {}
        if not isinstance(params, Mapping):
            raise ProcConfigError(
                f"proc {self.name!r}: connection_params must be a mapping of redis.Redis keyword arguments"
            )
        kwargs = {key: value for key, value in params.items() if key != "serializer"}  # HotQueue's own argument
        for key, kind in _PARAM_CHECKS.items():  # redis-py would take them and fail every read instead
            if key in kwargs:
                kind.check(kwargs[key], f"proc {self.name!r}: connection_params {key}")
        return self.new_client(**kwargs)

    def client(self, queue: Any) -> Any:
        """A ``hotqueue.HotQueue`` for ``queue`` on this proc's Redis client (the old API; not used to measure)."""
        from hotqueue import HotQueue

        if isinstance(queue, HotQueue):
            return queue
        params = self.connection_params or {}
        hot = HotQueue(queue, **({"serializer": params["serializer"]} if "serializer" in params else {}))
        hot._HotQueue__redis = self.redis_client()  # share this proc's client (pool, timeouts) instead of a new one
        return hot

    def discover_queues(self) -> set[str] | None:
        """The names in the keys ``hotqueue:<name>`` (a budgeted SCAN; an empty queue has no key)."""
        keys = self._scan.step(self.redis_client())
        return None if keys is None else {key[len(key_for("")) :] for key in keys} - {""}

    @cached_property
    def _scan(self) -> KeyScan:
        return KeyScan(key_for("*"), "list")

    def empty_queues_vanish(self) -> bool:
        return True

    def depth_commands(self, now: float) -> list[Command]:
        return [("LLEN", key_for(q)) for q in self.queues]

    def build_reading(self, depth: list[Any], latency: list[Any], now: float) -> Reading:
        return Reading.from_queues(QueueReading(q, {"queued": int(n)}) for q, n in zip(self.queues, depth))


def _hotqueue_class() -> type | None:
    try:
        from hotqueue import HotQueue
    except ImportError:
        return None
    return HotQueue
