"""One collection per ``max_age`` for a whole fleet: processes measuring the same configuration share its snapshot
and elect its collector through one Redis (the ``share`` setting).

Two keys per configuration, namespaced by the digest of the configuration (:mod:`hirefire_exporter.fingerprint`;
the braces keep both in one Redis Cluster slot):

- ``hirefire_exporter:{<digest>}:snapshot``: the latest snapshot as versioned JSON
  (:mod:`hirefire_exporter.snapshot_codec`), expiring ``stale_after + max_age`` after it was published, when nothing
  in it may be served any more;
- ``hirefire_exporter:{<digest>}:lease``: who collects. ``SET NX PX`` elects one process; the lease lasts
  ``timeout + 2 s`` (:func:`lease_seconds`), so a collector killed mid-cycle is replaced within one lease. On
  publishing, the collector turns its lease into a mark that lasts until the snapshot is ``max_age`` old: a process
  that read the old snapshot a moment before cannot start a second collection right after the first. A collector
  whose lease ran out and was taken by another does not publish (the other's cycle started later) and its release
  deletes nothing (compare-and-delete in a Lua script).

Nothing else is written: no proc configuration, no URL, no secret. The lease holds ``host/pid/random``, to tell who
collects. A store that cannot be reached, refuses a command or answers late (socket timeouts of
:data:`STORE_TIMEOUT`) means "collect locally": :meth:`SharedSnapshots.fetch` answers ``None`` and
:meth:`~SharedSnapshots.acquire` ``True``, and the store is left alone for :data:`STORE_RETRY` seconds (at least
``max_age``) before it is tried again, so a stalled store delays one cycle in several by one timeout, not every call.
No method raises.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from . import fingerprint
from .counts import shared_read_counts
from .procs.base import Proc, ProcConfigError
from .procs.redis_proc import build_client
from .redaction import describe_error, scrub
from .snapshot_codec import SCHEMA, snapshot_from_json, snapshot_to_json

if TYPE_CHECKING:
    from redis import Redis

    from .collection import Snapshot

__all__ = ["SharedSnapshots", "lease_seconds", "snapshot_from_json", "snapshot_to_json"]

log = logging.getLogger("hirefire_exporter")

#: Connect and read timeout of the store's client (seconds): a stalled store costs a cycle at most this long.
STORE_TIMEOUT = 0.5
#: Seconds a lease outlasts ``timeout``: the snapshot's publication (at most STORE_TIMEOUT) and scheduling slack
#: (a busy host, a garbage collection, encoding a large snapshot).
LEASE_SLACK = 2.0
#: Seconds an unreachable store is left alone before it is tried again (at least ``max_age``): a stalled store
#: delays one cycle in this many by STORE_TIMEOUT, instead of every cycle.
STORE_RETRY = 5.0
#: Seconds between two reads of the store while waiting for another process's first snapshot.
AWAIT_POLL = 0.05
KEY_PREFIX = "hirefire_exporter"

T = TypeVar("T")

# KEYS: snapshot, lease. ARGV: snapshot JSON, its TTL (ms), this process's lease value, how long the mark of a
# fresh snapshot lasts (ms; <= 0: none). Publishes unless another process holds the lease; returns 1 if published.
_PUBLISH = """
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if holder then
  if tonumber(ARGV[4]) > 0 then
    redis.call('SET', KEYS[2], ARGV[3] .. ' published', 'PX', ARGV[4])
  else
    redis.call('DEL', KEYS[2])
  end
