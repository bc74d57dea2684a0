"""Several entities per stream through the real StreamEngine passes: the payments example's events
visit the card, merchant, device and (card, merchant) keys through hop topics (app/config/routing.py);
each group's state and each output row is checked against a plain-Python reference."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from app.config.routing import stream_stages
from app.config.spec import load_pipeline
from app.records.keys import key_string
from app.records.partitioning import partition_for
from app.records.source import HOP_PARTS, SOURCE_KEY, SOURCE_OFFSET
from tables.read import read_features
from tables.registry import stored_state
from tests.conftest import PAYMENTS
from tests.support.engine import GROUP_ID, PARTITIONS, T0, Record, pipeline_engine
from tests.support.entities import (
    HOPS,
    MINUTE,
    PIPELINE,
    STAGES,
    Driver,
    Reference,
    assert_features,
    key_of,
    payments,
    preload_merchants,
    stream_record,
)


def test_each_output_carries_every_group_at_the_event_and_the_lookup_row_current_then(tmp_path: Path) -> None:
    engine = pipeline_engine(tmp_path, PAYMENTS)
    try:
        preload_merchants(engine)
        events = payments(300)
        driver = Driver(engine)
        # One record at a time, each followed through all its stages: processing order = event order.
        driver.run(
            [stream_record(i, e) for i, e in enumerate(events)],
            batch=1,
            between=lambda fed: preload_merchants(engine, version=1) if fed == 150 else None,
        )
        outputs = driver.outputs()
        assert len(outputs) == len(events)
        reference = Reference()
        for i, (event, row) in enumerate(zip(events, outputs, strict=True)):
            reference.seen.append(event)
            assert {k: row[k] for k in event} == event
            assert (row["m_mcc"], row["m_country"]) == (
                f"{5000 + int(event['merchant_id'][1:])}",
                "FR" if i < 150 else "DE",
            )
            for group, spec in PIPELINE.features.items():
                names = spec.feature_names()
                key = key_of(event, spec.key_fields)
                if key is None:  # no device: the device group's columns are null
                    assert [row[n] for n in names] == [None] * len(names)
                else:
                    assert_features({n: row[n] for n in names}, reference.features(group, key, event["ts"]))
            avg = row["sales_avg_24h"]
            assert row["amount_vs_merchant"] == pytest.approx(event["amount"] / avg)
        # Every hop keeps the payment's original source and Kafka key; the last stage sent the output.
        hops = [s for s in driver.io.kafka_producer.sent if s.topic in HOPS]
        first = dict(hops[0].headers)
        assert first[SOURCE_KEY] == events[0]["card_id"].encode() and first[SOURCE_OFFSET] == b"0"
        assert orjson.loads(first[HOP_PARTS]).keys() == {"g:card"}
        assert hops[0].timestamp_ms == events[0]["ts"]  # the record's timestamp goes along
        unkeyed = sum(1 for e in events if e["device_id"] is None)
        assert len(hops) == 3 * len(events) - unkeyed  # merchant, device (when there is one), pair
    finally:
        engine.close()


def test_batched_and_redelivered_events_count_once_in_every_group(tmp_path: Path) -> None:
    engine = pipeline_engine(tmp_path, PAYMENTS)
    try:
        preload_merchants(engine)
        events = payments(600, seed=11)
        records = [stream_record(i, e) for i, e in enumerate(events)]
        driver = Driver(engine)
        # Batches of 20 minutes of payments: a merchant's or device's events from the four stream
        # partitions arrive at most that far apart, within every group's retention (none is late).
        driver.run(records, batch=20)
        assert driver.io.producer.sent == []  # no dead letters
        # A payment and one of its hop records delivered again (a worker crashed before committing).
        replay = [r for r in driver.io.kafka_producer.sent if r.topic == STAGES[1].topic][:5]
        before = engine.contents()
        driver.run(records[100:105], batch=5)
        hops = [
            Record(s.topic, s.partition, 10_000 + i, s.key, s.value, s.timestamp_ms or 0, s.headers)  # type: ignore[arg-type]
            for i, s in enumerate(replay)
        ]
        driver.run(hops, batch=5)
        assert engine.contents() == before
        assert len(driver.outputs()) == len(events) + 5 + 5  # at least once after a crash

        reference = Reference()
        reference.seen = events
        at = events[-1]["ts"]
        plans = engine.tables.plans
        for group, spec in PIPELINE.features.items():
            keys = {k for e in events if (k := key_of(e, spec.key_fields)) is not None}
            assert len(keys) > 3
            for key in keys:
                raw = key.encode()
                db = engine.tables.features[group].db(partition_for(raw, PARTITIONS))
                state = stored_state(plans[group], db, raw)
                assert_features(read_features(plans[group], state, at), reference.features(group, key, at))
    finally:
        engine.close()


def test_a_composite_key_escapes_its_separator_and_routes_by_its_string_form() -> None:
    assert key_string(["c|1", "m\\2"]) == "c\\|1|m\\\\2"
    stage = STAGES[-1]
    assert stage.key == ("card_id", "merchant_id") and stage.groups == ("card_merchant",)


def test_a_payment_without_a_merchant_skips_its_stages_and_a_late_one_ends_as_one_dead_letter(
    tmp_path: Path,
) -> None:
    # Upstream partitions not read in a batch do not hold a stage back (idle at once), so that the
    # merchant stage's progress is c1's partition's: day 3.
    engine = pipeline_engine(tmp_path, PAYMENTS, idle_ms=0)
    try:
        preload_merchants(engine)
        day = 24 * 60 * MINUTE
        base = {"device_id": "d1", "amount": 10.0, "status": "ok"}
        assert partition_for(b"c5", PARTITIONS) == partition_for(b"c1", PARTITIONS)
        events = [
            {**base, "card_id": "c1", "merchant_id": "m1", "ts": T0 + 3 * day},  # m1's newest: day 3
            {**base, "card_id": "c2", "merchant_id": None, "device_id": "d2", "ts": T0},  # no merchant
            # 3 days behind its own partition (c1's): late for m1
            {**base, "card_id": "c5", "merchant_id": "m1", "device_id": "d3", "ts": T0},
        ]
        driver = Driver(engine)
        driver.run([stream_record(i, e) for i, e in enumerate(events)], batch=1)
        outputs = driver.outputs()
        assert [o["card_id"] for o in outputs] == ["c1", "c2"]
        no_merchant = outputs[1]
        merchant_columns = [*PIPELINE.features["merchant"].feature_names(), "m_mcc", "m_country"]
        merchant_columns += PIPELINE.features["card_merchant"].feature_names()
        assert all(no_merchant[c] is None for c in merchant_columns)
        assert no_merchant["spend_count_1h"] == 1 and no_merchant["device_count_1h"] == 1
        # The late payment: one dead letter after the last stage, naming the merchant group; applied
        # to every other stage's groups (its card, device and pair).
        (dead,) = driver.io.producer.sent
        headers = dict(dead.headers)
        assert dead.topic == "payments.dlq" and headers["hydrant-reason"] == b"late"
        assert b"group 'merchant'" in headers["hydrant-error"] and dead.value == orjson.dumps(events[2])
        assert dead.key == b"c5"  # the original Kafka key
        plans, at = engine.tables.plans, T0 + 60_000
        for group, key, count in [("card", "c5", 1), ("device", "d3", 1), ("card_merchant", "c5|m1", 1)]:
            db = engine.tables.features[group].db(partition_for(key.encode(), PARTITIONS))
            features = read_features(plans[group], stored_state(plans[group], db, key.encode()), at)
            assert next(v for n, v in features.items() if "count" in n) == count, group
        m1 = engine.tables.features["merchant"].db(partition_for(b"m1", PARTITIONS))
        assert (
            read_features(plans["merchant"], stored_state(plans["merchant"], m1, b"m1"), at)["sales_count_1h"]
            == 0
        )
    finally:
        engine.close()


GLOBAL_PIPELINE = """
name: global-join
streams:
  payments:
    topic: payments
    key: card_id
    time: ts
    fields: {card_id: str, merchant_id: str, amount: float, ts: int}
