"""Queue depth on RabbitMQ, for the Celery and Dramatiq procs (and, for Celery, any other kombu transport that is not
Redis).

Two ways, both read-only (never ``basic_get`` + requeue, which marks the message redelivered and reorders it):

- :func:`declare_counts`: a passive ``queue_declare`` per queue on one channel: ``message_count`` is the number of
  *ready* messages (tasks prefetched by workers or held with an ETA are not in it), ``consumer_count`` the number of
  consumers. Any refusal closes the channel. Only the reply code 404 (``NOT_FOUND``: the queue was never declared,
  nothing was ever published to it) reads as an empty queue that was not found, after which a new channel is opened
  for the remaining queues; any other refusal (405 ``RESOURCE_LOCKED``: an exclusive queue of another connection, 403
  ``ACCESS_REFUSED``, 406 ``PRECONDITION_FAILED``...) fails the read. Works on every kombu transport (for virtual
  transports ``message_count`` is their size).
- :func:`management_counts`: one HTTP request to the management API for every queue of the vhost: ready,
  unacknowledged (prefetched, ETA-held, and running with ``task_acks_late``) and the head message's timestamp. The
  API's figures lag the broker by about 5 seconds.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.error import HTTPError
from urllib.parse import quote, unquote, urlsplit, urlunsplit
from urllib.request import Request, urlopen

from ..redaction import scrub


@dataclass(frozen=True)
class QueueCounts:
    """One queue as a broker reports it."""

    ready: int
    unacked: int | None = None  # None: this source cannot see unacknowledged messages
    consumers: int = 0
    head_timestamp: float | None = None  # the oldest ready message's AMQP `timestamp`, when known
    found: bool | None = None  # whether the broker knows the queue (None: cannot tell)


def declare_counts(
    connection: Any, queues: Iterable[str], arguments: Mapping[str, Mapping[str, Any] | None]
) -> dict[str, QueueCounts]:
    """Ready messages and consumers per queue, by passive declaration on one channel (a new one after a 404). A refusal
    other than 404 is raised: the queue exists, and its count is unknown."""
    counts: dict[str, QueueCounts] = {}
    channel = None
    try:
        for queue in queues:
            if channel is None:
                channel = connection.channel()
            try:
                ok = channel.queue_declare(queue=queue, passive=True, arguments=arguments.get(queue))
            except connection.channel_errors as exc:
                if reply_code(exc) != 404:
                    raise
                counts[queue] = QueueCounts(ready=0, found=False)  # never declared: nothing was ever published to it
                _close_quietly(channel)  # the broker closed it; release it on our side too
                channel = None
                continue
            counts[queue] = QueueCounts(ready=int(ok.message_count), consumers=int(ok.consumer_count), found=True)
    finally:
        if channel is not None:
            _close_quietly(channel)
    return counts


def management_counts(management_url: str, vhost: str, timeout: float) -> dict[str, QueueCounts | None]:
    """Every queue of ``vhost`` from ``GET /api/queues/<vhost>?columns=...`` (credentials from the URL).

    A queue the API lists without message counts maps to None: its counts are unknown, not 0 (the node has not yet
    collected statistics for a queue declared a moment ago, or never does: ``disable_metrics_collector``).
    """
    parts = urlsplit(management_url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    columns = "name,messages_ready,messages_unacknowledged,head_message_timestamp,consumers"
    request = Request(f"{base}/api/queues/{quote(vhost, safe='')}?columns={columns}")
    if parts.username is not None:
        token = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(token).decode())
    try:
        with urlopen(request, timeout=timeout) as response:
            rows = json.load(response)
    except Exception as exc:  # HTTPError, URLError, timeouts, bad JSON: name the API, never the password
        raise ConnectionError(scrub(f"RabbitMQ management API {base}: {exc}{_error_reason(exc)}")) from None
    out: dict[str, QueueCounts | None] = {}
    for row in rows:
        ready, unacked = row.get("messages_ready"), row.get("messages_unacknowledged")
        if not _is_count(ready) or not _is_count(unacked):
            out[row["name"]] = None
            continue
        stamp = row.get("head_message_timestamp")
        out[row["name"]] = QueueCounts(
            ready=ready,
            unacked=unacked,
            consumers=int(row.get("consumers") or 0),
            head_timestamp=float(stamp) if isinstance(stamp, int | float) else None,
            found=True,
        )
    return out


#: How much of an error answer's body is read for its ``reason``, and how much of the reason is shown.
_ERROR_BODY = 4096
_REASON_CHARS = 200


def _error_reason(exc: BaseException) -> str:
    """`` (reason: ...)`` from an HTTP error answer's JSON body (``{"error": ..., "reason": ...}``), which tells a
    wrong password from a user without access to the vhost (both 401); empty when there is none. Scrubbed by the
    caller; never raises."""
    if not isinstance(exc, HTTPError):
        return ""
    try:
        reason = json.loads(exc.read(_ERROR_BODY)).get("reason")
    except Exception:  # no body, not JSON, not an object, a broken connection
        return ""
    if not isinstance(reason, str) or not reason.strip():
        return ""
    return f" (reason: {' '.join(reason.split())[:_REASON_CHARS]})"


def management_queues(management_url: str, vhost: str, timeout: float) -> set[str]:
    """The queues of ``vhost`` the management API lists (queue discovery), RabbitMQ's own ``amq.`` queues left
    out."""
    return {name for name in management_counts(management_url, vhost, timeout) if not name.startswith("amq.")}


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


#: Why a proc on RabbitMQ without ``management_url`` cannot discover its queues (see ``Proc.discovery_problem``).
NEEDS_MANAGEMENT = "discovery on RabbitMQ needs `management_url` (AMQP cannot list queues): set it, or name the queues"


def management_url_problem(url: Any) -> str | None:
    """What keeps ``url`` from being a management API address, in words that never quote it (a password read as
    the port would be in Python's own message); None when it is fine."""
    if not isinstance(url, str):
        return f"must be an http(s) URL string, got {type(url).__name__}"
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return "is not a valid URL"
    try:
        _ = parts.port  # parsed lazily
    except ValueError:
        return "must have a numeric port from 0 to 65535"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    return None


def reply_code(exc: BaseException) -> int | None:
    """The AMQP reply code of a channel error (py-amqp's ``reply_code``; kombu's virtual transports give it as a
    string, ``'404'``), never guessed from the text: the text quotes the queue name, which may say anything."""
    for attribute in ("reply_code", "code"):
        code = getattr(exc, attribute, None)
        if isinstance(code, str) and code.strip().isdigit():
            code = int(code)
        if isinstance(code, int) and not isinstance(code, bool) and code:
            return code
    return None


def _close_quietly(channel: Any) -> None:
    try:
        channel.close()
    except Exception:  # already closed by the broker
        pass
