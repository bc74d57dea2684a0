"""The data API on groups keyed by another field or by several (the payments example): state written
by the real StreamEngine (through its hop topics), then read over HTTP by the API's handlers: one key
in its string form, batches of string and object keys (forwarded to an owner in string form), bad
objects, and table scans with one column per key field in JSON, CSV and Parquet."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pandas as pd
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from app.api.context import ApiContext
from app.api.http import application_options
from app.api.openapi import document
from app.api.pipeline import describe
from app.api.placement import Placement
from app.api.views import routes
from app.config.spec import load_pipeline
from app.records.keys import key_string
from app.records.partitioning import partition_for
from app.serving.process import TableName
from tables.registry import StateTables
from tests.conftest import PAYMENTS, SHOP
from tests.support.engine import GROUP_ID, PARTITIONS, T0, Engine, pipeline_engine
from tests.support.entities import Driver, stream_record
from tests.support.tables import RdictTable

MINUTE = 60_000
AT = T0 + 30 * MINUTE
PAIR = ["pair_count_24h", "pair_sum_24h", "pair_last_24h"]
#: (card, merchant, device, amount), one a minute from T0
PAYMENTS_SEEN = [
    ("c1", "m9", "d1", 10.0),
    ("c1", "m9", "d1", 5.0),
    ("c2", "m|1", None, 7.0),  # a separator inside a value
    ("c\\3", "m9", "d2", 1.0),  # an escape inside a value
    ("c1", "m9", "d1", 2.0),
    ("c2", "m2", None, 4.0),
]


class Here(Placement):
    """Ready; holds ``held`` partitions (all: None) of every table, the others at ``peer``; reads a
    table's state from ``dbs`` (table name -> partition -> database) or the table itself."""

    def __init__(
        self,
        held: set[int] | None = None,
        peer: str | None = None,
        session: aiohttp.ClientSession | None = None,
        dbs: dict[str, Any] | None = None,
    ) -> None:
        self.held, self.peer, self.session, self.dbs = held, peer, session, dbs

    def readiness(self) -> tuple[bool, str]:
        return True, ""

    def served_partitions(self) -> list[int]:
        return sorted(self.held) if self.held is not None else list(range(PARTITIONS))

    def holds(self, table: Any, partition: int) -> bool:
        return self.held is None or partition in self.held

    def owner_of(self, table: Any, partition: int) -> str | None:
        return self.peer

    def own_url(self) -> str:
        return "http://here"

    def database(self, table: Any, partition: int) -> Any:
        return self.dbs[table.name][partition] if self.dbs is not None else table.db(partition)

    @property
    def client(self) -> aiohttp.ClientSession:
        assert self.session is not None
        return self.session


def web_app(ctx: ApiContext, seen: list[Any] | None = None) -> web.Application:
    """Every route of the API on an aiohttp application answering from ``ctx``; each POST body
    received is appended to ``seen``."""
    app = web.Application(**application_options(None))
    for method, path, handler in routes(ctx):

        async def view(request: web.Request, handler: Any = handler) -> web.StreamResponse:
            if seen is not None and request.method == "POST":
                seen.append(await request.json())
            return await handler(request, ctx, **request.match_info)

        app.router.add_route(method.upper(), path, view)
    return app


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """The payments pipeline's state after :data:`PAYMENTS_SEEN`, every event followed through its
    stages by the real engine."""
    engine = pipeline_engine(tmp_path_factory.mktemp("payments"), PAYMENTS)
    events = [
        {"card_id": card, "merchant_id": merchant, "device_id": device, "amount": amount,
         "status": "ok", "ts": T0 + i * MINUTE}
        for i, (card, merchant, device, amount) in enumerate(PAYMENTS_SEEN)
    ]  # fmt: skip
    Driver(engine).run([stream_record(i, e) for i, e in enumerate(events)], batch=1)
    yield engine
    engine.close()


