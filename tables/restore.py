"""Writes one fetch of changelog records into a table partition for the bulk restore
(app/faust_ext/recovery.py): one RocksDB write batch, then the persisted offset that covers it."""

from __future__ import annotations

from typing import Any

import rocksdict

from tables.store import StateTable


def write_fetch(table: StateTable, partition: int, records: list[Any]) -> None:
    """``records`` (with ``key``, ``value``, ``offset``; in offset order) of ``partition`` as one
    write batch, then their last offset as persisted: a crash in between only replays them."""
    batch = rocksdict.WriteBatch(raw_mode=True)
    for record in records:
        if record.value is None:
            batch.delete(record.key)
        else:
            batch.put(record.key, record.value)
    table.db(partition).write(batch)
    table.persist(partition, records[-1].offset)
