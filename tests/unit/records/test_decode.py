"""Decoding: typed fields, entity keys, event time, and the dead-letter reason of each failure."""

from __future__ import annotations

import orjson
import pytest

from app.config.spec import load_pipeline
from app.records.decode import BadRecord, decode_event, decode_lookup, event_time_ms
from tests.conftest import SHOP

PIPE = load_pipeline(SHOP)
ORDERS = PIPE.streams["orders"]
USERS = PIPE.lookups["users"]
GOOD = {
    "user_id": "u1",
    "order_id": "o1",
    "product": "p",
    "amount": 12,
    "status": "paid",
    "ts": 1_700_000_000_000,
}


def test_good_event() -> None:
    key, ts, fields = decode_event(orjson.dumps({**GOOD, "extra": 1}), ORDERS, 5)
    assert key == "u1" and ts == 1_700_000_000_000
    assert fields == {**GOOD, "amount": 12.0}
    assert isinstance(fields["amount"], float)
    assert "extra" not in fields


def test_missing_optional_field_is_null_and_time_falls_back_to_record_time() -> None:
    clicks = PIPE.streams["clicks"].model_copy(update={"time": None})
    key, ts, fields = decode_event(b'{"user_id": "u2"}', clicks, 42)
    assert (key, ts, fields) == ("u2", 42, {"user_id": "u2", "page": None, "ts": None})


def test_numeric_key_becomes_its_text() -> None:
    key, _, fields = decode_event(
        orjson.dumps({**GOOD, "user_id": 17}),
        ORDERS.model_copy(update={"fields": {**ORDERS.fields, "user_id": "int"}}),
        0,
    )
    assert key == "17" and fields["user_id"] == "17"


@pytest.mark.parametrize(
    ("raw", "reason", "message"),
    [
        (b"{not json", "decode", "invalid JSON"),
        (b"[1, 2]", "decode", "expected a JSON object, got list"),
        (None, "decode", "empty value"),
        (b"\xff\xfe junk", "decode", "invalid JSON"),
        (orjson.dumps({**GOOD, "user_id": None}), "missing_key", "key field 'user_id' is missing"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "user_id"}), "missing_key", "missing or empty"),
        (orjson.dumps({**GOOD, "user_id": ""}), "missing_key", "missing or empty"),
        (orjson.dumps({**GOOD, "amount": "12"}), "type", "field 'amount': expected float, got str"),
        (orjson.dumps({**GOOD, "amount": True}), "type", "expected float, got bool"),
        (
            orjson.dumps({**GOOD, "ts": 1.5e12, "order_id": 3}),
            "type",
            "field 'order_id': expected str, got int",
        ),
        (orjson.dumps({**GOOD, "ts": "2023-11-14T22:13:20Z"}), "type", "field 'ts': expected int, got str"),
        (orjson.dumps({**GOOD, "ts": None}), "type", "time field 'ts' is missing"),
        (orjson.dumps({**GOOD, "user_id": {"a": 1}}), "type", "key field 'user_id': expected a string"),
    ],
)
def test_bad_events_name_their_reason(raw: bytes | None, reason: str, message: str) -> None:
    with pytest.raises(BadRecord) as err:
        decode_event(raw, ORDERS, 0)
    assert err.value.reason == reason
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        (1_700_000_000_123, 1_700_000_000_123),
        (1.7e12, 1_700_000_000_000),
        ("2023-11-14T22:13:20Z", 1_700_000_000_000),
        ("2023-11-14T22:13:20.5+00:00", 1_700_000_000_500),
        ("2023-11-14T23:13:20+01:00", 1_700_000_000_000),
        ("2023-11-14T22:13:20", 1_700_000_000_000),  # no zone: UTC
    ],
)
def test_event_time_forms(value: object, ms: int) -> None:
    assert event_time_ms(value, "ts") == ms


def test_iso_time_field_declared_str() -> None:
    stream = ORDERS.model_copy(update={"fields": {**ORDERS.fields, "ts": "str"}})
    assert (
        decode_event(orjson.dumps({**GOOD, "ts": "2023-11-14T22:13:20Z"}), stream, 0)[1] == 1_700_000_000_000
    )
    with pytest.raises(BadRecord, match="'yesterday' is not ISO-8601") as err:
        decode_event(orjson.dumps({**GOOD, "ts": "yesterday"}), stream, 0)
    assert err.value.reason == "type"


def test_lookup_upsert_key_from_value_or_kafka_key_and_tombstone() -> None:
    assert decode_lookup(b"k", b'{"user_id": "u1", "country": "DE", "segment": "vip"}', USERS) == (
        "u1",
        {"country": "DE", "segment": "vip"},
    )
    assert decode_lookup(b"u9", b'{"country": "FR"}', USERS) == ("u9", {"country": "FR", "segment": None})
    assert decode_lookup(b"u9", None, USERS) == ("u9", None)
    with pytest.raises(BadRecord) as err:
        decode_lookup(None, None, USERS)
    assert err.value.reason == "missing_key"
    with pytest.raises(BadRecord) as err:
        decode_lookup(b"u1", b'{"country": 3}', USERS)
    assert err.value.reason == "type"
