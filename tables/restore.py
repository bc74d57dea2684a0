"""Writing a fetch of changelog records into a table's RocksDB, for the bulk restore.

Hydrant's tables are raw bytes in RocksDB, so a changelog record *is* the RocksDB write. The bulk
restore (app/kafka/changelog.py ``restore``, run by app/faust_ext/recovery.py ``HydrantRecovery``
ahead of Faust's own recovery) reads changelogs in large fetches and hands each partition's records
of one fetch to :func:`write_fetch`: one rocksdict ``WriteBatch``, then the partition's persisted
offset, exactly as Faust's ``apply_changelog_batch`` would. The records are written before the
offset that covers them, so a crash in between only makes the next recovery read some records again
(the same writes).

This module imports neither Faust nor aiokafka: ``table`` is a Faust table over the rocksdb store
(tables/store.py), records are anything with ``key``, ``value`` and ``offset`` (aiokafka's
``ConsumerRecord``), ``tp`` anything with ``partition``.
"""

from __future__ import annotations

from typing import Any

import rocksdict


def write_fetch(table: Any, tp: Any, records: list[Any]) -> None:
    """One fetch's records of a partition as one RocksDB write batch, then the persisted offset."""
    batch = rocksdict.WriteBatch(raw_mode=True)
    for record in records:
        if record.value is None:
            batch.delete(record.key)
        else:
            batch.put(record.key, record.value)
    table.data._db_for_partition(tp.partition).write(batch)
    table.data.set_persisted_offset(tp, records[-1].offset)
