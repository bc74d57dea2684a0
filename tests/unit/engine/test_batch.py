"""app/engine/batch.py's StreamEngine on plain objects (tests/support/engine.py), no broker, no Faust:
its real passes and its overlapping loop over the shop pipeline, with state in real RocksDB
databases (RdictTable) and record batches built and read back with aiokafka's own classes."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from app.config.routing import repartition_topic
from app.records.partitioning import partition_for
from app.records.source import SOURCE_KEY, SOURCE_OFFSET, SOURCE_PARTITION, SOURCE_TOPIC
from tables.registry import stored_state
from tables.state_format import head_key
from tables.store import prefix_scan
from tests.support.engine import (
    GROUP_ID,
    MALFORMED,
    PARTITIONS,
    T0,
    Engine,
    FakeIO,
    FakeSource,
    Fetched,
    Record,
    Sent,
    preload_users,
    shop_batches,
    shop_engine,
    user_row,
)

OUTPUT = "orders-enriched"
OUTPUT_PARTITIONS = 3  # not HYDRANT_PARTITIONS: outputs follow their own topic's partition count
PERIOD_MS = 600_000  # the user group's 10 minute buckets
RETENTION = 144  # its widest window (24 h) in buckets


def source_of(record: Record) -> list[tuple[str, bytes]]:
    return [
        (SOURCE_TOPIC, record.topic.encode()),
        (SOURCE_PARTITION, str(record.partition).encode()),
        (SOURCE_OFFSET, str(record.offset).encode()),
    ]


async def run_engine(engine: Engine, batches: list[Fetched], overlap: bool) -> tuple[FakeIO, FakeSource]:
    """``batches`` through ``engine.run``, the worker's loop, until the source is drained."""
    io = FakeIO(engine.engine.routes, {OUTPUT: OUTPUT_PARTITIONS})
    source = FakeSource(batches, io, overlap=overlap)
    await asyncio.wait_for(engine.engine.run(io, source), 120)
    assert io.crashed == []
    return io, source


def expected_spend(records: list[Record]) -> list[tuple[Record, int, int, float]]:
    """Per order that gives an output row, in stream order: (record, spend_count_1h,
    spend_count_24h, spend_sum_24h) computed from the records alone (docs/product.md: a window W at T
    covers buckets (b(T) - W/P, b(T)]; events applied in stream order; a redelivery counts once;
    an event in a bucket <= newest - R is late; buckets <= newest - R are gone)."""
    applied: dict[str, list[tuple[int, float]]] = defaultdict(list)  # user -> (bucket, amount)
    newest: dict[str, int] = {}
    seen: set[tuple[str, int, int]] = set()
    rows = []
    for record in records:
        if record.topic != "orders" or record.value == MALFORMED:
            continue
        fields = orjson.loads(record.value)
        user, bucket = fields["user_id"], fields["ts"] // PERIOD_MS
        if user in newest and bucket <= newest[user] - RETENTION:
            continue  # late: dead-lettered, no row
        position = (record.topic, record.partition, record.offset)
        if position not in seen:
            seen.add(position)
            applied[user].append((bucket, fields["amount"]))
            newest[user] = max(newest.get(user, bucket), bucket)
        kept = [(b, a) for b, a in applied[user] if b > newest[user] - RETENTION]
        day = [a for b, a in kept if bucket - 144 < b <= bucket]
        hour = [a for b, a in kept if bucket - 6 < b <= bucket]
        rows.append((record, len(hour), len(day), sum(day)))
    return rows


