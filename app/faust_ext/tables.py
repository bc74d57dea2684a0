"""Hydrant's tables as Faust tables (faust-streaming 0.15.3): raw-bytes RocksDB tables sharing one
memory budget, seen by the engine through :class:`tables.store.StateTable`."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any

import rocksdict
from faust.stores.rocksdb import RocksDBOptions
from faust.stores.rocksdb import Store as RocksDBStore
from faust.types import TP, EventT

from app.metrics import STALE_CHANGELOG_RECORDS
from tables.restore import keeps_versions, newest_versions, write_changes
from tables.store import clear, unconfirmed

logger = logging.getLogger(__name__)


class FaustStateTable:
    """A Faust table as a :class:`tables.store.StateTable` (``faust``: the table itself)."""

    def __init__(self, table: Any) -> None:
        self.faust = table
        self.name: str = table.name

    @functools.cached_property
    def changelog(self) -> str:
        return str(self.faust.changelog_topic.get_topic_name())

    @property
    def offset_key(self) -> bytes:
        return bytes(self.faust.data.offset_key)

    def db(self, partition: int) -> rocksdict.Rdict:
        return self.faust.data._db_for_partition(partition)

    def serves(self, partition: int) -> bool:
        return bool(self.faust.app.assignor.is_active(TP(self.changelog, partition)))

    def persist(self, partition: int, offset: int) -> None:
        self.faust.data.set_persisted_offset(TP(self.changelog, partition), offset)

    def persisted(self, partition: int) -> int | None:
        offset: int | None = RocksDBStore.persisted_offset(self.faust.data, TP(self.changelog, partition))
        return offset

    def path(self, partition: int) -> str:
        """Where RocksDB keeps ``partition`` (what the serving process opens as a secondary)."""
        return str(self.faust.data.partition_path(partition))


def report_stale(table: str, partition: int, stale: int) -> None:
    """Say that restoring ``partition`` of ``table`` skipped ``stale`` records (tables/restore.py)."""
    if stale:
        STALE_CHANGELOG_RECORDS.labels(table).inc(stale)
        logger.warning(
            "%s[%d]: %d changelog records skipped: they hold fewer events than the stored version "
            "(late writes of a worker that had lost the partition)",
            table,
            partition,
            stale,
        )


class ChangelogStore(RocksDBStore):
    """Faust's RocksDB store, except that a feature table's changelog records that do not hold newer
    events than the stored version are skipped (tables/restore.py: Faust's recovery and standby replicas
    apply them through here), and that a partition holding local writes its changelog never confirmed
    is rebuilt from the changelog (:meth:`persisted_offset`). Reached through the ``faust.stores`` entry
    point ``hydrant`` (pyproject.toml; store URL ``hydrant://``). Written against faust-streaming 0.15.3."""

    def persisted_offset(self, tp: TP) -> int | None:
        """Where recovery of ``tp`` starts (Faust asks when the partition is assigned): -1 (from the
        start; None would keep where Faust's last recovery of a partition it still holds stopped), after
        deleting every local record, when the partition holds writes its changelog never confirmed (a
        crash before their records were acked, or writes after it lost the partition): its changelog
        then rebuilds it."""
        db = self._db_for_partition(tp.partition)
        if unconfirmed(db):
            logger.warning(
                "%s[%d]: local state holds writes its changelog never confirmed (a crash, or a partition "
                "lost while this worker was frozen): rebuilt from the changelog",
                self.table_name,
                tp.partition,
            )
            clear(db)
            return -1
        offset: int | None = super().persisted_offset(tp)
        return offset

    def apply_changelog_batch(
        self,
        batch: Iterable[EventT],
        to_key: Callable[[Any], Any],
        to_value: Callable[[Any], Any],
    ) -> None:
        if not keeps_versions(self.table_name):
            super().apply_changelog_batch(batch, to_key, to_value)
            return
        rows: dict[int, list[tuple[Any, Any]]] = {}  # raw keys and values (bytes; None: delete)
        last: dict[TP, int] = {}
        for event in batch:
            message = event.message
            rows.setdefault(message.partition, []).append((message.key, message.value))
            if message.offset > last.get(message.tp, -1):
                last[message.tp] = message.offset
        for partition, records in rows.items():
            db = self._db_for_partition(partition)
            changes, stale = newest_versions(db, records)
            write_changes(db, changes)
            report_stale(self.table_name, partition, stale)
        for tp, offset in last.items():
            self.set_persisted_offset(tp, offset)


class SharedMemoryOptions(RocksDBOptions):
    """Faust's RocksDB options, except that every database of the worker (one per table partition)
    shares one block cache, and their memtables share one write-buffer budget charged to that cache.

    Faust gives each database its own 2 GiB block cache and three 64 MiB write buffers, so a worker's
    memory grows with its partition count and, for a long time, with its state. Here RocksDB's memory
    is one figure, ``HYDRANT_ROCKSDB_MEMORY_MB``: a quarter of it holds memtables (a flush starts when
    they fill it), the rest caches blocks (docs/operations.md).
    """

    def __init__(
        self, cache: rocksdict.Cache, write_buffers: rocksdict.WriteBufferManager, memtables: int
    ) -> None:
        # A database's memtable may grow to the whole memtable budget: the manager starts a flush when
        # the budget fills. Small write buffers (8 MiB) flushed often, and the L0 files piling up
        # between compactions made every range read seek more files: 2x slower (docs/performance.md).
        super().__init__(write_buffer_size=memtables, max_write_buffer_number=2)
        self.cache = cache
        self.write_buffers = write_buffers

    def as_options(self) -> rocksdict.Options:
        options = super().as_options()
        blocks = rocksdict.BlockBasedOptions()
        blocks.set_bloom_filter(self.bloom_filter_size, True)
        blocks.set_block_cache(self.cache)
        blocks.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        options.set_block_based_table_factory(blocks)
        options.set_write_buffer_manager(self.write_buffers)
        return options


@functools.cache
def shared_memory(budget_mb: int) -> SharedMemoryOptions:
    """The worker's one set of RocksDB options (so one cache and one memtable budget)."""
    cache = rocksdict.Cache(budget_mb * 2**20)
    memtables = budget_mb * 2**20 // 4  # bytes
    write_buffers = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(memtables, False, cache)
    return SharedMemoryOptions(cache, write_buffers, memtables)


def raw_table(app: Any, name: str, partitions: int, help_text: str, memory_mb: int) -> FaustStateTable:
    """A RocksDB-backed Faust Table whose keys and values are raw bytes (Hydrant encodes them),
    its databases sharing the worker's RocksDB memory budget of ``memory_mb``.

    Faust derives a table's serializers from ``key_type``/``value_type`` and falls back to JSON,
    which would quote the UTF-8 keys; raw keys keep changelog keys equal to the Kafka record keys,
    so routing by key hashes the same bytes producers use. The serializers must be set before the
    table's store and changelog topic are first used, which happens only when the worker starts.
    """
    table = app.Table(name, partitions=partitions, key_type=bytes, value_type=bytes, help=help_text)
    table.key_serializer = "raw"
    table.value_serializer = "raw"
    if isinstance(table.data, RocksDBStore):
        table.data.rocksdb_options = shared_memory(memory_mb)
    return FaustStateTable(table)


def local_db(table: Any, partition: int) -> Any:
    """The RocksDB database (rocksdict, raw mode) holding ``partition`` of ``table`` on this worker."""
    return table.data._db_for_partition(partition)


def serves(table: Any, partition: int) -> bool:
    """True when this worker holds ``partition`` of ``table`` as active (not standby): its RocksDB
    partition is the one being written."""
    tp = TP(table.changelog_topic.get_topic_name(), partition)
    return bool(table.app.assignor.is_active(tp))
