"""tables/store.py on real RocksDB databases (rocksdict): prefix_scan (a key's records in one range
read, and KeyState built from it equal to one built from point reads), and StateWriter's local
writes and changelog records."""

from __future__ import annotations

from pathlib import Path

import pytest
import rocksdict
from aiokafka import TopicPartition

from app.config.spec import parse_pipeline
from app.faust_ext.tables import shared_memory
from tables.apply import apply_event, choose
from tables.key_state import KeyState
from tables.plans import group_plans
from tables.read import read_features
from tables.store import UNCONFIRMED_KEY, StateWriter, clear, contiguous_end, prefix_scan, unconfirmed
from tests.support.engine import FakeKafkaProducer
from tests.support.tables import RdictTable

PIPELINE = """\
name: t
streams:
  s:
    topic: s
    key: k
    time: ts
    fields: {k: str, ts: int, x: float}
features:
  g:
    key: k
    period: 10m
    aggregations:
      - {name: x, stream: s, field: x, ops: [count, sum, min, max, stddev, last], windows: [10m, 1h]}
"""
BASE = 1_700_000_400_000  # a multiple of 10 minutes


def test_prefix_scan_reads_only_the_keys_records_and_equals_point_reads(tmp_path: Path) -> None:
    plan = group_plans(parse_pipeline(PIPELINE))["g"]
    db = rocksdict.Rdict(str(tmp_path / "db"), options=shared_memory(16).as_options())
    try:
        # "a", a key that extends it after a NUL ("a\0b", whose records share the prefix "a\0"), "a1"
        # and "b": four keys whose events interleave, written as the worker writes them.
        keys = [b"a", b"a\x00b", b"a1", b"b"]
        states = {k: KeyState(k, db.get, plan.retention) for k in keys}
        for i in range(40):
            key = keys[i % len(keys)]
            fields = {"k": key.decode(), "ts": BASE + i * 170_000, "x": float(i)}
            apply_event(plan, states[key], choose(plan, "s", fields), fields, fields["ts"], "s:0", i)
        batch = rocksdict.WriteBatch(raw_mode=True)
        for state in states.values():
            for record_key, value in state.changes():
                if value is None:
                    batch.delete(record_key)
                else:
                    batch.put(record_key, value)
        db.write(batch)

        scan = prefix_scan(db)
        records = scan(b"a\x00")
        assert [k for k, _ in records] == sorted(k for k in db.keys() if k.startswith(b"a\x00"))
        assert b"a\x00" in dict(records) and b"a\x00b\x00" in dict(records)  # the NUL key's head too
        assert not any(k.startswith(b"a1") for k, _ in records)

        at = BASE + 39 * 170_000
        for key in keys:
            pointwise = KeyState(key, db.get, plan.retention)
            scanned = KeyState(key, db.get, plan.retention, scan)
            assert scanned.newest == pointwise.newest and scanned.mask == pointwise.mask
            expected = read_features(plan, pointwise, at)
            assert expected == read_features(plan, scanned, at)
        # "a" had x = 0, 4, ..., 36 at BASE + x * 170 s; the hour ending in b(at) holds those from bucket
        # b(at) - 5 on (docs/product.md window bounds).
        end = at // 600_000
        mine = [x for x in range(0, 40, 4) if (BASE + x * 170_000) // 600_000 > end - 6]
        a = read_features(plan, KeyState(b"a", db.get, plan.retention, scan), at)
        assert (a["x_count_1h"], a["x_min_1h"], a["x_last_1h"]) == (len(mine), float(mine[0]), 36.0)
        assert 0 < len(mine) < 10
        assert not KeyState(b"zz", db.get, plan.retention, scan).exists
    finally:
        db.close()


def test_state_writer_writes_each_partition_in_order_locally_and_to_its_changelog(tmp_path: Path) -> None:
    table = RdictTable(tmp_path, "features")
    dbs = {p: table.db(p) for p in (0, 1)}
    try:
        dbs[0][b"gone"] = b"old"
        told: list[tuple[str, int]] = []
        writer = StateWriter(producer=None, on_write=lambda name, partition: told.append((name, partition)))
        writer.write_many(table, 0, [(b"k\x001", b"v1"), (b"gone", None), (b"k\x00", b"head")])
        writer.write(table, 1, b"other", b"v")
        writer.write_many(table, 0, [(b"k\x001", b"v1 again")])
        assert dbs[0].get(b"k\x001") is None  # nothing is local before commit_local
        writer.commit_local()
        # Each partition marked unconfirmed until its changelog records are acked (none sent here).
        assert dict(dbs[0].items()) == {b"k\x00": b"head", b"k\x001": b"v1 again", UNCONFIRMED_KEY: b"1"}
        assert dict(dbs[1].items()) == {b"other": b"v", UNCONFIRMED_KEY: b"1"}
        assert told == [("features", 0), ("features", 1)]
        changelog = (
            writer._changelog._records
        )  # what send() hands to the producer, per partition (timestamp None: when sent)
        assert changelog == {
            ("features-changelog", 0): [
                (b"k\x001", b"v1", [], None),
                (b"gone", None, [], None),
                (b"k\x00", b"head", [], None),
                (b"k\x001", b"v1 again", [], None),
            ],
            ("features-changelog", 1): [(b"other", b"v", [], None)],
        }
    finally:
        for db in dbs.values():
            db.close()


async def test_a_writer_whose_records_follow_another_writers_keeps_its_persisted_offset(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker frozen past the session timeout wakes up with a batch in flight: its records land
    after the new owner's. Persisting their offset would make its next recovery of the partition start
    after the new owner's records, and its state would lack them for good."""
    table = RdictTable(tmp_path, "features-g")
    producer = FakeKafkaProducer()
    writer = StateWriter(producer)
    writer.write(table, 0, b"a\x00", b'{"n":1,"m":"1","o":{}}')
    await writer.delivered()
    assert table.persisted(0) == 0  # its own records from the start of the changelog
    writer.write_many(table, 0, [(b"a\x00", b"1"), (b"b\x00", b"2")])
    await writer.delivered()
    assert table.persisted(0) == 2

    assert not unconfirmed(table.db(0))  # acked and persisted: confirmed

    producer.next_offset[TopicPartition(table.changelog, 0)] += 5  # another worker wrote 3..7
    writer.write(table, 0, b"a\x00", b"3")
    await writer.delivered()
    assert table.persisted(0) == 2
    assert "records of another writer precede these (offsets 8-8); persisted offset kept" in caplog.text
    assert unconfirmed(table.db(0))  # its next recovery rebuilds the partition from the changelog
    clear(table.db(0))
    assert list(table.db(0).keys()) == []

    fresh = RdictTable(tmp_path / "fresh", "features-g")
    writer.write(fresh, 1, b"c\x00", b"4")  # a partition never restored here, whose changelog is not empty
    producer.next_offset[TopicPartition(fresh.changelog, 1)] = 10
    await writer.delivered()
    assert fresh.persisted(1) is None


def test_contiguous_end_chains_batches_from_the_persisted_offset() -> None:
    assert contiguous_end(4, [(8, 9), (5, 7)]) == 9
    assert contiguous_end(None, [(0, 3)]) == 3
    assert contiguous_end(None, [(1, 3)]) is None
    assert contiguous_end(4, [(5, 6), (8, 9)]) is None


async def test_a_write_stays_unconfirmed_until_its_own_ack_and_not_an_earlier_ones(tmp_path: Path) -> None:
    table = RdictTable(tmp_path, "features-g")
    producer = FakeKafkaProducer()
    first, second = StateWriter(producer), StateWriter(producer)
    first.write(table, 0, b"a\x00", b"1")
    await first.send()
    second.write(table, 0, b"a\x00", b"2")
    await second.send()  # batch k + 1 written locally before batch k is acked
    await first.acked()
    assert table.persisted(0) == 0 and unconfirmed(table.db(0))
    await second.acked()
    assert table.persisted(0) == 1 and not unconfirmed(table.db(0))
