"""What a configuration measures, without its secrets: the digest that keeps two configurations sharing one store
apart.

:func:`describe` lists, per proc, its class, name, queues, metric and options, plus what those resolve to (the
Redis server, database and user a proc reads; Celery's broker and transport options; RQ's key prefix; Huey's
storage; Dramatiq's namespace, heartbeat timeout and RabbitMQ server; the beanstalkd server): two apps whose procs
read different servers, databases, queues or keys never get the same digest. Passwords never enter it: URLs lose
their password (in the user part and in query arguments such as ``?password=``), options and mapping entries named
like a secret (``password``, ``token``, ...) are ``***``, and a Redis client is described by its address, database
and user only. So two apps measuring the same queues on the same server as the same user with different passwords
share one snapshot: they measure the same thing.

Only the configuration counts, not the process's secrets registry (:mod:`hirefire_exporter.redaction`), so that
processes started with different environments still agree on the digest. Python objects other than Redis clients
(a Celery app, a Huey instance, anything a custom proc holds) enter by their type only, beside what they resolve to
above: a custom proc whose options are objects that two apps set up differently needs another ``name`` (or another
share URL) to keep the two apart.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import re
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

from .procs.base import Proc
from .redaction import redact

#: The attributes of every proc that :func:`describe` lists on their own, or that are derived, not configured.
_NOT_OPTIONS = frozenset({"name", "queues", "metric", "supports_latency", "option_checks"})
#: Mapping keys and URL query arguments that hold secrets.
_SECRET_NAME = re.compile(r"pass|secret|token|credential|auth|(^|_)key$", re.IGNORECASE)
_QUERY_SECRET = re.compile(r"(?P<key>[?&;](?P<name>[^=&;#\s]+)=)(?P<value>[^&;#\s]*)")
#: Nested options deeper than this are described by their type (and a cycle ends).
_MAX_DEPTH = 8


def digest(procs: Sequence[Proc], **settings: Any) -> str:
    """A hex digest of :func:`describe` (128 bits of SHA-256): equal for equal configurations in any process."""
    text = json.dumps(describe(procs, **settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def describe(procs: Sequence[Proc], **settings: Any) -> dict[str, Any]:
    """The configuration, as plain JSON-ready data without secrets. ``settings`` (numbers such as ``stale_after``)
    are part of it. Does no I/O."""
    return {
        "settings": {key: _plain(value) for key, value in sorted(settings.items())},
        "procs": [_proc(proc) for proc in procs],
    }


def _proc(proc: Proc) -> dict[str, Any]:
    cls = type(proc)
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "name": _plain(proc.name),
        "queues": _plain(proc.queues),
        "metric": _plain(proc.metric),
        "options": {key: _secret_or_plain(key, getattr(proc, key)) for key in sorted(_option_names(proc))},
        "reads": _reads(proc),
    }


def _option_names(proc: Proc) -> set[str]:
    """Public attributes that configure the proc: class attributes of its classes (declarative procs) and instance
    attributes (keyword options), leaving out methods, properties and private state (clients, caches)."""
    names = {key for key in vars(proc) if not key.startswith("_")}
    for cls in type(proc).__mro__[:-1]:  # not object
        for key, value in vars(cls).items():
            if key.startswith("_") or inspect.isroutine(value):
                continue
            if isinstance(value, property | cached_property | classmethod | staticmethod):
                continue
            names.add(key)
    return names - _NOT_OPTIONS


def _reads(proc: Proc) -> dict[str, Any]:
    """What the proc's options resolve to (no I/O): the part of a configuration that lives in objects (a Redis
    client, a Celery app, a Huey instance) or in the environment (``RQ_KEY_PREFIX``, the ``queues`` settings)."""
    from .procs.celery import CeleryProc
    from .procs.dramatiq import DramatiqProc
    from .procs.huey import HueyProc
    from .procs.queues import QueuesProc
    from .procs.redis_proc import RedisProc
    from .procs.rq import RQProc

    reads: dict[str, Any] = {}
    if isinstance(proc, QueuesProc) and proc.storage() == "beanstalkd":
        reads["beanstalkd"] = list(proc.beanstalk_address())
    elif isinstance(proc, RedisProc):
        client = proc.redis_client()
        reads["redis"] = None if client is None else _redis(client)
    if isinstance(proc, RQProc):
        reads["prefix"] = proc.prefix
    if isinstance(proc, CeleryProc):
        reads["broker"] = _plain(proc.broker_url())
        reads["transport_options"] = _plain(proc.options())
    if isinstance(proc, DramatiqProc):
        reads["dramatiq"] = _plain(proc.resolved())
    if isinstance(proc, HueyProc):
        instance = proc.instance()
        storage = instance.storage
        reads["huey"] = {
            "name": _plain(instance.name),
            "utc": _plain(instance.utc),
            "storage": _type_name(storage),
            "filename": _plain(getattr(storage, "filename", None)),
        }
    return reads


def _redis(client: Any) -> dict[str, Any]:
    """Which server, database and user a Redis client reads (never its password)."""
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    manager = getattr(pool, "sentinel_manager", None)
    sentinels = [_redis(sentinel) for sentinel in getattr(manager, "sentinels", ())]
    return {
        "pool": _type_name(pool),
        "connection": f"{pool.connection_class.__module__}.{pool.connection_class.__qualname__}",
        "service": _plain(getattr(pool, "service_name", None)),
        "sentinels": sentinels,
        "host": _plain(kwargs.get("host")),
        "port": _plain(kwargs.get("port")),
        "path": _plain(kwargs.get("path")),
        "db": _plain(kwargs.get("db", 0)),
        "username": _plain(kwargs.get("username")),
    }


def _plain(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON-ready data without secrets."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        return strip_passwords(value)
    if isinstance(value, bytes):
        return strip_passwords(value.decode("latin-1"))
    if depth >= _MAX_DEPTH:
        return _type_name(value)
    if isinstance(value, Mapping):
        items = sorted(value.items(), key=lambda pair: str(pair[0]))
        return {str(key): _secret_or_plain(str(key), item, depth + 1) for key, item in items}
    if isinstance(value, list | tuple):
        return [_plain(item, depth + 1) for item in value]
    if isinstance(value, set | frozenset):
        return sorted((_plain(item, depth + 1) for item in value), key=json.dumps)
    if callable(getattr(getattr(value, "connection_pool", None), "get_connection", None)):
        return _redis(value)
    if hasattr(value, "__qualname__") and hasattr(value, "__module__"):  # a class or a function
        return f"{value.__module__}.{value.__qualname__}"
    return _type_name(value)


def _secret_or_plain(name: str, value: Any, depth: int = 0) -> Any:
    """A value named like a secret (``password``, ``api_token``...) is ``***``, whatever it holds."""
    return "***" if _SECRET_NAME.search(name) else _plain(value, depth)


def strip_passwords(text: str) -> str:
    """``text`` without URL passwords: the user part's, and query arguments whose name says secret."""
    text = redact(text)
    if "=" not in text:
        return text
    return _QUERY_SECRET.sub(
        lambda m: m.group("key") + ("***" if _SECRET_NAME.search(m.group("name")) else m.group("value")), text
    )


def _type_name(value: Any) -> str:
    cls = type(value)
    return f"{cls.__module__}.{cls.__qualname__}"
