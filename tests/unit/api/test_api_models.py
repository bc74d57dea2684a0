"""The data API's request parsing and its OpenAPI document, without a worker."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.api.context import ApiContext
from app.api.features import BadRequest, parse_at, validation_message
from app.api.models import AT_LIMIT, BatchRequest, ScanQuery
from app.api.openapi import document, names_pattern
from app.api.placement import Placement
from app.config.spec import load_pipeline
from tables.registry import StateTables
from tests.conftest import SHOP
from tests.support.tables import RdictTable


@pytest.mark.parametrize(
    ("given", "millis"),
    [
        ("1767225600000", 1_767_225_600_000),
        (" -5 ", -5),
        (1_767_225_600_123, 1_767_225_600_123),
        ("2026-01-01T00:00:00Z", 1_767_225_600_000),
        ("2026-01-01T00:00:00z", 1_767_225_600_000),
        ("2026-01-01T01:00:00+01:00", 1_767_225_600_000),
        ("2026-01-01T00:00:00", 1_767_225_600_000),  # no zone: UTC
        ("2026-01-01T00:00:00.999999Z", 1_767_225_600_999),  # exact, no float rounding up
        ("1969-12-31T23:59:59.999Z", -1),
    ],
)
def test_at_accepts_epoch_millis_and_iso_8601(given: int | str, millis: int) -> None:
    assert parse_at(given) == millis


@pytest.mark.parametrize("given", ["", "yesterday", "2026-13-01", "1e3", str(AT_LIMIT + 1), "9" * 5000])
def test_a_bad_at_is_a_400_naming_it(given: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_at(given)
    assert caught.value.code == "bad_at" and caught.value.response().status == 400


def test_batch_body_validation_names_the_field() -> None:
    assert BatchRequest.model_validate({"keys": ["a"], "at": -171.0}).at == -171  # JSON integer
    for body, where in [
        ({"keys": "a"}, "keys: "),
        ({"keys": ["a", 5]}, "keys[1]: "),
        ({"keys": ["a"], "at": True}, "at: "),
        ({"keys": ["a"], "at": 1.5}, "at: "),
        ({"keys": ["a"], "at": AT_LIMIT + 1}, "at: "),
        ({"keys": ["a"], "extra": 1}, "extra: "),
        ({}, "keys: "),
    ]:
        with pytest.raises(ValidationError) as caught:
            BatchRequest.model_validate(body)
        assert validation_message(caught.value).startswith(where), (body, validation_message(caught.value))


def test_scan_query_limits() -> None:
    assert ScanQuery.model_validate({}).limit == 10_000
    with pytest.raises(ValidationError):
        ScanQuery.model_validate({"limit": "-1"})
    with pytest.raises(ValidationError):
        ScanQuery.model_validate({"format": "xlsx"})


def test_openapi_document_lists_this_pipelines_paths_and_every_status(tmp_path: Path) -> None:
    pipeline = load_pipeline(SHOP)
    tables = StateTables.build(pipeline, lambda name, _: RdictTable(tmp_path, name))
    doc = document(ApiContext(pipeline, "hydrant-shop", 4, tables, Placement()))
    assert doc["openapi"] == "3.1.0"
    assert set(doc["paths"]) == {
        "/features/user/{key}",
        "/features/user",
        "/tables/users/{key}",
        "/tables/users",
        "/tables/user",
        "/services",
        "/pipeline",
        "/ingest/orders",
        "/ingest/clicks",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    }
    single = doc["paths"]["/features/user/{key}"]["get"]
    assert set(single["responses"]) == {"200", "400", "401", "404", "422", "503"}
    batch = doc["paths"]["/features/user"]["post"]
    assert set(batch["responses"]) == {"200", "400", "401", "404", "413", "503"}
    body = batch["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["keys"]["maxItems"] == 1000
    assert "spend_sum_1h" in body["properties"]["features"]["anyOf"][0]["items"]["enum"]
    assert "401" not in doc["paths"]["/healthz"]["get"]["responses"]
    ingest = doc["paths"]["/ingest/orders"]["post"]
    assert set(ingest["responses"]) == {"200", "400", "401", "413", "503", "504"}
    events = ingest["requestBody"]["content"]["application/json"]["schema"]
    assert events["maxItems"] == 10_000
    assert events["items"]["anyOf"][0]["properties"]["amount"] == {"type": ["number", "null"]}
    assert events["items"]["anyOf"][0]["required"] == ["user_id"]
    scan = doc["paths"]["/tables/user"]["get"]
    assert set(scan["responses"]["200"]["content"]) == {
        "application/json",
        "text/csv",
        "application/vnd.apache.parquet",
    }
    assert "ErrorAnswer" in doc["components"]["schemas"]


def test_names_pattern_takes_comma_separated_names_or_nothing() -> None:
    pattern = re.compile(names_pattern(["a_1h", "b.c"]))
    assert all(pattern.match(s) for s in ["", "a_1h", "a_1h,b.c", "b.c,a_1h,a_1h"])
    assert not any(pattern.match(s) for s in ["a", "a_1h,", "bxc", "a_1h,,b.c"])