def context(engine: Engine, placement: Placement | None = None) -> ApiContext:
    return ApiContext(load_pipeline(PAYMENTS), GROUP_ID, PARTITIONS, engine.tables, placement or Here())


@pytest.fixture
async def client(engine: Engine) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(web_app(context(engine)))) as client:
        yield client


async def answer(response: aiohttp.ClientResponse, status: int = 200) -> Any:
    assert response.status == status, await response.text()
    return await response.json()


def pair(count: int, total: float, last: float) -> dict[str, Any]:
    return dict(zip(PAIR, (count, total, last), strict=True))


async def test_one_composite_key_is_asked_by_its_string_form(client: TestClient[Any, Any]) -> None:
    params = {"at": AT, "features": ",".join(PAIR)}
    got = await answer(await client.get(f"/features/card_merchant/{quote('c1|m9')}", params=params))
    assert got == {
        "group": "card_merchant",
        "key": "c1|m9",
        "at": AT,
        "features": pair(3, 17.0, 2.0),
        "newest_event": T0 + 4 * MINUTE,  # its newest payment (c1, m9), the fifth
    }
    # a separator and an escape inside values: escaped in the string form, %-encoded in the path
    for values, want in ((("c2", "m|1"), pair(1, 7.0, 7.0)), (("c\\3", "m9"), pair(1, 1.0, 1.0))):
        key = key_string(values)
        got = await answer(await client.get(f"/features/card_merchant/{quote(key)}", params=params))
        assert (got["key"], got["features"]) == (key, want)
    # the merchant group is keyed by merchant_id alone: a '|' there is an ordinary character
    got = await answer(await client.get(f"/features/merchant/{quote('m|1')}", params={"at": AT}))
    assert got["features"]["sales_sum_24h"] == 7.0


@pytest.mark.parametrize("key", ["c1", "c1|m9|x", "c1\\", "c1\\|m9", "c2|m|1"])
async def test_a_string_that_is_no_key_of_a_composite_group_is_not_found(
    client: TestClient[Any, Any], key: str
) -> None:
    got = await answer(await client.get(f"/features/card_merchant/{quote(key)}", params={"at": AT}), 404)
    assert got["error"]["code"] == "key_not_found"
    assert "card_id|merchant_id" in got["error"]["message"]
    batch = await answer(await client.post("/features/card_merchant", json={"keys": [key], "at": AT}))
    assert batch["results"] == [{"key": key, "found": False}]


