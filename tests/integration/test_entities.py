"""Several entities per stream on the real broker, two workers (issue 21, must-show 1): the payments
example's groups per card, merchant, device and (card, merchant), merchants joined on merchant_id
(updated and deleted mid-stream); every key of every group from both workers at four `at` values,
and every output record, against the pandas reference; out + dead letters == in.

A group keyed by another field than the stream's gets its events through a hop topic from every
partition of the stream: the reference for its features on an output follows the order that hop topic
delivered them (a loaded machine may delay one partition's hops past a later payment's)."""

from __future__ import annotations

import asyncio
import random
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pandas as pd
from aiokafka import AIOKafkaProducer

from app.config.routing import stream_stages
from app.config.spec import load_pipeline
from app.records.keys import key_of
from tests.support.broker import BrokerUnderTest
from tests.support.checks import mismatches
from tests.support.ground_truth import GroundTruth
from tests.support.kafka import consume, produce
from tests.support.worker import WorkerProcess, wait_for

CARDS, MERCHANTS, PAYMENTS = 2_000, 300, 20_000
PACE = 200  # payments per second: a merchant's payments come 1.5 s apart, a card's 10 s
STEP_MS = 600  # event time between two payments: 20,000 span 3 h 20 min
BAD = 40  # payments without a card or with a bad amount: dead letters


def payments(t0: int, seed: int = 21) -> list[dict[str, Any]]:
    """Each card pays every 2,000th payment and each merchant is paid every 300th, so every key's
    payments are far apart in time: they reach each key in the order produced."""
    rng = random.Random(seed)
    cards = [f"c{i:04d}" for i in range(CARDS)]
    merchants = [f"m{i:03d}" for i in range(MERCHANTS)]
    rng.shuffle(cards)
    rng.shuffle(merchants)
    out = []
    for i in range(PAYMENTS):
        card = cards[i % CARDS]
        device = None if rng.random() < 0.05 else f"d-{card}"
        status = "declined" if rng.random() < 0.08 else "ok"
        amount = round(rng.uniform(1, 900), 2)
        merchant = merchants[i % MERCHANTS]
        out.append(
            {"card_id": card, "merchant_id": merchant, "device_id": device, "amount": amount,
             "status": status, "ts": t0 + i * STEP_MS}
        )  # fmt: skip
    return out


def merchant_row(m: str) -> dict[str, str]:
    return {"mcc": str(5000 + int(m[1:])), "country": ["FR", "DE", "US"][int(m[1:]) % 3]}


def produce_merchants(bootstrap: str, uid: str, merchants: list[str]) -> None:
    """Every merchant's row, to the test's merchants topic."""
    rows = [(m.encode(), orjson.dumps(merchant_row(m))) for m in merchants]
    asyncio.run(produce(bootstrap, f"merchants-{uid}", rows))


