"""app/engine/shards.py: a batch split by key over several shards, one of them run in a real helper
process, gives the same output rows, dead-letter reasons and stored records (a real RocksDB) as the
same batches run as one shard; so do batches that read their records before the previous batch is
written, with its changes laid over them (as the worker overlaps batches)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
import rocksdict

from app.config.spec import load_pipeline
from app.engine.helpers import HelperPool
from app.engine.shards import (
    BatchWork,
    Overlay,
    Shard,
    ShardEvent,
    changed_records,
    lay_over,
    read_records,
)
from app.faust_ext.tables import shared_memory
from app.records.decode import decode_event
from tables.state_format import bucket_key

SHOP = Path(__file__).resolve().parents[2] / "examples/shop/pipeline.yaml"
WORK = BatchWork(load_pipeline(SHOP))
T0 = 1_767_225_600_000
DAY = 86_400_000


def shop_batches(seed: int = 3, keys: int = 30, events: int = 1_200) -> list[list[tuple[str, bytes, int]]]:
    """Batches of (stream, value, offset): orders (some failed), clicks, users' events over 2 days,
    a late order and a duplicate of an earlier event (same source offset) near the end."""
    rng = random.Random(seed)
    out: list[tuple[str, bytes, int]] = []
    for i in range(events):
        user = f"u{rng.randrange(keys)}"
        ts = T0 + i * 2 * DAY // events + rng.randint(-600_000, 600_000)
        if rng.random() < 0.6:
            status = "failed" if rng.random() < 0.1 else "paid"
            value = {"user_id": user, "order_id": f"o{i}", "product": f"p{rng.randrange(9)}",
                     "amount": round(rng.uniform(1, 99), 2), "status": status, "ts": ts}  # fmt: skip
            out.append(("orders", orjson.dumps(value), i))
        else:
            out.append(("clicks", orjson.dumps({"user_id": user, "page": "/", "ts": ts}), i))
    late = {"user_id": "u1", "order_id": "late", "product": "p1", "amount": 5.0, "status": "paid", "ts": T0}
    out.append(("orders", orjson.dumps(late), events))
    out.append((*out[events - 5][:2], events - 5))  # redelivered: same source position
    return [out[i : i + 250] for i in range(0, len(out), 250)]


def run(
    batches: list[list[tuple[str, bytes, int]]], shards: int, db: Any, overlapped: bool = False
) -> tuple[list[Any], dict[str, int]]:
    """Every batch through ``shards`` shards, shard 1 in a helper process when there are several."""
    return asyncio.run(run_async(batches, shards, db, overlapped))


async def run_async(
    batches: list[list[tuple[str, bytes, int]]], shards: int, db: Any, overlapped: bool
) -> tuple[list[Any], dict[str, int]]:
    """Every batch through ``shards`` shards (keys dealt round-robin), as the worker does: records
    read before, changes written after each batch; shard 1 in a real helper process. ``overlapped``:
    a batch's changes are written only after the next batch read its records, with those changes
    laid over them. Returns each event's outcome in batch order, and the late and duplicate counts."""
    helpers = HelperPool(1 if shards > 1 else 0, SHOP)
    await helpers.connect()
    assert len(helpers.pids()) == (1 if shards > 1 else 0)
    outcomes: list[Any] = []
    counts: dict[str, int] = {}
    unwritten: Any = None  # overlapped: the previous batch's writes
    overlay: Overlay = {}
    try:
        for batch in batches:
            parts = [Shard() for _ in range(shards)]
            shard_of: dict[bytes, int] = {}
            placed = []
            for stream, value, offset in batch:
                key, ts, fields = decode_event(value, WORK.streams[stream].spec, 0)
                raw_key = key.encode()
                s = shard_of.setdefault(raw_key, len(shard_of) % shards)
                source = "orders:0" if stream == "orders" else "clicks:0"
                event = ShardEvent(stream, (key, ts, fields), source, offset)
                placed.append((s, WORK.add(parts[s], event, key, raw_key, ts)))
            for part in parts:  # as the worker: read, then lay the previous batch's changes over
                read_records(part, lambda _group, _key: db, lambda _name, _key: db)
                lay_over(part, overlay)
            if unwritten is not None:
                db.write(unwritten)
            results = [
                await helpers.run(1, part) if s == 1 else WORK.run(part) for s, part in enumerate(parts)
            ]
            outcomes.extend(results[s].outcomes[position] for s, position in placed)
            writes = rocksdict.WriteBatch(raw_mode=True)
            for result in results:
                for kind, groups in (("late", result.late), ("duplicate", result.duplicates)):
                    counts[kind] = counts.get(kind, 0) + sum(groups.values())
                for _, _, changes in result.changes:
                    for record_key, value in changes:
                        writes.put(record_key, value) if value is not None else writes.delete(record_key)
            if overlapped:
                unwritten, overlay = writes, changed_records(results)
            else:
                db.write(writes)
        if unwritten is not None:
            db.write(unwritten)
    finally:
        helpers.stop()
    return outcomes, counts