async def test_a_batch_takes_string_and_object_keys_in_request_order(client: TestClient[Any, Any]) -> None:
    keys = [
        {"merchant_id": "m9", "card_id": "c1"},  # fields in any order
        "c2|m\\|1",
        {"card_id": "c2", "merchant_id": "m|1"},
        "c1",
        {"card_id": "c\\3", "merchant_id": "m9"},
        {"card_id": 7, "merchant_id": "m9"},  # an integer in decimal
        {"card_id": -7.0, "merchant_id": "m9"},  # a JSON integer, however written
        {"card_id": 2**53 - 1, "merchant_id": "m9"},
        "c1|m9",
    ]
    got = await answer(
        await client.post("/features/card_merchant", json={"keys": keys, "at": AT, "features": PAIR})
    )
    assert got["group"] == "card_merchant" and got["at"] == AT
    assert got["results"] == [
        {"key": "c1|m9", "found": True, "features": pair(3, 17.0, 2.0), "newest_event": T0 + 4 * MINUTE},
        {"key": "c2|m\\|1", "found": True, "features": pair(1, 7.0, 7.0), "newest_event": T0 + 2 * MINUTE},
        {"key": "c2|m\\|1", "found": True, "features": pair(1, 7.0, 7.0), "newest_event": T0 + 2 * MINUTE},
        {"key": "c1", "found": False},
        {"key": "c\\\\3|m9", "found": True, "features": pair(1, 1.0, 1.0), "newest_event": T0 + 3 * MINUTE},
        {"key": "7|m9", "found": False},
        {"key": "-7|m9", "found": False},
        {"key": "9007199254740991|m9", "found": False},
        {"key": "c1|m9", "found": True, "features": pair(3, 17.0, 2.0), "newest_event": T0 + 4 * MINUTE},
    ]
    single = await answer(
        await client.post(
            "/features/card", json={"keys": [{"card_id": "c1"}, "c1", {"card_id": "c2"}], "at": AT}
        )
    )
    assert [(r["key"], r["features"]["spend_count_1h"]) for r in single["results"]] == [
        ("c1", 3),
        ("c1", 3),
        ("c2", 2),
    ]


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ({"card_id": "c1"}, "keys[1]: missing key field 'merchant_id' (group 'card_merchant' is keyed by"),
        ({"card_id": "c1", "merchant_id": "m9", "x": 1}, "keys[1]: 'x' is not a key field"),
        ({}, "keys[1]: missing key field 'card_id'; missing key field 'merchant_id'"),
        (
            {"card_id": "c1", "merchant_id": 1.5},
            "keys[1].merchant_id: 1.5 is neither a string nor an integer",
        ),
        ({"card_id": True, "merchant_id": "m9"}, "keys[1].card_id: True is neither"),
        ({"card_id": None, "merchant_id": "m9"}, "keys[1].card_id: None is neither"),
        ({"card_id": ["c1"], "merchant_id": "m9"}, "keys[1].card_id: ['c1'] is neither"),
        ({"card_id": {}, "merchant_id": "m9"}, "keys[1].card_id: {} is neither"),
        (
            {"card_id": 2**63, "merchant_id": "m9"},
            "keys[1].card_id: 9223372036854775808 is beyond 2^53; send the key in its string form",
        ),
        ({"card_id": 1e19, "merchant_id": "m9"}, "keys[1].card_id: 1e+19 is beyond 2^53; send the key in"),
        ({"card_id": -(2**53), "merchant_id": "m9"}, "keys[1].card_id: -9007199254740992 is beyond 2^53"),
        (5, "keys[1]: Input should be a valid string"),
        (None, "keys[1]: Input should be a valid string"),
        ([], "keys[1]: Input should be a valid string"),
    ],
)
async def test_a_bad_key_object_is_a_400_naming_its_index(
    client: TestClient[Any, Any], key: Any, message: str
) -> None:
    got = await answer(await client.post("/features/card_merchant", json={"keys": ["c1|m9", key]}), 400)
    assert got["error"]["code"] == "bad_request"
    assert got["error"]["message"].startswith(message), got["error"]["message"]


async def test_keys_forwarded_to_their_owner_travel_in_string_form(engine: Engine) -> None:
    """Worker A holds partitions 0 and 1, B the others: a batch to A asks B for B's keys."""
    seen_by_b: list[Any] = []
    async with aiohttp.ClientSession() as session:
        b_ctx = context(engine, Here({2, 3}, "http://nowhere", session))
        async with TestServer(web_app(b_ctx, seen_by_b)) as b:
            a_ctx = context(engine, Here({0, 1}, f"http://{b.host}:{b.port}", session))
            async with TestClient(TestServer(web_app(a_ctx))) as a:
                keys: list[Any] = [{"card_id": c, "merchant_id": m} for c, m, _, _ in PAYMENTS_SEEN]
                strings = [key_string([c, m]) for c, m, _, _ in PAYMENTS_SEEN]
                got = await answer(await a.post("/features/card_merchant", json={"keys": keys, "at": AT}))
    assert [r["key"] for r in got["results"]] == strings and all(r["found"] for r in got["results"])
    remote = [k for k in strings if partition_for(k.encode(), PARTITIONS) >= 2]
    assert remote and len(remote) < len(strings)  # the example's keys land on both workers
    assert seen_by_b == [{"keys": remote, "features": None, "at": AT}]


