"""Dramatiq: messages waiting and held by workers, on Redis and RabbitMQ, read-only.

**Redis** (dramatiq's ``RedisBroker``, namespace ``dramatiq`` by default). Per queue ``q``:

- ``<ns>:q`` (list): ids of waiting messages, the next one at index 0; ``<ns>:q.msgs`` (hash): the bodies of every
  message of ``q`` not yet acknowledged, waiting or fetched by a worker;
- ``<ns>:__acks__.<worker id>.q`` (set): the messages a worker process fetched and has not acknowledged (running,
  or prefetched: dramatiq prefetches twice its threads). Worker ids come from ``<ns>:__heartbeats__``, a sorted set
  scored by each broker's last command (ms). A worker whose last beat is older than the heartbeat timeout is dead:
  dramatiq's maintenance (run at random by any broker's commands on the queue) puts its messages back in the queue;
- ``<ns>:q.DQ`` and ``<ns>:q.DQ.msgs``: the delay queue (``send_with_options(delay=...)``, retries), each body with
  its ``eta`` (ms); a worker fetches them and holds them in memory until their eta, then moves them to ``q``;
- ``<ns>:q.XQ`` (sorted set): dead-lettered messages.

States: ``queued`` (the list), ``started`` (in the ack sets of live workers), ``orphaned`` (held by workers whose
heartbeat lapsed: waiting for dramatiq to requeue them), ``due`` (delayed, eta passed: only a worker moves them to
the queue), ``delayed`` (eta in the future), ``dead``; all but the last two count (:data:`COUNTED`). A delayed
message whose body is a JSON object without a usable ``eta`` (missing, null, a string, NaN) is ``due``: dramatiq's
worker runs it at once; only a body that does not decode to a JSON object (another encoder, garbage) is
``unreadable``, not counted. Past :data:`DELAY_SCAN_LIMIT` delayed messages in one queue, the due share is estimated
from a random sample of :data:`DELAY_SAMPLE` bodies (``HRANDFIELD``).

Cost: one pipelined round trip for the counts (the live workers' ids among them) and one for the follow-ups: per queue
with held messages one SCARD per live worker, per waiting queue one read-only script (LINDEX of the head and the tail +
HGET: the older of their ``message_timestamp``; dramatiq's requeue and maintenance append old messages to the tail), per
non-empty delay queue one HVALS of its bodies (at most :data:`DELAY_SCAN_LIMIT`; past it one HRANDFIELD of
:data:`DELAY_SAMPLE`), whose etas are compared here. The bodies are decoded by the exporter, not by a script: decoding
them in Lua costs Redis about 16 times the CPU of HVALS (bench/dramatiq_cost.py). Read-only: LLEN, HLEN, ZCARD,
ZRANGEBYSCORE, SCARD, HVALS, HRANDFIELD (HSCAN before Redis 6.2), EVALSHA (LINDEX, HGET). The ZCARD of
``<ns>:__heartbeats__`` in the counts tells a namespace no dramatiq broker ever used (a wrong ``namespace`` or
database): its empty queues read ``found = False``.

**RabbitMQ** (``RabbitmqBroker``): queues ``q``, ``q.DQ`` and ``q.XQ``. With ``management_url``, one request gives
ready (``queued``) and unacknowledged (``started``) messages of ``q``, every message of ``q.DQ`` (``delayed``: due and
later cannot be told apart without reading them, so none count) and ``q.XQ`` (``dead``). Without it, a passive
declare per queue sees ready messages only: messages held by workers (running, prefetched, delayed) are invisible.
Dramatiq sets no AMQP timestamp, so latency is unknown on RabbitMQ.

**Tracker** (``tracker`` / ``tracker_url``, the workers running :func:`hirefire_exporter.tracking.dramatiq.track`):
the reading gains the workers (online, slots = threads, busy). The broker's figures win where they see more than the
tracker's running messages, so nothing counts twice: on Redis the counts stay the ack sets' (running and
prefetched), on RabbitMQ with ``management_url`` ``started`` stays the unacknowledged messages; on RabbitMQ without
it, ``started`` is the tracker's running messages.

**Discovery** (``queues = "*"``): the base names of the message hashes ``<ns>:*.msgs`` found by a budgeted SCAN on
Redis, of the vhost's queues listed by the management API on RabbitMQ (``q.DQ`` and ``q.XQ`` are ``q``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Iterable
from dataclasses import replace
from functools import cached_property
from importlib import import_module
from typing import Any

from ..discovery import KeyScan, glob_escape
from ..redaction import describe_error, register, register_url, url_problem
from ..settings_check import OrNone, Seconds, Text
from ..tracking.keys import RUNNING
from .base import ProcConfigError, QueueReading, Reading
from .rabbitmq import (
    NEEDS_MANAGEMENT,
    QueueCounts,
    declare_counts,
    management_counts,
    management_queues,
    management_url_problem,
)
from .redis_proc import Command, age_since, as_text, read_redis_procs
from .tracked import TrackedProc

log = logging.getLogger("hirefire_exporter")

#: The states that need a worker now or are on one: HireFire's count.
COUNTED = frozenset({"queued", "started", "orphaned", "due"})
REDIS_SCHEMES = ("redis", "rediss")
AMQP_SCHEMES = ("amqp", "amqps")
#: dramatiq's defaults: RedisBroker(namespace=..., heartbeat_timeout=60000 ms).
DEFAULT_NAMESPACE = "dramatiq"
DEFAULT_HEARTBEAT_TIMEOUT = 60.0
#: depth_commands before the queues' (the live workers' ids, the number of brokers that ever beat), and per queue.
_HEAD = 2
_PER_QUEUE = 4
#: How many delayed messages of one queue are read to split due from later, at most (10,000 bodies: about 3 ms of
#: Redis time and 2.5 MB sent per cycle); past it the split is estimated from :data:`DELAY_SAMPLE` of them.
DELAY_SCAN_LIMIT = 10_000
#: How many delayed messages are drawn at random (``HRANDFIELD``) past :data:`DELAY_SCAN_LIMIT`: about a seventh of
#: the Redis time of an HVALS of 12,000 (1.2 ms against 8.7 ms on a loaded test machine), whatever the queue's size;
#: the due share of the sample is scaled to the queue's total.
DELAY_SAMPLE = 1_000
#: dramatiq's rule for queue names (``dramatiq.actor._queue_name_re``): no ``:``, so another namespace's keys
#: (``<ns>:staging:q.msgs`` under ``<ns>``) are no queue of this one.
QUEUE_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9._-]*")
#: dramatiq's derived queues of a queue ``q``: ``q.DQ`` (delayed messages) and ``q.XQ`` (dead letters).
DERIVED = (".DQ", ".XQ")
#: ``message_timestamp`` values (ms) read as a time: from 1973 (below, seconds or garbage) to a day ahead (clock skew;
#: beyond, microseconds or garbage).
EARLIEST_STAMP_MS = 1e11
STAMP_SKEW = 86_400.0

#: KEYS[1]: a queue's id list, KEYS[2]: its message hash. The bodies of the messages at the head and, when another
#: one, at the tail (nil where a body is missing), or nil for an empty list. The tail too: dramatiq's requeue (a
#: worker's SIGTERM) and its maintenance (a dead worker's messages) append old messages there.
HEAD_BODY = """
local head = redis.call('LINDEX', KEYS[1], 0)
if not head then return false end
local tail = redis.call('LINDEX', KEYS[1], -1)
local bodies = {redis.call('HGET', KEYS[2], head)}
if tail and tail ~= head then bodies[2] = redis.call('HGET', KEYS[2], tail) end
return bodies
"""
_HEAD_SHA = hashlib.sha1(HEAD_BODY.encode()).hexdigest()


class DramatiqProc(TrackedProc):
    """A proc for Dramatiq queues.

    ``DramatiqProc("worker", queues=["default"], url="redis://localhost:6379/0")`` (or ``amqp://...``), or
    ``broker=`` your ``RedisBroker`` / ``RabbitmqBroker`` (an instance or a dotted path to one): its client,
    namespace and heartbeat timeout are then used.
    """

    queues = ["default"]
    #: A dramatiq broker instance or a dotted path to one (``"myapp.tasks.broker"``); else ``url`` or ``connection``.
    broker: Any = None
    #: The Redis key namespace (``RedisBroker(namespace=...)``); None: the broker's, else ``dramatiq``.
    namespace: str | None = None
    #: Seconds without a heartbeat after which a worker is dead (``RedisBroker(heartbeat_timeout=...)``, which is in
    #: milliseconds); None: the broker's, else 60.
    heartbeat_timeout: float | None = None
    #: RabbitMQ management API, e.g. ``https://user:password@host:15672``: unacknowledged (running, prefetched) and
    #: delayed messages, all queues in one request.
    management_url: str | None = None
    option_checks = {
        "namespace": OrNone(Text("a Redis key namespace", exact=True)),
        "heartbeat_timeout": OrNone(Seconds(positive=True)),
    }

    tracker_library = "dramatiq"
    tracked_states = RUNNING

    _resolved: Any = None
    _warned: frozenset[str] = frozenset()
    #: The server refused HRANDFIELD (Redis < 6.2): delay queues past the limit are sampled with one HSCAN page.
    _sample_by_scan: bool = False

    # Configuration

    @property
    def supports_latency(self) -> bool:  # type: ignore[override]
        return self._broker_kind() == "redis"

    def validate(self) -> None:
        register_url(self.management_url)
        if self.management_url and (problem := management_url_problem(self.management_url)):
            raise ProcConfigError(f"proc {self.name!r}: management_url {problem}")
        super().validate()
        self._refuse_derived_queues()
        if self._broker_kind() == "rabbitmq":
            self._amqp_connection().release()  # parses the settings without connecting

    def _refuse_derived_queues(self) -> None:
        """A delay queue ``q.DQ`` or dead letters ``q.XQ`` named as a queue would count their messages as waiting (and
        on Redis read their keys as a queue's: WRONGTYPE): ``q`` reads them already."""
        for q in self.named_queues():
            if q.endswith(DERIVED):
                kind = "delay queue" if q.endswith(".DQ") else "dead-letter queue"
                raise ProcConfigError(
                    f"proc {self.name!r}: queue {q!r} is the {kind} of {base_queue(q)!r}: name the base queue"
                    f" {base_queue(q)!r} (its delay and dead-letter queues are read with it)"
                )

    def dramatiq_broker(self) -> Any:
        """The dramatiq broker given as ``broker`` (imported from a dotted path once), or None."""
        if self._resolved is None and isinstance(self.broker, str):
            module, _, attr = self.broker.rpartition(".")
            try:
                self._resolved = getattr(import_module(module), attr)
            except Exception as exc:  # a broken module, however it fails; not chained: the cause is not scrubbed
                raise ProcConfigError(
                    f"proc {self.name!r}: cannot import dramatiq broker {self.broker!r}:"
                    f" {describe_error(exc, locate=True)}"
                ) from None
        return self._resolved if isinstance(self.broker, str) else self.broker

    def _broker_kind(self) -> str:
        """``redis`` or ``rabbitmq``, from ``broker``, ``connection`` or ``url``."""
        broker = self.dramatiq_broker()
        if broker is not None:
            if hasattr(broker, "client") and hasattr(broker, "namespace"):  # RedisBroker and its subclasses
                return "redis"
            if hasattr(broker, "parameters"):  # RabbitmqBroker: pika connection parameters
                return "rabbitmq"
            raise ProcConfigError(
                f"proc {self.name!r}: `broker` must be a dramatiq RedisBroker or RabbitmqBroker,"
                f" got {type(broker).__name__}"
            )
        if self.connection is not None:
            return "redis"
        if not isinstance(self.url, str) or not self.url:
            raise ProcConfigError(f"proc {self.name!r}: needs `broker`, a Redis `connection` or `url`")
        scheme = self.url.partition("://")[0].lower()
        if scheme in REDIS_SCHEMES:
            return "redis"
        if scheme in AMQP_SCHEMES:
            return "rabbitmq"
        raise ProcConfigError(
            f"proc {self.name!r}: `url` must be a redis://, rediss://, amqp:// or amqps:// URL (dramatiq's brokers)"
        )

    def default_client(self) -> Any:
        if self._broker_kind() != "redis":
            return None
        broker = self.dramatiq_broker()
        return broker.client if broker is not None else super().default_client()

    @property
    def ns(self) -> str:
        broker = self.dramatiq_broker()
        return self.namespace or getattr(broker, "namespace", None) or DEFAULT_NAMESPACE

    @property
    def timeout_ms(self) -> float:
        if self.heartbeat_timeout is not None:
            return float(self.heartbeat_timeout) * 1000
        return float(getattr(self.dramatiq_broker(), "heartbeat_timeout", None) or DEFAULT_HEARTBEAT_TIMEOUT * 1000)

    # Queue discovery

    def discovery_problem(self) -> str | None:
        if self._broker_kind() == "rabbitmq" and not self.management_url:
            return NEEDS_MANAGEMENT
        return None

    def discover_queues(self) -> set[str] | None:
        """The base names of dramatiq's queues (``q`` for ``q``, ``q.DQ`` and ``q.XQ``). Redis keeps no set of its
        queues: they are found by their message hashes, ``<ns>:q.msgs``, ``<ns>:q.DQ.msgs`` and ``<ns>:q.XQ.msgs`` (a
        budgeted SCAN; a queue with no message left has no key). RabbitMQ: the management API's queues of the vhost."""
        if self._broker_kind() == "rabbitmq":
            assert self.management_url
            return dramatiq_queues(management_queues(self.management_url, self._vhost, self.socket_timeout))
        client = self.broker_redis()
        assert client is not None
        keys = self._scan.step(client)
        if keys is None:
            return None
        head = f"{self.ns}:"
        return dramatiq_queues(key[len(head) : -len(".msgs")] for key in keys)

    @cached_property
    def _scan(self) -> KeyScan:
        return KeyScan(glob_escape(self.ns) + ":*.msgs", "hash")

    def empty_queues_vanish(self) -> bool:
        """On Redis: a queue is found by its message hash, which goes with its last message."""
        return self._broker_kind() == "redis"

    def queue_scope(self) -> Any:
        """The Redis server and namespace, or the RabbitMQ host, port and vhost."""
        if self._broker_kind() == "redis":
            return (self.redis_scope(self.broker_redis()), self.ns)
        params = self._amqp_parameters()
        return (self.redis_scope(None), params.host, params.port, params.virtual_host)

    # Redis

    def depth_commands(self, now: float) -> list[Command]:
        ns = self.ns
        beats = f"{ns}:__heartbeats__"
        commands: list[Command] = [
            ("ZRANGEBYSCORE", beats, int(now * 1000 - self.timeout_ms), "+inf"),
            ("ZCARD", beats),
        ]
        for q in self.queues:
            commands += [
                ("LLEN", f"{ns}:{q}"),
                ("HLEN", f"{ns}:{q}.msgs"),
                ("HLEN", f"{ns}:{q}.DQ.msgs"),
                ("ZCARD", f"{ns}:{q}.XQ"),
            ]
        return commands + self.tracker_commands(now)

    def latency_commands(self, depth: list[Any]) -> list[Command]:
        """Per queue: the live workers' ack sets (when messages are held), the delay queue's bodies (when messages are
        delayed: all up to the limit, a sample past it) and the bodies at the list's head and tail (when messages
        wait: the script, loaded first in the same pipeline)."""
        depth, _ = self.split_tracked(depth)
        ns, workers = self.ns, _worker_ids(depth[0])
        reads: list[Command] = []
        heads: list[Command] = []
        for q, (waiting, unacked, delayed, _dead) in zip(self.queues, _per_queue(depth)):
            if int(unacked) > int(waiting):
                reads += [("SCARD", f"{ns}:__acks__.{w}.{q}") for w in workers]
            if int(delayed):
                reads.append(self._delay_read(f"{ns}:{q}.DQ.msgs", int(delayed)))
            if int(waiting):
                heads.append(("EVALSHA", _HEAD_SHA, 2, f"{ns}:{q}", f"{ns}:{q}.msgs"))
        return reads + ([("SCRIPT", "LOAD", HEAD_BODY), *heads] if heads else [])

    def _delay_read(self, key: str, delayed: int) -> Command:
        """Every body of a delay queue up to the limit; past it a bounded random sample (one HSCAN page on a server
        without HRANDFIELD, whose order, by the hash of random message ids, owes nothing to the etas)."""
        if delayed <= DELAY_SCAN_LIMIT:
            return ("HVALS", key)
        if self._sample_by_scan:
            return ("HSCAN", key, 0, "COUNT", DELAY_SAMPLE)
        return ("HRANDFIELD", key, DELAY_SAMPLE, "WITHVALUES")

    def build_reading(self, depth: list[Any], latency: list[Any], now: float) -> Reading:
        depth, tracked = self.split_tracked(depth)
        reading = self._redis_reading(depth, latency, now)
        return reading if tracked is None else replace(reading, workers=tracked.workers)

    def _redis_reading(self, depth: list[Any], latency: list[Any], now: float) -> Reading:
        workers = _worker_ids(depth[0])
        ever_used = _count(depth[1]) > 0  # a broker's every command beats, and maintenance keeps the one running it
        replies = iter(latency)  # in the order latency_commands asked: per queue SCARDs and delay reads, then heads
        per_queue = [[int(n) for n in r] for r in _per_queue(depth)]
        held, delays = [], []
        for waiting, unacked, delayed, _dead in per_queue:
            held.append(sum(_count(next(replies)) for _ in workers) if unacked > waiting else 0)
            delays.append(next(replies) if delayed else None)
        if any(r[0] for r in per_queue):
            next(replies)  # SCRIPT LOAD: a refused script shows in its EVALSHA replies
        queues = []
        for q, (waiting, unacked, delayed, dead), live, bodies in zip(self.queues, per_queue, held, delays):
            age = self._head_age(q, next(replies), now) if waiting else 0.0
            fetched = max(0, unacked - waiting)
            started = min(live, fetched)
            jobs = {"queued": waiting, "started": started, "orphaned": fetched - started}
            jobs.update(self._delayed(q, bodies, delayed, now) if delayed else {"due": 0, "delayed": 0})
            jobs["dead"] = dead
            # dramatiq deletes a queue's keys once it is empty: unknown, unless no broker ever used the namespace
            found = True if any(jobs.values()) else None if ever_used else False
            queues.append(QueueReading(q, jobs, COUNTED, age, found))
        if not ever_used and not any(r.found for r in queues):
            self._warn_once(
                None,
                "namespace",
                f"no dramatiq worker has used namespace {self.ns!r} on this Redis db (no {self.ns}:__heartbeats__):"
                " its queues read as 0 (a wrong `namespace` or database?)",
            )
        return Reading.from_queues(queues)

    def _head_age(self, queue: str, reply: Any, now: float) -> float | None:
        """Seconds since the older of the messages at the list's head and tail was sent (its ``message_timestamp``),
        None when either cannot be read: a low age must not stand in for an unknown one."""
        if isinstance(reply, Exception):
            self._warn_once(queue, "latency", f"cannot read its oldest message: {describe_error(reply)}")
            return None
        if not reply:  # the list emptied between the two round trips
            return None
        stamps = []
        for body in reply:
            stamp, problem = _message_stamp(body, now)
            if problem:
                self._warn_once(queue, "latency", f"its oldest message's age is unknown: {problem}")
                return None
            stamps.append(stamp)
        return age_since(min(stamps), now)

    def _delayed(self, queue: str, reply: Any, total: int, now: float) -> dict[str, int]:
        """Due and later delayed messages, by the ``eta`` (ms) in each body: all of them up to the limit, estimated
        from a sample past it."""
        if isinstance(reply, Exception):
            if total > DELAY_SCAN_LIMIT and not self._sample_by_scan and "unknown command" in str(reply).lower():
                self._sample_by_scan = True  # Redis < 6.2; this cycle fails: no due count is better than a guessed 0
                self._warn_once(queue, "sample", "the server has no HRANDFIELD (Redis < 6.2): sampling with HSCAN")
            raise reply  # the key is not a hash: garbage fails the proc, as in the depth replies
        bodies = _hash_values(reply) if total > DELAY_SCAN_LIMIT else reply
        counts = {"due": 0, "delayed": 0, "unreadable": 0}
        now_ms = now * 1000
        for body in bodies:
            counts[_delay_state(body, now_ms)] += 1
        if total > DELAY_SCAN_LIMIT:
            counts = _scaled(counts, total)
            self._warn_once(
                queue, "estimate", f"over {DELAY_SCAN_LIMIT} delayed messages: due ones estimated from a sample"
            )
        if counts["unreadable"]:
            self._warn_once(
                queue,
                "delay",
                f"{counts['unreadable']} delayed messages do not decode to a JSON object (another encoder, or"
                " garbage): not counted",
            )
            return counts
        return {"due": counts["due"], "delayed": counts["delayed"]}

    def _warn_once(self, queue: str | None, what: str, message: str) -> None:
        """A lasting problem (another encoder, an ACL without EVALSHA) is logged once per proc and kind."""
        if what not in self._warned:
            self._warned = self._warned | {what}
            if queue is None:
                log.warning("proc %r: %s", self.name, message)
            else:
                log.warning("proc %r: queue %r: %s", self.name, queue, message)

    # RabbitMQ

    def redis_client(self) -> Any:
        """The broker's Redis, on which the collection batches this proc; None (read on its own) on RabbitMQ, or when
        the tracker's store is another server."""
        return self.broker_redis() if not self.tracked() or self.tracker_inline() else None

    def read(self, cache: dict[str, Any]) -> Reading:
        if self.redis_client() is not None:
            return super().read(cache)
        if self._broker_kind() == "redis":  # the tracker's store is another server: the broker's read on its own
            result = read_redis_procs(self.broker_redis(), [self], time.time())[0]
            if isinstance(result, BaseException):
                raise result
            return replace(result, workers=self.read_tracker(time.time()).workers)
        counts = self._rabbitmq_counts()
        # the tracker read after the broker: a message taken in between counts twice for a moment, never not at all
        tracked = self.read_tracker(time.time()) if self.tracked() else None
        queues = []
        for q in self.queues:
            main, delay, dead = (counts.get(n) for n in (q, f"{q}.DQ", f"{q}.XQ"))
            jobs = {"queued": main.ready if main else 0}
            if self.management_url:  # unacknowledged: running and prefetched, so the API wins over the tracker
                jobs["started"] = (main.unacked or 0) if main else 0
            elif tracked is not None:
                jobs["started"] = tracked.jobs[q]["started"]
            jobs["delayed"] = (delay.ready + (delay.unacked or 0)) if delay else 0
            jobs["dead"] = dead.ready if dead else 0
            found = bool(main and main.found)  # not listed by the API, or 404 to a passive declare
            latency = None
            if main and main.head_timestamp is not None:
                latency = age_since(main.head_timestamp, time.time())
            elif not jobs["queued"]:
                latency = 0.0
            queues.append(QueueReading(q, jobs, COUNTED, latency, found))
        reading = Reading.from_queues(queues)
        return reading if tracked is None else replace(reading, workers=tracked.workers)

    def _rabbitmq_counts(self) -> dict[str, QueueCounts]:
        """The counts of every queue's three RabbitMQ queues, from the management API or passive declares."""
        names = [name for q in self.queues for name in (q, f"{q}.DQ", f"{q}.XQ")]
        if self.management_url:
            stats = management_counts(self.management_url, self._vhost, self.socket_timeout)
            unknown = [n for n in names if n in stats and stats[n] is None]
            if unknown:
                raise LookupError(
                    f"the RabbitMQ management API lists {', '.join(map(repr, unknown))} without message counts"
                    " (statistics not collected yet, or disabled by management_agent.disable_metrics_collector)"
                )
            counts: dict[str, QueueCounts] = {n: c for n, c in stats.items() if c is not None}
        else:
            with self._amqp_connection() as conn:
                conn.ensure_connection(max_retries=1, interval_start=0)
                counts = dict(declare_counts(conn, names, {}))
        return counts

    def _amqp_connection(self) -> Any:
        """A kombu connection (not connected) to the server and vhost of :meth:`_amqp_parameters`."""
        try:
            from kombu import Connection
        except ImportError:
            raise ProcConfigError(
                f"proc {self.name!r}: reading dramatiq's RabbitMQ queues needs the module 'kombu', which is not"
                " installed: pip install 'hirefire-exporter[dramatiq]'"
            ) from None
        params = self._amqp_parameters()
        credentials = getattr(params, "credentials", None)
        password = getattr(credentials, "password", None)
        register(password)
        return Connection(
            hostname=params.host,
            port=params.port,
            userid=getattr(credentials, "username", None),
            password=password,
            virtual_host=params.virtual_host,
            ssl=bool(params.ssl_options),
            connect_timeout=self.socket_timeout,
        )

    def _amqp_parameters(self) -> Any:
        """The pika parameters dramatiq connects with: the ``RabbitmqBroker``'s (the first of a list), or ``url``
        parsed by pika as dramatiq parses it (``amqp://host:5672/%2F`` and ``amqp://host`` are the vhost ``/``;
        ``amqp://host//`` is the vhost ``''``, unlike Celery's reading of it)."""
        broker = self.dramatiq_broker()
        if broker is not None:
            return broker.parameters[0] if isinstance(broker.parameters, list) else broker.parameters
        try:
            import pika
        except ImportError:
            raise ProcConfigError(
                f"proc {self.name!r}: reading dramatiq's RabbitMQ queues needs the module 'pika', which is not"
                " installed: pip install 'hirefire-exporter[dramatiq]'"
            ) from None
        url = (self.url or "").split(";")[0]
        register_url(url)
        problem = url_problem(url)
        if problem:
            raise ProcConfigError(f"proc {self.name!r}: bad RabbitMQ URL: {problem}")
        try:
            return pika.URLParameters(url)
        except Exception as exc:  # pika's messages may quote the URL: described scrubbed
            raise ProcConfigError(f"proc {self.name!r}: bad RabbitMQ URL: {describe_error(exc)}") from None

    def resolved(self) -> dict[str, Any]:
        """What the options resolve to, for the configuration's digest (no I/O, no password): the namespace and
        heartbeat timeout read on Redis, the server, vhost and user on RabbitMQ."""
        if self._broker_kind() == "redis":
            return {"namespace": self.ns, "heartbeat_timeout_ms": self.timeout_ms}
        params = self._amqp_parameters()
        user = getattr(getattr(params, "credentials", None), "username", None)
        return {"host": params.host, "port": params.port, "vhost": params.virtual_host, "user": user}

    @cached_property
    def _vhost(self) -> str:
        with self._amqp_connection() as conn:
            return conn.virtual_host or "/"


def base_queue(name: str) -> str:
    """The queue a dramatiq queue name belongs to: ``q`` for its delay queue ``q.DQ`` and dead letters ``q.XQ``."""
    return name[:-3] if name.endswith(DERIVED) else name


def dramatiq_queues(names: Iterable[str]) -> set[str]:
    """The base queues of the names found on a broker that dramatiq can have made (:data:`QUEUE_NAME`): not the keys
    of another namespace that starts with this one and ``:`` (``staging:q``), nor another application's queues
    (Celery's ``celery@host.celery.pidbox``)."""
    return {base_queue(name) for name in names if QUEUE_NAME.fullmatch(name)} - {""}


def _per_queue(depth: list[Any]) -> list[list[Any]]:
    """The replies to :meth:`DramatiqProc.depth_commands` after the live workers and the beat count, one list per
    queue."""
    return [depth[i : i + _PER_QUEUE] for i in range(_HEAD, len(depth), _PER_QUEUE)]


def _worker_ids(reply: Any) -> list[str]:
    return [text for text in map(as_text, reply or ()) if text]


def _json_object(body: Any) -> dict[str, Any] | None:
    """A message body decoded as dramatiq's JSONEncoder does (NaN and Infinity included), None unless an object."""
    try:
        data = json.loads(body)
    except (TypeError, ValueError):  # no body, not UTF-8, not JSON (another encoder, garbage)
        return None
    return data if isinstance(data, dict) else None


def _delay_state(body: Any, now_ms: float) -> str:
    """``due``, ``delayed`` or ``unreadable``, as dramatiq's worker reads a delayed message's ``eta``
    (``Worker.handle_message``): missing or null, it runs at once; not a number (a string, a list), it is set to
    now; a number (a bool is one to Python) waits while it is ahead, and NaN, never ahead, runs at once."""
    data = _json_object(body)
    if data is None:
        return "unreadable"
    options = data.get("options")
    eta = options.get("eta") if isinstance(options, dict) else None
    if isinstance(eta, int | float) and eta > now_ms:  # NaN > now is False, as in dramatiq
        return "delayed"
    return "due"


def _scaled(sample: dict[str, int], total: int) -> dict[str, int]:
    """A sample's counts scaled to ``total``: never 0 due when the sample holds a due message (a fleet at zero must
    wake for it), never more than ``total``."""
    drawn = sum(sample.values())
    if not drawn:  # the hash emptied between the two round trips: its messages show in the queue next cycle
        return {"due": 0, "delayed": total, "unreadable": 0}
    due = max(1, round(total * sample["due"] / drawn)) if sample["due"] else 0
    unreadable = min(total - due, round(total * sample["unreadable"] / drawn))
    return {"due": due, "delayed": total - due - unreadable, "unreadable": unreadable}


def _hash_values(reply: Any) -> list[Any]:
    """The values of an ``HRANDFIELD ... WITHVALUES`` reply (field, value, field, value...; pairs on RESP3) or of an
    ``HSCAN`` page (a cursor, then the fields and values, as a dict once redis-py has parsed them)."""
    if isinstance(reply, list | tuple) and len(reply) == 2 and not isinstance(reply[0], list | tuple):
        if isinstance(reply[1], dict | list):  # HSCAN's (cursor, page)
            reply = reply[1]
    if isinstance(reply, dict):
        return list(reply.values())
    items = list(reply or ())
    if items and all(isinstance(item, list | tuple) for item in items):
        return [item[1] for item in items]
    return items[1::2]


def _message_stamp(body: Any, now: float) -> tuple[float, str | None]:
    """A message's ``message_timestamp`` in unix seconds, or the problem that keeps it from being one: not JSON, no
    stamp, or no plausible time in ms (a bool, a seconds value, NaN, far in the future)."""
    data = _json_object(body)
    if data is None:
        return 0.0, "its body is not a JSON object (another encoder, or garbage)" if body is not None else "no body"
    stamp = data.get("message_timestamp")
    if isinstance(stamp, bool) or not isinstance(stamp, int | float) or not math.isfinite(stamp):
        return 0.0, f"its message_timestamp is {json.dumps(stamp)[:40]}, not a number of milliseconds"
    if not EARLIEST_STAMP_MS <= stamp <= (now + STAMP_SKEW) * 1000:
        return 0.0, f"its message_timestamp {stamp!r} is no plausible time in milliseconds"
    return stamp / 1000, None


def _count(reply: Any) -> int:
    """An SCARD reply; an error (an ack key of the wrong type) fails the proc."""
    if isinstance(reply, Exception):
        raise reply
    return int(reply)
