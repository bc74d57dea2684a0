"""An event's identity at a later stage names its route, and a late decision holds for every group of
its stage (docs/pipeline.md "Exactly once in state", docs/features.md "Late rule"), through the real
StreamEngine passes. Each test failed before its fix: two routes collided into one identity, and a
redelivered late event was applied to the groups where it was not late."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson

from app.records.partitioning import partition_for
from app.records.source import HOP_PATH, legacy_identity, route_identity, stage_tag
from tables.read import read_features
from tables.registry import stored_state
from tests.support.engine import PARTITIONS, Engine, FakeIO, Fetched, Record, pipeline_engine

MINUTE = 60_000
T0 = 1_767_225_600_000  # 2026-01-01, a multiple of every period here

ROUTES = """\
name: routes
streams:
  pay:
    topic: pay
    key: card
    time: ts
    fields: {card: str, merchant: str, device: str, country: str, ts: int}
features:
  merchant:
    key: merchant
    period: 10m
    aggregations: [{name: m, stream: pay, ops: [count], windows: [1h]}]
  device:
    key: device
    period: 10m
    aggregations: [{name: d, stream: pay, ops: [count], windows: [1h]}]
  country:
    key: country
    period: 10m
    aggregations: [{name: c, stream: pay, ops: [count], windows: [1h]}]
"""

TWO_WINDOWS = """\
name: two-windows
streams:
  pay:
    topic: pay
    key: card
    time: ts
    fields: {card: str, amount: float, ts: int}
features:
  short:
    key: card
    period: 10m
    aggregations: [{name: s, stream: pay, field: amount, ops: [count], windows: [20m]}]
  long:
    key: card
    period: 1h
    aggregations: [{name: l, stream: pay, field: amount, ops: [count], windows: [24h]}]
"""


class Feeder:
    """Runs batches through the engine's passes; hands back the hop records each batch sent, as a
    consumer of the hop topics would read them (offsets per partition)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.io = FakeIO(engine.engine.routes)
        self.offsets: dict[tuple[str, int], int] = {}
        self.read = 0

    def run(self, records: list[Record]) -> list[Record]:
        engine = self.engine.engine

        async def passes() -> None:
            batch = await engine.decode_batch(
                Fetched(records), self.io.assignment(), self.io.topic_partitions
            )
            done = await (await engine.run_batch(batch, {}))
            await (await engine.send_batch(batch, done, self.io.producer, self.io.kafka_producer))

        asyncio.run(passes())
        sent = self.io.kafka_producer.sent
        new, self.read = sent[self.read :], len(sent)
        hops = []
        for s in new:
            if "-repartition" in s.topic:
                offset = self.offsets.get((s.topic, s.partition), 0)
                self.offsets[s.topic, s.partition] = offset + 1
                assert s.key is not None and s.value is not None
                hops.append(
                    Record(s.topic, s.partition, offset, s.key, s.value, s.timestamp_ms or 0, s.headers)
                )
        return hops


def pay(offset: int, **event: Any) -> Record:
    key = event["card"].encode()
    return Record("pay", partition_for(key, PARTITIONS), offset, key, orjson.dumps(event), event["ts"])


def count(engine: Engine, group: str, key: str, at: int) -> int:
    plan = engine.tables.plans[group]
    raw = key.encode()
    db = engine.tables.features[group].db(partition_for(raw, PARTITIONS))
    features = read_features(plan, stored_state(plan, db, raw), at)
    return int(next(v for name, v in features.items() if name.endswith("_count_1h") or "count" in name))


def same_partition_values(prefix_a: str, prefix_b: str) -> tuple[str, str]:
    """A value of each prefix on the same partition (two stages' keys, one partition number)."""
    for i in range(100):
        a = f"{prefix_a}{i}"
        for j in range(100):
            b = f"{prefix_b}{j}"
            if partition_for(a.encode(), PARTITIONS) == partition_for(b.encode(), PARTITIONS):
                return a, b
    raise AssertionError("no pair")


def test_two_routes_through_different_optional_keys_never_share_an_identity(tmp_path: Path) -> None:
    spec = tmp_path / "routes.yaml"
    spec.write_text(ROUTES)
    engine = pipeline_engine(tmp_path / "state", spec)
    try:
        feeder = Feeder(engine)
        merchant, device = same_partition_values("m", "d")
        # One card, so one stream partition: X goes card -> merchant -> country (no device), Y goes
        # card -> device -> country (no merchant), both through partition p of their middle stage.
        x = pay(0, card="c1", merchant=merchant, device=None, country="FR", ts=T0)
        y = pay(1, card="c1", merchant=None, device=device, country="FR", ts=T0 + MINUTE)
        to_middle = feeder.run([x, y])
        by_topic = {r.topic: r for r in to_middle}
        assert len(by_topic) == 2
        x_hop = next(r for t, r in by_topic.items() if "by-merchant" in t)
        y_hop = next(r for t, r in by_topic.items() if "by-device" in t)
        # The stage of the later record (Y) runs first: its record reaches country before X's.
        (y_country,) = feeder.run([y_hop])
        (x_country,) = feeder.run([x_hop])
        x_path, y_path = dict(x_country.headers)[HOP_PATH], dict(y_country.headers)[HOP_PATH]
        assert x_path != y_path
        assert legacy_identity("pay:0" + x_path.decode()) == legacy_identity("pay:0" + y_path.decode())
        assert stage_tag(("merchant",)) in x_path and stage_tag(("device",)) in y_path
        feeder.run([y_country])
        feeder.run([x_country])
        at = T0 + 2 * MINUTE
        assert count(engine, "country", "FR", at) == 2  # before the fix: 1 (X taken for a duplicate)
        assert count(engine, "merchant", merchant, at) == 1 and count(engine, "device", device, at) == 1
        assert feeder.io.producer.sent == []  # no dead letter
    finally:
        engine.close()


