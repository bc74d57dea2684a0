"""Lookup tables: one changelog-backed RocksDB table per `lookups:` entry, keyed by the UTF-8 key.

Values are the lookup's typed fields as orjson bytes. The tables are co-partitioned with the streams
(same key, same partition count), so a stream event finds its lookup row in local state.
"""

from __future__ import annotations

from typing import Any

import orjson

from app.main import app, pipeline, settings
from tables.store import raw_table

LOOKUP_TABLES: dict[str, Any] = {
    name: raw_table(
        app, f"lookup-{name}", settings.partitions, f"Lookup {name!r} fed by topic {spec.topic!r}"
    )
    for name, spec in pipeline.lookups.items()
}


def lookup_row(name: str, key: str) -> dict[str, Any] | None:
    """The current row of lookup ``name`` for ``key``, or None when absent (never seen or deleted)."""
    raw = LOOKUP_TABLES[name].get(key.encode("utf-8"))
    return orjson.loads(raw) if raw is not None else None


def apply_lookup(name: str, key: str, fields: dict[str, Any] | None) -> str:
    """Upsert (fields) or delete (None) one row; returns the op for the metric label."""
    table = LOOKUP_TABLES[name]
    raw_key = key.encode("utf-8")
    if fields is None:
        if raw_key in table:
            del table[raw_key]
        return "delete"
    table[raw_key] = orjson.dumps(fields)
    return "upsert"