end
return 1
"""
# KEYS: lease. ARGV: this process's lease value. Deletes the lease only if it is still this process's.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def lease_seconds(timeout: float) -> float:
    """How long a collector's lease lasts: its cycle (at most ``timeout``) plus :data:`LEASE_SLACK`. Shorter and a
    slow but live collector would see a second one start; longer and a killed one is replaced later."""
    return timeout + LEASE_SLACK


class SharedSnapshots:
    """One configuration's shared snapshot and collector lease in one Redis."""

    def __init__(self, url: str, procs: Sequence[Proc], *, max_age: float, stale_after: float, timeout: float) -> None:
        if not isinstance(url, str) or not url.strip():
            raise ProcConfigError("share: needs a Redis URL (redis://... or rediss://...)")
        self.url = url
        self.max_age = max_age
        self._names = [proc.name for proc in procs]
        self.digest = fingerprint.digest(procs, schema=SCHEMA, stale_after=stale_after)
        self.snapshot_key = f"{KEY_PREFIX}:{{{self.digest}}}:snapshot"
        self.lease_key = f"{KEY_PREFIX}:{{{self.digest}}}:lease"
        self.lease_ms = max(1, round(lease_seconds(timeout) * 1000))
        self.ttl_ms = max(1, round((stale_after + max_age) * 1000))
        self._client = _store_client(url)
        self._publish = self._client.register_script(_PUBLISH)
        self._release = self._client.register_script(_RELEASE)
        self._holder: tuple[int, str] | None = None  # (pid, lease value): a forked worker makes its own
        self._lock = threading.Lock()
        self._resume_at = 0.0  # monotonic time before which an unreachable store is not tried again
        self._unreadable_logged = False
        #: Whether the last call to the store succeeded.
        self.reachable = True
        #: Reads of the store by result (``hirefire_exporter_shared_reads_total``).
        self.reads = shared_read_counts()

    @property
    def where(self) -> str:
        """The store's URL without its password, for logs."""
        return scrub(self.url)

    @property
    def holder(self) -> str:
        """This process's lease value: ``host/pid/random``, new in every process (gunicorn forks after import)."""
        pid = os.getpid()
        if self._holder is None or self._holder[0] != pid:
            self._holder = (pid, f"{socket.gethostname()}/{pid}/{secrets.token_hex(8)}")
        return self._holder[1]

    def fetch(self) -> Snapshot | None:
        """The shared snapshot; ``None`` when there is none, it is unreadable or of another schema, or the store
        is down. Never raises."""
        data = self._call(lambda: self._client.get(self.snapshot_key), None)
        if data is None:
            self.reads.add("none" if self.reachable else "unreachable")
            return None
        try:
            snapshot = snapshot_from_json(data)
        except Exception as exc:  # ValueError by contract; whatever else, a snapshot to ignore, not to raise
            self._unreadable(describe_error(exc))
            return None
        if [status.name for status in snapshot.procs] != self._names:  # the digest says so; this costs nothing
            self._unreadable("its procs are not this configuration's")
            return None
        self._unreadable_logged = False
        self.reads.add("snapshot")
        return snapshot

    def await_published(self, within: float) -> Snapshot | None:
        """The snapshot another process publishes within ``within`` seconds, for a process that has nothing to serve
        while another collects (a fleet's first cycle); ``None`` when none comes or the store is down. Asks every
        :data:`AWAIT_POLL` seconds. Never raises."""
        deadline = time.monotonic() + within
        while True:
            snapshot = self.fetch()
            left = deadline - time.monotonic()
            if snapshot is not None or not self.reachable or left <= 0:
                return snapshot
            time.sleep(min(AWAIT_POLL, left))

    def acquire(self) -> bool:
        """Try the lease: True when this process should collect now, because it won the lease or because the store
        cannot be reached (collect locally). Never raises."""
        won = self._call(lambda: self._client.set(self.lease_key, self.holder, nx=True, px=self.lease_ms), True)
        return bool(won)

    def publish(self, snapshot: Snapshot) -> None:
        """Store ``snapshot`` for the others (unless another process holds the lease) and mark it fresh until it is
        ``max_age`` old. Never raises."""
        try:
            data = snapshot_to_json(snapshot)
        except Exception as exc:  # a NaN or a non-string key past the cycle's checks: a bug, not the fleet's problem
            log.warning("share: snapshot not published: %s", describe_error(exc))
            return
        fresh_ms = round((self.max_age - (time.time() - snapshot.collected_at)) * 1000)
        keys, args = [self.snapshot_key, self.lease_key], [data, self.ttl_ms, self.holder, fresh_ms]
        self._call(lambda: self._publish(keys=keys, args=args), None)

    def release(self) -> None:
        """Delete the lease if this process still holds it (not once it published, nor after another took it).
        Never raises."""
        self._call(lambda: self._release(keys=[self.lease_key], args=[self.holder]), None)

    def close(self) -> None:
        """Close the store's connections (a later call opens new ones)."""
        try:
            self._client.close()
        except Exception:  # closing sockets of a dead store
            pass

    def _call(self, command: Callable[[], T], fallback: T) -> T:
        """``command()``, or ``fallback`` when the store is down (now, or a moment ago: tried again after
        STORE_RETRY seconds)."""
        if not self.reachable and time.monotonic() < self._resume_at:
            return fallback
        try:
            result = command()
        except Exception as exc:  # whatever the store does wrong, this process collects for itself
            self._down(exc)
            return fallback
        if not self.reachable:
            with self._lock:
                if not self.reachable:
                    self.reachable = True
                    log.info("share: the shared store %s answers again: sharing snapshots", self.where)
        return result

    def _down(self, exc: BaseException) -> None:
        with self._lock:
            self._resume_at = time.monotonic() + max(self.max_age, STORE_RETRY)
            if self.reachable:
                self.reachable = False
                error = describe_error(exc)
                log.warning("share: the shared store %s failed (%s): collecting locally", self.where, error)

    def _unreadable(self, why: str) -> None:
        self.reads.add("unreadable")
        level = logging.DEBUG if self._unreadable_logged else logging.WARNING
        self._unreadable_logged = True
        log.log(level, "share: ignoring the snapshot in %s: %s", self.where, why)


def _store_client(url: str) -> Redis:
    """The store's client: short timeouts, and a retry only for a connection the store closed (not for a timeout,
    which would double the wait on a stalled store)."""
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError
    from redis.retry import Retry

    retry: Any = Retry(NoBackoff(), 1, supported_errors=(ConnectionError,))
    return build_client("share", url, socket_timeout=STORE_TIMEOUT, retry=retry)
