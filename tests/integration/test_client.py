"""hydrant.client against two real workers of the payments example (issue 25): every method's
DataFrame equals the HTTP answer, typed columns, errors with status/code/message, and a 503 while a
third worker joins is retried."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from hydrant import Client, HydrantClientError
from tests.integration.test_services import GROUPS, Cluster, cluster  # noqa: F401 (the fixture)
from tests.support.broker import BrokerUnderTest
from tests.support.worker import WorkerProcess


def test_features_equal_the_http_answers_with_typed_columns(cluster: Cluster) -> None:  # noqa: F811
    keys = [*sorted({str(e["card_id"]) for e in cluster.events})[:150], "c-none", "zz"]
    at = cluster.last
    with Client(cluster.one.url) as client:
        frame = client.features("card", keys, at=at)
    answer = httpx.post(f"{cluster.two.url}/features/card", json={"keys": keys, "at": at}, timeout=10).json()
    names = httpx.get(f"{cluster.one.url}/pipeline", timeout=10).json()["features"]["card"]
    assert list(frame.columns) == ["key", "found", *names, "newest_event"]
    assert list(frame["key"]) == keys
    for (_, row), result in zip(frame.iterrows(), answer["results"], strict=True):
        assert row["found"] == result["found"]
        newest = result.get("newest_event")
        assert (pd.isna(row["newest_event"]) and newest is None) or row["newest_event"] == newest
        for name in names:
            want = (result.get("features") or {}).get(name)
            got = row[name]
            assert (pd.isna(got) and want is None) or got == want, (row["key"], name, got, want)
    assert str(frame["key"].dtype) == "string" and str(frame["found"].dtype) == "boolean"
    counts = [n for n in names if "_count_" in n]
    assert counts and all(str(frame[n].dtype) == "Int64" for n in counts)
    sums = [n for n in names if "_sum_" in n or "_avg_" in n]
    assert sums and all(str(frame[n].dtype) == "Float64" for n in sums)
    assert not frame.loc[frame["key"] == "zz", "found"].item()

    with Client(cluster.two.url) as client:  # an `at` before the retention: the error column
        old = client.features("card", keys[:3], ["spend_count_1h"], at=0)
    assert list(old["error"]) == ["outside_retention"] * 3


def test_service_and_tables_equal_the_http_answers(cluster: Cluster) -> None:  # noqa: F811
    events = cluster.events[:300]
    rows = pd.DataFrame(
        {
            "card_id": [e["card_id"] for e in events] + ["c-none"],
            "merchant_id": [e["merchant_id"] for e in events] + ["m-none"],
            "amount": [float(e["amount"]) for e in events] + [10.0],
        }
    )
    at = cluster.last
    with Client(cluster.one.url) as client:
        frame = client.service("fraud", rows, at=at)
        merchants = client.table("merchants")
        cards = client.table("card", limit=50, at=at)
    body = {"rows": rows.to_dict("records"), "at": at}
    answer = httpx.post(f"{cluster.two.url}/services/fraud", json=body, timeout=30).json()
    (fraud,) = [
        s for s in httpx.get(f"{cluster.one.url}/services").json()["services"] if s["name"] == "fraud"
    ]
    columns = [c["name"] for c in fraud["columns"]]
    assert list(frame.columns) == [*columns, "missing", "outside_retention", "newest_event", "stale", "error"]
    for (_, row), want in zip(frame.iterrows(), answer["rows"], strict=True):
        for column in columns:
            value = want["features"][column]
            assert (pd.isna(row[column]) and value is None) or row[column] == value, (
                column,
                row[column],
                value,
            )
        assert list(row["missing"]) == want["missing"]
        assert row["newest_event"] == want["newest_event"] and list(row["stale"]) == want["stale"]
    assert list(frame["missing"].iloc[-1]) == list(GROUPS)

    scan = httpx.get(f"{cluster.one.url}/tables/merchants", timeout=30).json()
    assert list(merchants.columns) == scan["columns"]
    assert merchants["key"].tolist() == [r["key"] for r in scan["rows"]]
    for column in scan["columns"]:
        assert merchants[column].tolist() == [r[column] for r in scan["rows"]]
    card_scan = httpx.get(f"{cluster.two.url}/tables/card", params={"limit": 50, "at": at}, timeout=30).json()
    assert cards["key"].tolist() == [r["key"] for r in card_scan["rows"]]
    for column in card_scan["columns"][1:]:
        assert cards[column].tolist() == pytest.approx([r[column] for r in card_scan["rows"]], nan_ok=True)


def test_errors_carry_status_code_and_message(cluster: Cluster) -> None:  # noqa: F811
    with Client(cluster.one.url) as client:
        with pytest.raises(HydrantClientError) as group:
            client.features("nope", ["x"])
        assert group.value.status == 404 and group.value.code == "unknown_group"
        assert "no feature group 'nope'" in group.value.message
        with pytest.raises(HydrantClientError) as feature:
            client.features("card", ["c001"], ["no_such_feature"])
        assert feature.value.status == 400 and feature.value.code == "unknown_feature"
        with pytest.raises(HydrantClientError) as service:
            client.service("nope", [{"card_id": "c001"}])
        assert service.value.status == 404 and service.value.code == "unknown_service"
    with Client("http://127.0.0.1:9", timeout=2) as nowhere, pytest.raises(HydrantClientError) as down:
        nowhere.features("card", ["c001"])
    assert down.value.status == 0 and down.value.code == "unreachable"


def test_a_503_while_a_worker_joins_is_retried(
    broker: BrokerUnderTest,
    cluster: Cluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Last in this module: a third worker joins the group (the others rebalance too)."""
    three = WorkerProcess(
        broker,
        cluster.pipeline,
        tmp_path / "data-w3",
        app_id=cluster.one.env["HYDRANT_APP_ID"],
        log_path=tmp_path / "w3.log",
    ).start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # its HTTP server answers before its partitions are ready
            try:
                if three.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        assert not three.ready(), "the third worker was ready before the call: nothing to retry"
        keys = sorted({str(e["card_id"]) for e in cluster.events})[:20]
        with Client(three.url, retries=120) as client:
            frame = client.features("card", keys, at=cluster.last)
            assert client.retried >= 1
        assert frame["found"].all()
        assert three.metric("hydrant_http_requests_total", status="503") >= 1
    finally:
        three.stop(timeout=15)
