"""Entity TTL through the real stream engine on RocksDB (app/engine/batch.py, app/engine/expiry.py,
tables/expiry.py): a partition's clock moves with the events it applies and is stored with them; a
key quiet for ``ttl`` answers ``found: false`` at once, starts afresh when it comes back, and the
sweep deletes its records locally and in the changelog (tombstones)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest

from app.config.spec import load_pipeline
from app.metrics import KEYS_EXPIRED
from app.records.partitioning import partition_for
from app.tools.frames import read_table
from app.tools.offline import compute
from tables.expiry import CLOCK_KEY, read_clock
from tables.read import key_answer
from tables.registry import stored_state
from tables.store import prefix_scan
from tests.conftest import SHOP
from tests.support.engine import PARTITIONS, T0, Engine, FakeIO, Fetched, home_record, pipeline_engine

MINUTE = 60_000
HOUR = 60 * MINUTE
TTL = 2 * HOUR
KEYS = [f"k{i:02d}" for i in range(24)]
QUIET = {k for i, k in enumerate(KEYS) if i % 3 == 0}  # their last order is in the first hour


def ttl_pipeline(tmp_path: Path) -> Path:
    text = SHOP.read_text().replace("    period: 10m", "    ttl: 2h\n    period: 10m", 1)
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return path


def order(key: str, offset: int, ts: int, amount: float = 1.0) -> Any:
    value = {
        "user_id": key,
        "order_id": f"o{offset}",
        "product": "p",
        "amount": amount,
        "status": "ok",
        "ts": ts,
    }
    return home_record("orders", offset, value, key)


def orders() -> list[Any]:
    """Every key one order every 10 minutes; the quiet ones only for their first hour, the others
    for 6 hours. Offsets per partition, in time order."""
    out = []
    offsets = dict.fromkeys(range(PARTITIONS), 0)
    for step in range(36):
        ts = T0 + step * 10 * MINUTE
        for key in KEYS:
            if key in QUIET and step >= 6:
                continue
            partition = partition_for(key.encode(), PARTITIONS)
            out.append(order(key, offsets[partition], ts))
            offsets[partition] += 1
    return out


async def run(engine: Engine, io: FakeIO, records: list[Any], size: int = 50) -> None:
    for start in range(0, len(records), size):
        batch = await engine.engine.decode_batch(
            Fetched(records[start : start + size]), io.assignment(), io.topic_partitions
        )
        done = await (await engine.engine.run_batch(batch, {}))
        await (await engine.engine.send_batch(batch, done, io.producer, io.kafka_producer))


def answer(engine: Engine, key: str, at: int) -> dict[str, Any]:
    plan = engine.tables.plans["user"]
    db = engine.tables.features["user"].db(partition_for(key.encode(), PARTITIONS))
    state = stored_state(plan, db, key.encode(), prefix_scan(db))
    return key_answer(plan, key, state, at, clock=read_clock(db.get))


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    engine = pipeline_engine(tmp_path / "state", ttl_pipeline(tmp_path))
    yield engine
    engine.close()


@pytest.mark.parametrize("helpers", [0, 2], ids=["in-worker", "helper-processes"])
def test_quiet_keys_answer_not_found_start_afresh_and_are_swept_with_tombstones(
    tmp_path: Path, helpers: int
) -> None:
    engine = pipeline_engine(tmp_path / "state", ttl_pipeline(tmp_path), helpers)
    try:
        asyncio.run(quiet_keys(engine))
    finally:
        engine.close()


async def quiet_keys(engine: Engine) -> None:
    if engine.helpers.count:
        await engine.helpers.connect()
    plan = engine.tables.plans["user"]
    assert plan.ttl == TTL
    io = FakeIO(engine.engine.routes)
    await run(engine, io, orders())
    table = engine.tables.features["user"]
    end = T0 + 35 * 10 * MINUTE
    for partition in range(PARTITIONS):  # each partition's clock: its newest event, stored
        assert read_clock(table.db(partition).get) == end
    for key in KEYS:
        got = answer(engine, key, end)
        assert got["found"] is (key not in QUIET), key
        if key not in QUIET:
            assert got["features"]["spend_count_24h"] == 36 and got["newest_event"] == end
    quiet = sorted(QUIET)

    # One quiet key comes back before any sweep: it starts afresh, its old buckets gone.
    back = quiet[0]
    partition = partition_for(back.encode(), PARTITIONS)
    await run(engine, io, [order(back, 10_000, end, amount=5.0)])
    got = answer(engine, back, end)
    assert (
        got["found"] and got["features"]["spend_count_24h"] == 1 and got["features"]["spend_sum_24h"] == 5.0
    )
    assert len(prefix_scan(table.db(partition))(back.encode() + b"\x00")) == 2  # its head and one bucket

    # The sweep: slices of 5 heads, every partition in turn, until every quiet key is gone.
    sweeper = engine.engine.sweeper
    assert sweeper is not None
    sweeper.slice_keys = 5
    before = KEYS_EXPIRED.labels("user")._value.get()
    sent = len(io.kafka_producer.sent)
    deleted = 0
    for _ in range(4 * PARTITIONS):
        deleted += await sweeper.step(io.kafka_producer)
    gone = [k for k in quiet if k != back]
    assert deleted == len(gone) == KEYS_EXPIRED.labels("user")._value.get() - before
    for key in KEYS:
        db = table.db(partition_for(key.encode(), PARTITIONS))
        records_left = prefix_scan(db)(key.encode() + b"\x00")
        assert bool(records_left) is (key not in gone), key
        assert answer(engine, key, end)["found"] is (key not in gone)
    tombstones = [s for s in io.kafka_producer.sent[sent:] if s.topic == table.changelog]
    assert tombstones and all(s.value is None for s in tombstones)
    assert {s.key.split(b"\x00")[0].decode() for s in tombstones if s.key} == set(gone)
    assert all(db.get(CLOCK_KEY) is not None for db in (table.db(p) for p in range(PARTITIONS)))


def test_a_partition_s_clock_is_its_newest_event_not_the_wall_clock(engine: Engine) -> None:
    io = FakeIO(engine.engine.routes)
    asyncio.run(run(engine, io, [order("k01", 0, T0), order("k01", 1, T0 + 5 * HOUR)]))
    asyncio.run(run(engine, io, [order("k01", 2, T0 + HOUR)]))  # older: the clock stays
    db = engine.tables.features["user"].db(partition_for(b"k01", PARTITIONS))
    assert read_clock(db.get) == T0 + 5 * HOUR
    assert answer(engine, "k01", T0 + 5 * HOUR)["found"]  # its own newest event keeps it


@pytest.mark.parametrize("hours", [2.5, 3.0, 6.0])
def test_hydrant_compute_answers_expired_keys_with_nulls_as_the_worker_does(
    tmp_path: Path, hours: float
) -> None:
    """A label at T equals the worker fed the orders up to T: the quiet keys expire at 3 h (their
    newest bucket, 0:50-1:00, ends 2 h before the clock)."""
    path = ttl_pipeline(tmp_path)
    spec = load_pipeline(path)
    at = T0 + int(hours * HOUR)
    records = [r for r in orders() if orjson.loads(r.value)["ts"] <= at]
    engine = pipeline_engine(tmp_path / "state", path)
    try:
        asyncio.run(run(engine, FakeIO(engine.engine.routes), records))
        online = {key: answer(engine, key, at) for key in KEYS}
    finally:
        engine.close()
    events = tmp_path / "orders.csv"
    pd.DataFrame([orjson.loads(r.value) for r in orders()]).to_csv(events, index=False)
    labels = pd.DataFrame({"user_id": KEYS, "ts": at})
    table, _ = compute(
        spec, {"orders": events, "clicks": clicks_file(tmp_path)}, read_table, labels=labels, groups=["user"]
    )
    expired = 0
    for row in table.to_dict("records"):
        got = online[row["user_id"]]
        if not got["found"]:
            expired += 1
            assert pd.isna(row["spend_count_24h"]) and pd.isna(row["user.newest_event"]), row
            continue
        assert row["spend_count_24h"] == got["features"]["spend_count_24h"]
        assert row["user.newest_event"] == got["newest_event"]
    assert expired == (0 if hours < 3 else len(QUIET))


def clicks_file(tmp_path: Path) -> Path:
    path = tmp_path / "clicks.csv"
    pd.DataFrame(columns=["user_id", "page", "ts"]).to_csv(path, index=False)
    return path
