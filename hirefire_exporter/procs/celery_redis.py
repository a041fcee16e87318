"""Reading kombu's Redis structures: the ``unacked`` hash, binding tables, and the messages waiting in lists."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..celery_latency import enqueued_at
from .redis_proc import age_since, as_text, parse_utc

#: The last ``unacked`` reply parsed and its entries (holding the reply keeps its identity unique).
_UNACKED_MEMO: tuple[Any, list[Unacked]] = (None, [])


@dataclass(frozen=True)
class Unacked:
    """One entry of kombu's ``unacked`` hash: a message a worker holds."""

    exchange: str
    routing_key: str
    eta: float | None


def parse_unacked(values: Any) -> list[Unacked]:
    """The entries of kombu's ``unacked`` hash (``[message, exchange, routing_key]`` as JSON); garbage is skipped.

    Parsed once per reply object: a proc needs it twice per cycle (for its follow-up commands and its reading), and
    procs that share one reply (a pipeline sending identical commands once) share the parse too.
    """
    global _UNACKED_MEMO
    memo = _UNACKED_MEMO
    if memo[0] is values:
        return memo[1]
    out = []
    for value in values or ():
        try:
            message, exchange, routing_key = json.loads(value)
            eta = (message.get("headers") or {}).get("eta")
        except (ValueError, TypeError, AttributeError):
            continue
        out.append(Unacked(exchange or "", routing_key or "", parse_utc(eta) if eta else None))
    _UNACKED_MEMO = (values, out)
    return out


def exchanges(entries: Iterable[Unacked]) -> list[str]:
    """The named exchanges the entries were published to (the default exchange ``""`` routes by queue name)."""
    return sorted({e.exchange for e in entries if e.exchange})


def binding_table(members: Any, sep: str) -> list[tuple[str, str, str]]:
    """kombu's ``_kombu.binding.<exchange>`` set members as ``(routing_key, pattern, queue)`` rows."""
    rows = []
    for member in members or ():
        parts = text(member).split(sep)
        if len(parts) == 3:
            rows.append((parts[0], parts[1], parts[2]))
    return rows


def text(value: Any) -> str:
    """A reply as text ("" for none)."""
    return as_text(value) or ""


def head_age(head: Any, now: float) -> float | None:
    """The age of a waiting message (a list's ``LINDEX -1``) from its publish stamp; None when it has none."""
    raw = as_text(head)
    if not raw:
        return None
    try:
        message = json.loads(raw)
    except ValueError:
        return None
    stamp = enqueued_at(message) if isinstance(message, dict) else None
    return None if stamp is None else age_since(stamp, now)
