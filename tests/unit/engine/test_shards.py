"""app/engine/shards.py: a shard reads exactly the records its events need (app/engine/batch.py's
pass 2a), and running it fails loudly on a record that was not read instead of taking it for absent.
State comes from the real StreamEngine over RocksDB (tests/support/engine.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from app.engine.shards import Shard, ShardEvent, read_records
from app.records.decode import decode_event
from app.records.partitioning import partition_for
from tables.state_format import bucket_key, head_key
from tests.support.engine import PARTITIONS, FakeIO, FakeSource, shop_batches, shop_engine


def test_a_record_the_worker_did_not_read_is_an_error_not_an_absent_bucket(tmp_path: Path) -> None:
    engine = shop_engine(tmp_path)
    work = engine.engine.work
    try:
        io = FakeIO(engine.engine.routes)
        first = shop_batches()[:1]
        asyncio.run(engine.engine.run(io, FakeSource(first, io)))
        assert io.crashed == []
        features = engine.tables.features["user"]
        db = features.db(partition_for(b"u1", PARTITIONS))
        head = db[head_key(b"u1")]
        assert head is not None
        newest = orjson.loads(head)["n"]  # u1's newest stored bucket
        stored = db[bucket_key(b"u1", newest)]
        ts = newest * work.plans["user"].period_ms + 1
        value = orjson.dumps({"user_id": "u1", "page": "/", "ts": ts})
        shard = Shard()
        event = ShardEvent(
            "clicks", decode_event(value, engine.engine.routes["clicks"].spec, 0), "clicks:9", 0
        )
        work.add(shard, event, "u1", b"u1", ts)
        lookups = engine.tables.lookups["users"]
        read_records(
            shard,
            lambda _group, key: features.db(partition_for(key, PARTITIONS)),
            lambda _name, key: lookups.db(partition_for(key, PARTITIONS)),
            engine.engine.retention,
        )
        # A click's output-less stream reads the key's head and the bucket it falls in, as stored.
        records = shard.records["user", b"u1"]
        assert records == {head_key(b"u1"): head, bucket_key(b"u1", newest): stored}
        result = work.run(Shard(shard.events, shard.wants, dict(shard.records), shard.lookups))
        (_, _, changes) = result.changes[0]
        assert [k for k, _ in changes] == [bucket_key(b"u1", newest)]  # the click updates that bucket
        assert changes[0][1] != stored

        # Had the worker missed it, the shard must fail loudly, not start the bucket afresh.
        del records[bucket_key(b"u1", newest)]
        with pytest.raises(KeyError):
            work.run(shard)
    finally:
        engine.close()
