"""Snapshots as versioned JSON, for the shared store: ``{"schema": 1, "snapshot": {...}}``.

The schema number comes first, so that two releases of the exporter in one fleet refuse each other's format rather
than misread it. Decoding is strict: every record must hold exactly the fields this release writes, each of the
type it expects, or :func:`snapshot_from_json` raises ``ValueError``. Counts keep their type (an ``int`` stays an
``int``, a ``float`` a ``float``), ``None`` latencies stay ``None`` and ``counted`` comes back a ``frozenset``.

Every serialized field of :class:`Snapshot`, :class:`ProcStatus`, :class:`Reading` and :class:`QueueReading` is one
line of the tables at the end of this module; a field that is only meaningful in the process holding the snapshot
(``Snapshot.shared``) is listed as local. A dataclass field in neither place fails the import, so that a field added
to a record cannot be dropped from the shared snapshot by accident. Change :data:`SCHEMA` whenever a table changes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from .collection import ProcStatus, Snapshot
from .procs.base import QueueReading, Reading, Workers

#: The format's version: a release reads only its own.
SCHEMA = 3


class _Invalid(ValueError):
    """A value that is not what the format says, and where it is (built on the way out: the happy path formats
    no string)."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.message, self.path = message, path

    def within(self, segment: str) -> _Invalid:
        return _Invalid(self.message, segment + self.path)

    def __str__(self) -> str:
        return f"snapshot{self.path}: {self.message}"


class _Codec:
    """How one value is written to JSON and read back. ``accept``, for scalars: the check alone, which containers
    run over all their items at once."""

    def __init__(
        self, encode: Callable[[Any], Any], decode: Callable[[Any], Any], accept: Callable[[Any], bool] | None = None
    ) -> None:
        self.encode = encode
        self.decode = decode
        self.accept = accept


def _scalar(accept: Callable[[Any], bool], expected: str) -> _Codec:
    def decode(data: Any) -> Any:
        if not accept(data):
            raise _Invalid(f"expected {expected}, got {type(data).__name__}")
        return data

    return _Codec(lambda value: value, decode, accept)


def _is_number(data: Any) -> bool:
    kind = type(data)
    return kind is int or (kind is float and math.isfinite(data))


STRING = _scalar(lambda data: type(data) is str, "a string")
BOOLEAN = _scalar(lambda data: type(data) is bool, "true or false")
#: An int or a float, kept as it is (JSON tells 3 from 3.0); finite (``1e999`` parses as infinity).
NUMBER = _scalar(_is_number, "a finite number")


def optional(codec: _Codec) -> _Codec:
    return _Codec(
        lambda value: None if value is None else codec.encode(value),
        lambda data: None if data is None else codec.decode(data),
    )


def _items(codec: _Codec, data: Any, kind: type, segment: Callable[[Any], str]) -> Any:
    """``data`` (a list or a dict) with every item decoded; the failing item is found again on the slow path."""
    if type(data) is not kind:
        raise _Invalid(f"expected {'a list' if kind is list else 'an object'}, got {type(data).__name__}")
    values = data if kind is list else data.values()
    accept = codec.accept
    if accept is not None and all(map(accept, values)):
        return data
    try:
        if kind is list:
            return [codec.decode(item) for item in data]
        return {key: codec.decode(value) for key, value in data.items()}
    except _Invalid:
        for key, value in enumerate(data) if kind is list else data.items():
            try:
                codec.decode(value)
            except _Invalid as exc:
                raise exc.within(segment(key)) from None
        raise


def tuple_of(codec: _Codec) -> _Codec:
    return _Codec(
        lambda value: [codec.encode(item) for item in value],
        lambda data: tuple(_items(codec, data, list, lambda i: f"[{i}]")),
    )


def frozenset_of(codec: _Codec) -> _Codec:
    """Written sorted, so that one snapshot always encodes to the same bytes; read back as one frozenset per
    distinct value (10,000 queues with the same counted states hold one set, as the collecting process did)."""
    interned: dict[tuple[Any, ...], frozenset[Any]] = {}

    def decode(data: Any) -> frozenset[Any]:
        items = tuple(_items(codec, data, list, lambda _: "[]"))
        found = interned.get(items)
        if found is None:
            found = frozenset(items)
            if len(interned) < 256:
                interned[items] = found
        return found

    return _Codec(lambda value: sorted(codec.encode(item) for item in value), decode)


