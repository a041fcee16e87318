"""Reading kombu's Redis structures: the ``unacked`` hash, binding tables, and the messages waiting in lists.

Anything in them may be garbage (a buggy producer, an old kombu, a manual ``redis-cli`` session). A malformed hash
entry or binding is skipped and counted in ``malformed``, never raised: one bad entry must not cost a cycle the exact
count of all the others. A key of the wrong type is different: it fails the proc that reads it, saying why.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ...celery_latency import HEADER, enqueued_at
from ...settings_check import Integer, OrNone, Text, fail, shown
from ..redis_proc import as_text, parse_utc
from ..redis_script import read_function

_STEP = Integer(0, 255, "a priority")
_TEXT = Text(exact=True)
_OPTIONAL_TEXT = OrNone(Text("a string", exact=True))

#: kombu's Redis transport defaults.
DEFAULT_SEP = "\x06\x16"
DEFAULT_PRIORITY_STEPS = (0, 3, 6, 9)


@dataclass(frozen=True)
class RedisKeys:
    """Where kombu's Redis transport keeps things under a set of transport options (``global_keyprefix``, ``sep``,
    ``priority_steps``, ``unacked_key``)."""

    prefix: str = ""
    sep: str = DEFAULT_SEP
    steps: tuple[Any, ...] = DEFAULT_PRIORITY_STEPS
    unacked: str = "unacked"

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> RedisKeys:
        """The layout under kombu ``options``; a value kombu could not use raises :class:`ProcConfigError`."""
        prefix = (
            _OPTIONAL_TEXT.check(options.get("global_keyprefix") or None, "transport option global_keyprefix") or ""
        )
        steps = options.get("priority_steps", DEFAULT_PRIORITY_STEPS)
        if not isinstance(steps, list | tuple) or not steps:
            fail(f"transport option priority_steps must be a list of priorities from 0 to 255, got {shown(steps)}")
        for index, step in enumerate(steps):
            _STEP.check(step, f"transport option priority_steps[{index}]")
        return cls(
            prefix=prefix,
            sep=_TEXT.check(options.get("sep", DEFAULT_SEP), "transport option sep"),
            steps=tuple(steps),
            unacked=prefix + _TEXT.check(options.get("unacked_key", "unacked"), "transport option unacked_key"),
        )

    def key(self, name: str) -> str:
        """A key as kombu's client writes it (with ``global_keyprefix``)."""
        return f"{self.prefix}{name}"

    @lru_cache(maxsize=4096)  # noqa: B019 (instances are few, hashable and live as long as their procs)
    def lists(self, queue: str) -> tuple[str, ...]:
        """The lists holding ``queue``: kombu's ``_q_for_pri`` for every priority step (step 0 is the base list)."""
        names = dict.fromkeys(f"{queue}{self.sep}{step}" if step else queue for step in self.steps)
        return tuple(self.key(name) for name in names)

    def binding(self, exchange: str) -> str:
        """kombu's binding table of ``exchange``."""
        return self.key(f"_kombu.binding.{exchange}")


@dataclass(frozen=True)
class Unacked:
    """One entry of kombu's ``unacked`` hash: a message a worker holds."""

    exchange: str
    routing_key: str
    eta: float | None
    #: The task's id (message protocol 2 carries it in the headers), None when the message does not say.
    task_id: str | None = None


@dataclass(frozen=True)
class UnackedHash:
    """kombu's ``unacked`` hash: its well-formed entries, and how many entries were skipped as malformed."""

    entries: tuple[Unacked, ...] = ()
    malformed: int = 0

    @property
    def exchanges(self) -> list[str]:
        """The named exchanges the entries were published to (the default exchange ``""`` routes by queue name)."""
        return sorted({e.exchange for e in self.entries if e.exchange})


#: The last ``unacked`` reply parsed and its parse (holding the reply keeps its identity unique).
_UNACKED_MEMO: tuple[Any, UnackedHash] = (None, UnackedHash())


def parse_unacked(values: Any) -> UnackedHash:
    """The entries of kombu's ``unacked`` hash (``HVALS``: ``[message, exchange, routing_key]`` as JSON).

    Parsed once per reply object: a proc needs it twice per cycle (for its follow-up commands and its reading), and
    procs that share one reply (a pipeline sends identical commands once) share the parse too.
    """
    global _UNACKED_MEMO
    memo = _UNACKED_MEMO
    if memo[0] is values:
        return memo[1]
    parsed = [_unacked_entry(value) for value in values or ()]
    entries = tuple(entry for entry in parsed if entry is not None)
    result = UnackedHash(entries, len(parsed) - len(entries))
    _UNACKED_MEMO = (values, result)
    return result


def _unacked_entry(value: Any) -> Unacked | None:
    """One hash value as kombu writes it, or None when it is not. An unreadable ETA is no reason to skip the entry:
    the worker holds the message all the same (it counts as reserved)."""
    try:
        message, exchange, routing_key = json.loads(value)
    except (ValueError, TypeError, RecursionError):  # not JSON, not UTF-8, not a list of three, too deep
        return None
    if not isinstance(message, dict) or not isinstance(exchange, str | None) or not isinstance(routing_key, str | None):
        return None
    headers = message.get("headers") or {}
    if not isinstance(headers, dict):
        return None
    eta, task_id = headers.get("eta"), headers.get("id")
    task_id = task_id if isinstance(task_id, str) else None
    return Unacked(exchange or "", routing_key or "", parse_utc(eta) if eta else None, task_id)


