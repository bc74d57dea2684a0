"""Plain objects the stream engine (app/engine/batch.py) runs on in unit tests, no broker, no Faust:
fetched records and their batches, a :class:`FakeSource` handing them out, and a :class:`FakeIO`
whose producers record what the engine sends (record batches built and decoded with aiokafka's own
classes); the shop pipeline's events in batches, and an engine over :class:`RdictTable`\\ s."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch
from aiokafka.structs import RecordMetadata, TopicPartition

from app.config.spec import load_pipeline
from app.engine.batch import StreamEngine, stream_routes
from app.engine.helpers import HelperPool
from app.engine.shards import BatchWork
from app.records.partitioning import partition_for
from tables.registry import StateTables
from tables.replica import LookupReplica
from tests.conftest import SHOP
from tests.support.tables import RdictTable

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAY = 86_400_000
GROUP_ID = "hydrant-shop"  # the consumer group: names the repartition topics
PARTITIONS = 4  # HYDRANT_PARTITIONS, and every topic's partition count unless a test says otherwise


@dataclass(frozen=True)
class Record:
    """A fetched record as aiokafka's ConsumerRecord has it (``timestamp`` in milliseconds)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp: int
    headers: tuple[tuple[str, bytes], ...] = ()


class Fetched(list[Any]):
    """A batch of records with their offsets per partition, as app/faust_ext/intake.py hands it out."""

    def __init__(self, records: Iterable[Record]) -> None:
        super().__init__(records)
        self.offsets: dict[TopicPartition, list[int]] = {}
        for record in self:
            self.offsets.setdefault(TopicPartition(record.topic, record.partition), []).append(record.offset)


@dataclass(frozen=True)
class Sent:
    """A record as the engine handed it to a producer."""

    topic: str
    partition: int | None
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp_s: float | None = None  # single sends only
    #: record batches only: the record's timestamp (the producer's clock unless the engine set one)
    timestamp_ms: int | None = field(default=None, compare=False)


def done(result: Any) -> asyncio.Future[Any]:
    future = asyncio.get_running_loop().create_future()
    future.set_result(result)
    return future


