"""What procs of libraries with a worker-side tracker share: its options and how its store is read.

With ``tracker = true`` (the store is the broker's Redis) or ``tracker_url`` (another Redis), a proc takes the
states its library's tracker records (:mod:`hirefire_exporter.tracking`) from the store, and only what waits in the
broker from the broker. When the store is the server the proc's broker commands go to, its commands join that
pipeline (no extra round trip); on another server the proc sends them in one pipeline of their own, right after
reading the broker. A store that cannot be read fails the proc, like its broker would.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import cached_property
from typing import Any, ClassVar

from ..settings_check import Boolean, ShareURL
from ..tracking.keys import STATES, Tracked, live_queues, parse, queues_key, read_commands
from .base import ProcConfigError
from .redis_proc import Command, RedisProc, batch_key, build_client, pipelined


class TrackedProc(RedisProc):
    """A :class:`RedisProc` whose library can track what workers hold."""

    #: The workers run the tracker and write to the broker (which must be Redis).
    tracker: bool = False
    #: The workers run the tracker and write to this Redis (``track(..., store=...)``).
    tracker_url: str | None = None
    option_checks = {"tracker": Boolean(), "tracker_url": ShareURL()}
    #: The library's namespace in the tracker's keys (the ``Tracker``'s ``library`` its adapter gives).
    tracker_library: ClassVar[str]
    #: The states the library's tracker records.
    tracked_states: ClassVar[tuple[str, ...]] = STATES

    def tracked(self) -> bool:
        return bool(self.tracker or self.tracker_url)

    def broker_redis(self) -> Any:
        """The client of the proc's broker when it is Redis, else None (no I/O)."""
        return RedisProc.redis_client(self)

    def tracker_queues(self) -> Sequence[str]:
        """The queue names as the workers' tracker writes them."""
        return self.queues

    def validate(self) -> None:
        super().validate()  # tracker_url checked (and its password registered) by its kind
        if self.tracker and not self.tracker_url and self.broker_redis() is None:
            raise ProcConfigError(
                f"proc {self.name!r}: tracker = true reads the tracker from the broker, which is not Redis here: give"
                " `tracker_url`, the Redis the workers track in"
            )
        _ = self._tracker_store  # the URL checked now

    @cached_property
    def _tracker_store(self) -> Any:
        """A client on the tracker's store unless the broker's client may read it for it (the same server, read
        alike: :func:`~hirefire_exporter.procs.redis_proc.batch_key`), else None (read in the broker's round trip)."""
        if not self.tracker_url:
            return None
        client = build_client(f"proc {self.name!r}: tracker_url", self.tracker_url, socket_timeout=self.socket_timeout)
        broker = self.broker_redis()
        return None if broker is not None and batch_key(broker) == batch_key(client) else client

    def tracker_inline(self) -> bool:
        """Whether the tracker's commands go in the broker's pipeline."""
        return self.tracked() and self._tracker_store is None

    def tracker_commands(self, now: float) -> list[Command]:
        """The tracker's commands for the broker's pipeline (none when it is read from a store of its own)."""
        return (
            read_commands(self.tracker_library, self.tracker_queues(), self.tracked_states, now)
            if self.tracker_inline()
            else []
        )

    def split_tracked(self, depth: list[Any]) -> tuple[list[Any], Tracked | None]:
        """The broker's replies, and what the tracker's commands at their end read (None when not there)."""
        if not self.tracker_inline():
            return depth, None
        size = len(self.tracker_queues()) * (len(self.tracked_states) + 1)
        return depth[:-size], parse(self.tracker_queues(), self.tracked_states, depth[-size:])

    def held_queues(self) -> set[str]:
        """With a tracker, the queues its live workers consume (one ``ZRANGEBYSCORE`` of the store): discovery finds
        a queue whose only tasks run, which Huey and Dramatiq keep no key of."""
        if not self.tracked():
            return set()
        store = self._tracker_store if self._tracker_store is not None else self.broker_redis()
        return live_queues(
            pipelined(store, [("ZRANGEBYSCORE", queues_key(self.tracker_library), time.time(), "+inf")])[0]
        )

    def read_tracker(self, now: float) -> Tracked:
        """Read the tracker's own store, in one pipeline. Raises when it cannot be read: never a low count."""
        replies = pipelined(
            self._tracker_store, read_commands(self.tracker_library, self.tracker_queues(), self.tracked_states, now)
        )
        return parse(self.tracker_queues(), self.tracked_states, replies)
