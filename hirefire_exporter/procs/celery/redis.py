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
from ..redis_script import first_error, read_function

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
    """The publish stamp of a waiting message (a list's ``LINDEX -1``); None when it has none. The rule of
    :data:`_STAMP` on the server: the header written once in the message, as a JSON number (read where it is written,
    as kombu writes it, without decoding the message); else the header inside the message's ``headers``, else
    ``properties.timestamp``, a JSON number."""
    raw = as_text(head)
    if not raw:
        return None
    at = raw.find(_HEADER_NAME)
    if at >= 0 and raw.find(_HEADER_NAME, at + len(_HEADER_NAME)) < 0:
        written = _WRITTEN.match(raw, at + len(_HEADER_NAME))
        if written and _JSON_NUMBER.fullmatch(written.group(1)):
            return float(written.group(1))
    try:
        message = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError):  # not JSON, or nested too deep to parse
        return None
    return enqueued_at(message) if isinstance(message, dict) else None


_HEADER_NAME = f'"{HEADER}"'
#: What follows the header written once, as :data:`_STAMP`'s Lua pattern reads it (``%s`` is these six characters).
_WRITTEN = re.compile(r"[ \t\n\r\x0b\x0c]*:[ \t\n\r\x0b\x0c]*([-0-9.eE+]+)[ \t\n\r\x0b\x0c]*[,}]")
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")


def _no_constant(name: str) -> Any:
    """``NaN``, ``Infinity``: Python's json takes them, JSON does not (nor does :data:`_STAMP`)."""
    raise ValueError(f"not JSON: {name}")


#: The stamp of a kombu message (``raw``, a list's ``LINDEX -1``) by :func:`message_stamp`'s rule, as text (exact: as
#: written, or 17 digits), so that no message crosses the wire; false for a message without one. One rule on both
#: paths: the header written once, followed by ``:`` and a JSON number, is read where it is written (a kombu message,
#: without decoding it: about 2 µs, where cjson takes 2-14 µs); else the message is JSON (decoded by cjson), its
#: ``headers`` hold the header as a JSON number, else its ``properties`` hold ``timestamp`` as one. cjson takes numbers
#: JSON does not (``0x10``, ``+5``, ``01``, ``1.``, ``inf``, ``nan``, and the ``NaN``/``Infinity`` Python's json
#: takes): a message where either field's value is written so is no JSON, as Python's json (with
#: :func:`_no_constant`) reads it. A message naming neither field is not decoded at all.
_STAMP = f"""
local function json_number(t)
  local i = string.match(t, '^-?0()') or string.match(t, '^-?[1-9]%d*()')
  if not i then return false end
  i = string.match(t, '^%.%d+()', i) or i
  i = string.match(t, '^[eE][-+]?%d+()', i) or i
  return i == #t + 1
end
local words = {{['null'] = true, ['true'] = true, ['false'] = true, [''] = true}}
local function plain_values(raw, name)  -- every value written after the name is JSON's own (or not a scalar)
  local at = string.find(raw, name, 1, true)
  while at do
    local token = string.match(raw, '^%s*:%s*([%w%.%+%-]*)', at + #name)
    if token and not words[token] and not json_number(token) then return false end
    at = string.find(raw, name, at + #name, true)
  end
  return true
end
local fields = {{{{'headers', '{HEADER}', '"{HEADER}"'}}, {{'properties', 'timestamp', '"timestamp"'}}}}
local name, after = '"{HEADER}"', #'"{HEADER}"'
local function stamp_of(raw)
  local at = string.find(raw, name, 1, true)
  if at and not string.find(raw, name, at + after, true) then  -- written once: read where it is written
    local token = string.match(raw, '^%s*:%s*([-%d.eE+]+)%s*[,}}]', at + after)
    if token and (string.find(token, '^[1-9]%d*%.%d+$') or json_number(token)) then return token end  -- a stamp, first
  end
  local named = false
  for _, field in ipairs(fields) do
    if string.find(raw, field[3], 1, true) then
      if not plain_values(raw, field[3]) then return false end
      named = true
    end
  end
  if not named then return false end
  local ok, message = pcall(cjson.decode, raw)
  if not ok or type(message) ~= 'table' then return false end
  for _, field in ipairs(fields) do
    local part = message[field[1]]
    local value = type(part) == 'table' and part[field[2]]
    if type(value) == 'number' then return string.format('%.17g', value) end
  end
  return false
end
"""

