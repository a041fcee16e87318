"""Celery: every task that needs a worker, per queue, on Redis and RabbitMQ (or any other kombu broker).

States per queue (all of them count towards HireFire's total, see :data:`COUNTED`):

- ``queued``: waiting in the broker. On Redis the base list ``<q>`` plus every priority list ``<q><sep><step>``
  (transport options ``sep``, ``priority_steps``, ``global_keyprefix`` honoured), one pipelined round trip for all
  queues of all procs on the server. On RabbitMQ the ready count (passive declare, or the management API);
- ``reserved``: taken by a worker and not acknowledged: prefetched tasks, and running tasks under
  ``task_acks_late``. On Redis they are read from the ``unacked`` hash (no broadcast; the entries name their exchange
  and routing key, resolved to queues through kombu's binding tables). Entries of a worker that died without shutting
  down stay there until kombu puts them back in the queue after ``visibility_timeout`` (1 h by default) and keep
  counting: they still need a worker. On RabbitMQ from the management API (``messages_unacknowledged``, which also
  holds ETA tasks) or, when asked, from ``inspect().reserved()``;
- ``scheduled``: held by a worker until their ETA/countdown (Redis: ``unacked`` entries whose ``eta`` is in the
  future; RabbitMQ: ``inspect().scheduled()`` when asked). They count: Celery has no scheduler of its own for ETA
  tasks, a worker must stay up to hold them, and scaling it away pushes them back to the queue;
- ``started``: running, from ``inspect().active()``, only when ``inspect_statuses`` asks for it. With Celery's default
  early acknowledgement a running task is in no broker count at all: use ``task_acks_late = True`` (running tasks then
  stay ``reserved``) or ``inspect_statuses = ["active"]``. Without either, a queue reports no ``started`` state.

With the worker-side tracker (``tracker`` / ``tracker_url``, :mod:`hirefire_exporter.tracking`), ``reserved``,
``scheduled`` and ``started`` come from the workers' own records on every broker, and the reading also carries the
workers (:class:`~hirefire_exporter.procs.base.Workers`). No task is counted twice: on Redis, ``unacked`` entries
are matched to the tracker's tasks by id and only the others (not flushed yet, held by an untracked or killed
worker) count from the hash; on RabbitMQ ``messages_unacknowledged`` is not read.

Latency (the age of the oldest waiting task) needs :func:`hirefire_exporter.celery_latency.enable` in every producer;
it is read from the oldest message of each list (``LINDEX <list> -1``) on Redis and from the management API's
``head_message_timestamp`` on RabbitMQ.
"""

from __future__ import annotations

import logging
import math
import re
import shlex
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from functools import cached_property
from importlib import import_module
from typing import Any
from urllib.parse import urlsplit

from ...discovery import KeyScan, glob_escape
from ...redaction import describe_error, register_url, url_problem
from ...settings_check import Boolean, Integer, OrNone, Seconds, did_you_mean
from ...tracking.keys import Tracked
from ..base import ProcConfigError, QueueReading, Reading
from ..rabbitmq import (
    NEEDS_MANAGEMENT,
    QueueCounts,
    declare_counts,
    management_counts,
    management_queues,
    management_url_problem,
)
from ..redis_proc import Command, age_since, pipelined, read_redis_procs
from ..tracked import TrackedProc
from .inspect import METHODS, HeldTask, InspectIncomplete, Sightings, active_queues, inspect_tasks
from .redis import QUEUE, BindingTable, QueueLists, RedisKeys, Unacked, binding_table, parse_unacked
from .routing import Binding, declared_bindings, route

log = logging.getLogger("hirefire_exporter")

COUNTED = frozenset({"queued", "reserved", "scheduled", "started"})
REDIS_SCHEMES = frozenset({"redis", "rediss"})
AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp", "librabbitmq"})
#: Celery's broker when none is configured.
DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672//"
_SSL_REQS = {"cert_none": "none", "cert_optional": "optional", "cert_required": "required"}


