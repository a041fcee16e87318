"""Queue discovery: ``queues = "*"`` (or ``"reports-*"``, or a list mixing names and patterns).

An entry of ``queues`` holding ``*``, ``?`` or ``[`` is a pattern (:func:`fnmatch.fnmatchcase`: case-sensitive;
``[*]`` matches a literal ``*``); any other entry is a queue name. A proc with patterns measures its named queues, then
the queues its backend finds on the broker (:meth:`~hirefire_exporter.procs.base.Proc.discover_queues`) that match
one of its patterns, sorted by name. Discovery runs inside the proc's read in the collection cycle (off the request
path), at most once every ``discover_every`` seconds; in between, the last list is measured.

**One queue, one proc.** Among procs that read the same queues (the same backend on the same server and key
prefix: :meth:`~hirefire_exporter.procs.base.Proc.queue_scope`), a discovered queue is left out of a proc when
another proc names it, or when the pattern of a proc listed earlier matches it: the first proc wins. So
``worker = ["high-*"]`` then ``other = ["*"]`` measures the ``high-`` queues in ``worker`` and every other queue in
``other``, and no job is counted twice.

Keys are found with ``SCAN ... MATCH ... COUNT`` :data:`SCAN_COUNT` (:class:`KeyScan`): the first pass to its end,
each later one at most :data:`SCAN_CALLS` calls per proc and cycle, the last complete list measured meanwhile. A proc
never reads 0 for want of a list: before its first complete list it fails, saying so.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis import Redis

    from .procs.base import Proc

#: The characters that make an entry of ``queues`` a pattern.
PATTERN_CHARACTERS = frozenset("*?[")
#: Keys asked for per SCAN call, and SCAN calls per proc and cycle at most after the first pass (100,000 keys).
SCAN_COUNT = 1000
SCAN_CALLS = 100


def is_pattern(entry: str) -> bool:
    """Whether an entry of ``queues`` is a pattern rather than a queue name."""
    return not PATTERN_CHARACTERS.isdisjoint(entry)


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns)


class DiscoveryPending(RuntimeError):
    """A proc's discovery has no complete list of queues yet (a backend whose first pass spans cycles)."""


@dataclass
class Discovery:
    """A proc's discovery state: its patterns, what other procs claim, and the last list found."""

    patterns: tuple[str, ...]
    #: Queue names other procs of the same scope name explicitly, and the patterns of earlier procs of that scope.
    claimed: frozenset[str] = frozenset()
    earlier: tuple[str, ...] = ()
    #: The queues discovery added (beyond the proc's named ones), and when (unix time) it last completed.
    found: tuple[str, ...] = ()
    done_at: float | None = None
    #: Patterns already warned about as adding no queue, and whether unreadable names were (once per process).
    idle_warned: set[str] = field(default_factory=set)
    unreadable_warned: bool = False

    def due(self, every: float, now: float) -> bool:
        """Whether to discover at unix time ``now`` (a clock set back makes it due too)."""
        return self.done_at is None or not 0 <= now - self.done_at < every

    def select(self, discovered: Iterable[str], named: Sequence[str]) -> tuple[list[str], list[str]]:
        """The discovered queues this proc measures beyond ``named`` (sorted), and its patterns that add none (they
        match no queue of the broker, or only queues that are named or claimed)."""
        taken = set(named) | self.claimed
        mine = sorted(
            q for q in set(discovered) if q not in taken and matches(q, self.patterns) and not matches(q, self.earlier)
        )
        idle = [p for p in self.patterns if not any(fnmatchcase(q, p) for q in mine)]
        return mine, idle


def assign_claims(procs: Sequence[Proc]) -> None:
    """Tell each proc with patterns which queues other procs of its scope claim (see the module's docstring)."""
    if all(proc.discovery is None for proc in procs):
        return
    scopes: list[Hashable] = [proc.queue_scope() for proc in procs]
    for index, proc in enumerate(procs):
        discovery = proc.discovery
        if discovery is None:
            continue
        same = [other for j, other in enumerate(procs) if j != index and scopes[j] == scopes[index]]
        discovery.claimed = frozenset(other.stored_name(q) for other in same for q in other.named_queues())
        discovery.earlier = tuple(
            pattern
            for j, other in enumerate(procs[:index])
            if scopes[j] == scopes[index] and other.discovery is not None
            for pattern in other.discovery.patterns
        )


class KeyScan:
    """``SCAN ... MATCH ... COUNT`` passes over the keyspace; never ``KEYS``, which holds the server for the whole
    keyspace in one call, where each SCAN call holds it for :data:`SCAN_COUNT` keys. The first pass runs to its end
    (a proc has no list before it); a later one takes at most :data:`SCAN_CALLS` calls per :meth:`step`, so that a
    large keyspace is rescanned over several cycles while the last list is measured."""

    def __init__(self, match: str) -> None:
        self.match = match
        self._cursor = 0
        self._keys: set[str] = set()
        self._passes = 0

    def step(self, client: Redis) -> set[str] | None:
        """The keys matching, once a pass ends in this step; ``None`` while a later pass goes on. A failed call
        restarts the pass next time."""
        calls = 0
        try:
            while not self._passes or calls < SCAN_CALLS:
                cursor, keys = client.scan(self._cursor, match=self.match, count=SCAN_COUNT)
                calls += 1
                self._keys.update(key_text(key) for key in keys)
                self._cursor = int(cursor)
                if self._cursor == 0:
                    found, self._keys = self._keys, set()
                    self._passes += 1
                    return found
        except Exception:
            self._cursor, self._keys = 0, set()
            raise
        return None


def glob_escape(text: str) -> str:
    """``text`` matched literally by a Redis glob (``SCAN MATCH``): a key prefix may hold ``*``, ``?`` or ``[``."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def readable_names(names: Iterable[str]) -> tuple[set[str], int]:
    """The names that are text (:func:`key_text` keeps other bytes as surrogates, which no command can send), and how
    many were not: one such key must not fail every proc on its server."""
    names = set(names)
    readable = {name for name in names if _encodes(name)}
    return readable, len(names) - len(readable)


def _encodes(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def key_text(value: Any) -> str:
    """A key or member as text, whether the client decodes responses or not."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)
