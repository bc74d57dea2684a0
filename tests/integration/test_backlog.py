"""A backlog on the real broker (issue 32, must-show 1): 48 h of payments, every card partition in
event-time order, produced before any worker starts; then two workers start 30 s apart. Groups on
other keys than the card (merchant, device: a 1 h window, R = 6) get their events from every card
partition, as unevenly as the workers happen to consume them. No payment may be late, every key of
every group equals the pandas reference at four `at` values, and every payment has its output.

Devices are shared across cards here (a device's payments come from every card partition), unlike the
example's generator elsewhere, so that the device group meets the skew between partitions."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from app.config.spec import load_pipeline
from app.records.keys import key_of
from app.records.partitioning import partition_for
from tests.integration.test_entities import ask_all, produce_merchants, truths
from tests.support.broker import BrokerUnderTest
from tests.support.checks import mismatches
from tests.support.kafka import consume, create_pipeline_topics_for, produce
from tests.support.worker import WorkerProcess, wait_for

CARDS, MERCHANTS, DEVICES = 600, 60, 40
PAYMENTS = 12_000
SPAN_MS = 48 * 3_600_000
STEP_MS = SPAN_MS // PAYMENTS  # 14.4 s of event time between two payments

pytestmark = pytest.mark.integration


def backlog(t0: int, seed: int = 32) -> list[dict[str, Any]]:
    """48 h of payments in event-time order; a device is used by many cards."""
    rng = random.Random(seed)
    out = []
    for i in range(PAYMENTS):
        card = f"c{rng.randrange(CARDS):04d}"
        device = None if rng.random() < 0.05 else f"d{rng.randrange(DEVICES):02d}"
        out.append(
            {"card_id": card, "merchant_id": f"m{rng.randrange(MERCHANTS):03d}", "device_id": device,
             "amount": round(rng.uniform(1, 900), 2), "status": "declined" if rng.random() < 0.08 else "ok",
             "ts": t0 + i * STEP_MS}
        )  # fmt: skip
    return out


@pytest.mark.parametrize("held_s", [0, 45], ids=["all-at-once", "one-partition-45s-later"])
def test_a_backlog_consumed_unevenly_leaves_no_payment_late(
    broker: BrokerUnderTest,
    payments_pipeline: Path,
    workers: Callable[..., WorkerProcess],
    uid: str,
    held_s: int,
) -> None:
    """``held_s``: card partition 1's payments (the same 48 h) are produced that long after the others,
    within HYDRANT_IDLE_PARTITION_MS (60 s): it still holds the later stages back."""
    merchants = [f"m{i:03d}" for i in range(MERCHANTS)]
    produce_merchants(broker.bootstrap, uid, merchants)
    t0 = int(time.time() * 1000) - SPAN_MS - 60_000
    events = backlog(t0)
    records = [(e["card_id"].encode(), orjson.dumps(e)) for e in events]
    late_partition = [bool(held_s) and partition_for(key, 4) == 1 for key, _ in records]
    held = [r for r, hold in zip(records, late_partition, strict=True) if hold]
    first = [r for r, hold in zip(records, late_partition, strict=True) if not hold]
    asyncio.run(produce(broker.bootstrap, f"payments-{uid}", first))
    produced = time.monotonic()
    w1 = workers(payments_pipeline, "w1")
    time.sleep(30)
    w2 = workers(payments_pipeline, "w2")
    if held:
        time.sleep(max(0.0, produced + held_s - time.monotonic()))
        asyncio.run(produce(broker.bootstrap, f"payments-{uid}", held))
    w1.wait_ready(120)
    w2.wait_ready(120)
    out_topic, dlq = f"payments-enriched-{uid}", f"payments-{uid}.dlq"
    outputs = asyncio.run(consume(broker.bootstrap, out_topic, PAYMENTS, timeout=240))
    dead = asyncio.run(consume(broker.bootstrap, dlq, 1, timeout=5))
    late = [r for r in dead if r.headers.get("hydrant-reason") == b"late"]
    assert late == [], f"{len(late)} payments dead-lettered as late, e.g. {late[0].headers if late else ''}"
    assert {r.json()["ts"] for r in outputs} == {e["ts"] for e in events}  # every payment, at least once
    wait_for(lambda: all(w.get("/readyz").status_code == 200 for w in (w1, w2)), "both workers ready")

    reference = truths(payments_pipeline, events)
    last = events[-1]["ts"]
    ats = [last + 60_000, last - 30 * 60_000, events[PAYMENTS // 2]["ts"], int(time.time() * 1000)]
    problems: list[str] = []
    with httpx.Client(timeout=30) as client:
        for name, (truth, _) in reference.items():
            keys = sorted(truth._first_seq)
            for at in ats:
                for worker in (w1, w2):
                    for key, got in zip(keys, ask_all(worker.url, name, keys, at, client), strict=True):
                        assert got["key"] == key and got["found"], got
                        if not truth.in_retention(key, at):
                            assert got["error"]["code"] == "outside_retention", got
                            continue
                        problems += [
                            f"{worker.url} {name} {key}@{at}: {p}"
                            for p in mismatches(got["features"], truth.features(key, at))
                        ]
    assert problems == [], problems[:20]
    assert sum(1 for e in events if key_of(e, ("device_id",)) is None) > 0

    # Outputs carry each group's features as of the event's arrival at its stage: in a backlog, payments
    # of other card partitions may not have arrived yet (docs/pipeline.md). How many differ from the
    # answer at the event's own time over every payment (`hydrant compute`'s), per group:
    spec = load_pipeline(payments_pipeline)
    index = {e["ts"]: i for i, e in enumerate(events)}
    differ: dict[str, int] = dict.fromkeys(spec.features, 0)
    unique = {r.json()["ts"]: r.json() for r in outputs}
    for ts, row in unique.items():
        event = events[index[ts]]
        for name, group in spec.features.items():
            key = key_of(event, group.key_fields)
            if key is None:
                continue
            names = group.feature_names()
            truth, position = reference[name]
            if mismatches(
                {n: row[n] for n in names}, truth.features(key, ts, upto=int(position[index[ts]]) + 1)
            ):
                differ[name] += 1
    print(f"\noutputs ({len(unique)}) whose features differ from the answer at the event's time: {differ}")
    assert differ["card"] == 0  # the stream's own key: one partition, in order


IDLE_S = 15
SILENT = """\
name: silent-{uid}
streams:
  payments:
    topic: payments-{uid}
    key: card_id
    time: ts
    fields: {{card_id: str, device_id: str, amount: float, ts: int}}
