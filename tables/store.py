"""RocksDB state tables as the engine sees them (:class:`StateTable`), range reads, and the durable
write path (:class:`StateWriter`: local write batch, changelog records, persisted offsets)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import rocksdict

from app.kafka.batches import RecordBatches, SentBatch

logger = logging.getLogger(__name__)


class StateTable(Protocol):
    """A changelog-backed table of raw records: one RocksDB database per partition of its changelog."""

    name: str

    @property
    def changelog(self) -> str:
        """The changelog topic's name."""

    @property
    def offset_key(self) -> bytes:
        """The bookkeeping record (the persisted changelog offset) every partition's database holds."""

    def db(self, partition: int) -> rocksdict.Rdict:
        """The RocksDB database (rocksdict, raw mode) of ``partition`` on this worker."""

    def serves(self, partition: int) -> bool:
        """Whether this worker holds ``partition`` active (its database is the one being written)."""

    def persist(self, partition: int, offset: int) -> None:
        """Record ``offset`` as the last changelog offset applied to ``partition``'s database."""

    def persisted(self, partition: int) -> int | None:
        """The last changelog offset recorded as applied to ``partition``'s database (None: none)."""


def prefix_scan(db: rocksdict.Rdict) -> Callable[[bytes], list[tuple[bytes, bytes]]]:
    """A range read of ``db`` (raw mode): every (key, value) whose key starts with a prefix ending
    in a NUL byte (a feature key's records), in key order, from one seek."""

    bounds = rocksdict.ReadOptions()  # one per scan function: each read sets its bound, then reads all

    def scan(prefix: bytes) -> list[tuple[bytes, bytes]]:
        bounds.set_iterate_upper_bound(prefix[:-1] + b"\x01")  # the first key past the prefix
        return list(db.items(from_key=prefix, read_opt=bounds))  # type: ignore[arg-type]

    return scan


#: A local-only record of a table partition (never in its changelog): present while the partition
#: holds writes the changelog has not confirmed (sent and acked, the persisted offset moved past
#: them). A recovery that finds it rebuilds the partition from its changelog (docs/operations.md).
UNCONFIRMED_KEY = b"__hydrant\x00unconfirmed__"


def local_record_keys(table: StateTable, partition: int) -> Iterator[bytes]:
    """Every record key of ``partition`` stored here, in key order, without the bookkeeping records."""
    skip = (table.offset_key, UNCONFIRMED_KEY)
    for key in table.db(partition).keys():
        if key not in skip:
            yield key  # type: ignore[misc]  # raw mode: bytes