class CeleryProc(TrackedProc):
    """A proc for Celery queues.

    Declarative (the old ``hirefire`` API)::

        class WorkerProc(CeleryProc):
            name = "worker"
            queues = ["celery"]
            app = celery_app            # or "myproject.celery.app", or leave it out for Celery's current app

    or ``CeleryProc("worker", queues=["high", "default"], url="redis://localhost:6379/0")``. ``url`` (the broker URL)
    takes precedence over the app's broker.
    """

    queues = ["celery"]
    tracker_library = "celery"
    #: The Celery app (instance or dotted path). None: built from ``url``, else Celery's current app.
    app: Any = None
    #: Worker inspection broadcasts: any of ``active``, ``reserved``, ``scheduled``. Off by default: each is a
    #: broadcast that waits for every worker. On Redis only ``active`` is ever broadcast (the ``unacked`` hash gives
    #: reserved and scheduled tasks exactly); with ``management_url`` the same holds on RabbitMQ.
    inspect_statuses: list[str] | tuple[str, ...] = ()
    #: Queue, exchange and routing key share one name: map inspected tasks to queues without asking the workers.
    simple_queues: bool = False
    #: How long an inspect broadcast waits for replies (seconds).
    inspect_timeout: float = 1.0
    #: The number of worker processes on the broker (every worker answers a broadcast, whatever its queues): the
    #: broadcast returns as soon as they replied, and fewer replies fail the proc. Only for a fixed number of workers:
    #: leave it unset when HireFire scales them. Unset, Redis finds the workers in the broker (their broadcast queues'
    #: bindings) and so does RabbitMQ with ``management_url``; plain RabbitMQ waits the full timeout and checks the
    #: replies against the queues' consumer counts.
    workers: int | None = None
    #: On Redis without ``workers``: a worker found in the broker that answered none of this proc's broadcasts for
    #: this long (seconds; counted from when it was first seen if it never answered) is taken for one killed without
    #: shutting down, whose binding stays behind: it is no longer waited for (logged once at WARNING). Until then its
    #: silence fails the proc.
    inspect_forget_after: float = 300.0
    #: RabbitMQ management API, e.g. ``https://user:password@host:15672``: ready + unacknowledged + latency for every
    #: queue in one HTTP request (figures about 5 s old) instead of one passive declare per queue.
    management_url: str | None = None
    #: Override the app's ``broker_transport_options`` (``global_keyprefix``, ``sep``, ``priority_steps``, ...).
    transport_options: dict[str, Any] | None = None

    option_checks = {
        "inspect_timeout": Seconds(positive=True),
        "inspect_forget_after": Seconds(positive=True),
        "workers": OrNone(Integer(1, 100_000, "a number of worker processes")),
        "simple_queues": Boolean(),
    }

    _app: Any = None
    #: Whether the last reading skipped malformed entries (so a lasting problem is logged at WARNING once).
    _skipping_malformed: bool = False

    # Configuration

    @property
    def supports_latency(self) -> bool:  # type: ignore[override]
        return self._redis() is not None or bool(self.management_url)

    def validate(self) -> None:
        super().validate()
        statuses = self.inspect_statuses
        if (
            isinstance(statuses, str)
            or not isinstance(statuses, list | tuple)
            or not all(s in METHODS for s in statuses)
        ):
            wrong = (
                next((s for s in statuses if s not in METHODS), None) if isinstance(statuses, list | tuple) else None
            )
            raise ProcConfigError(
                f"proc {self.name!r}: inspect_statuses must be a list of {METHODS}, got {statuses!r}"
                + did_you_mean(wrong, METHODS)
            )
        if self.transport_options is not None and not isinstance(self.transport_options, dict):
            raise ProcConfigError(f"proc {self.name!r}: transport_options must be a table of kombu transport options")
        register_url(self.management_url)
        if self.management_url and (problem := management_url_problem(self.management_url)):
            raise ProcConfigError(f"proc {self.name!r}: management_url {problem}")
        if self.tracked() and self.inspect_statuses:
            raise ProcConfigError(
                f"proc {self.name!r}: the tracker counts what workers hold: leave out inspect_statuses (broadcasts)"
            )
        if self._redis() is None or self._broadcasts():  # the proc talks through a kombu transport
            self._broker_connection().release()  # never connected: this parses the URL and loads the transport
        if self._redis() is not None:
            try:
                _ = self._keys  # the transport options' key layout, checked now rather than on every read
            except ValueError as exc:
                raise ProcConfigError(f"proc {self.name!r}: {exc}") from None

    def celery_app(self) -> Any:
        """The Celery app: given, imported from a dotted path, built from ``url``, or Celery's current app."""
        if self._app is None:
            app = self.app
            if isinstance(app, str):
                module, _, attr = app.rpartition(".")
                try:
                    app = getattr(import_module(module), attr)
                except Exception as exc:  # a broken module, however it fails; not chained: the cause is not scrubbed
                    raise ProcConfigError(
                        f"proc {self.name!r}: cannot import Celery app {self.app!r}: {describe_error(exc, locate=True)}"
                    ) from None
            elif app is None:
                from celery import Celery, current_app

                if self.url:
                    app = Celery(f"hirefire-{self.name}", broker=self.url, set_as_current=False)
                else:
                    app = current_app._get_current_object()
            self._app = app
        return self._app

    def broker_url(self) -> str:
        """``url``, else the app's broker URL (the first of a failover list)."""
        conf = self.celery_app().conf
        url = self.url or conf.broker_read_url or conf.broker_url or DEFAULT_BROKER_URL
        if isinstance(url, list | tuple):
            url = url[0]
        if not isinstance(url, str):
            raise ProcConfigError(f"proc {self.name!r}: the broker URL must be a string, got {type(url).__name__}")
        register_url(url)
        return url.split(";")[0].strip()

    def options(self) -> dict[str, Any]:
        """The broker transport options: the app's, overridden by ``transport_options``."""
        return {**(self.celery_app().conf.broker_transport_options or {}), **(self.transport_options or {})}

    def _scheme(self) -> str:
        scheme, found, _ = self.broker_url().partition("://")
        return scheme.lower() if found else ""

    def _broker_connection(self) -> Any:
        """A kombu connection to the measured broker (``url``, else the app's), not yet connected: what passive
        declarations and inspect broadcasts use. Building it parses the URL and loads its transport with what the
        transport needs, without I/O: :meth:`validate` builds one so that a broken URL or a missing package fails at
        start-up."""
        url = self.broker_url()
        problem = url_problem(url)  # before kombu, whose messages quote what it read as the port
        if problem is None:
            try:
                connection = self.celery_app().connection_for_read(
                    url, connect_timeout=self.socket_timeout, transport_options=self.transport_options
                )
                connection.transport  # noqa: B018 (instantiates the transport: its client library is checked there)
                return connection
            except ImportError as exc:  # e.g. redis:// without packaging (kombu[redis]), sqs:// without botocore
                raise ProcConfigError(
                    f"proc {self.name!r}: {_missing_transport_package(self._scheme(), exc)}"
                ) from None
            except KeyError as exc:  # kombu: "No such transport: sqs2.  Did you mean sqs?"
                problem = str(exc.args[0] if exc.args else exc)
            except ValueError as exc:
                problem = describe_error(exc)
        raise ProcConfigError(f"proc {self.name!r}: bad Celery broker URL: {problem}")

    # Redis

    def _redis(self) -> Any:
        """The client for a Redis broker (given, or built once; no I/O), or None for other brokers, whether or not
        this proc inspects (which :meth:`redis_client` also considers)."""
        return self.broker_redis()

    def default_client(self) -> Any:
        scheme = self._scheme()
        if scheme not in REDIS_SCHEMES:
            return None
        url, ssl = self._redis_url_and_ssl(scheme)
        return self.new_client(url, **ssl)

    def _redis_url_and_ssl(self, scheme: str) -> tuple[str, dict[str, Any]]:
        url = self.broker_url()
        # kombu accepts ssl_cert_reqs=CERT_NONE in the URL; redis-py wants none/optional/required.
        url = re.sub(r"(ssl_cert_reqs=)(CERT_\w+)", lambda m: m.group(1) + _SSL_REQS.get(m.group(2).lower(), ""), url)
        ssl: dict[str, Any] = {}
        use_ssl = self.celery_app().conf.broker_use_ssl
        if scheme == "rediss" and isinstance(use_ssl, dict):
            keys = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")
            ssl = {k: use_ssl[k] for k in keys if k in use_ssl}
        return url, ssl

    # Queue discovery

    def discovery_problem(self) -> str | None:
        if self._redis() is not None or self.management_url:
            return None
        if self._scheme() in AMQP_SCHEMES:
            return NEEDS_MANAGEMENT
        return f"the Celery {self._scheme() or 'broker'} transport cannot list its queues: name them"

    def discover_queues(self) -> set[str] | None:
        """The queues bound to exchanges: on Redis from kombu's binding tables (found with a budgeted SCAN, then one
        pipelined SMEMBERS per table), on RabbitMQ from the management API. Celery's own broadcast and event queues
        are left out."""
        client = self._redis()
        if client is None:
            assert self.management_url
            names: Iterable[str] = management_queues(self.management_url, self._vhost, self.socket_timeout)
        else:
            tables = self._binding_scan.step(client)
            if tables is None:
                return None
            pipe = client.pipeline(transaction=False)
            for table in sorted(tables):
                pipe.smembers(table)
            replies = [r for r in pipe.execute(raise_on_error=False) if not isinstance(r, Exception)]  # retyped since
            names = {row.queue for reply in replies for row in binding_table(reply, self._keys.sep).rows}
        conf = self.celery_app().conf
        pidbox, events = f".{self._control_exchange()}.pidbox", f"{conf.event_queue_prefix or 'celeryev'}."
        return {q for q in names if not (q.endswith(pidbox) or q.startswith(events))}

    @cached_property
    def _binding_scan(self) -> KeyScan:
        return KeyScan(glob_escape(self._keys.binding("")) + "*", "set")

    def queue_scope(self) -> Any:
        """The broker's queues: the Redis server and key prefix, or the RabbitMQ host and vhost."""
        client = self._redis()
        if client is not None:
            return (self.redis_scope(client), self._keys.prefix)
        parts = urlsplit(self.broker_url())
        scheme, port = parts.scheme.lower(), parts.port
        if port is None and ("amqp" in scheme or scheme == "librabbitmq"):  # AMQP's, where omitted: one broker
            port = 5671 if scheme.endswith("amqps") else 5672
        return (self.redis_scope(None), parts.hostname, port, self._vhost)

    def _broadcasts(self) -> list[str]:
        """The inspect methods this proc broadcasts: only what the broker cannot tell."""
        if self._redis() is not None or self.management_url:
            return ["active"] if "active" in self.inspect_statuses else []
        return [m for m in METHODS if m in self.inspect_statuses]

    def redis_client(self) -> Any:
        """The Redis client the collection batches this proc's commands on; None (read on its own) when inspecting
        or when the tracker's store is another server."""
        return None if self._broadcasts() or (self.tracked() and not self.tracker_inline()) else self._redis()

    @cached_property
    def _keys(self) -> RedisKeys:
        """Where kombu keeps this proc's queues (worked out once: the app's configuration is read at start-up)."""
        return RedisKeys.from_options(self.options())

    @cached_property
    def _declared(self) -> list[Binding]:
        """The bindings the app declares in ``task_queues`` (worked out once, like :attr:`_keys`)."""
        return declared_bindings(self.celery_app().conf)

    def _lists(self, queue: str) -> tuple[str, ...]:
        """The Redis lists holding ``queue``: the base list and one per priority step."""
        return self._keys.lists(queue)

    def _binding_keys(self, queue: str) -> tuple[str, ...]:
        """kombu's binding tables that list ``queue`` once it was declared (by a worker, or a producer sending to it):
        its exchange's as the app declares it, and the one named after the queue (the default exchange's, and that of
        a queue Celery creates on the fly)."""
        return self._binding_tables.get(queue) or (self._keys.binding(queue),)

    @cached_property
    def _binding_tables(self) -> dict[str, tuple[str, ...]]:
        """:meth:`_binding_keys` of the queues the app declares on a named exchange (worked out once)."""
        tables: dict[str, dict[str, None]] = {}
        for b in self._declared:
            if b.exchange:
                tables.setdefault(b.queue, {})[self._keys.binding(b.exchange)] = None
        for queue, keys in tables.items():
            keys.setdefault(self._keys.binding(queue), None)
        return {queue: tuple(keys) for queue, keys in tables.items()}

    def depth_commands(self, now: float) -> list[Command]:
        reads = self._queue_reads
        commands = [reads.get(queue) or self._queue_read(queue) for queue in self.queues]
        commands.append(("HVALS", self._keys.unacked))
        return commands + self.tracker_commands(now)

    @cached_property
    def _queue_reads(self) -> dict[str, Command]:
        """Each queue's :data:`QUEUE` read by queue, made once: nothing in it changes from cycle to cycle."""
        return {}

    def _queue_read(self, queue: str) -> Command:
        """A queue's lists' lengths, their oldest messages' stamps and its binding tables, read on the server."""
        reads = self._queue_reads
        if len(reads) > 2 * len(self.queues) + 1000:  # discovered queues come and go: forget the gone ones
            reads.clear()
        first, *more = self._lists(queue)
        read = reads[queue] = QUEUE(first, queue, self._keys.sep, len(more), *more, *self._binding_keys(queue))
        return read

    def latency_commands(self, depth: list[Any]) -> list[Command]:
        """The binding tables of the exchanges that unacked messages were published to (to find their queues)."""
        depth, _ = self.split_tracked(depth)
        return [("SMEMBERS", self._keys.binding(ex)) for ex in parse_unacked(depth[-1]).exchanges]

    def build_reading(self, depth: list[Any], latency: list[Any], now: float) -> Reading:
        depth, tracked = self.split_tracked(depth)
        if self.tracked() and tracked is None:
            raise AssertionError("a proc whose tracker has a store of its own is read by read()")
        return self._held_reading(depth, latency, now, tracked)

    def _held_reading(self, depth: list[Any], latency: list[Any], now: float, tracked: Tracked | None) -> Reading:
        """The broker's replies (``depth``, ``latency``) and, with a tracker, what it read.

        kombu's ``unacked`` hash holds every message a worker received and has not acknowledged. With a tracker, the
        tasks it reports (matched by task id) are counted from the tracker only; the other entries still count, as
        reserved or scheduled: messages delivered since the worker's last flush, and those a killed worker left,
        which kombu puts back in the queue after its visibility timeout. An entry without a task id (an old message
        protocol) is left to the tracker."""
        unacked = parse_unacked(depth[-1])
        tables = {ex: binding_table(reply, self._keys.sep) for ex, reply in zip(unacked.exchanges, latency)}
        self._log_malformed(unacked.malformed, sum(table.malformed for table in tables.values()))
        held: Counter[tuple[str, str]] = Counter()
        for entry in unacked.entries:
            if tracked is not None and (entry.task_id is None or entry.task_id in tracked.tasks):
                continue
            state = "scheduled" if entry.eta is not None and entry.eta > now else "reserved"
            for queue in _held_queues(entry, tables, self._declared):
                held[queue, state] += 1
        queues = []
        count = held.get
        for queue, lists in zip(self.queues, depth):
            jobs = {"queued": lists.waiting, "reserved": 0, "scheduled": 0}
            if held:
                jobs["reserved"], jobs["scheduled"] = count((queue, "reserved"), 0), count((queue, "scheduled"), 0)
            if tracked is not None:
                for state, n in tracked.jobs[queue].items():
                    jobs[state] = jobs.get(state, 0) + n
            found = True if any(jobs.values()) else lists.bound  # None: its binding table could not be read
            queues.append(QueueReading.of(queue, jobs, COUNTED, _oldest(lists, now), found))
        return _with_workers(Reading.from_queues(queues), tracked)

    def _log_malformed(self, entries: int, bindings: int) -> None:
        """Make skipped garbage visible without flooding the log (HireFire polls every minute): WARNING when it
        appears, DEBUG while it stays. Never the contents: a message may hold personal data."""
        skipping = bool(entries or bindings)
        if skipping:
            log.log(
                logging.DEBUG if self._skipping_malformed else logging.WARNING,
                "proc %r: malformed entries left out of the counts: %d in the Redis hash %r, %d in kombu's binding"
                " tables",
                self.name,
                entries,
                self._keys.unacked,
                bindings,
            )
        self._skipping_malformed = skipping

    # Reading

    def read(self, cache: dict[str, Any]) -> Reading:
        client = self._redis()
        if client is None:
            return self._read_broker(cache)
        if self.tracked() and not self.tracker_inline():  # the broker, then the tracker's own store
            now = time.time()
            depth = pipelined(client, self.depth_commands(now))
            follow_ups = self.latency_commands(depth)
            latency = pipelined(client, follow_ups) if follow_ups else []
            return self._held_reading(depth, latency, now, self.read_tracker(now))
        result = read_redis_procs(client, [self], time.time())[0]
        if isinstance(result, BaseException):
            raise result
        methods = self._broadcasts()
        if not methods:
            return result
        if self.workers:
            held = self._inspect(methods, cache, self.workers)
        else:
            try:
                held = self._inspect(methods, cache, self._live_workers(client), replied=self._sightings.answered)
            except InspectIncomplete as exc:  # Redis cannot tell a busy worker from a dead one's leftover binding
                raise InspectIncomplete(
                    f"{exc}; or the worker was killed without shutting down and left its member in the Redis set"
                    f" {self._pidbox_key()!r}: remove it (SREM), or set `workers`"
                ) from None
        return self._merge(result, held, cache, unacked_visible=True)

    def _pidbox_key(self) -> str:
        """kombu's binding table of the broadcast exchange: one member per worker (``<hostname>.<exchange>.pidbox``)."""
        return self._keys.binding(f"{self._control_exchange()}.pidbox")

    def _redis_workers(self, client: Any) -> dict[str, str]:
        """The workers listening for broadcasts (their pidbox queues' bindings): hostname -> its member of the set."""
        sep, suffix = self._keys.sep, f".{self._control_exchange()}.pidbox"
        workers = {}
        for row in binding_table(client.smembers(self._pidbox_key()), sep).rows:
            if row.queue.endswith(suffix):
                pattern = row.pattern.pattern if row.pattern else ""
                workers[row.queue[: -len(suffix)]] = sep.join((row.key, pattern, row.queue))
        return workers

    @cached_property
    def _sightings(self) -> Sightings:
        return Sightings(self.inspect_forget_after)

    def _live_workers(self, client: Any) -> set[str]:
        """The workers in the broker, less those silent for longer than ``inspect_forget_after`` (logged once)."""
        members = self._redis_workers(client)
        live, gone = self._sightings.sort(members)
        for hostname in gone:
            key = self._pidbox_key()
            log.warning(
                "proc %r: worker %r answered no broadcast for over %gs: taken for gone (killed without shutting"
                " down?) and no longer waited for until it answers again; its member stays in the Redis set %r,"
                " remove it with: %s",
                self.name,
                hostname,
                self.inspect_forget_after,
                key,
                _srem_command(key, members[hostname]),
            )
        return live

    def _control_exchange(self) -> str:
        return self.celery_app().conf.control_exchange or "celery"

    def _worker_hostnames(self, queue_names: Iterable[str]) -> set[str]:
        """Workers' hostnames from their broadcast queues' names (``<hostname>.<control exchange>.pidbox``)."""
        suffix = f".{self._control_exchange()}.pidbox"
        return {name[: -len(suffix)] for name in queue_names if name.endswith(suffix)}

    def _read_broker(self, cache: dict[str, Any]) -> Reading:
        now = time.time()
        counts, expected = self._management_counts() if self.management_url else self._declare_counts()
        # read after the broker: a task delivered in between counts twice for a moment, rather than not at all
        tracked = self.read_tracker(now) if self.tracked() else None
        queues = []
        for queue in self.queues:
            c = counts[queue]
            if tracked is not None:  # what workers hold, unacknowledged or not, from the tracker
                jobs = {"queued": c.ready, **tracked.jobs[queue]}
            elif c.unacked is None:
                jobs = {"queued": c.ready}
            else:
                jobs = {"queued": c.ready, "reserved": c.unacked}
            latency = None
            if self.management_url:
                stamp = c.head_timestamp
                latency = 0.0 if c.ready == 0 else (None if stamp is None else age_since(stamp, now))
            queues.append(QueueReading(queue, jobs, COUNTED, latency, c.found))
        reading = _with_workers(Reading.from_queues(queues), tracked)
        methods = self._broadcasts()
        if not methods:
            return reading
        consumers = max((c.consumers for c in counts.values()), default=0)
        held = self._inspect(methods, cache, expected, at_least=consumers)
        return self._merge(reading, held, cache, unacked_visible=bool(self.management_url))

    def _declare_counts(self) -> tuple[dict[str, QueueCounts], int | None]:
        """Ready counts by passive declare, on a connection opened and closed for this read."""
        with self._broker_connection() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0)
            return declare_counts(conn, self.queues, self._queue_arguments()), self.workers

    def _management_counts(self) -> tuple[dict[str, QueueCounts], int | set[str] | None]:
        """Ready + unacked counts from the management API, and the workers it lists (their pidbox queues)."""
        assert self.management_url
        stats = management_counts(self.management_url, self._vhost, self.socket_timeout)
        unknown = [q for q in self.queues if q in stats and stats[q] is None]
        if unknown:
            raise LookupError(
                f"the RabbitMQ management API lists {', '.join(map(repr, unknown))} without message counts (statistics"
                " not collected yet, or disabled by management_agent.disable_metrics_collector)"
            )
        missing = QueueCounts(ready=0, unacked=0, found=False)  # not listed: no such queue
        counts = {q: stats.get(q) or missing for q in self.queues}
        hosts = self._worker_hostnames(name for name, c in stats.items() if c is not None and c.consumers)
        return counts, self.workers or hosts

    @cached_property
    def _vhost(self) -> str:
        """The vhost the app uses: the broker URL's, else its ``broker_vhost`` (worked out once, without I/O)."""
        with self._broker_connection() as conn:
            return conn.virtual_host or "/"

    def _queue_arguments(self) -> dict[str, Any]:
        """Each queue's declared arguments (``x-max-priority``, ...) from the app's ``task_queues``."""
        conf = self.celery_app().conf
        declared = {q.name: q.queue_arguments for q in conf.task_queues or ()}
        default = {"x-max-priority": conf.task_queue_max_priority} if conf.task_queue_max_priority else None
        return {q: declared.get(q, default) for q in self.queues}

    # Inspection

    def _inspect(
        self, methods: list[str], cache: dict[str, Any], expected: Any, at_least: int = 0, replied: Any = None
    ) -> dict[str, list[HeldTask]]:
        return inspect_tasks(
            self._control_app,
            methods,
            cache,
            broker=self._broadcast_scope(),
            timeout=self.inspect_timeout,
            expected=expected or None,
            at_least=at_least,
            replied=replied,
        )

    @cached_property
    def _control_app(self) -> Any:
        """The app that broadcasts: the app itself when it publishes to the measured broker with this proc's transport
        options, else a copy of its settings on the measured broker. (Celery publishes a broadcast through the app's
        own producer pool, whichever connection ``inspect()`` is given: a ``url`` other than the app's broker would
        ask the app's workers about the measured broker's queues.)"""
        app = self.celery_app()
        own = app.conf.broker_write_url or app.conf.broker_url
        own = own[0] if isinstance(own, list | tuple) else own
        url = self.broker_url()
        if not self.transport_options and isinstance(own, str) and own.split(";")[0].strip() == url:
            return app
        from celery import Celery

        settings = app.conf.table(with_defaults=False, censored=False)
        settings.pop("deprecated_settings", None)
        control = Celery(f"hirefire-{self.name}-inspect", set_as_current=False)
        control.conf.update(
            settings,
            broker_url=url,
            broker_read_url=None,
            broker_write_url=None,
            broker_transport_options=self.options(),
        )
        return control

    def _broadcast_scope(self) -> str:
        """Which workers a broadcast reaches (broker and control exchange): procs of one scope share a broadcast."""
        return f"{self.broker_url()} {self.celery_app().conf.control_exchange}"

    def _merge(
        self, reading: Reading, held: dict[str, list[HeldTask]], cache: dict[str, Any], unacked_visible: bool
    ) -> Reading:
        """Add inspected tasks to the broker's counts without counting a task twice.

        When the broker shows unacknowledged messages, only ``active`` is added: a running task that is not yet
        acknowledged (``task_acks_late``) is already among them, so it moves from ``reserved`` to ``started``.
        """
        routes = self._inspect_routes(held, cache)
        counts: Counter[tuple[str, str]] = Counter()
        for method, tasks in held.items():
            for task in tasks:
                for queue in routes.get((task.exchange, task.routing_key), ()):
                    counts[queue, method] += 1
                    if method == "active" and not task.acknowledged:
                        counts[queue, "active_unacked"] += 1
        queues = []
        for qr in reading.queues:
            jobs = dict(qr.jobs)
            if "active" in held:
                jobs["started"] = counts[qr.name, "active"]
                if unacked_visible:
                    jobs["reserved"] = max(0, jobs.get("reserved", 0) - counts[qr.name, "active_unacked"])
            if not unacked_visible:
                for method in ("reserved", "scheduled"):
                    if method in held:
                        jobs[method] = counts[qr.name, method]
            queues.append(replace(qr, jobs=jobs))
        return Reading.from_queues(queues)

    def _inspect_routes(self, held: dict[str, list[HeldTask]], cache: dict[str, Any]) -> dict[tuple[str, str], set]:
        keys = {(t.exchange, t.routing_key) for tasks in held.values() for t in tasks}
        routes: dict[tuple[str, str], set] = {}
        unknown = []
        for exchange, routing_key in keys:
            if self.simple_queues:
                routes[exchange, routing_key] = {routing_key}
            elif queues := route(self._declared, exchange, routing_key):
                routes[exchange, routing_key] = queues
            else:
                unknown.append((exchange, routing_key))
        if unknown:  # ask the workers which queues they consume and how (one more broadcast, cached per cycle)
            app, scope = self._control_app, self._broadcast_scope()
            asked = active_queues(app, cache, broker=scope, timeout=self.inspect_timeout, limit=self.workers)
            routes.update({key: route(asked, *key) for key in unknown})
        return routes