def test_state_of_the_previous_release_recognises_a_record_sent_again_on_the_new_route(
    tmp_path: Path,
) -> None:
    """A record the previous release applied at a later stage (its path without stage tags), sent
    again by an upgraded stage before its commit, is a duplicate, not a second count."""
    spec = tmp_path / "routes.yaml"
    spec.write_text(ROUTES)
    engine = pipeline_engine(tmp_path / "state", spec)
    try:
        feeder = Feeder(engine)
        events = [
            pay(i, card="c1", merchant=f"m{i % 3}", device=None, country="FR", ts=T0 + i * MINUTE)
            for i in range(6)
        ]
        to_merchant = feeder.run(events)
        to_country = feeder.run(to_merchant)

        def old_release(record: Record) -> Record:  # the path as the previous release wrote it
            headers = tuple(
                (k, legacy_identity("s" + v.decode()).removeprefix("s").encode() if k == HOP_PATH else v)  # type: ignore[union-attr]
                for k, v in record.headers
            )
            return Record(
                record.topic,
                record.partition,
                record.offset,
                record.key,
                record.value,
                record.timestamp,
                headers,
            )

        feeder.run([old_release(r) for r in to_country])  # applied by the previous release
        at = T0 + 10 * MINUTE
        assert count(engine, "country", "FR", at) == 6
        before = engine.contents()
        # Upgraded, the merchant stage sends the same records again (no commit before the upgrade).
        again = feeder.run(to_merchant)
        assert all(b">" in dict(r.headers)[HOP_PATH] and b":" in dict(r.headers)[HOP_PATH] for r in again)
        feeder.run(again)
        assert count(engine, "country", "FR", at) == 6
        assert engine.contents() == before
    finally:
        engine.close()


def test_a_late_event_redelivered_after_a_crash_is_applied_nowhere(tmp_path: Path) -> None:
    spec = tmp_path / "two.yaml"
    spec.write_text(TWO_WINDOWS)
    engine = pipeline_engine(tmp_path / "state", spec)
    try:
        feeder = Feeder(engine)
        hour = 60 * MINUTE
        feeder.run([pay(0, card="c1", amount=1.0, ts=T0 + 3 * hour)])
        # In one batch: an event late for 'short' (20 min) and not for 'long' (24 h), then one that
        # opens a bucket of 'short' (its head, and so the late mark, is written with this batch) but
        # falls in a bucket 'long' has (its head is not rewritten).
        late = pay(1, card="c1", amount=2.0, ts=T0)
        feeder.run([late, pay(2, card="c1", amount=3.0, ts=T0 + 3 * hour + 10 * MINUTE)])
        (dead,) = feeder.io.producer.sent
        assert dict(dead.headers)["hydrant-reason"] == b"late"
        at = T0 + 3 * hour + 20 * MINUTE
        plan = engine.tables.plans["long"]
        db = engine.tables.features["long"].db(partition_for(b"c1", PARTITIONS))

        def long_count() -> int:
            return int(read_features(plan, stored_state(plan, db, b"c1"), at)["l_count_24h"])

        assert long_count() == 2
        before = engine.contents()
        # A crash before the commit: the late event is delivered again.
        feeder.run([late])
        assert long_count() == 2  # before the fix: 3 ('long' applied the redelivered late event)
        assert engine.contents() == before
    finally:
        engine.close()


def test_a_route_written_partly_by_the_previous_release_is_named_in_its_form() -> None:
    """During a rolling upgrade an old stage 0 and an upgraded stage 1 write a mixed route; the same
    event sent again by the upgraded stage 0 must be recognised at stage 2."""
    assert route_identity("pay:3", ">3>AbCd:1") == "pay:3>3>1"
    assert route_identity("pay:3", ">XyZw:3>AbCd:1") == "pay:3>XyZw:3>AbCd:1"
    assert legacy_identity(route_identity("pay:3", ">XyZw:3>AbCd:1")) == route_identity("pay:3", ">3>AbCd:1")
    assert route_identity("pay:3", ">3>1") == "pay:3>3>1"