@dataclass(frozen=True)
class BindingRow:
    """One binding kombu keeps in Redis: a topic binding has a regex ``pattern``, a direct one matches ``key``."""

    key: str
    pattern: re.Pattern[str] | None
    queue: str


@dataclass(frozen=True)
class BindingTable:
    """kombu's ``_kombu.binding.<exchange>`` set: its well-formed rows, and how many members were skipped."""

    rows: tuple[BindingRow, ...] = ()
    malformed: int = 0

    def route(self, routing_key: str, fanout: bool) -> set[str]:
        """The queues kombu delivered ``routing_key`` to, by its own lookup rules (kombu's Redis keeps no exchange
        type: ``fanout`` comes from the app's declarations)."""
        if fanout:
            return {row.queue for row in self.rows}
        return {
            row.queue
            for row in self.rows
            if (row.pattern.match(routing_key) if row.pattern else row.key == routing_key)
        }


def binding_table(members: Any, sep: str) -> BindingTable:
    """The set's members (``SMEMBERS``: ``<routing_key><sep><pattern><sep><queue>``) as a table. A set of the wrong
    type (Redis' error reply) is raised."""
    if isinstance(members, Exception):
        raise members
    parsed = [_binding_row(member, sep) for member in members or ()]
    rows = tuple(row for row in parsed if row is not None)
    return BindingTable(rows, len(parsed) - len(rows))


def _binding_row(member: Any, sep: str) -> BindingRow | None:
    """One member as kombu writes it, or None when it is not (wrong number of fields, a pattern that is no regex)."""
    parts = (as_text(member) or "").split(sep)
    if len(parts) != 3:
        return None
    key, pattern, queue = parts
    try:
        return BindingRow(key, re.compile(pattern) if pattern else None, queue)  # re caches compiled patterns
    except (re.error, OverflowError, RecursionError):  # no regex, or one Python refuses (too large, too deep)
        return None


def message_stamp(head: Any) -> float | None:
    """The publish stamp of a waiting message (a list's ``LINDEX -1``); None when it has none."""
    raw = as_text(head)
    if not raw:
        return None
    try:
        message = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, or nested too deep to parse
        return None
    return enqueued_at(message) if isinstance(message, dict) else None


#: KEYS[1]: a kombu list. ``{length}`` when it is empty, else ``{length, stamp}``: the stamp of its oldest message
#: (index -1) as :func:`message_stamp` reads it, as text (exact: the number as written, or 17 digits), so that no
#: message crosses the wire; false for a message without one. The header is found by its name in the text when it
#: occurs once, followed by a number (kombu writes it in ``headers``; about 1 µs); otherwise the message is decoded
#: (cjson, tens of µs) and read as :func:`message_stamp` does. A message naming neither the header nor ``timestamp``
#: is not decoded at all.
_LIST_READ = f"""
local length = redis.call('LLEN', KEYS[1])
if length == 0 then return {{0}} end
local raw = redis.call('LINDEX', KEYS[1], -1)
if not raw then return {{length, false}} end
local name = '"{HEADER}"'
local at = string.find(raw, name, 1, true)
if at and not string.find(raw, name, at + 1, true) then
  local number = string.match(raw, '^%s*:%s*(-?%d+%.?%d*[eE]?[-+]?%d*)%s*[,}}]', at + #name)
  if number then return {{length, number}} end
end
if not at and not string.find(raw, '"timestamp"', 1, true) then return {{length, false}} end
local ok, message = pcall(cjson.decode, raw)
if ok and type(message) == 'table' then
  for _, field in ipairs({{{{'headers', '{HEADER}'}}, {{'properties', 'timestamp'}}}}) do
    local part = message[field[1]]
    local value = type(part) == 'table' and part[field[2]]
    if type(value) == 'number' then return {{length, string.format('%.17g', value)}} end
  end
end
return {{length, false}}
"""

#: A JSON number (what the script's text match lets through may be none: then the message is not JSON either).
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?|-?(?:nan|inf)")


def _list_reply(reply: Any) -> tuple[int, float | None]:
    text = as_text(reply[1]) if len(reply) > 1 else None
    return int(reply[0]), float(text) if text is not None and _JSON_NUMBER.fullmatch(text) else None


#: A list's length and its oldest message's stamp, read on the server (on the pipeline path: ``LLEN`` and
#: ``LINDEX -1``, the message parsed here): ``(length, stamp or None)``.
LIST_READ = read_function(
    "celery_list",
    _LIST_READ,
    cost=4,
    parse=_list_reply,
    fallback=lambda key: [("LLEN", key), ("LINDEX", key, -1)],
    finish=lambda replies: (int(replies[0]), message_stamp(replies[1]) if replies[0] else None),
)