#: Celery's extras that bring what a kombu transport needs, by URL scheme (py-amqp, for amqp://, comes with kombu).
TRANSPORT_EXTRAS = {
    "redis": "redis",
    "rediss": "redis",
    "sentinel": "redis",
    "sqs": "sqs",
    "mongodb": "mongodb",
    "zookeeper": "zookeeper",
    "consul": "consul",
    "azureservicebus": "azureservicebus",
    "azurestoragequeues": "azurestoragequeues",
    "gcpubsub": "gcpubsub",
    "sqla": "sqlalchemy",
    "sqlalchemy": "sqlalchemy",
    "confluentkafka": "confluentkafka",
}


def _missing_transport_package(scheme: str, exc: ImportError) -> str:
    """One line naming the module a broker's transport could not import and what to install."""
    module = (exc.name or "").partition(".")[0]
    missing = f"the module {module!r}, which is not installed" if module else f"a package that is not installed ({exc})"
    extra = TRANSPORT_EXTRAS.get(scheme)
    hint = f"pip install 'celery[{extra}]'" if extra else "install the package that provides it"
    if extra == "redis":
        hint += " (hirefire-exporter's 'celery' extra brings it)"
    return f"the Celery {scheme or 'broker'} transport needs {missing}: {hint}"


def _srem_command(key: str, member: str) -> str:
    """A shell command removing ``member`` from ``key``. kombu's separator is made of control characters: the member
    is then written as a printf format, with octal escapes."""
    if member.isprintable() and member.isascii():
        return f"redis-cli SREM {shlex.quote(key)} {shlex.quote(member)}"
    return f'redis-cli SREM {shlex.quote(key)} "$(printf {shlex.quote("".join(map(_printf_char, member)))})"'


