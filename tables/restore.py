"""Applying changelog records to a table partition (the bulk restore of app/faust_ext/recovery.py,
and Faust's own recovery and standby replicas through app/faust_ext/tables.py ``ChangelogStore``).

A feature table's records say which events they hold (docs/state-format.md): the head its processed
offsets, a bucket its applied offsets, a roll-up the newest bucket merged into it. Every writer of a
key's record starts from the version before it and only adds events, so each record written in turn
holds every offset of the one before, at least as high. A record that does not (it holds fewer or
other events) was written late by a worker that had lost the partition (a zombie, docs/reliability.md),
and applying it would roll the key back: it is skipped. Records without offsets are applied in order.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
import rocksdict

from tables.state_format import THROUGH
from tables.store import StateTable

FEATURE_TABLE_PREFIX = "features-"  # tables/registry.py feature_table_name


def keeps_versions(table_name: str) -> bool:
    """Whether ``table_name``'s records carry the offsets they hold (a feature group's table)."""
    return table_name.startswith(FEATURE_TABLE_PREFIX)


def _marks(record_key: bytes, value: bytes) -> Any:
    """What ``value`` holds, to compare with another version of ``record_key``: a dict of offsets
    (head, bucket) or the newest merged bucket (roll-up); None when it cannot tell (latest wins)."""
    cut = record_key.rfind(b"\x00")
    if cut <= 0:  # not an entity's record (a replay's or backfill's job record)
        return None
    suffix = record_key[cut + 1 :]
    try:
        if suffix == b"":  # the head
            return orjson.loads(value)["o"]
        if suffix == b"L":  # the lifetime roll-up
            return orjson.loads(value)[THROUGH]
        if value.endswith(b"}]"):  # a bucket: its offsets are its last element, a flat object
            return orjson.loads(value[value.rindex(b"{") : -1])
        record = orjson.loads(value)
        return record["o"] if isinstance(record, dict) else record[2]  # the earlier format: an object
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError):
        return None


def supersedes(incoming: Any, stored: Any) -> bool:
    """Whether a record with marks ``incoming`` may follow one with marks ``stored``: it holds every
    offset of ``stored``, at least as high (a roll-up: a newest merged bucket at least as new). Marks
    that cannot be told (None) never block a record."""
    if incoming is None or stored is None or incoming == stored:
        return True
    if isinstance(incoming, dict) and isinstance(stored, dict):
        return all(incoming.get(name, -1) >= offset for name, offset in stored.items())
    if isinstance(incoming, int) and isinstance(stored, int):
        return incoming >= stored
    return True


def newest_versions(
    db: rocksdict.Rdict, records: Iterable[tuple[bytes, bytes | None]]
) -> tuple[dict[bytes, bytes | None], int]:
    """The writes that apply ``records`` (key, value or None: delete; in offset order) to feature
    table partition ``db``: per key its last version that supersedes the one before it, and how many
    records were skipped (not superseding: written late by a worker that had lost the partition)."""
    changes: dict[bytes, bytes | None] = {}
    marks: dict[bytes, Any] = {}  # the marks of changes[key], once known
    skipped = 0
    for key, value in records:
        if value is None:
            changes[key] = None
            marks[key] = None
            continue
        before: bytes | None = changes[key] if key in changes else db.get(key)
        if before is None:
            changes[key] = value
            marks.pop(key, None)
            continue
        new = _marks(key, value)
        old = marks[key] if key in marks else _marks(key, before)
        if not supersedes(new, old):
            skipped += 1
            marks[key] = old  # the marks of the version kept (pending or stored)
            continue
        changes[key] = value
        marks[key] = new
    return changes, skipped


def write_changes(db: rocksdict.Rdict, changes: dict[bytes, bytes | None]) -> None:
    """``changes`` (value or None: delete) as one RocksDB write batch."""
    batch = rocksdict.WriteBatch(raw_mode=True)
    for key, value in changes.items():
        if value is None:
            batch.delete(key)
        else:
            batch.put(key, value)
    db.write(batch)


def write_fetch(table: StateTable, partition: int, records: list[Any]) -> int:
    """``records`` (with ``key``, ``value``, ``offset``; in offset order) of ``partition`` as one
    write batch, then their last offset as persisted: a crash in between only replays them. The
    number of records skipped as not superseding the stored version (a feature table's)."""
    db = table.db(partition)
    rows = ((record.key, record.value) for record in records)
    if keeps_versions(table.name):
        changes, skipped = newest_versions(db, rows)
    else:
        changes, skipped = dict(rows), 0
    write_changes(db, changes)
    table.persist(partition, records[-1].offset)
    return skipped
