"""HTTP ingest without a worker: body parsing, validation as the worker decodes, the checks a
``wait=true`` makes per stage (source names as the engine records them), and reading them off state."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from app.api.features import BadRequest
from app.api.ingest import Check, _validate_yielding, checks_for, parse_events, validate
from app.config.routing import stream_stages
from app.config.spec import load_pipeline
from app.records.partitioning import partition_for
from app.records.source import stage_tag
from tables.plans import GroupPlan
from tables.read import shows_applied
from tables.state_format import bucket_key, head_key
from tests.conftest import PAYMENTS

PIPELINE = load_pipeline(PAYMENTS)
PLANS = {name: GroupPlan.from_spec(name, spec) for name, spec in PIPELINE.features.items()}


def test_a_body_is_a_json_array_or_json_lines() -> None:
    assert parse_events(b' [{"a": 1}, 2] ') == [{"a": 1}, 2]
    assert parse_events(b'{"a": 1}\n\n{"a": 2}\n') == [{"a": 1}, {"a": 2}]  # not one JSON value: lines
    assert parse_events(b'{"a": 1}', "application/x-ndjson") == [{"a": 1}]
    for body, code in [
        (b"", "bad_request"),
        (b"[1,", "bad_json"),
        (b'{"a": 1}\n{oops', "bad_json"),
        (b'{"a": 1}', "bad_request"),  # one object as JSON: the schema says an array
    ]:
        with pytest.raises(BadRequest) as caught:
            parse_events(body)
        assert caught.value.code == code


def test_rows_are_validated_as_the_worker_decodes_them() -> None:
    stream = PIPELINE.streams["payments"]
    events = [
        {"card_id": "c1", "merchant_id": "m1", "amount": 3, "ts": 1_796_378_400_000},
        {"card_id": "c1", "amount": "3"},
        {"merchant_id": "m1", "ts": 1},
        "not an object",
        {"card_id": 7, "ts": 5},  # the key field is declared str
        {"card_id": "c3", "ts": 5, "extra": [1]},  # undeclared fields travel as given
        {"card_id": "c2"},  # no time field
    ]
    accepted, rejected = validate(events, stream, now_ms=99)
    assert accepted.index == [0, 5]
    assert accepted.keys == ["c1", "c3"]
    assert accepted.events[0] == (
        1_796_378_400_000,
        {"card_id": "c1", "merchant_id": "m1", "device_id": None, "amount": 3.0, "status": None,
         "ts": 1_796_378_400_000},
    )  # fmt: skip
    assert orjson.loads(accepted.values[1]) == {"card_id": "c3", "ts": 5, "extra": [1]}  # sent as given
    assert [(r["index"], r["reason"]) for r in rejected] == [
        (1, "type"),
        (2, "missing_key"),
        (3, "decode"),
        (4, "type"),
        (6, "type"),
    ]
    assert rejected[0]["error"] == "field 'amount': expected float, got str"


def test_checks_follow_the_stages_the_event_visits_with_their_source_names() -> None:
    stages = stream_stages(PIPELINE, "payments", "g")
    fields = {"card_id": "c1", "merchant_id": "m1", "device_id": None, "amount": 5.0, "status": "ok"}
    checks = checks_for(stages, PLANS, "payments", (1000, fields), ("payments", 3, 42), partitions=4)
    p_card, p_merchant = (partition_for(k.encode(), 4) for k in ("c1", "m1"))
    # no device: the device stage is skipped, so the pair stage's path has two partitions
    card, merchant = stage_tag(("card_id",)).decode(), stage_tag(("merchant_id",)).decode()
    assert checks == [
        Check("card", "c1", "payments:3", 42, 1000),
        Check("merchant", "m1", f"payments:3>{card}:{p_card}", 42, 1000),
        Check("card_merchant", "c1|m1", f"payments:3>{card}:{p_card}>{merchant}:{p_merchant}", 42, 1000),
    ]
    # a group the event adds nothing to (null amount: spend, sales, pair skip it) is not waited for,
    # except where an op counts without a field (none here) or a field is present (card's distinct)
    nothing = {**fields, "amount": None}
    groups = [c.group for c in checks_for(stages, PLANS, "payments", (1000, nothing), ("payments", 3, 42), 4)]
    assert groups == ["card", "merchant"]  # merchants_distinct / cards_distinct still count it


def test_state_shows_an_event_applied_by_its_head_or_its_bucket_or_as_late() -> None:
    plan = PLANS["card"]  # period 10 min, retention 24 h = 144 buckets
    period = plan.period_ms
    records: dict[bytes, bytes] = {}
    check = Check("card", "c1", "payments:0", 10, time_ms=50 * period + 5)

    def shown() -> bool:
        return shows_applied(plan, records.get, b"c1", check.source, check.offset, check.time_ms)

    assert not shown()  # no state at all
    records[head_key(b"c1")] = orjson.dumps({"n": None, "m": "0", "o": {"payments:0": 3}})
    assert not shown()  # only a late event of its stage marked: nothing applied here yet
    records[head_key(b"c1")] = orjson.dumps({"n": 50, "m": "1", "o": {"payments:0": 9}})
    assert not shown()
    records[bucket_key(b"c1", 50)] = orjson.dumps([[None], "=AAAA", {"payments:0": 10}])
    assert shown()  # the bucket lists it (the head is written only when the buckets change shape)
    del records[bucket_key(b"c1", 50)]
    records[head_key(b"c1")] = orjson.dumps({"n": 50, "m": "1", "o": {"payments:0": 11, "payments:1": 99}})
    assert shown()
    records[head_key(b"c1")] = orjson.dumps({"n": 50 + 144, "m": "1", "o": {}})
    assert shown()  # late there: dropped and dead-lettered, the answers stay as they were
    assert not shows_applied(plan, records.get, b"c1", "payments:0", 10, (51 + 144) * period)


def test_large_bodies_are_validated_in_slices_with_their_indices_kept() -> None:
    stream = PIPELINE.streams["payments"]
    events: list[object] = [{"card_id": f"c{i}", "amount": 1.0, "ts": i} for i in range(1_200)]
    for i in (3, 700, 1_100):
        events[i] = {"amount": 1.0, "ts": i}
    accepted, rejected = asyncio.run(_validate_yielding(events, stream, now_ms=0))
    assert [r["index"] for r in rejected] == [3, 700, 1_100]
    assert accepted.index == [i for i in range(1_200) if i not in (3, 700, 1_100)]
    assert accepted.keys[700] == "c702" and accepted.events[700][0] == 702  # 3 and 700 left out