def _printf_char(char: str) -> str:
    if not (char.isprintable() and char.isascii()):
        return "".join(f"\\{byte:03o}" for byte in char.encode())
    return {"\\": "\\\\", "%": "%%"}.get(char, char)


def _with_workers(reading: Reading, tracked: Tracked | None) -> Reading:
    return reading if tracked is None else replace(reading, workers=tracked.workers)


def _held_queues(entry: Unacked, tables: dict[str, BindingTable], declared: list[Binding]) -> set[str]:
    """The queues kombu delivered a held message to: by its binding table in Redis (kombu's own routing data), else
    (the default exchange, or bindings expired) by the app's declared queues."""
    table = tables.get(entry.exchange)
    if table is None or not table.rows:
        return route(declared, entry.exchange, entry.routing_key)
    fanout = any(b.type == "fanout" for b in declared if b.exchange == entry.exchange)
    return table.route(entry.routing_key, fanout)


def _oldest(lists: QueueLists, now: float) -> float | None:
    """The age of a queue's oldest message over its lists: 0.0 when every list is empty, None when a non-empty list's
    oldest message has no stamp."""
    stamps = lists.stamps
    if not stamps:
        return 0.0
    if None in stamps or not all(map(math.isfinite, stamps)):  # type: ignore[arg-type]
        return None
    return age_since(min(stamps), now)  # type: ignore[type-var]