lookups:
  merchants: {topic: merchants, key: merchant_id, fields: {mcc: str, country: str}, global: true}
features:
  card:
    key: card_id
    period: 10m
    aggregations:
      - {name: spend, stream: payments, field: amount, ops: [count, sum], windows: [1h]}
outputs:
  enriched:
    topic: enriched
    from: payments
    join: [{lookup: merchants, on: merchant_id, prefix: m_}]
    features: [card]
"""


def test_a_global_lookup_is_joined_on_any_field_at_the_first_stage_from_the_replica(tmp_path: Path) -> None:
    path = tmp_path / "global.yaml"
    path.write_text(GLOBAL_PIPELINE)
    pipeline = load_pipeline(path)
    (stage,) = stream_stages(pipeline, "payments", GROUP_ID)  # no hop for the join
    assert stage.joins == (("merchants", "merchant_id"),)
    engine = pipeline_engine(tmp_path / "state", path)
    try:
        replica = engine.tables.replicas["merchants"]
        replica.apply([(b"m1", orjson.dumps({"mcc": "5411", "country": "FR"}))], {0: 1})
        events = [
            {"card_id": "c1", "merchant_id": "m1", "amount": 5.0, "ts": T0},
            {"card_id": "c2", "merchant_id": "m2", "amount": 7.0, "ts": T0},  # not in the lookup
            {"card_id": "c1", "merchant_id": None, "amount": 1.0, "ts": T0 + 1},
        ]
        driver = Driver(engine)
        records = []
        for i, e in enumerate(events):
            key = e["card_id"].encode()
            records.append(
                Record("payments", partition_for(key, PARTITIONS), i, key, orjson.dumps(e), e["ts"])
            )
        driver.run(records, batch=3)
        rows = sorted((orjson.loads(s.value) for s in driver.io.sent_to("enriched")), key=lambda r: r["ts"])
        assert [(r["card_id"], r["m_mcc"], r["m_country"], r["spend_count_1h"]) for r in rows] == [
            ("c1", "5411", "FR", 1),
            ("c2", None, None, 1),
            ("c1", None, None, 2),
        ]
        assert not [s for s in driver.io.kafka_producer.sent if s.topic.endswith("-repartition")]
    finally:
        engine.close()