def open_db(path: Path) -> Any:
    db = rocksdict.Rdict(str(path), options=shared_memory(16).as_options())
    for user in ("u1", "u2", "u3"):  # the users lookup shares the database: its keys have no NUL
        db[user.encode()] = orjson.dumps({"country": "FR", "segment": user})
    return db


def test_shards_a_helper_process_and_overlapped_batches_give_the_rows_and_records_of_one_shard(
    tmp_path: Path,
) -> None:
    batches = shop_batches()
    one = open_db(tmp_path / "one")
    split = open_db(tmp_path / "split")
    overlapped = open_db(tmp_path / "overlapped")
    try:
        expected, counts = run(batches, 1, one)
        assert run(batches, 3, split) == (expected, counts)
        assert list(split.items()) == list(one.items())
        assert run(batches, 3, overlapped, overlapped=True) == (expected, counts)
        assert list(overlapped.items()) == list(one.items())
    finally:
        one.close()
        split.close()
        overlapped.close()
    rows = [orjson.loads(o[0][1]) for o in expected if isinstance(o, list) and o]
    assert len(rows) > 500 and {"spend_count_24h", "country", "ticket_ratio"} <= set(rows[0])
    joined = [r for r in rows if r["user_id"] == "u2"]
    assert joined and all(r["country"] == "FR" and r["segment"] == "u2" for r in joined)
    rejected = [o for o in expected if isinstance(o, tuple)]
    assert rejected[0][0] == "late" and "event time 1767225600000" in rejected[0][1]
    assert counts == {"late": 1, "duplicate": 1}  # the late order; the event delivered twice


def test_a_record_the_worker_did_not_read_is_an_error_not_an_absent_bucket(tmp_path: Path) -> None:
    db = open_db(tmp_path / "db")
    try:
        run(shop_batches()[:1], 1, db)
        newest = orjson.loads(db[b"u1\x00"])["n"]  # u1's newest stored bucket
        ts = newest * WORK.plans["user"].period_ms + 1
        value = orjson.dumps({"user_id": "u1", "page": "/", "ts": ts})
        shard = Shard()
        event = ShardEvent("clicks", decode_event(value, WORK.streams["clicks"].spec, 0), "clicks:9", 0)
        WORK.add(shard, event, "u1", b"u1", ts)
        read_records(shard, lambda _group, _key: db, lambda _name, _key: db)
        records = shard.records["user", b"u1"]
        assert records[bucket_key(b"u1", newest)] is not None  # read: the click updates it
        # Had the worker missed it, the shard must fail loudly, not start the bucket afresh.
        del records[bucket_key(b"u1", newest)]
        with pytest.raises(KeyError):
            WORK.run(shard)
    finally:
        db.close()