async def scan(client: TestClient[Any, Any], table: str, fmt: str, **params: Any) -> pd.DataFrame:
    response = await client.get(f"/tables/{table}", params={"format": fmt, "at": AT, **params})
    assert response.status == 200, await response.text()
    if fmt == "json":
        body = await response.json()
        return pd.DataFrame(body["rows"], columns=body["columns"])
    raw = await response.read()
    if fmt == "csv":
        return pd.read_csv(io.BytesIO(raw), dtype={"card_id": str, "merchant_id": str})
    return pd.read_parquet(io.BytesIO(raw))


@pytest.mark.parametrize("fmt", ["json", "csv", "parquet"])
async def test_scans_have_a_column_per_key_field(client: TestClient[Any, Any], fmt: str) -> None:
    frame = await scan(client, "card_merchant", fmt)
    assert list(frame.columns) == ["key", "card_id", "merchant_id", *PAIR, "newest_event"]
    assert frame[["key", "card_id", "merchant_id", "pair_count_24h", "newest_event"]].values.tolist() == [
        ["c1|m9", "c1", "m9", 3, T0 + 4 * MINUTE],
        ["c2|m2", "c2", "m2", 1, T0 + 5 * MINUTE],
        ["c2|m\\|1", "c2", "m|1", 1, T0 + 2 * MINUTE],
        ["c\\\\3|m9", "c\\3", "m9", 1, T0 + 3 * MINUTE],
    ]
    few = await scan(client, "card_merchant", fmt, columns="merchant_id,pair_sum_24h,merchant_id")
    assert list(few.columns) == ["key", "merchant_id", "pair_sum_24h"]
    assert few.values.tolist()[2] == ["c2|m\\|1", "m|1", 7.0]
    card = await scan(client, "card", fmt, columns="card_id,spend_count_1h")
    assert card.values.tolist() == [["c1", "c1", 3], ["c2", "c2", 2], ["c\\3", "c\\3", 1]]
    assert (await scan(client, "merchant", fmt)).columns[:3].tolist() == [
        "key",
        "merchant_id",
        "sales_count_1h",
    ]


async def test_scan_columns_of_a_lookup_stay_its_fields(client: TestClient[Any, Any]) -> None:
    got = await answer(await client.get("/tables/merchants"))
    assert got["columns"] == ["key", "mcc", "country"]
    bad = await answer(await client.get("/tables/card_merchant", params={"columns": "device_id"}), 400)
    assert bad["error"]["code"] == "unknown_column"


def test_pipeline_and_openapi_document_the_key_fields(engine: Engine) -> None:
    ctx = context(engine)
    columns = {t["name"]: t["columns"] for t in describe(ctx)["tables"]}
    assert columns["card_merchant"][:4] == ["key", "card_id", "merchant_id", "pair_count_24h"]
    assert columns["card"][:3] == ["key", "card_id", "spend_count_1h"]
    assert columns["merchants"] == ["key", "mcc", "country"]
    doc = document(ctx)
    batch = doc["paths"]["/features/card_merchant"]["post"]["requestBody"]["content"]["application/json"]
    string, obj = batch["schema"]["properties"]["keys"]["items"]["anyOf"]
    assert string == {"type": "string"}
    assert obj["required"] == ["card_id", "merchant_id"] and obj["additionalProperties"] is False
    assert set(obj["properties"]) == {"card_id", "merchant_id"}
    assert "'|'" in batch["schema"]["properties"]["keys"]["description"]
    card = doc["paths"]["/features/card"]["post"]["requestBody"]["content"]["application/json"]
    assert card["schema"]["properties"]["keys"]["items"]["anyOf"][1]["required"] == ["card_id"]
    key = doc["paths"]["/features/card_merchant/{key}"]["get"]["parameters"][0]
    assert key["name"] == "key" and "card_id|merchant_id" in key["description"]
    scan = doc["paths"]["/tables/card_merchant"]["get"]["parameters"]
    pattern = next(p["schema"]["pattern"] for p in scan if p["name"] == "columns")
    assert "merchant_id" in pattern