def local_keys(table: StateTable, partition: int) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of every record of ``partition`` stored here, in key order, without the
    bookkeeping records."""
    skip = (table.offset_key, UNCONFIRMED_KEY)
    for key, value in table.db(partition).items():
        if key not in skip:
            yield key, value  # type: ignore[misc]  # raw mode: bytes


def unconfirmed(db: rocksdict.Rdict) -> bool:
    """Whether partition database ``db`` holds local writes its changelog has not confirmed."""
    return db.get(UNCONFIRMED_KEY) is not None


def clear(db: rocksdict.Rdict) -> None:
    """Delete every record of partition database ``db`` (the persisted offset too)."""
    last: Any = next(iter(db.keys(backwards=True)), None)  # raw mode: bytes
    if last is not None:
        db.delete_range(b"", bytes(last) + b"\x00")


class StateWriter:
    """One batch's table writes, to the local RocksDB partitions (one write batch each) and the tables'
    changelogs; :meth:`delivered` returns once the broker has every changelog record (docs/operations.md)."""

    def __init__(self, producer: Any, on_write: Callable[[str, int], None] | None = None) -> None:
        self._producer = producer  # an AIOKafkaProducer, started
        self._on_write = on_write  # told (table name, partition) after each local write batch
        #: per (id(table), partition): (table, its changelog topic, the partition's write batch)
        self._batches: dict[tuple[int, int], tuple[StateTable, str, rocksdict.WriteBatch]] = {}
        self._changelog = RecordBatches()
        self._tables: dict[str, StateTable] = {}  # changelog topic -> table
        self._sent: list[SentBatch] = []  # handed to the producer, not yet acked
        #: per (id(table), partition): the number of the local write batch, in its UNCONFIRMED_KEY
        self._local: dict[tuple[int, int], bytes] = {}

    def write(self, table: StateTable, partition: int, key: bytes, value: bytes | None) -> None:
        """Set (``value``) or delete (None) ``key`` in ``table``'s ``partition``; locally visible
        after :meth:`commit_local`, durable after :meth:`delivered`."""
        self.write_many(table, partition, ((key, value),))

    def write_many(
        self, table: StateTable, partition: int, changes: Iterable[tuple[bytes, bytes | None]]
    ) -> None:
        """:meth:`write` each (key, value or None) of ``changes``, in order."""
        slot = (id(table), partition)
        entry = self._batches.get(slot)
        if entry is None:
            topic = table.changelog
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
        """Apply the writes to the local RocksDB partitions (one atomic write batch each), each
        marked unconfirmed (UNCONFIRMED_KEY: a count of local writes) until :meth:`acked`."""
        for slot, (table, _, batch) in self._batches.items():
            partition = slot[1]
            db = table.db(partition)
            number = b"%d" % (int(db.get(UNCONFIRMED_KEY) or 0) + 1)
            batch.put(UNCONFIRMED_KEY, number)
            self._local[slot] = number
            db.write(batch)
            if self._on_write is not None:
                self._on_write(table.name, partition)
        self._batches.clear()

    async def delivered(self) -> None:
        """:meth:`send`, then :meth:`acked`."""
        await self.send()
        await self.acked()

    async def send(self) -> None:
        """:meth:`commit_local`, then hand every changelog record to the producer, in write order per
        partition (a later writer's records follow these)."""
        self.commit_local()
        self._sent = await self._changelog.send(self._producer)

    async def acked(self) -> None:
        """Wait until the broker has every record :meth:`send` handed over, then persist the highest
        changelog offset per partition (a restart replays only from there) where it is safe: the
        partition is still active here, and this worker's records follow the persisted offset with no
        other writer's records in between."""
        sent, self._sent = self._sent, []
        results = await asyncio.gather(*(batch.future for batch in sent))
        # per (table, changelog partition): the table and the (first, last) offset of each batch
        written: dict[tuple[int, Any], tuple[StateTable, list[tuple[int, int]]]] = {}
        for batch, metadata in zip(sent, results, strict=True):
            table = self._tables[batch.topic]
            slot = (id(table), metadata.topic_partition)
            first = metadata.offset  # a batch's future carries its base offset
            written.setdefault(slot, (table, []))[1].append((first, first + batch.count - 1))
        for (_, tp), (table, spans) in written.items():
            if not table.serves(tp.partition):
                # Written after the partition moved away: another worker may own earlier records this
                # one never applied, so the next recovery must not start after them.
                logger.warning(
                    "changelog %s[%d] written at offsets %s while not active here; persisted offset kept",
                    tp.topic,
                    tp.partition,
                    ", ".join(f"{a}-{b}" for a, b in sorted(spans)),
                )
                continue
            offset = contiguous_end(table.persisted(tp.partition), spans)
            if offset is None:
                # Another worker wrote the partition since this one's last records: this worker lost it
                # while frozen (a zombie), and its state lacks what the other wrote. Persisting past
                # those records would make the next recovery here skip them.
                logger.warning(
                    "changelog %s[%d]: records of another writer precede these (offsets %s); "
                    "persisted offset kept",
                    tp.topic,
                    tp.partition,
                    ", ".join(f"{a}-{b}" for a, b in sorted(spans)),
                )
                continue
            table.persist(tp.partition, offset)
            db = table.db(tp.partition)
            if db.get(UNCONFIRMED_KEY) == self._local.get((id(table), tp.partition)):
                db.delete(UNCONFIRMED_KEY)  # no local write since this one: all confirmed


def contiguous_end(persisted: int | None, spans: list[tuple[int, int]]) -> int | None:
    """The last offset of ``spans`` (this worker's batches: first and last offset) if they follow
    ``persisted`` with no gap, else None. Without a persisted offset the partition was empty when this
    worker took it, so its records must start at offset 0."""
    expected = 0 if persisted is None else persisted + 1
    for first, last in sorted(spans):
        if first != expected:
            return None
        expected = last + 1
    return expected - 1