def test_the_engine_loop_gives_one_process_outputs_state_and_dead_letters_with_helpers_and_overlap(
    tmp_path: Path,
) -> None:
    batches = shop_batches()
    records = [r for batch in batches for r in batch]
    runs: dict[str, tuple[Engine, FakeIO, FakeSource]] = {}
    engines: list[Engine] = []  # closed at the end, whatever happened

    async def run_all() -> None:
        # Reference: no helper, every batch read after the previous one is written. Then the same
        # batches overlapped (each decoded and read before the previous is written), in the worker
        # process and in two helper processes.
        for name, helpers, overlap in (("plain", 0, False), ("overlapped", 0, True), ("helpers", 2, True)):
            engine = shop_engine(tmp_path / name, helpers)
            engines.append(engine)
            preload_users(engine.tables)
            try:
                if helpers:
                    await engine.helpers.connect()
                    assert len(engine.helpers.pids()) == helpers
                io, source = await run_engine(engine, batches, overlap)
                runs[name] = (engine, io, source)
            finally:
                engine.helpers.stop()

    try:
        asyncio.run(run_all())
        plain, plain_io, plain_source = runs["plain"]
        assert plain_source.taken_ready == 0
        assert runs["overlapped"][2].taken_ready == runs["helpers"][2].taken_ready == len(batches) - 1

        # Every batch acked, once, in order, as the very batch taken.
        for _, _, source in runs.values():
            assert [id(b) for b in source.acked] == [id(b) for b in batches]

        # Outputs: one row per order that is neither late nor malformed, keyed by user, on the
        # key's partition of the output topic, in stream order there, naming its source record.
        outputs = plain_io.sent_to(OUTPUT)
        expected = expected_spend(records)
        assert len(outputs) == len(expected) > 600
        assert max(count for _, _, count, _ in expected) > 10  # windows that hold many orders
        by_partition: dict[int, list[tuple[Record, int, int, float]]] = defaultdict(list)
        for expected_row in expected:
            by_partition[partition_for(expected_row[0].key, OUTPUT_PARTITIONS)].append(expected_row)
        assert sorted(by_partition) == list(range(OUTPUT_PARTITIONS))
        for partition, rows in by_partition.items():
            sent_there = [s for s in outputs if s.partition == partition]
            assert len(sent_there) == len(rows)
            for sent, (record, count_1h, count_24h, sum_24h) in zip(sent_there, rows, strict=True):
                assert (sent.key, list(sent.headers)) == (record.key, source_of(record))
                row = orjson.loads(sent.value)  # type: ignore[arg-type]
                assert row["order_id"] == orjson.loads(record.value)["order_id"]
                assert (row["spend_count_1h"], row["spend_count_24h"]) == (count_1h, count_24h)
                assert abs(row["spend_sum_24h"] - sum_24h) < 1e-6
                assert row["ticket_ratio"] == row["amount"] / row["spend_avg_24h"]
                joined = user_row(row["user_id"]) if row["user_id"] in ("u1", "u2", "u3") else None
                assert (row["country"], row["segment"]) == (
                    (joined["country"], joined["segment"]) if joined else (None, None)
                )
        assert {orjson.loads(s.value)["country"] for s in outputs} == {"FR", "DE", None}  # type: ignore[arg-type]
        # The redelivered record gets its row again, without being counted twice.
        redelivered = records[-2]
        assert redelivered is records[1_195] and redelivered.topic == "orders"
        again = [s for s in outputs if list(s.headers) == source_of(redelivered)]
        assert len(again) == 2 and again[0].value == again[1].value

        # Dead letters: the late order and the record that is not JSON, unchanged, with their
        # reason and source.
        dead = plain_io.sent_to("orders.dlq")
        late, malformed = records[-3], records[-1]
        assert [(d.key, d.value) for d in dead] == [(late.key, late.value), (malformed.key, MALFORMED)]
        assert [d.headers[0] for d in dead] == [("hydrant-reason", b"late"), ("hydrant-reason", b"decode")]
        assert f"event time {T0}".encode() in dead[0].headers[1][1]
        assert [list(d.headers[2:]) for d in dead] == [source_of(late), source_of(malformed)]
        assert plain_io.sent_to("clicks.dlq") == []

        # The same records sent, in the same order, and the same state, whatever ran the shards
        # and however the batches overlapped.
        state = plain.contents()
        assert sum(len(records) for (table, _), records in state.items() if table == "features-user") > 100
        for name in ("overlapped", "helpers"):
            engine, io, _ = runs[name]
            for topic in (OUTPUT, "orders.dlq"):
                assert [(s.partition, s.key, s.value) for s in io.sent_to(topic)] == [
                    (s.partition, s.key, s.value) for s in plain_io.sent_to(topic)
                ], (name, topic)
            assert engine.contents() == state, name

        # The changelog holds what RocksDB holds, and the persisted offsets are its last offsets.
        for engine, io, _ in runs.values():
            table = engine.tables.features["user"]
            changelog: dict[int, dict[bytes, bytes | None]] = defaultdict(dict)
            for sent in io.sent_to(table.changelog):
                changelog[sent.partition][sent.key] = sent.value  # type: ignore[index]
            for p in range(PARTITIONS):
                stored = {k: v for k, v in changelog[p].items() if v is not None}
                assert sorted(stored.items()) == state["features-user", p]
            assert table.offsets == {  # type: ignore[attr-defined]
                tp.partition: offset - 1
                for tp, offset in io.kafka_producer.next_offset.items()
                if tp.topic == table.changelog
            }
            assert {p for name, p in engine.written if name == "features-user"} == set(range(PARTITIONS))
    finally:
        for engine in engines:
            engine.close()