class FakeProducer:
    """Faust's producer as the engine uses it: single records (dead letters, forwards)."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp_s: float | None,
        headers: list[tuple[str, bytes]],
    ) -> asyncio.Future[Any]:
        self.sent.append(Sent(topic, partition, key, value, tuple(headers), timestamp_s))
        return done(None)


class _Cluster:
    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.counts.get(topic, PARTITIONS)))


class _Client:
    def __init__(self, counts: dict[str, int]) -> None:
        self.cluster = _Cluster(counts)


class FakeKafkaProducer:
    """An AIOKafkaProducer as app/kafka/batches.py uses it: aiokafka's own BatchBuilder, each batch
    sent decoded back into its records (aiokafka's DefaultRecordBatch over the built buffer), and
    delivered at once with the next offsets of its partition."""

    def __init__(self, partition_counts: dict[str, int] | None = None) -> None:
        self.client = _Client(partition_counts or {})
        self.sent: list[Sent] = []
        self.batches: list[tuple[str, int, int, int]] = []  # (topic, partition, base offset, count)
        self.next_offset: dict[TopicPartition, int] = {}

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(1_000_000, 0, is_transactional=False)

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> asyncio.Future[Any]:
        records = list(DefaultRecordBatch(bytes(batch._build())))
        assert records, "an empty record batch was sent"
        assert [r.offset for r in records] == list(range(len(records)))  # relative offsets from 0
        tp = TopicPartition(topic, partition)
        base = self.next_offset.get(tp, 0)
        self.next_offset[tp] = base + len(records)
        self.batches.append((topic, partition, base, len(records)))
        for r in records:
            self.sent.append(
                Sent(topic, partition, r.key, r.value, tuple(r.headers), timestamp_ms=r.timestamp)
            )
        return done(RecordMetadata(topic, partition, tp, base, None, 0, None))


class FakeIO:
    """The running worker as the engine sees it (app.engine.batch.WorkerIO)."""

    def __init__(self, topics: Iterable[str], partition_counts: dict[str, int] | None = None) -> None:
        self.partition_counts = partition_counts or {}
        self.stop = False
        self.producer = FakeProducer()
        self.kafka_producer = FakeKafkaProducer(self.partition_counts)
        #: every partition of ``topics`` (the engine's input topics)
        self.assigned = {TopicPartition(t, p) for t in topics for p in range(self.topic_partitions(t))}
        self.crashed: list[BaseException] = []

    @property
    def should_stop(self) -> bool:
        return self.stop

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def topic_partitions(self, topic: str) -> int:
        return self.partition_counts.get(topic, PARTITIONS)

    async def crash(self, exc: BaseException) -> None:
        self.crashed.append(exc)
        self.stop = True

    def sent_to(self, topic: str) -> list[Sent]:
        """Every record sent to ``topic`` (single sends and record batches), in the order sent."""
        return [s for s in (*self.producer.sent, *self.kafka_producer.sent) if s.topic == topic]


class FakeSource:
    """Hands out ``batches`` in order: by :meth:`take`, and when ``overlap``, also by
    :meth:`take_ready` (the engine then decodes and reads a batch while the one before is running);
    once the last is out, ``io`` is told to stop. :attr:`acked` holds each batch acked, in order."""

    def __init__(self, batches: Sequence[Fetched], io: FakeIO, overlap: bool = False) -> None:
        self.batches = list(batches)
        self.io = io
        self.overlap = overlap
        self.given = 0
        self.taken_ready = 0  # batches handed out by take_ready
        self.acked: list[Any] = []

    def _next(self) -> Fetched:
        batch = self.batches[self.given]
        self.given += 1
        if self.given == len(self.batches):
            self.io.stop = True
        return batch

    async def take(self, max_: int, within: float) -> Fetched:
        assert self.given < len(self.batches), "take after the last batch (the worker should stop)"
        batch = self._next()
        assert len(batch) <= max_
        return batch

    def take_ready(self, max_: int) -> Fetched | list[Any]:
        if not self.overlap or self.given == len(self.batches):
            return []
        self.taken_ready += 1
        return self._next()

    def ack(self, batch: Any) -> None:
        self.acked.append(batch)


@dataclass
class Engine:
    """A StreamEngine for the shop pipeline over RdictTables in ``root``, and its helper pool."""

    engine: StreamEngine
    tables: StateTables
    helpers: HelperPool
    root: Path
    written: list[tuple[str, int]] = field(default_factory=list)  # on_write calls

    def close(self) -> None:
        self.helpers.stop()
        for table in self.tables.all().values():
            table.close()  # type: ignore[attr-defined]
        for replica in self.tables.replicas.values():
            replica.close()

    def contents(self) -> dict[tuple[str, int], list[Any]]:
        """Every table partition's RocksDB records, in key order."""
        return {
            (table.name, p): list(table.db(p).items())
            for table in self.tables.all().values()
            for p in range(PARTITIONS)
        }


def shop_engine(root: Path, helpers: int = 0, batch_max: int = 2_000) -> Engine:
    """The shop pipeline's StreamEngine on tables under ``root`` (made here), with ``helpers``
    helper processes (started by the engine's run, or :meth:`HelperPool.connect`)."""
    return pipeline_engine(root, SHOP, helpers, batch_max)


def pipeline_engine(
    root: Path, path: Path, helpers: int = 0, batch_max: int = 2_000, idle_ms: int = 60_000
) -> Engine:
    """The StreamEngine of the pipeline file ``path`` on tables under ``root``, as :func:`shop_engine`;
    ``idle_ms``: HYDRANT_IDLE_PARTITION_MS (0: an upstream partition holds a stage back only in the
    batch it is read in)."""
    root.mkdir(parents=True, exist_ok=True)
    pipeline = load_pipeline(path)
    work = BatchWork(pipeline, GROUP_ID)
    replicas = {
        name: LookupReplica(root / "replicas" / name)
        for name, spec in pipeline.lookups.items()
        if spec.global_
    }
    tables = StateTables.build(pipeline, lambda name, text: RdictTable(root, name, text), replicas)
    pool = HelperPool(helpers, path)
    written: list[tuple[str, int]] = []
    engine = StreamEngine(
        work,
        stream_routes(pipeline, GROUP_ID, work),
        tables,
        pool,
        PARTITIONS,
        batch_max,
        on_write=lambda name, partition: written.append((name, partition)),
        idle_ms=idle_ms,
    )
    return Engine(engine, tables, pool, root, written)


def user_row(user: str) -> dict[str, str]:
    """The users lookup row of ``user`` (the test's users u1, u2 and u3)."""
    return {"country": "FR" if user != "u3" else "DE", "segment": f"seg-{user}"}


def preload_users(tables: StateTables, users: Iterable[str] = ("u1", "u2", "u3")) -> None:
    """Users lookup rows, each on its key's home partition (as the lookup updater stores them)."""
    table = tables.lookups["users"]
    for user in users:
        key = user.encode()
        table.db(partition_for(key, PARTITIONS))[key] = orjson.dumps(user_row(user))


def home_record(topic: str, offset: int, value: dict[str, Any] | bytes, user: str) -> Record:
    """A record of ``user`` produced by the default partitioner: on its key's home partition."""
    key = user.encode()
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    ts = value["ts"] if isinstance(value, dict) else T0
    return Record(topic, partition_for(key, PARTITIONS), offset, key, raw, ts)


MALFORMED = b'{"user_id": "u4", "order_id": '  # cut short: not JSON


def shop_batches(seed: int = 3, keys: int = 30, events: int = 1_200) -> list[Fetched]:
    """Batches of 250 records: orders (some failed), clicks of ``keys`` users over 2 days, each on
    its key's home partition; then a late order of u1 (event time T0, two days behind its newest
    bucket), a redelivery of an earlier click or order (same topic, partition and offset), and a
    record that is not JSON. Offsets: the event's index (increasing per partition)."""
    rng = random.Random(seed)
    records: list[Record] = []
    for i in range(events):
        user = f"u{rng.randrange(keys)}"
        ts = T0 + i * 2 * DAY // events + rng.randint(-600_000, 600_000)
        if rng.random() < 0.6:
            status = "failed" if rng.random() < 0.1 else "paid"
            value = {"user_id": user, "order_id": f"o{i}", "product": f"p{rng.randrange(9)}",
                     "amount": round(rng.uniform(1, 99), 2), "status": status, "ts": ts}  # fmt: skip
            records.append(home_record("orders", i, value, user))
        else:
            records.append(home_record("clicks", i, {"user_id": user, "page": "/", "ts": ts}, user))
    late = {"user_id": "u1", "order_id": "late", "product": "p1", "amount": 5.0, "status": "paid", "ts": T0}
    records.append(home_record("orders", events, late, "u1"))
    records.append(records[events - 5])  # redelivered: same source position
    records.append(home_record("orders", events + 1, MALFORMED, "u4"))
    return [Fetched(records[i : i + 250]) for i in range(0, len(records), 250)]