#: One Celery queue on the server. KEYS[1]: its base list; ARGV: the queue's name, kombu's ``sep``, how many more
#: lists it has (its priority lists), those lists, then the binding tables that may name it. The reply is one line
#: of text: whether a binding table names the queue (``1``/``0``, asked only of a queue with no message waiting:
#: ``-`` otherwise; ``?`` when none does and one could not be read, a key of the wrong type), how many messages wait
#: over its lists, then for each non-empty list its oldest message's stamp (:data:`_STAMP`; ``?`` for a message
#: without one). A binding names the queue when it has kombu's three fields and
#: the queue is the third (its pattern is not compiled here).
QUEUE_READ = (
    _STAMP
    + """
local queue, sep, more = ARGV[1], ARGV[2], tonumber(ARGV[3])
local call = redis.call
local total, stamps = 0, {}
for i = 0, more do
  local list = i == 0 and KEYS[1] or ARGV[3 + i]
  local length = call('LLEN', list)
  if length > 0 then
    total = total + length
    local raw = call('LINDEX', list, -1)
    stamps[#stamps + 1] = raw and stamp_of(raw) or '?'
  end
end
local bound = '-'
if total == 0 then
  bound = '0'
  local tail, width = sep .. queue, #sep
  for t = 4 + more, #ARGV do
    local members = redis.pcall('SMEMBERS', ARGV[t])
    if members.err then -- a table of the wrong type: unknown, unless another one names the queue
      if bound == '0' then bound = '?' end
    else
      for _, member in ipairs(members) do
        if string.sub(member, -#tail) == tail then
          local a = string.find(member, sep, 1, true)
          local b = a and string.find(member, sep, a + width, true)
          if b and b == #member - #tail + 1 and not string.find(member, sep, b + width, true) then bound = '1' end
        end
      end
    end
  end
end
return bound .. ' ' .. text(total) .. (#stamps > 0 and ' ' .. table.concat(stamps, ' ') or '')
"""
)

#: A JSON number (what the script's text match lets through may be none: then the message is not JSON either).
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?|-?(?:nan|inf)")


@dataclass(frozen=True)
class QueueLists:
    """One queue's lists as read: how many messages wait over them, the stamp of each non-empty list's oldest message
    (``None`` where it has none), and whether a binding table names the queue (``None``: not asked, messages wait;
    or unknown, a table that could not be read and none that names it)."""

    waiting: int
    stamps: tuple[float | None, ...]
    bound: bool | None


@lru_cache(maxsize=65536)
def _stamp(text: str) -> float | None:
    """A stamp as the script sent it; remembered, as a list whose head has not moved sends the same one again."""
    return float(text) if _JSON_NUMBER.fullmatch(text) else None


def _parse_queue(reply: Any, *_command: Any) -> QueueLists:
    bound, waiting, *stamps = (as_text(reply) or "").split(" ")
    return QueueLists(int(waiting), tuple(_stamp(text) for text in stamps), None if bound in "-?" else bound == "1")


def _queue_commands(key: str, queue: str, sep: str, more: int, *keys: str) -> list[Any]:
    """The pipeline path: each list's length and oldest message, then the binding tables."""
    lists, tables = (key, *keys[:more]), keys[more:]
    return [c for name in lists for c in (("LLEN", name), ("LINDEX", name, -1))] + [("SMEMBERS", t) for t in tables]


def _finish_queue(replies: list[Any], key: str, queue: str, sep: str, more: int, *keys: str) -> Any:
    """The pipeline path's replies as :class:`QueueLists`: a failed list fails the queue, a failed binding table
    only whether the queue is bound (unknown, unless another table names it), as on the server."""
    lists, tables = replies[: 2 * (more + 1)], replies[2 * (more + 1) :]
    failed = first_error(lists)
    if failed is not None:
        return failed
    lengths, heads = [int(n) for n in lists[0::2]], lists[1::2]
    waiting = sum(lengths)
    bound = None
    if not waiting:  # the script's rule: kombu's three fields, the queue the third
        readable = [table for table in tables if not isinstance(table, Exception)]
        members = (as_text(member) or "" for table in readable for member in table)
        named = any(len(parts) == 3 and parts[2] == queue for parts in (member.split(sep) for member in members))
        bound = True if named else None if len(readable) < len(tables) else False
    return QueueLists(waiting, tuple(message_stamp(head) for n, head in zip(lengths, heads) if n), bound)


#: A queue's waiting messages, their oldest stamps and whether it is bound, read on the server (on the pipeline path:
#: ``LLEN`` and ``LINDEX -1`` of each list, its binding tables' members, the messages parsed here): a
#: :class:`QueueLists`.
QUEUE = read_function(
    "celery_queue",
    QUEUE_READ,
    cost=10,
    parse=_parse_queue,
    fallback=_queue_commands,
    finish=_finish_queue,
)
