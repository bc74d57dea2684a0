"""Issue 5 on the real broker, two workers with an API token: every key answered by either worker
equal to the pandas ground truth; a 500-key batch across owners; table scans in JSON, CSV and
Parquet; auth; the OpenAPI document fuzzed by schemathesis."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pandas as pd
import pytest

from app.records.partitioning import partition_for
from tests.conftest import shop_pipeline_text
from tests.support.broker import BrokerUnderTest
from tests.support.checks import (
    expected_scan,
    mismatches,
    scan,
    scan_problems,
    wait_until_scan_matches,
)
from tests.support.ground_truth import GroundTruth
from tests.support.kafka import create_pipeline_topics_for, produce
from tests.support.openapi_fuzz import run_schemathesis
from tests.support.shop import HOUR, Event, make_events, newest_times, publish, truth_of
from tests.support.worker import WorkerProcess, wait_for

TOKEN = "test-token-5f1c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
KEYS = 2_000
EVENTS = 8_000
PARTITIONS = 4


@dataclass
class Cluster:
    one: WorkerProcess
    two: WorkerProcess
    truth: GroundTruth
    events: list[Event]
    users: dict[str, dict[str, str]]
    end: int  # the newest event time: every window of every key is inside retention there

    @property
    def urls(self) -> list[str]:
        return [self.one.url, self.two.url]


@pytest.fixture(scope="module")
def cluster(broker: BrokerUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    uid = uuid.uuid4().hex[:10]
    tmp = tmp_path_factory.mktemp("api")
    pipeline = tmp / "pipeline.yaml"
    pipeline.write_text(shop_pipeline_text(uid))
    create_pipeline_topics_for(broker.url, pipeline, uid)
    events = make_events(seed=5, keys=KEYS, count=EVENTS, every_key=True)
    rng = random.Random(5)
    users = {
        f"u{i:04d}": {"country": rng.choice(["DE", "FR", "US"]), "segment": rng.choice(["new", "vip"])}
        for i in range(KEYS)
    }
    asyncio.run(
        produce(broker.bootstrap, f"users-{uid}", [(k.encode(), orjson.dumps(v)) for k, v in users.items()])
    )
    publish(broker, uid, events)
    workers = [
        WorkerProcess(
            broker,
            pipeline,
            tmp / f"data-{name}",
            app_id=f"hydrant-test-{uid}",
            log_path=tmp / f"{name}.log",
            extra_env={"HYDRANT_API_TOKEN": TOKEN},
        ).start()
        for name in ("w1", "w2")
    ]
    try:
        for worker in workers:
            worker.wait_ready(timeout=180)
        wait_for(lambda: all(w.ready() for w in workers), "both workers ready after the rebalance", 120)
        end = max(newest_times(events).values())
        cluster = Cluster(*workers, truth_of(pipeline, events), events, users, end)
        expected = expected_scan(cluster.truth, sorted(users), cluster.end)
        with httpx.Client(headers=AUTH, timeout=30) as client:
            wait_until_scan_matches(client, cluster.one.url, "user", expected, cluster.end)
        yield cluster
    finally:
        for worker in workers:
            worker.stop(timeout=15)


def test_the_two_workers_split_the_partitions(cluster: Cluster) -> None:
    owned = [cluster.one.get("/readyz").json()["partitions"], cluster.two.get("/readyz").json()["partitions"]]
    assert all(owned), owned  # each serves some partitions, so answers cross workers
    assert sorted(owned[0] + owned[1]) == list(range(PARTITIONS))


def test_every_key_from_both_workers_equals_the_ground_truth(cluster: Cluster) -> None:
    newest = newest_times(cluster.events)
    problems: list[str] = []
    with httpx.Client(headers=AUTH, timeout=10) as client:
        for key in sorted(newest):
            want = cluster.truth.features(key, newest[key])
            answers = [
                client.get(f"{url}/features/user/{key}", params={"at": newest[key]}) for url in cluster.urls
            ]
            for url, answer in zip(cluster.urls, answers, strict=True):
                if answer.status_code != 200:
                    problems.append(f"{url} {key}: HTTP {answer.status_code} {answer.text[:200]}")
                    continue
                body = answer.json()
                assert (body["group"], body["key"], body["at"]) == ("user", key, newest[key])
                problems += [f"{url} {key}: {p}" for p in mismatches(body["features"], want)]
            if all(a.status_code == 200 for a in answers):
                assert answers[0].json() == answers[1].json()
    assert len(newest) == KEYS
    assert not problems, f"{len(problems)} mismatches, first: " + "\n".join(problems[:10])


def test_a_500_key_batch_across_owners_in_request_order(cluster: Cluster) -> None:
    rng = random.Random(7)
    known = rng.sample(sorted(cluster.users), 450)
    keys = known + [f"nobody-{i}" for i in range(50)]
    rng.shuffle(keys)
    assert {partition_for(k.encode(), PARTITIONS) for k in known} == set(range(PARTITIONS))
    at = cluster.end - 9 * HOUR  # keys with later events are outside the 24 h retention here
    with httpx.Client(headers=AUTH, timeout=30) as client:
        answers = [client.post(f"{url}/features/user", json={"keys": keys, "at": at}) for url in cluster.urls]
    assert [a.status_code for a in answers] == [200, 200], [a.text[:300] for a in answers]
    assert answers[0].json() == answers[1].json()
    body = answers[0].json()
    assert (body["group"], body["at"], len(body["results"])) == ("user", at, 500)
    outside = 0
    for key, result in zip(keys, body["results"], strict=True):
        assert result["key"] == key
        if key.startswith("nobody"):
            assert result == {"key": key, "found": False}
        elif not cluster.truth.in_retention(key, at):
            outside += 1
            assert result["found"] is True and result["error"]["code"] == "outside_retention", result
        else:
            assert result["found"] is True
            assert not mismatches(result["features"], cluster.truth.features(key, at)), key
    assert 0 < outside < 450  # both kinds of known keys are in the batch

    # A feature subset of the 1 h windows is inside retention for every known key at that time.
    subset = ["spend_count_1h", "spend_sum_1h", "clicks_count_1h"]
    with httpx.Client(headers=AUTH, timeout=30) as client:
        body = client.post(
            f"{cluster.two.url}/features/user", json={"keys": keys, "at": at, "features": subset}
        ).json()
    for key, result in zip(keys, body["results"], strict=True):
        if result["found"]:
            want = {name: cluster.truth.features(key, at)[name] for name in subset}
            assert result["features"] == want, key


def test_table_scans_agree_in_json_csv_and_parquet_on_both_workers(cluster: Cluster) -> None:
    expected = expected_scan(cluster.truth, sorted(cluster.users), cluster.end)
    with httpx.Client(headers=AUTH, timeout=60) as client:
        frames = {
            (url, fmt): scan(client, url, "user", fmt, at=cluster.end)
            for url in cluster.urls
            for fmt in ("json", "csv", "parquet")
        }
        for (url, fmt), frame in frames.items():
            assert len(frame) == KEYS, (url, fmt)
            pd.testing.assert_frame_equal(frame, frames[(cluster.one.url, "json")], check_dtype=False)
        assert not scan_problems(frames[(cluster.one.url, "json")], expected)
        assert list(frames[(cluster.one.url, "json")].columns[:3]) == ["key", "user_id", "spend_count_1h"]

        lookups = {fmt: scan(client, cluster.two.url, "users", fmt) for fmt in ("json", "csv", "parquet")}
        want = pd.DataFrame([{"key": k, **v} for k, v in sorted(cluster.users.items())])
        for frame in lookups.values():
            pd.testing.assert_frame_equal(frame, want)

        # columns and limit: the first rows in key order, across both workers' partitions
        few = client.get(
            f"{cluster.one.url}/tables/user",
            params={"columns": "spend_sum_24h", "limit": 5, "at": cluster.end},
        ).json()
        assert few["columns"] == ["key", "spend_sum_24h"] and few["truncated"] is True and few["count"] == 5
        assert [r["key"] for r in few["rows"]] == sorted(cluster.users)[:5]
        assert few["rows"][0]["spend_sum_24h"] == pytest.approx(expected.iloc[0]["spend_sum_24h"])
        by_field = client.get(
            f"{cluster.one.url}/tables/user", params={"columns": "user_id", "limit": 1, "at": cluster.end}
        ).json()
        assert by_field["columns"] == ["key", "user_id"] and by_field["rows"] == [
            {"key": few["rows"][0]["key"], "user_id": few["rows"][0]["key"]}
        ]

        for url in cluster.urls:
            row = client.get(f"{url}/tables/users/u0042")
            assert row.status_code == 200 and row.json() == {
                "table": "users",
                "key": "u0042",
                "value": cluster.users["u0042"],
            }
            missing = client.get(f"{url}/tables/users/nobody")
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "key_not_found"
        bad = client.get(f"{cluster.one.url}/tables/users", params={"columns": "country,shoe_size"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "unknown_column"
        assert client.get(f"{cluster.one.url}/tables/nope").json()["error"]["code"] == "unknown_table"


def test_data_endpoints_need_the_token_and_health_does_not(cluster: Cluster) -> None:
    data = [
        ("GET", "/features/user/u0001", None),
        ("POST", "/features/user", {"keys": ["u0001"]}),
        ("GET", "/tables/users", None),
        ("GET", "/tables/users/u0001", None),
        ("GET", "/tables/user", None),
        ("GET", "/pipeline", None),
    ]
    with httpx.Client(timeout=10) as client:
        for method, path, body in data:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                answer = client.request(method, cluster.one.url + path, json=body, headers=headers)
                assert answer.status_code == 401, (method, path, headers)
                assert answer.json()["error"]["code"] == "unauthorized"
                assert answer.headers["WWW-Authenticate"].startswith("Bearer")
            assert client.request(method, cluster.one.url + path, json=body, headers=AUTH).status_code == 200
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert client.get(cluster.one.url + path).status_code == 200, path


def test_pipeline_and_http_metrics(cluster: Cluster) -> None:
    with httpx.Client(headers=AUTH, timeout=10) as client:
        body = client.get(f"{cluster.one.url}/pipeline").json()
        assert client.get(f"{cluster.one.url}/no/such/route").json()["error"]["code"] == "not_found"
    assert body["partitions"] == PARTITIONS and body["features"]["user"][0] == "spend_count_1h"
    assert {t["name"]: t["kind"] for t in body["tables"]} == {"users": "lookup", "user": "features"}
    assert {t["role"] for t in body["topics"]} >= {"stream", "lookup", "output", "dead-letter", "repartition"}
    assert (
        cluster.one.metric("hydrant_http_requests_total", route="/features/{group}/{key}", status="200") > 0
    )
    assert cluster.one.metric("hydrant_http_requests_total", route="/pipeline", status="401") > 0
    assert cluster.one.metric("hydrant_http_requests_total", route="unmatched", status="404") > 0
    assert cluster.one.metric("hydrant_http_request_duration_seconds_count", route="/tables/{name}") > 0


def test_schemathesis_finds_no_5xx_and_no_answer_outside_the_document(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Property-based requests from /openapi.json (fixed seed, bounded): every answer is documented,
    matches its schema, and none is a 5xx."""
    run_schemathesis(
        cluster.one.url, tmp_path, "--checks", "all", "--header", f"Authorization: Bearer {TOKEN}",
        "--max-examples", "60",
    )  # fmt: skip
