"""HTTP ingest on the real broker, two workers of the payments example (issue 25, must-show 3): 10,000
events in batches with 5 % invalid rows; exactly the valid ones reach the topic and every group's state
(against pandas), the invalid ones are answered with their index and reason; with ``wait=true`` a read
right after the answer, from the other worker, sees the event in every group it feeds."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from hydrant import Client, HydrantClientError
from tests.conftest import payments_pipeline_text
from tests.integration.test_entities import ask_all, truths
from tests.support.broker import BrokerUnderTest
from tests.support.checks import mismatches
from tests.support.kafka import consume, create_pipeline_topics_for
from tests.support.worker import WorkerProcess, wait_for

EVENTS, BATCH, CARDS, MERCHANTS = 10_000, 500, 700, 90
STEP_MS = 300  # 10,000 events span 50 min: under every group's retention, so none is late anywhere
#: How a row is spoilt (one in 20), and the reason the answer must give for it.
SPOILERS: list[tuple[str, Any]] = [
    ("type", lambda e: {**e, "amount": "a lot"}),
    ("missing_key", lambda e: {k: v for k, v in e.items() if k != "card_id"}),
    ("type", lambda e: {**e, "ts": "yesterday"}),
    ("decode", lambda e: [e]),
    ("type", lambda e: {**e, "card_id": True}),
]


def payment_rows(t0: int) -> tuple[list[Any], list[dict[str, Any]], dict[int, str]]:
    """(rows as sent, the valid events in order, reason by row index for the spoilt ones)."""
    rng = random.Random(25)
    rows: list[Any] = []
    valid: list[dict[str, Any]] = []
    spoilt: dict[int, str] = {}
    for i in range(EVENTS):
        card = f"c{rng.randrange(CARDS):03d}"
        event = {
            "card_id": card,
            "merchant_id": f"m{rng.randrange(MERCHANTS):02d}",
            "device_id": None if rng.random() < 0.1 else f"d-{card}",
            "amount": round(rng.uniform(1, 500), 2),
            "status": "declined" if rng.random() < 0.1 else "ok",
            "ts": t0 + i * STEP_MS,
        }
        if i % 20 == 7:
            reason, spoil = SPOILERS[(i // 20) % len(SPOILERS)]
            rows.append(spoil(event))
            spoilt[i] = reason
        else:
            rows.append(event)
            valid.append(event)
    return rows, valid, spoilt


@pytest.fixture(scope="module")
def two_workers(
    broker: BrokerUnderTest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[WorkerProcess, WorkerProcess, Path, str]]:
    uid = uuid.uuid4().hex[:10]
    tmp = tmp_path_factory.mktemp("ingest")
    pipeline = tmp / "payments.yaml"
    pipeline.write_text(payments_pipeline_text(uid))
    create_pipeline_topics_for(broker.url, pipeline, uid)
    workers = [
        WorkerProcess(
            broker, pipeline, tmp / f"data-{n}", app_id=f"hydrant-test-{uid}", log_path=tmp / f"{n}.log"
        )
        for n in ("w1", "w2")
    ]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.wait_ready(timeout=180)
        wait_for(lambda: all(w.ready() for w in workers), "both workers ready after the rebalance", 120)
        yield workers[0], workers[1], pipeline, uid
    finally:
        for worker in workers:
            worker.stop()


def test_valid_events_reach_the_topic_and_the_state_invalid_ones_are_answered(
    broker: BrokerUnderTest, two_workers: tuple[WorkerProcess, WorkerProcess, Path, str]
) -> None:
    w1, w2, pipeline, uid = two_workers
    rows, valid, spoilt = payment_rows(int(time.time() * 1000) - EVENTS * STEP_MS - 60_000)
    with Client(w1.url) as one, Client(w2.url) as two:
        for n, begin in enumerate(range(0, EVENTS, BATCH)):
            answer = (one, two)[n % 2].ingest("payments", rows[begin : begin + BATCH])
            want = {i - begin: reason for i, reason in spoilt.items() if begin <= i < begin + BATCH}
            assert answer["accepted"] == BATCH - len(want)
            assert {r["index"]: r["reason"] for r in answer["rejected"]} == want
            assert all(r["error"] for r in answer["rejected"])
    first = next(r for r in answer["rejected"] if r["reason"] == "type")
    assert "expected" in first["error"] and "field" in first["error"], first

    on_topic = asyncio.run(consume(broker.bootstrap, f"payments-{uid}", len(valid), timeout=60))
    assert sorted((r.json() for r in on_topic), key=lambda e: e["ts"]) == valid  # exactly the valid ones
    assert all(r.key == r.json()["card_id"].encode() for r in on_topic)  # keyed as `hydrant produce` keys
    outputs = asyncio.run(consume(broker.bootstrap, f"payments-enriched-{uid}", len(valid), timeout=180))
    assert {r.json()["ts"] for r in outputs} == {e["ts"] for e in valid}  # every one went through
    assert asyncio.run(consume(broker.bootstrap, f"payments-{uid}.dlq", 0, timeout=3)) == []

    at = valid[-1]["ts"] + 60_000
    problems: list[str] = []
    with httpx.Client(timeout=30) as http:
        for group, (truth, _) in truths(pipeline, valid).items():
            keys = sorted(truth._first_seq)
            for worker in (w1, w2):
                results = ask_all(worker.url, group, keys, at, http)
                for key, result in zip(keys, results, strict=True):
                    want = truth.features(key, at)
                    problems += [f"{group} {key}: {p}" for p in mismatches(result["features"], want)]
    assert problems == [], problems[:20]
    accepted = sum(
        w.metric("hydrant_ingest_events_total", stream="payments", outcome="accepted") for w in (w1, w2)
    )
    rejected = sum(
        w.metric("hydrant_ingest_events_total", stream="payments", outcome="rejected") for w in (w1, w2)
    )
    assert (accepted, rejected) == (len(valid), len(spoilt))


def test_wait_true_reads_its_own_writes_from_the_other_worker(
    two_workers: tuple[WorkerProcess, WorkerProcess, Path, str],
) -> None:
    """Each payment has a new card, merchant and device: with wait=true, every group it feeds counts
    it in the very next read, asked of the other worker (its owner or not)."""
    w1, w2, _, _ = two_workers
    now = int(time.time() * 1000)
    with Client(w1.url) as one, Client(w2.url) as two, httpx.Client(timeout=10) as http:
        for i in range(40):
            writer, reader = ((one, w2), (two, w1))[i % 2]
            event = {
                "card_id": f"rw-card-{i}",
                "merchant_id": f"rw-merchant-{i}",
                "device_id": f"rw-device-{i}",
                "amount": 10.0 + i,
                "status": "ok",
                "ts": now + i,
            }
            assert writer.ingest("payments", [event], wait=True) == {"accepted": 1, "rejected": []}
            reads = {
                "card": (f"rw-card-{i}", "spend_count_1h"),
                "merchant": (f"rw-merchant-{i}", "sales_count_1h"),
                "device": (f"rw-device-{i}", "device_count_1h"),
                "card_merchant": (f"rw-card-{i}|rw-merchant-{i}", "pair_count_24h"),
            }
            for group, (key, feature) in reads.items():
                answer = http.get(f"{reader.url}/features/{group}/{key}", params={"features": feature})
                assert answer.status_code == 200, (i, group, answer.text)
                assert answer.json()["features"] == {feature: 1}, (i, group, answer.json())


def test_ingest_errors(two_workers: tuple[WorkerProcess, WorkerProcess, Path, str]) -> None:
    w1, _, _, _ = two_workers
    with httpx.Client(base_url=w1.url, timeout=10) as http:
        unknown = http.post("/ingest/nope", content=b"[]")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_stream"
        bad = http.post("/ingest/payments", content=b"{not json")
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_json"
        rows = http.post("/ingest/payments", content=orjson.dumps([{"card_id": "x"}] * 10_001))
        assert rows.status_code == 413 and rows.json()["error"]["code"] == "too_many_rows"
        body = http.post("/ingest/payments", content=b"[" + b"0," * 600_000 + b"0]")
        assert body.status_code == 413, body.text
        wait = http.post("/ingest/payments", params={"wait": "soon"}, content=b"[]")
        assert wait.status_code == 400 and "wait" in wait.json()["error"]["message"]
        # JSON Lines: one event per line, answered like an array
        lines = b'{"card_id": "jl-1", "amount": 1, "ts": 1}\n\n{"amount": 2}\n'
        answer = http.post("/ingest/payments", content=lines)
        assert answer.json() == {
            "accepted": 1,
            "rejected": [
                {"index": 1, "reason": "missing_key", "error": "key field 'card_id' is missing or empty"}
            ],
        }
    assert w1.metric("hydrant_ingest_refused_total", stream="payments", reason="too_many_rows") == 1
    # both 413s by route: the row limit answered by the worker, the body limit by a serving process
    assert w1.metric("hydrant_http_requests_total", route="/ingest/{stream}", status="413") == 2
    with Client(w1.url) as client, pytest.raises(HydrantClientError) as caught:
        client.ingest("nope", [{"card_id": "x"}])
    assert (caught.value.status, caught.value.code) == (404, "unknown_stream")
