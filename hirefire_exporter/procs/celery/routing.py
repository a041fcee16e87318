"""Which queues a Celery message reached, from the exchange and routing key it was published with.

A task held by a worker (in kombu's ``unacked`` hash, or in an inspect reply) names only its exchange and routing key;
these AMQP rules, applied to the bindings the app or its workers declare, turn that back into queue names.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any


@dataclass(frozen=True)
class Binding:
    """A queue bound to an exchange with a binding key (as the app or a worker declares it)."""

    exchange: str
    type: str
    key: str
    queue: str


def declared_bindings(conf: Any) -> list[Binding]:
    """The bindings of the queues a Celery app declares in ``task_queues``."""
    return queue_bindings(conf.task_queues or ())


def queue_bindings(queues: Iterable[Any]) -> list[Binding]:
    """The bindings of kombu ``Queue`` objects."""
    out = []
    for queue in queues:
        exchange = queue.exchange
        name, kind = (exchange.name or "", exchange.type or "direct") if exchange is not None else ("", "direct")
        out.append(Binding(name, kind, queue.routing_key or queue.name, queue.name))
    return out


def route(bindings: Iterable[Binding], exchange: str, routing_key: str) -> set[str]:
    """The queues a message published to ``exchange`` with ``routing_key`` reaches (AMQP routing rules)."""
    if not exchange:
        return {routing_key}  # the default exchange routes by queue name
    out = set()
    for b in bindings:
        if b.exchange != exchange:
            continue
        if b.type == "fanout" or (b.type == "topic" and topic_match(b.key, routing_key)) or b.key == routing_key:
            out.add(b.queue)
    return out


@lru_cache(maxsize=1024)
def topic_match(binding_key: str, routing_key: str) -> bool:
    """AMQP topic matching: ``*`` is exactly one word, ``#`` zero or more (``mail.#`` matches ``mail``)."""

    def match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
        if not pattern:
            return not words
        if pattern[0] == "#":
            return match(pattern[1:], words) or (bool(words) and match(pattern, words[1:]))
        return bool(words) and pattern[0] in ("*", words[0]) and match(pattern[1:], words[1:])

    return match(tuple(binding_key.split(".")), tuple(routing_key.split(".")))