async def paced(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    """Produce ``records`` at :data:`PACE` per second, in order."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        started = time.monotonic()
        for i in range(0, len(records), PACE // 10):
            futures = [await producer.send(topic, v, key=k) for k, v in records[i : i + PACE // 10]]
            await asyncio.gather(*futures)
            await asyncio.sleep(max(0.0, started + (i + PACE // 10) / PACE - time.monotonic()))
    finally:
        await producer.stop()


def truths(
    pipeline: Path, events: list[dict[str, Any]], orders: dict[str, list[int]] | None = None
) -> dict[str, tuple[GroundTruth, np.ndarray]]:
    """Per group, the reference over the payments that have its key, in the order ``orders`` gives
    for that group (indices into ``events``; default: as listed), and each payment's row there."""
    spec = load_pipeline(pipeline)
    out = {}
    for name, group in spec.features.items():
        order = (orders or {}).get(name) or list(range(len(events)))
        keys = {i: key_of(events[i], group.key_fields) for i in order}
        keyed = [i for i in order if keys[i] is not None]
        frame = pd.DataFrame(
            [{**events[i], "key": keys[i], "time": events[i]["ts"], "stream": "payments"} for i in keyed]
        )
        position = np.full(len(events), -1)
        position[keyed] = np.arange(len(keyed))  # payment i -> its row in ``frame``
        out[name] = (GroundTruth(group, frame), position)
    return out


def hop_orders(
    bootstrap: str, pipeline: Path, uid: str, events: list[dict[str, Any]]
) -> dict[str, list[int]]:
    """Per group reached through a hop topic: the payments (indices into ``events``) in the order its
    stage consumed them (each key's records are on one partition of that topic, in offset order)."""
    spec = load_pipeline(pipeline)
    index = {e["ts"]: i for i, e in enumerate(events)}
    orders = {}
    for stage in stream_stages(spec, "payments", f"hydrant-test-{uid}")[1:]:
        expected = sum(key_of(e, stage.key) is not None for e in events)
        hops = asyncio.run(consume(bootstrap, stage.topic, expected, timeout=60))
        seen: dict[int, None] = {}
        for record in sorted(hops, key=lambda r: (r.partition, r.offset)):
            seen.setdefault(index[record.json()["ts"]])
        for name in stage.groups:
            orders[name] = list(seen)
    return orders


def ask_all(url: str, group: str, keys: list[str], at: int, client: httpx.Client) -> list[dict[str, Any]]:
    results = []
    for i in range(0, len(keys), 1000):
        answer = client.post(f"{url}/features/{group}", json={"keys": keys[i : i + 1000], "at": at})
        assert answer.status_code == 200, answer.text
        results += answer.json()["results"]
    return results


def test_payments_four_entities_two_workers(
    broker: BrokerUnderTest, payments_pipeline: Path, workers: Callable[..., WorkerProcess], uid: str
) -> None:
    w1 = workers(payments_pipeline, "w1")
    w2 = workers(payments_pipeline, "w2")
    w1.wait_ready(120)
    w2.wait_ready(120)
    merchants = [f"m{i:03d}" for i in range(MERCHANTS)]
    produce_merchants(broker.bootstrap, uid, merchants)
    wait_for(lambda: all(w.get("/tables/merchants/m299").status_code == 200 for w in (w1, w2)), "merchants")

    t0 = int(time.time() * 1000) - PAYMENTS * STEP_MS
    events = payments(t0)
    half = PAYMENTS // 2
    bad: list[bytes] = [orjson.dumps({**events[i], "card_id": None}) for i in range(BAD // 2)]
    bad += [orjson.dumps({**events[i], "amount": "a lot"}) for i in range(BAD // 2)]
    records = [(e["card_id"].encode(), orjson.dumps(e)) for e in events]
    first = records[:half] + [(b"c-bad", raw) for raw in bad]
    asyncio.run(paced(broker.bootstrap, f"payments-{uid}", first))
    out_topic, dlq = f"payments-enriched-{uid}", f"payments-{uid}.dlq"
    dead = asyncio.run(consume(broker.bootstrap, dlq, BAD, timeout=120))
    assert len(dead) == BAD and {r.headers["hydrant-reason"] for r in dead} == {b"missing_key", b"type"}
    assert len(asyncio.run(consume(broker.bootstrap, out_topic, half, timeout=180))) == half

    # Mid-stream: 30 merchants change country, 10 are deleted; then the second half.
    changed, deleted = merchants[:30], merchants[30:40]
    updates = [(m.encode(), orjson.dumps({**merchant_row(m), "country": "XX"})) for m in changed]
    asyncio.run(
        produce(broker.bootstrap, f"merchants-{uid}", [*updates, *[(m.encode(), None) for m in deleted]])
    )
    wait_for(
        lambda: all(
            w.get(f"/tables/merchants/{changed[-1]}").json()["value"]["country"] == "XX"
            and w.get(f"/tables/merchants/{deleted[-1]}").status_code == 404
            for w in (w1, w2)
        ),
        "the merchant updates",
    )
    asyncio.run(paced(broker.bootstrap, f"payments-{uid}", records[half:]))
    outputs = asyncio.run(consume(broker.bootstrap, out_topic, PAYMENTS, timeout=240))
    assert len(outputs) == PAYMENTS  # out + dead letters == in
    assert len(asyncio.run(consume(broker.bootstrap, dlq, BAD, timeout=10))) == BAD

    reference = truths(
        payments_pipeline, events, hop_orders(broker.bootstrap, payments_pipeline, uid, events)
    )
    spec = load_pipeline(payments_pipeline)
    # Every output: the payment, its merchant's row as current then, every group at its time.
    index = {e["ts"]: i for i, e in enumerate(events)}
    problems: list[str] = []
    for record in outputs:
        row = record.json()
        i = index[row["ts"]]
        event = events[i]
        assert {k: row[k] for k in event} == event
        m = event["merchant_id"]
        want_row = merchant_row(m)
        if i >= half and m in changed:
            want_row = {**want_row, "country": "XX"}
        if i >= half and m in deleted:
            assert (row["m_mcc"], row["m_country"]) == (None, None)
        else:
            assert (row["m_mcc"], row["m_country"]) == (want_row["mcc"], want_row["country"])
        for name, group in spec.features.items():
            truth, position = reference[name]
            names = group.feature_names()
            key = key_of(event, group.key_fields)
            if key is None:
                assert [row[n] for n in names] == [None] * len(names), name
                continue
            assert position[i] >= 0, f"payment {i} never reached the {name} stage"
            want = truth.features(key, event["ts"], upto=int(position[i]) + 1)
            problems += [f"payment {i} {name} {p}" for p in mismatches({n: row[n] for n in names}, want)]
    assert problems == [], problems[:20]

    # Every key of every group, asked from both workers at four times.
    last = events[-1]["ts"]
    ats = [last + 60_000, last - 30 * 60_000, events[half]["ts"], int(time.time() * 1000)]
    with httpx.Client(timeout=30) as client:
        for name, (truth, _) in reference.items():
            keys = sorted(truth._first_seq)
            assert len(keys) > 250
            for at in ats:
                expected = []
                for key in keys:
                    if truth.in_retention(key, at):
                        expected.append(truth.features(key, at))
                    else:
                        expected.append(None)
                for worker in (w1, w2):
                    for key, want, got in zip(
                        keys, expected, ask_all(worker.url, name, keys, at, client), strict=True
                    ):
                        assert got["key"] == key and got["found"], got
                        if want is None:
                            assert got["error"]["code"] == "outside_retention", got
                        else:
                            problems += [
                                f"{worker.url} {name} {key}@{at}: {p}"
                                for p in mismatches(got["features"], want)
                            ]
    assert problems == [], problems[:20]
    unkeyed = sum(
        w.metric("hydrant_events_unkeyed_total", group="device", stream="payments") for w in (w1, w2)
    )
    assert unkeyed == sum(1 for e in events if e["device_id"] is None)


def test_payments_survive_a_sigkill_and_a_lost_data_dir(
    broker: BrokerUnderTest,
    payments_pipeline: Path,
    workers: Callable[..., WorkerProcess],
    uid: str,
    tmp_path: Path,
) -> None:
    """Issue 21, must-show 2: one worker SIGKILLed mid-ingest and its data dir wiped; afterwards every
    key of every group equals the reference (nothing lost, nothing counted twice) and every payment
    has its output (at least once)."""
    lost = tmp_path / "w2-data"
    w1 = workers(payments_pipeline, "w1")
    w2 = workers(payments_pipeline, "w2", data_dir=lost)
    w1.wait_ready(120)
    w2.wait_ready(120)
    merchants = [f"m{i:03d}" for i in range(MERCHANTS)]
    rows = [(m.encode(), orjson.dumps(merchant_row(m))) for m in merchants]
    asyncio.run(produce(broker.bootstrap, f"merchants-{uid}", rows))
    wait_for(lambda: all(w.get("/tables/merchants/m299").status_code == 200 for w in (w1, w2)), "merchants")
    t0 = int(time.time() * 1000) - PAYMENTS * STEP_MS
    events = payments(t0, seed=22)
    records = [(e["card_id"].encode(), orjson.dumps(e)) for e in events]
    topic = f"payments-{uid}"
    asyncio.run(paced(broker.bootstrap, topic, records[:6_000]))
    wait_for(lambda: w2.metric("hydrant_events_consumed_total") >= 1_500, "w2 mid-ingest", 120)
    w2.stop(sig=signal.SIGKILL)  # uncommitted offsets, hops and outputs sent but not acked
    shutil.rmtree(lost)  # its state comes back from the changelogs
    asyncio.run(paced(broker.bootstrap, topic, records[6_000:13_000]))
    w2 = workers(payments_pipeline, "w2-again", data_dir=lost)
    w2.wait_ready(180)
    asyncio.run(paced(broker.bootstrap, topic, records[13_000:]))

    outputs = asyncio.run(consume(broker.bootstrap, f"payments-enriched-{uid}", PAYMENTS, timeout=300))
    assert {r.json()["ts"] for r in outputs} == {e["ts"] for e in events}  # each at least once
    reference = truths(payments_pipeline, events)
    last = events[-1]["ts"]
    problems: list[str] = []
    with httpx.Client(timeout=30) as client:
        for name, (truth, _) in reference.items():
            keys = sorted(truth._first_seq)
            for at in (last + 60_000, last - 20 * 60_000):
                for worker in (w1, w2):
                    for key, got in zip(keys, ask_all(worker.url, name, keys, at, client), strict=True):
                        assert got["key"] == key and got["found"], got
                        if not truth.in_retention(key, at):
                            assert got["error"]["code"] == "outside_retention", got
                            continue
                        want = truth.features(key, at)
                        problems += [f"{name} {key}@{at}: {p}" for p in mismatches(got["features"], want)]
    assert problems == [], problems[:20]
