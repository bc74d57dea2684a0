"""Lookup tables: one changelog-backed RocksDB table per `lookups:` entry, keyed by the UTF-8 key.

Values are the lookup's typed fields as orjson bytes. The tables are co-partitioned with the streams
(same key, same partition count), so a stream event finds its lookup row in local state.
"""

from __future__ import annotations

from typing import Any

import orjson

from app.runtime import app, pipeline, settings
from tables.store import StateWriter, raw_table

LOOKUP_TABLES: dict[str, Any] = {
    name: raw_table(
        app,
        f"lookup-{name}",
        settings.partitions,
        f"Lookup {name!r} fed by topic {spec.topic!r}",
        settings.rocksdb_memory_mb,
    )
    for name, spec in pipeline.lookups.items()
}


def apply_lookup(
    writer: StateWriter, name: str, partition: int, key: bytes, fields: dict[str, Any] | None
) -> str:
    """Upsert (fields) or delete (None) one row on its home ``partition``; returns the op for the
    metric label."""
    value = orjson.dumps(fields) if fields is not None else None
    writer.write(LOOKUP_TABLES[name], partition, key, value)
    return "upsert" if fields is not None else "delete"