features:
  card:
    key: card_id
    period: 10m
    aggregations: [{{name: spend, stream: payments, field: amount, ops: [count], windows: [1h]}}]
  device:
    key: device_id
    period: 10m
    aggregations: [{{name: device, stream: payments, field: amount, ops: [count, sum], windows: [1h]}}]
outputs:
  enriched: {{topic: enriched-{uid}, from: payments, features: [card, device]}}
"""


def test_a_partition_silent_past_the_idle_time_finds_exactly_the_predicted_payments_late(
    broker: BrokerUnderTest, workers: Callable[..., WorkerProcess], uid: str, tmp_path: Path
) -> None:
    """The exception of the rule (docs/features.md, "Later stages"): card partition 1 sends nothing
    for longer than HYDRANT_IDLE_PARTITION_MS (15 s here) while partition 0 goes on, so the device stage
    is held back by partition 0 alone, and each device's floor follows partition 0's newest payment of
    that device: b(t) - R. Partition 1's payments (the same 48 h, produced afterwards) at or below
    their device's floor are late, exactly those. One later stage, so that its only upstream channel
    is the card partition (its progress is the payment's own time: exact)."""
    pipeline = tmp_path / "silent.yaml"
    pipeline.write_text(SILENT.format(uid=uid))
    create_pipeline_topics_for(broker.url, pipeline, uid)
    rng = random.Random(321)
    cards = {
        p: [c for c in (f"c{i:04d}" for i in range(2_000)) if partition_for(c.encode(), 4) == p][:200]
        for p in (0, 1)
    }
    t0 = int(time.time() * 1000) - SPAN_MS - 60_000
    step = SPAN_MS // 3_000
    streams = {
        p: [
            {"card_id": rng.choice(cards[p]), "device_id": f"d{rng.randrange(DEVICES):02d}",
             "amount": round(rng.uniform(1, 900), 2), "ts": t0 + i * step + p}
            for i in range(3_000)
        ]
        for p in (0, 1)
    }  # fmt: skip
    env = {"HYDRANT_IDLE_PARTITION_MS": str(IDLE_S * 1000)}
    w1 = workers(pipeline, "w1", **env)
    w1.wait_ready(120)
    topic = f"payments-{uid}"
    # Partition 0 paced over four idle times (the stage is held back by partition 1 only at first).
    asyncio.run(paced_for(broker.bootstrap, topic, streams[0], 4 * IDLE_S))
    outputs = asyncio.run(consume(broker.bootstrap, f"enriched-{uid}", 3_000, timeout=120))
    assert len(outputs) == 3_000
    asyncio.run(
        produce(broker.bootstrap, topic, [(e["card_id"].encode(), orjson.dumps(e)) for e in streams[1]])
    )

    period, retention = 10 * 60_000, 6
    last = {
        d: max(e["ts"] for e in streams[0] if e["device_id"] == d)
        for d in {e["device_id"] for e in streams[0]}
    }
    predicted = [
        e
        for e in streams[1]
        if e["device_id"] in last and e["ts"] // period <= last[e["device_id"]] // period - retention
    ]
    assert len(predicted) > 1_000
    dead = asyncio.run(
        consume(broker.bootstrap, f"payments-{uid}.dlq", len(predicted), timeout=120, settle=3)
    )
    assert {r.headers["hydrant-reason"] for r in dead} == {b"late"}
    assert sorted(orjson.loads(r.value)["ts"] for r in dead) == sorted(e["ts"] for e in predicted)
    outputs = asyncio.run(consume(broker.bootstrap, f"enriched-{uid}", 6_000 - len(predicted), timeout=120))
    assert len({r.json()["ts"] for r in outputs}) == 6_000 - len(predicted)


async def paced_for(bootstrap: str, topic: str, events: list[dict[str, Any]], seconds: float) -> None:
    """Produce ``events`` in order, evenly over ``seconds``."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        started, chunk = time.monotonic(), max(1, len(events) // 100)
        for i in range(0, len(events), chunk):
            futures = [
                await producer.send(topic, orjson.dumps(e), key=e["card_id"].encode())
                for e in events[i : i + chunk]
            ]
            await asyncio.gather(*futures)
            await asyncio.sleep(max(0.0, started + (i + chunk) / len(events) * seconds - time.monotonic()))
    finally:
        await producer.stop()
