"""Table construction, the event context Faust's tables route by, and the durable write path."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import rocksdict
from faust.stores.rocksdb import RocksDBOptions
from faust.stores.rocksdb import Store as RocksDBStore
from faust.types import TP

from app.kafka.batches import RecordBatches, SentBatch

logger = logging.getLogger(__name__)


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


def raw_table(app: Any, name: str, partitions: int, help_text: str, memory_mb: int) -> Any:
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
    return table


def local_db(table: Any, partition: int) -> Any:
    """The RocksDB database (rocksdict, raw mode) holding ``partition`` of ``table`` on this worker."""
    return table.data._db_for_partition(partition)


def serves(table: Any, partition: int) -> bool:
    """True when this worker holds ``partition`` of ``table`` as active (not standby): its RocksDB
    partition is the one being written."""
    tp = TP(table.changelog_topic.get_topic_name(), partition)
    return bool(table.app.assignor.is_active(tp))


def prefix_scan(db: rocksdict.Rdict) -> Callable[[bytes], list[tuple[bytes, bytes]]]:
    """A range read of ``db`` (raw mode): every (key, value) whose key starts with a prefix ending
    in a NUL byte (a feature key's records), in key order, from one seek."""

    bounds = rocksdict.ReadOptions()  # one per scan function: each read sets its bound, then reads all

    def scan(prefix: bytes) -> list[tuple[bytes, bytes]]:
        bounds.set_iterate_upper_bound(prefix[:-1] + b"\x01")  # the first key past the prefix
        return list(db.items(from_key=prefix, read_opt=bounds))  # type: ignore[arg-type]

    return scan


def local_record_keys(table: Any, partition: int) -> Iterator[bytes]:
    """Every record key of ``partition`` stored here, in key order, without Faust's bookkeeping."""
    skip = table.data.offset_key
    for key in local_db(table, partition).keys():
        if key != skip:
            yield key


def local_keys(table: Any, partition: int) -> Any:
    """(key, value) of every record of ``partition`` stored here, in key order, without Faust's own
    bookkeeping record (the persisted changelog offset)."""
    skip = table.data.offset_key
    for key, value in local_db(table, partition).items():
        if key != skip:
            yield key, value


class StateWriter:
    """One batch's table writes: each record goes into the local RocksDB partition (one write batch
    per table partition) and to the table's changelog, and :meth:`delivered` waits until the broker
    has every changelog record before the agent lets Faust acknowledge the batch's source events.

    Why not ``table[key] = value``: Faust queues that changelog record in its producer buffer, and a
    commit flushes the buffer with a 0.1 s wait that may return with records still queued. A source
    offset could then be committed before the state it produced was in the changelog, and a worker
    taking the partition over (rebalance, crash) would restore the state without the event and never
    see the event again. Here a source offset is committed only after its state records are acked.
    """

    def __init__(self, producer: Any, on_write: Callable[[str, int], None] | None = None) -> None:
        self._producer = producer
        self._on_write = on_write  # told (table name, partition) after each local write batch
        #: per (id(table), partition): (table, its changelog topic, the partition's write batch)
        self._batches: dict[tuple[int, int], tuple[Any, str, rocksdict.WriteBatch]] = {}
        self._changelog = RecordBatches()
        self._tables: dict[str, Any] = {}  # changelog topic -> table
        self._sent: list[SentBatch] = []  # handed to the producer, not yet acked

    def write(self, table: Any, partition: int, key: bytes, value: bytes | None) -> None:
        """Set (``value``) or delete (None) ``key`` in ``table``'s ``partition``; locally visible
        after :meth:`commit_local`, durable after :meth:`delivered`."""
        self.write_many(table, partition, ((key, value),))

    def write_many(self, table: Any, partition: int, changes: Iterable[tuple[bytes, bytes | None]]) -> None:
        """:meth:`write` each (key, value or None) of ``changes``, in order."""
        slot = (id(table), partition)
        entry = self._batches.get(slot)
        if entry is None:
            topic = table.changelog_topic.get_topic_name()
            self._tables[topic] = table
            entry = self._batches[slot] = (table, topic, rocksdict.WriteBatch(raw_mode=True))
        _, topic, batch = entry
        add = self._changelog.add
        for key, value in changes:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
            add(topic, partition, key, value)

    def commit_local(self) -> None:
        """Apply the writes to the local RocksDB partitions (one atomic write batch each)."""
        for (_, partition), (table, _, batch) in self._batches.items():
            local_db(table, partition).write(batch)
            if self._on_write is not None:
                self._on_write(table.name, partition)
        self._batches.clear()

    async def delivered(self) -> None:
        """:meth:`send`, then :meth:`acked`."""
        await self.send()
        await self.acked()

    async def send(self) -> None:
        """Apply the writes locally (:meth:`commit_local`) and hand every changelog record to the
        producer, as whole record batches in write order per partition. A later writer's records
        follow these on each partition."""
        self.commit_local()
        self._sent = await self._changelog.send(
            self._producer._ensure_producer()
        )  # Faust's aiokafka producer

    async def acked(self) -> None:
        """Wait until the broker has every changelog record :meth:`send` handed over, then record the
        highest changelog offset per partition as persisted (so a restart with the same data dir
        replays the changelog only from there)."""
        sent, self._sent = self._sent, []
        results = await asyncio.gather(*(batch.future for batch in sent))
        persisted: dict[tuple[int, Any], tuple[Any, int]] = {}
        for batch, metadata in zip(sent, results, strict=True):
            table = self._tables[batch.topic]
            slot = (id(table), metadata.topic_partition)
            last = metadata.offset + batch.count - 1  # a batch's future carries its base offset
            known = persisted.get(slot)
            if known is None or last > known[1]:
                persisted[slot] = (table, last)
        for (_, tp), (table, offset) in persisted.items():
            if not serves(table, tp.partition):
                # Written while the partition moved away (a batch that straddled a revocation):
                # another worker may own records before this offset that this one never applied,
                # so the next recovery must not start after them.
                logger.warning(
                    "changelog %s[%d] written at offset %d while not active here; persisted offset kept",
                    tp.topic,
                    tp.partition,
                    offset,
                )
                continue
            table.data.set_persisted_offset(tp, offset)
