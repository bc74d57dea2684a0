"""Decoding stream and lookup records into typed fields: pure functions, no I/O. A record that
cannot be used raises :class:`BadRecord` with a dead-letter reason (docs/product.md)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal, cast

import orjson

from app.config.spec import LookupSpec, StreamSpec
from app.errors import HydrantError

Reason = Literal["decode", "missing_key", "type", "expression", "late"]


class BadRecord(HydrantError):
    """A record that goes to the dead-letter topic; ``reason`` is its `hydrant-reason` header."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason: Reason = reason


_CHECKS: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,)}
_EXACT: dict[str, type] = {"str": str, "int": int, "float": float, "bool": bool}  # kept as they are


def _typed(name: str, value: Any, declared: str) -> Any:
    """The value if it has the declared type (int is a float; bool is no int); BadRecord otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) and declared != "bool":
        raise BadRecord("type", f"field {name!r}: expected {declared}, got bool")
    if not isinstance(value, _CHECKS[declared]):
        raise BadRecord("type", f"field {name!r}: expected {declared}, got {type(value).__name__}")
    return float(cast(float, value)) if declared == "float" else value


def event_time_ms(value: Any, field: str) -> int:
    """Epoch milliseconds from an int/float (epoch ms) or an ISO-8601 string (UTC when no zone)."""
    if isinstance(value, bool):
        raise BadRecord("type", f"time field {field!r}: expected epoch ms or ISO-8601, got bool")
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise BadRecord("type", f"time field {field!r}: {value[:40]!r} is not ISO-8601") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return int(parsed.timestamp() * 1000)
    raise BadRecord(
        "type", f"time field {field!r}: expected epoch ms or ISO-8601, got {type(value).__name__}"
    )


def _load_object(raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        raise BadRecord("decode", "empty value (null record)")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRecord("decode", f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRecord("decode", f"expected a JSON object, got {type(value).__name__}")
    return value


def _entity_key(value: Mapping[str, Any], field: str) -> str:
    key = value.get(field)
    if key is None or key == "":
        raise BadRecord("missing_key", f"key field {field!r} is missing or empty")
    if isinstance(key, bool) or not isinstance(key, str | int):
        raise BadRecord("type", f"key field {field!r}: expected a string, got {type(key).__name__}")
    return str(key)


def decode_event(raw: bytes | None, stream: StreamSpec, record_ts_ms: int) -> tuple[str, int, dict[str, Any]]:
    """(entity key, event time ms, typed declared fields) of one stream record; BadRecord otherwise."""
    value = _load_object(raw)
    key = _entity_key(value, stream.key)
    get = value.get
    fields = {  # _typed, skipped for a null or a value of exactly the declared type (the usual case)
        name: v if (v := get(name)) is None or type(v) is _EXACT[kind] else _typed(name, v, kind)
        for name, kind in stream.fields.items()
    }
    fields[stream.key] = key
    if stream.time is None:
        ts = record_ts_ms
    else:
        raw_ts = value.get(stream.time)
        if raw_ts is None:
            raise BadRecord("type", f"time field {stream.time!r} is missing")
        ts = event_time_ms(raw_ts, stream.time)
    return key, ts, fields


def decode_lookup(
    raw_key: bytes | None, raw: bytes | None, lookup: LookupSpec
) -> tuple[str, dict[str, Any] | None]:
    """(table key, typed fields) of a lookup record; fields None for a tombstone (delete)."""
    if raw is None:
        if not raw_key:
            raise BadRecord("missing_key", "tombstone without a Kafka key")
        return raw_key.decode("utf-8", errors="replace"), None
    value = _load_object(raw)
    if value.get(lookup.key) is None and raw_key:
        key = raw_key.decode("utf-8", errors="replace")
    else:
        key = _entity_key(value, lookup.key)
    return key, {name: _typed(name, value.get(name), kind) for name, kind in lookup.fields.items()}