def mapping_of(codec: _Codec) -> _Codec:
    """A mapping with string keys, in its own order (a JSON object keeps it)."""

    def encode(value: Mapping[Any, Any]) -> dict[str, Any]:
        if not all(type(key) is str for key in value):
            raise ValueError("snapshot: a mapping key is not a string")
        return {key: codec.encode(item) for key, item in value.items()}

    return _Codec(encode, lambda data: _items(codec, data, dict, lambda key: f"[{key!r}]"))


def record(cls: type, fields: Mapping[str, _Codec], local: frozenset[str] = frozenset()) -> _Codec:
    """A frozen dataclass as a JSON object with exactly ``fields``. ``local`` fields are not written and take their
    default when read. Raises ``TypeError`` at import when the two do not cover the dataclass's fields."""
    declared = {field.name for field in dataclasses.fields(cls)}
    if declared != set(fields) | local or set(fields) & local:
        missing = sorted(declared - set(fields) - local)
        raise TypeError(f"snapshot_codec: the table for {cls.__name__} does not match its fields (missing {missing})")
    names = frozenset(fields)
    codecs = tuple(fields.items())

    def encode(value: Any) -> dict[str, Any]:
        return {name: codec.encode(getattr(value, name)) for name, codec in codecs}

    def decode(data: Any) -> Any:
        if type(data) is not dict:
            raise _Invalid(f"expected a {cls.__name__} object, got {type(data).__name__}")
        if data.keys() != names:
            unknown, missing = sorted(data.keys() - names), sorted(names - data.keys())
            raise _Invalid(f"{cls.__name__} fields differ (unknown {unknown}, missing {missing})")
        values = {}
        for name, codec in codecs:
            try:
                values[name] = codec.decode(data[name])
            except _Invalid as exc:
                raise exc.within(f".{name}") from None
        return cls(**values)

    return _Codec(encode, decode)


# One line per field. Change SCHEMA with any change here.
QUEUE_READING = record(
    QueueReading,
    {
        "name": STRING,
        "jobs": mapping_of(NUMBER),
        "counted": frozenset_of(STRING),
        "latency": optional(NUMBER),
        "found": optional(BOOLEAN),
    },
)
WORKERS = record(
    Workers,
    {
        "online": NUMBER,
        "slots": NUMBER,
        "busy_slots": NUMBER,
        "busy": NUMBER,
    },
)
READING = record(
    Reading,
    {
        "quantity": NUMBER,
        "queues": tuple_of(QUEUE_READING),
        "latency": optional(NUMBER),
        "workers": optional(WORKERS),
    },
)
PROC_STATUS = record(
    ProcStatus,
    {
        "name": STRING,
        "metric": STRING,
        "reading": optional(READING),
        "read_at": optional(NUMBER),
        "up": BOOLEAN,
        "error": optional(STRING),
        "duration": NUMBER,
    },
)
SNAPSHOT = record(
    Snapshot,
    {
        "collected_at": NUMBER,
        "procs": tuple_of(PROC_STATUS),
        "stale_after": NUMBER,
    },
    local=frozenset({"shared"}),
)


def snapshot_to_json(snapshot: Snapshot) -> bytes:
    """The snapshot as compact JSON, schema number first. Raises ``ValueError`` for a NaN or infinite number
    (JSON has none: another reader would choke on it)."""
    document = {"schema": SCHEMA, "snapshot": SNAPSHOT.encode(snapshot)}
    return json.dumps(document, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()


def _no_constants(name: str) -> Any:
    raise ValueError(f"not a JSON number: {name}")


def snapshot_from_json(data: bytes | str) -> Snapshot:
    """The snapshot :func:`snapshot_to_json` wrote. Raises ``ValueError`` for anything else: malformed JSON,
    another schema, a missing or unknown field, a value of the wrong type."""
    try:
        document = json.loads(data, parse_constant=_no_constants)
    except RecursionError:  # nested deeper than the parser's stack: garbage, not a snapshot
        raise ValueError("not a snapshot: nested too deeply") from None
    except (TypeError, ValueError) as exc:  # ValueError covers JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"not a snapshot: {exc}") from None
    schema = document.get("schema") if isinstance(document, dict) else None
    if type(schema) is not int or schema != SCHEMA:
        raise ValueError(f"snapshot schema {schema!r}, this release reads schema {SCHEMA}")
    if document.keys() != {"schema", "snapshot"}:
        raise ValueError(f"snapshot document fields differ: {sorted(document)}")
    snapshot: Snapshot = SNAPSHOT.decode(document["snapshot"])
    return snapshot