def test_a_record_off_its_home_partition_is_forwarded_then_applied_under_its_original_source(
    tmp_path: Path,
) -> None:
    engine = shop_engine(tmp_path)
    io = FakeIO(engine.engine.routes)
    rekey = repartition_topic(GROUP_ID, "stream", "orders")
    user = "u7"
    key = user.encode()
    home = partition_for(key, PARTITIONS)
    elsewhere = (home + 1) % PARTITIONS
    order = {"user_id": user, "order_id": "o1", "product": "p1", "amount": 10.0, "status": "paid", "ts": T0}
    # Produced with another Kafka key (a user's producer keyed it by order): read off the key's home.
    read = Record("orders", elsewhere, 41, b"order-o1", orjson.dumps(order), T0 + 5)

    async def passes(records: list[Record]) -> None:
        """One batch through the engine's passes 1 to 3, delivered."""
        batch = await engine.engine.decode_batch(Fetched(records), io.assignment(), io.topic_partitions)
        done = await (await engine.engine.run_batch(batch, {}))
        await (await engine.engine.send_batch(batch, done, io.producer, io.kafka_producer))

    def feature_records() -> list[tuple[bytes, bytes]]:
        return [kv for (name, _), kvs in engine.contents().items() if name == "features-user" for kv in kvs]

    try:
        asyncio.run(passes([read]))
        # Forwarded to the key's home partition of the repartition topic, value and timestamp as
        # read, with the source record's position and Kafka key; not applied, no output.
        assert io.producer.sent == [
            Sent(
                rekey,
                home,
                key,
                read.value,
                (*source_of(read), (SOURCE_KEY, b"order-o1")),
                read.timestamp / 1000,
            )
        ]
        assert feature_records() == [] and io.kafka_producer.sent == []

        # The forwarded record, read back from the repartition topic: applied on its home partition,
        # its output naming the original record.
        forwarded = io.producer.sent[0]
        hop = Record(rekey, home, 0, forwarded.key, forwarded.value, read.timestamp, forwarded.headers)  # type: ignore[arg-type]
        asyncio.run(passes([hop]))
        assert len(io.producer.sent) == 1  # nothing forwarded again, no dead letter
        (output,) = io.sent_to(OUTPUT)
        assert (output.key, output.partition) == (key, partition_for(key, PARTITIONS))
        assert list(output.headers) == source_of(read)
        row = orjson.loads(output.value)  # type: ignore[arg-type]
        assert (row["order_id"], row["spend_count_24h"], row["spend_sum_24h"]) == ("o1", 1, 10.0)
        db = engine.tables.features["user"].db(home)
        state = stored_state(engine.tables.plans["user"], db, key)
        assert state.processed == {f"orders:{elsewhere}": 41}  # the original record's identity
        assert prefix_scan(db)(head_key(key))  # its state lives on the home partition only
        applied = feature_records()

        # The same forward delivered twice (at-least-once): recognised by its original identity and
        # not counted again, though it comes at another offset of the repartition topic.
        asyncio.run(passes([replace(hop, offset=1)]))
        assert feature_records() == applied
        (_, again) = io.sent_to(OUTPUT)
        assert orjson.loads(again.value)["spend_count_24h"] == 1  # type: ignore[arg-type]
        assert list(again.headers) == source_of(read)
    finally:
        engine.close()


def test_a_topic_with_another_partition_count_is_forwarded_even_from_the_keys_partition(
    tmp_path: Path,
) -> None:
    engine = shop_engine(tmp_path)
    io = FakeIO(engine.engine.routes, {"clicks": PARTITIONS * 2})
    key = b"u3"
    home = partition_for(key, PARTITIONS)
    click = Record("clicks", home, 7, key, orjson.dumps({"user_id": "u3", "page": "/", "ts": T0}), T0)

    async def passes() -> Any:
        batch = await engine.engine.decode_batch(Fetched([click]), io.assignment(), io.topic_partitions)
        done = await (await engine.engine.run_batch(batch, {}))
        await (await engine.engine.send_batch(batch, done, io.producer, io.kafka_producer))

    try:
        asyncio.run(passes())
        (sent,) = io.producer.sent
        assert (sent.topic, sent.partition, sent.key) == (
            repartition_topic(GROUP_ID, "stream", "clicks"),
            home,
            key,
        )
        assert io.kafka_producer.sent == []  # not applied: no state written
    finally:
        engine.close()
