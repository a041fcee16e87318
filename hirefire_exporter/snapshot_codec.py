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
from .procs.base import QueueReading, Reading

#: The format's version: a release reads only its own.
SCHEMA = 1


class _Codec:
    """How one value is written to JSON and read back (``where`` names the value in errors)."""

    def __init__(self, encode: Callable[[Any], Any], decode: Callable[[Any, str], Any]) -> None:
        self.encode = encode
        self.decode = decode


def _checked(accept: Callable[[Any], bool], expected: str) -> _Codec:
    def decode(data: Any, where: str) -> Any:
        if not accept(data):
            raise ValueError(f"{where}: expected {expected}, got {type(data).__name__}")
        return data

    return _Codec(lambda value: value, decode)


STRING = _checked(lambda data: isinstance(data, str), "a string")
BOOLEAN = _checked(lambda data: isinstance(data, bool), "true or false")
#: An int or a float, kept as it is (JSON tells 3 from 3.0); finite (``1e999`` parses as infinity).
NUMBER = _checked(
    lambda data: isinstance(data, int | float) and not isinstance(data, bool) and math.isfinite(data), "a finite number"
)


def optional(codec: _Codec) -> _Codec:
    return _Codec(
        lambda value: None if value is None else codec.encode(value),
        lambda data, where: None if data is None else codec.decode(data, where),
    )


def _list(data: Any, where: str) -> list[Any]:
    if not isinstance(data, list):
        raise ValueError(f"{where}: expected a list, got {type(data).__name__}")
    return data


def tuple_of(codec: _Codec) -> _Codec:
    return _Codec(
        lambda value: [codec.encode(item) for item in value],
        lambda data, where: tuple(codec.decode(item, f"{where}[{i}]") for i, item in enumerate(_list(data, where))),
    )


def frozenset_of(codec: _Codec) -> _Codec:
    """Written sorted, so that one snapshot always encodes to the same bytes."""
    return _Codec(
        lambda value: sorted(codec.encode(item) for item in value),
        lambda data, where: frozenset(codec.decode(item, f"{where}[]") for item in _list(data, where)),
    )


def mapping_of(codec: _Codec) -> _Codec:
    """A mapping with string keys, in its own order (a JSON object keeps it)."""

    def decode(data: Any, where: str) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
        return {key: codec.decode(value, f"{where}[{key!r}]") for key, value in data.items()}

    return _Codec(lambda value: {STRING.decode(k, "key"): codec.encode(v) for k, v in value.items()}, decode)


def record(cls: type, fields: Mapping[str, _Codec], local: frozenset[str] = frozenset()) -> _Codec:
    """A frozen dataclass as a JSON object with exactly ``fields``. ``local`` fields are not written and take their
    default when read. Raises ``TypeError`` at import when the two do not cover the dataclass's fields."""
    declared = {field.name for field in dataclasses.fields(cls)}
    if declared != set(fields) | local or set(fields) & local:
        missing = sorted(declared - set(fields) - local)
        raise TypeError(f"snapshot_codec: the table for {cls.__name__} does not match its fields (missing {missing})")
    names = frozenset(fields)

    def encode(value: Any) -> dict[str, Any]:
        return {name: codec.encode(getattr(value, name)) for name, codec in fields.items()}

    def decode(data: Any, where: str) -> Any:
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a {cls.__name__} object, got {type(data).__name__}")
        if data.keys() != names:
            unknown, missing = sorted(data.keys() - names), sorted(names - data.keys())
            raise ValueError(f"{where}: {cls.__name__} fields differ (unknown {unknown}, missing {missing})")
        return cls(**{name: codec.decode(data[name], f"{where}.{name}") for name, codec in fields.items()})

    return _Codec(encode, decode)


# One line per field. Change SCHEMA with any change here.
QUEUE_READING = record(
    QueueReading,
    {
        "name": STRING,
        "jobs": mapping_of(NUMBER),
        "counted": frozenset_of(STRING),
        "latency": optional(NUMBER),
    },
)
READING = record(
    Reading,
    {
        "quantity": NUMBER,
        "queues": tuple_of(QUEUE_READING),
        "latency": optional(NUMBER),
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
    snapshot: Snapshot = SNAPSHOT.decode(document["snapshot"], "snapshot")
    return snapshot