async def test_the_serving_process_tables_answer_composite_keys(engine: Engine) -> None:
    """As app/serving/process.py builds its context: tables by name only, state from the placement."""
    pipeline = load_pipeline(PAYMENTS)
    tables = StateTables.build(pipeline, TableName)
    dbs = {
        table.name: {p: engine.tables.features[group].db(p) for p in range(PARTITIONS)}
        for group, table in tables.features.items()
    }
    ctx = ApiContext(pipeline, GROUP_ID, PARTITIONS, tables, Here(dbs=dbs))
    async with TestClient(TestServer(web_app(ctx))) as client:
        path = "/features/card_merchant/" + quote(key_string(["c2", "m|1"]))
        one = await answer(await client.get(path, params={"at": AT}))
        batch = await answer(
            await client.post(
                "/features/card_merchant",
                json={"keys": [{"card_id": "c2", "merchant_id": "m|1"}, "c9|m9"], "at": AT, "features": PAIR},
            )
        )
    assert one["features"]["pair_count_24h"] == 1
    assert batch["results"] == [
        {"key": "c2|m\\|1", "found": True, "features": pair(1, 7.0, 7.0), "newest_event": T0 + 2 * MINUTE},
        {"key": "c9|m9", "found": False},
    ]


def test_a_single_field_group_has_its_key_field_column_too(tmp_path: Path) -> None:
    """The shop's `user` group: `user_id` beside `key` (docs/api.md); lookups keep their columns."""
    pipeline = load_pipeline(SHOP)
    tables = StateTables.build(pipeline, lambda name, _: RdictTable(tmp_path, name))
    ctx = ApiContext(pipeline, "hydrant-shop", 4, tables, Here())
    columns = {t["name"]: t["columns"] for t in describe(ctx)["tables"]}
    assert columns["user"][:3] == ["key", "user_id", "spend_count_1h"]
    assert columns["users"] == ["key", "country", "segment"]


async def test_the_answers_docs_api_md_shows(client: TestClient[Any, Any]) -> None:
    """docs/api.md "Keys of several fields" prints these answers, byte for byte."""
    at = {"at": str(AT)}
    one = await client.get(
        "/features/card_merchant/c1%7Cm9", params={"features": "pair_count_24h,pair_sum_24h", **at}
    )
    assert await one.text() == (
        '{"group":"card_merchant","key":"c1|m9","at":1767227400000,'
        '"features":{"pair_count_24h":3,"pair_sum_24h":17.0},"newest_event":1767225840000}'
    )
    keys = ["c1|m9", {"card_id": "c2", "merchant_id": "m|1"}, "c1"]
    batch = await client.post(
        "/features/card_merchant", json={"keys": keys, "features": ["pair_count_24h"], "at": AT}
    )
    assert await batch.text() == (
        '{"group":"card_merchant","at":1767227400000,"results":['
        '{"key":"c1|m9","found":true,"features":{"pair_count_24h":3},"newest_event":1767225840000},'
        '{"key":"c2|m\\\\|1","found":true,"features":{"pair_count_24h":1},"newest_event":1767225720000},'
        '{"key":"c1","found":false}]}'
    )
    bad = await client.post("/features/card_merchant", json={"keys": ["c1|m9", {"card_id": "c2"}]})
    assert await bad.text() == (
        '{"error":{"code":"bad_request","message":"keys[1]: missing key field \'merchant_id\' '
        "(group 'card_merchant' is keyed by card_id, merchant_id)\"}}"
    )
    csv = await client.get(
        "/tables/card_merchant",
        params={"columns": "card_id,merchant_id,pair_count_24h", "format": "csv", **at},
    )
    assert await csv.text() == (
        "key,card_id,merchant_id,pair_count_24h\n"
        "c1|m9,c1,m9,3\nc2|m2,c2,m2,1\nc2|m\\|1,c2,m|1,1\nc\\\\3|m9,c\\3,m9,1\n"
    )
