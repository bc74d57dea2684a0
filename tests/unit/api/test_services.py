"""Feature services over HTTP (the payments example's `fraud`): state written by the real StreamEngine,
answered by the API's handlers, checked row by row against a plain reference; per-row errors; two
workers, each owner asked once per group and lookup."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from app.api.context import ApiContext
from app.api.openapi import document
from app.config.spec import load_pipeline
from app.records.keys import key_string
from app.records.partitioning import partition_for
from tests.conftest import PAYMENTS
from tests.support.engine import GROUP_ID, PARTITIONS, Engine, pipeline_engine
from tests.support.entities import Driver, Reference, merchant_row, payments, preload_merchants, stream_record
from tests.unit.api.test_entity_keys import Here, web_app

EVENTS = payments(80, seed=11)
AT = EVENTS[-1]["ts"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    engine = pipeline_engine(tmp_path_factory.mktemp("services"), PAYMENTS)
    preload_merchants(engine)
    Driver(engine).run([stream_record(i, e) for i, e in enumerate(EVENTS)], batch=7)
    yield engine
    engine.close()


def context(engine: Engine, placement: Here | None = None) -> ApiContext:
    return ApiContext(load_pipeline(PAYMENTS), GROUP_ID, PARTITIONS, engine.tables, placement or Here())


def expected(card: str, merchant: str, amount: float, at: int = AT) -> dict[str, Any]:
    """The `fraud` row the reference gives: request field, card.*, merchant.sales_avg_24h, cm_ pair
    features, the merchants row, the computed column (nulls and `missing` for unknown keys)."""
    reference = Reference()
    reference.seen = EVENTS
    known_cards = {e["card_id"] for e in EVENTS}
    pairs = {(e["card_id"], e["merchant_id"]) for e in EVENTS}
    merchants = {e["merchant_id"] for e in EVENTS}
    features: dict[str, Any] = {"amount": amount}
    missing = []
    card_features = reference.features("card", card, at)
    if card not in known_cards:
        missing.append("card")
        card_features = dict.fromkeys(card_features)
    features.update(card_features)
    sales = reference.features("merchant", merchant, at)["sales_avg_24h"] if merchant in merchants else None
    if merchant not in merchants:
        missing.append("merchant")
    features["sales_avg_24h"] = sales
    pair = reference.features("card_merchant", key_string([card, merchant]), at)
    if (card, merchant) not in pairs:
        missing.append("card_merchant")
        pair = dict.fromkeys(pair)
    features.update({f"cm_{name}": value for name, value in pair.items()})
    row = merchant_row(merchant) if merchant in {f"m{m}" for m in range(5)} else {}
    features.update({"m_mcc": row.get("mcc"), "m_country": row.get("country")})
    features["amount_vs_merchant"] = amount / sales if sales else None
    return {"features": features, "missing": missing, "outside_retention": []}


def assert_row(actual: dict[str, Any], wanted: dict[str, Any]) -> None:
    assert list(actual["features"]) == list(wanted["features"])  # the documented column order
    for name, value in wanted["features"].items():
        got = actual["features"][name]
        assert got == (pytest.approx(value, rel=1e-12) if isinstance(value, float) else value), name
    assert (actual["missing"], actual["outside_retention"]) == (
        wanted["missing"],
        wanted["outside_retention"],
    )


ROWS: list[Any] = [
    {"card_id": "c1", "merchant_id": "m2", "amount": 12.5},
    {"card_id": "c99", "merchant_id": "m2", "amount": 3},  # unknown card; an int amount is a float
    {"card_id": "c4", "merchant_id": "m7", "amount": 40.0, "extra": True},  # unknown merchant
    {"card_id": "c1", "amount": 1.0},  # no merchant
    {"card_id": "c2", "merchant_id": "m0", "amount": "12"},  # a string amount
    {"card_id": 1.5, "merchant_id": "m0", "amount": 1.0},  # a key is a string or an integer
    {"card_id": "c3", "merchant_id": "m3", "amount": None},
    ["c1", "m2"],
    {"card_id": "c5", "merchant_id": "m4", "amount": 99.0},
    {"card_id": "", "merchant_id": "m4", "amount": 1.0},  # empty: no key, as for events
]
ERRORS = {
    3: ("missing_field", "rows[3]: no value for the entity field 'merchant_id'"),
    4: ("bad_type", "rows[4].amount: '12' is not a float"),
    5: ("bad_type", "rows[5].card_id: 1.5 is neither a string nor an integer"),
    6: ("missing_field", "rows[6]: no value for the request field 'amount'"),
    7: ("bad_row", "rows[7]: expected an object with card_id, merchant_id"),
    9: ("missing_field", "rows[9]: no value for the entity field 'card_id'"),
}


def check_answer(answer: dict[str, Any]) -> None:
    assert answer["service"] == "fraud" and answer["at"] == AT and len(answer["rows"]) == len(ROWS)
    for index, (row, got) in enumerate(zip(ROWS, answer["rows"], strict=True)):
        if index in ERRORS:
            code, message = ERRORS[index]
            assert got == {"error": {"code": code, "message": message}}
        else:
            assert_row(got, expected(row["card_id"], row["merchant_id"], float(row["amount"])))


async def test_rows_answer_the_reference_with_per_row_errors(engine: Engine) -> None:
    async with TestClient(TestServer(web_app(context(engine)))) as client:
        answer = await client.post("/services/fraud", json={"rows": ROWS, "at": AT})
        assert answer.status == 200
        check_answer(await answer.json())
        listed = await (await client.get("/services")).json()
    (fraud,) = listed["services"]
    assert (fraud["name"], fraud["entities"], fraud["request"]) == (
        "fraud",
        ["card_id", "merchant_id"],
        {"amount": "float"},
    )
    columns = {c["name"]: c["type"] for c in fraud["columns"]}
    assert list(columns) == list(expected("c1", "m2", 1.0)["features"])
    assert (columns["amount"], columns["spend_count_1h"], columns["spend_max_24h"], columns["m_mcc"]) == (
        "float", "int", "float", "str",
    )  # fmt: skip
    assert columns["amount_vs_merchant"] == "any"


async def test_request_errors(engine: Engine) -> None:
    async with TestClient(TestServer(web_app(context(engine)))) as client:
        unknown = await client.post("/services/nope", json={"rows": []})
        assert unknown.status == 404 and (await unknown.json())["error"]["code"] == "unknown_service"
        too_many = await client.post("/services/fraud", json={"rows": [ROWS[0]] * 1001})
        assert too_many.status == 413 and (await too_many.json())["error"]["code"] == "too_many_rows"
        no_rows = await client.post("/services/fraud", json={"at": AT})
        assert no_rows.status == 400 and "rows" in (await no_rows.json())["error"]["message"]
        bad_json = await client.post("/services/fraud", data=b"{")
        assert bad_json.status == 400 and (await bad_json.json())["error"]["code"] == "bad_json"
        bad_at = await client.post("/services/fraud", json={"rows": [ROWS[0]], "at": "yesterday"})
        assert bad_at.status == 400 and (await bad_at.json())["error"]["code"] == "bad_at"
        empty = await client.post("/services/fraud", json={"rows": [], "at": AT})
        assert empty.status == 200 and (await empty.json())["rows"] == []
        group = await client.post("/tables/card", json={"keys": ["c1"]})  # lookup rows only
        assert group.status == 405 and "POST" not in group.headers["Allow"]
        rows = await (await client.post("/tables/merchants", json={"keys": ["m1", "m77"]})).json()
        assert rows["results"] == [
            {"key": "m1", "found": True, "value": merchant_row("m1")},
            {"key": "m77", "found": False},
        ]


async def test_outside_retention_nulls_the_group_and_names_it(engine: Engine) -> None:
    early = EVENTS[0]["ts"] - 3 * 24 * 3_600_000  # the windows there need buckets long expired
    row = {"card_id": "c1", "merchant_id": "m2", "amount": 1.0}
    async with TestClient(TestServer(web_app(context(engine)))) as client:
        answer = await (await client.post("/services/fraud", json={"rows": [row], "at": early})).json()
    (got,) = answer["rows"]
    assert got["missing"] == [] and got["outside_retention"] == ["card", "merchant", "card_merchant"]
    assert got["features"]["spend_count_24h"] is None and got["features"]["m_mcc"] == "5002"


async def test_two_workers_ask_each_owner_once_per_group_and_lookup(engine: Engine) -> None:
    """Worker A holds partitions 0 and 1, B the others: A's answer is the one-worker answer, and B
    got one request per group and lookup, with only its keys."""
    seen_by_b: list[Any] = []
    async with aiohttp.ClientSession() as session:
        b_ctx = context(engine, Here({2, 3}, "http://nowhere", session))
        async with TestServer(web_app(b_ctx, seen_by_b)) as b:
            a_ctx = context(engine, Here({0, 1}, f"http://{b.host}:{b.port}", session))
            async with TestClient(TestServer(web_app(a_ctx))) as a:
                answer = await a.post("/services/fraud", json={"rows": ROWS, "at": AT})
                check_answer(await answer.json())
    valid = [r for i, r in enumerate(ROWS) if i not in ERRORS]

    def theirs(keys: list[str]) -> list[str]:
        return [k for k in dict.fromkeys(keys) if partition_for(k.encode(), PARTITIONS) >= 2]

    cards = theirs([r["card_id"] for r in valid])
    merchants = theirs([r["merchant_id"] for r in valid])
    pairs = theirs([key_string([r["card_id"], r["merchant_id"]]) for r in valid])
    asked = [
        {"keys": keys, "features": names, "at": AT}
        for keys, names in [(cards, None), (merchants, ["sales_avg_24h"]), (pairs, None)]
        if keys
    ]
    asked += [{"keys": merchants}] if merchants else []  # the merchants lookup
    assert seen_by_b == asked and len(asked) >= 3


def test_the_openapi_document_describes_each_service(engine: Engine) -> None:
    paths = document(context(engine))["paths"]
    body = paths["/services/fraud"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    row, other = body["properties"]["rows"]["items"]["anyOf"]
    assert "error" in other["description"]
    assert row["required"] == ["card_id", "merchant_id", "amount"]
    assert row["properties"]["amount"] == {"type": "number"}
    answer = paths["/services/fraud"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    features = answer["properties"]["rows"]["items"]["properties"]["features"]
    assert list(features["properties"]) == list(expected("c1", "m2", 1.0)["features"])
    assert "get" in paths["/services"] and "post" in paths["/tables/merchants"]
