"""Queue discovery: ``queues = "*"`` (or ``"reports-*"``, or a list mixing names and patterns).

An entry of ``queues`` holding ``*``, ``?`` or ``[`` is a pattern (:func:`fnmatch.fnmatchcase`: case-sensitive);
any other entry is a queue name. An entry whose only special characters are one-character sets (``a[*]b``,
``jobs[[]1]``, ``jobs[1]``) is a name too: ``[*]``, ``[?]``, ``[[]`` and ``[]]`` stand for that character, any other
``[x]`` for itself (``a*b``, ``jobs[1]``, ``jobs[1]``), the way to name a queue whose name holds ``*``, ``?`` or
``[``. A proc with patterns measures its named queues, then the queues its backend finds on the broker
(:meth:`~hirefire_exporter.procs.base.Proc.discover_queues`, and the queues its workers' tracker registered:
:meth:`~hirefire_exporter.procs.base.Proc.held_queues`) that match one of its patterns, sorted by name. Discovery runs
inside the proc's read in the collection cycle (off the request path), at most once every ``discover_every`` seconds;
in between, the last list is measured.

**A queue that drains stays.** Several brokers keep no list of their queues (Huey, HotQueue and Dramatiq on Redis are
found by their keys) and Redis deletes an empty list: a queue whose last job was taken vanishes from the next
discovery, and jobs sent to it after that would go unseen until the discovery after them. So on those backends
(:meth:`~hirefire_exporter.procs.base.Proc.empty_queues_vanish`) a discovered queue is measured for :data:`KEEP_FOR`
seconds after discovery last saw it (reading 0 while it is empty), then forgotten. Where the broker lists its queues
(RQ's registry, kombu's bindings, RabbitMQ), a queue gone from the list is gone from the next discovery.

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

import re
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
#: Seconds a discovered queue is still measured after discovery last saw it on the broker.
KEEP_FOR = 3600.0

#: A glob's pieces: a set (``[abc]``, ``[!abc]``, ``[]]``), ``*`` or ``?``, or one literal character.
_GLOB_PIECE = re.compile(r"\[!?\]?[^\]]*\]|[*?]|.", re.DOTALL)
#: A set of one character (``[!]`` is none: it is the start of a negated set).
_ONE_CHARACTER_SET = re.compile(r"\[([^!])\]", re.DOTALL)


def is_pattern(entry: str) -> bool:
    """Whether an entry of ``queues`` is a pattern rather than a queue name (see :func:`literal`)."""
    return not PATTERN_CHARACTERS.isdisjoint(entry) and literal(entry) is None


def literal(entry: str) -> str | None:
    """The queue name an entry is when its only special characters are one-character sets (``[*]`` is ``*``,
    ``[[]`` is ``[``; ``[1]`` is itself: ``jobs[1]`` names ``jobs[1]``), else None (a pattern)."""
    out = []
    for special, text in glob_pieces(entry):
        one = _ONE_CHARACTER_SET.fullmatch(text) if special else None
        if special and one is None:
            return None
        out.append(text if one is None or one.group(1) not in "*?[]" else one.group(1))
    return "".join(out)


def queue_name(entry: str) -> str:
    """The queue an entry of ``queues`` that is not a pattern names: itself, or the one name it matches."""
    name = literal(entry) if not PATTERN_CHARACTERS.isdisjoint(entry) else None
    return entry if name is None else name


def escaped(name: str) -> str:
    """The entry of ``queues`` that names ``name`` (its ``*``, ``?`` and ``[`` in one-character sets)."""
    return "".join(f"[{char}]" if char in PATTERN_CHARACTERS else char for char in name)


def glob_pieces(pattern: str) -> list[tuple[bool, str]]:
    """A pattern's pieces in order, each ``(special, text)``: ``*``, ``?`` and sets are special, runs of other
    characters are not (for a backend that stores names transformed: Huey cleans them)."""
    pieces: list[tuple[bool, str]] = []
    for piece in _GLOB_PIECE.finditer(pattern):
        text = piece.group()
        special = text in ("*", "?") or (text.startswith("[") and len(text) > 1)
        if not special and pieces and not pieces[-1][0]:
            pieces[-1] = (False, pieces[-1][1] + text)
        else:
            pieces.append((special, text))
    return pieces


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
    #: Each queue discovery added, and when (unix time) it was last on the broker (:data:`KEEP_FOR`).
    seen: dict[str, float] = field(default_factory=dict)
    #: Patterns already warned about as adding no queue, and whether unreadable names were (once per process).
    idle_warned: set[str] = field(default_factory=set)
    unreadable_warned: bool = False

    def due(self, every: float, now: float) -> bool:
        """Whether to discover at unix time ``now`` (a clock set back makes it due too)."""
        return self.done_at is None or not 0 <= now - self.done_at < every

    def select(
        self, discovered: Iterable[str], named: Sequence[str], now: float, matchers: Sequence[str], keep_for: float
    ) -> tuple[list[str], list[str]]:
        """The queues this proc measures beyond ``named`` (sorted): those discovered at unix time ``now`` and those
        seen less than ``keep_for`` seconds before; and its patterns that add none (they match no queue of the
        broker, or only queues that are named or claimed). ``matchers``: the patterns as they match the broker's
        stored names (:meth:`~hirefire_exporter.procs.base.Proc.stored_pattern`)."""
        taken = set(named) | self.claimed
        fresh = {q for q in discovered if q not in taken and matches(q, matchers) and not matches(q, self.earlier)}
        self.seen.update(dict.fromkeys(fresh, now))
        self.seen = {q: at for q, at in self.seen.items() if q in fresh or (q not in taken and now - at < keep_for)}
        mine = sorted(self.seen)
        idle = [p for p, m in zip(self.patterns, matchers) if not any(fnmatchcase(q, m) for q in mine)]
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
            for pattern in map(other.stored_pattern, other.discovery.patterns)
        )


class KeyScan:
    """``SCAN ... MATCH ... COUNT`` passes over the keyspace; never ``KEYS``, which holds the server for the whole
    keyspace in one call, where each SCAN call holds it for :data:`SCAN_COUNT` keys. The first pass runs to its end
    (a proc has no list before it); a later one takes at most :data:`SCAN_CALLS` calls per :meth:`step`, so that a
    large keyspace is rescanned over several cycles while the last list is measured.

    ``kind`` (``list``, ``hash``, ``set``, ``zset``) keeps only keys of that type (``SCAN ... TYPE``; before Redis 6,
    one pipelined ``TYPE`` per key found): a stray key of another type under the pattern must not fail the proc."""

    def __init__(self, match: str, kind: str | None = None) -> None:
        self.match = match
        self.kind = kind
        #: The keys of the last complete pass (None before the first).
        self.last: set[str] | None = None
        self._cursor = 0
        self._keys: set[str] = set()
        self._passes = 0
        self._typed = kind is not None

    def step(self, client: Redis) -> set[str] | None:
        """The keys matching, once a pass ends in this step; ``None`` while a later pass goes on. A failed call
        restarts the pass next time."""
        calls = 0
        try:
            while not self._passes or calls < SCAN_CALLS:
                cursor, keys = self._call(client)
                calls += 1
                self._keys.update(key_text(key) for key in keys)
                self._cursor = int(cursor)
                if self._cursor == 0:
                    found, self._keys = self._keys, set()
                    self._passes += 1
                    self.last = found
                    return found
        except Exception:
            self._cursor, self._keys = 0, set()
            raise
        return None

    def _call(self, client: Redis) -> tuple[Any, list[Any]]:
        from redis.exceptions import ResponseError

        if self._typed:
            try:
                return client.scan(self._cursor, match=self.match, count=SCAN_COUNT, _type=self.kind)
            except ResponseError as error:
                if "syntax" not in str(error).lower():
                    raise
                self._typed = False  # before Redis 6: SCAN has no TYPE
        cursor, keys = client.scan(self._cursor, match=self.match, count=SCAN_COUNT)
        if self.kind is None or not keys:
            return cursor, keys
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.type(key)
        return cursor, [key for key, kind in zip(keys, pipe.execute()) if key_text(kind) == self.kind]


def completed(scans: Iterable[KeyScan], client: Redis) -> set[str] | None:
    """One :meth:`KeyScan.step` of each scan: all their keys, each scan's from its last complete pass while a later
    one goes on; None while one of them has no complete pass yet."""
    keys: set[str] = set()
    for scan in scans:
        found = scan.step(client)
        if found is None:
            found = scan.last
        if found is None:
            return None
        keys |= found
    return keys


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
