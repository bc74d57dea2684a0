"""A global lookup on the real broker, two workers: each worker keeps a replica of the whole lookup,
read before it is ready, so payments of every card are joined on merchant_id without a hop; an
update reaches both replicas; a restarted worker resumes its replica from its stored positions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from tests.support.broker import BrokerUnderTest
from tests.support.kafka import consume, create_pipeline_topics_for, produce
from tests.support.worker import WorkerProcess, wait_for

PIPELINE = """
name: global-{uid}
streams:
  payments:
    topic: payments-{uid}
    key: card_id
    time: ts
    fields: {{card_id: str, merchant_id: str, amount: float, ts: int}}
lookups:
  merchants: {{topic: merchants-{uid}, key: merchant_id, fields: {{mcc: str, country: str}}, global: true}}
features:
  card:
    key: card_id
    period: 10m
    aggregations:
      - {{name: spend, stream: payments, field: amount, ops: [count, sum], windows: [1h]}}
outputs:
  enriched:
    topic: enriched-{uid}
    from: payments
    join: [{{lookup: merchants, on: merchant_id, prefix: m_}}]
    features: [card]
"""
MERCHANTS = 500
T0 = 1_767_225_600_000


@pytest.fixture
def global_pipeline(tmp_path: Path, uid: str, broker: BrokerUnderTest) -> Path:
    path = tmp_path / "global.yaml"
    path.write_text(PIPELINE.format(uid=uid))
    create_pipeline_topics_for(broker.url, path, uid)
    return path


def merchant(i: int, country: str | None = None) -> tuple[bytes, bytes]:
    row = {"merchant_id": f"m{i}", "mcc": str(5000 + i), "country": country or ["FR", "DE"][i % 2]}
    return f"m{i}".encode(), orjson.dumps(row)


def payments(start: int, count: int, merchant_of: Callable[[int], int]) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(start, start + count):
        card = f"c{i % 97}"
        value = {"card_id": card, "merchant_id": f"m{merchant_of(i)}", "amount": 1.0, "ts": T0 + i}
        out.append((card.encode(), orjson.dumps(value)))
    return out


def test_each_worker_joins_a_global_lookup_from_its_replica(
    broker: BrokerUnderTest,
    global_pipeline: Path,
    workers: Callable[..., WorkerProcess],
    uid: str,
    tmp_path: Path,
) -> None:
    asyncio.run(produce(broker.bootstrap, f"merchants-{uid}", [merchant(i) for i in range(MERCHANTS)]))
    w1 = workers(global_pipeline, "w1")
    w2 = workers(global_pipeline, "w2")
    w1.wait_ready(120)
    w2.wait_ready(120)
    first = payments(0, 2_000, lambda i: i % MERCHANTS)
    asyncio.run(produce(broker.bootstrap, f"payments-{uid}", first))
    outputs = asyncio.run(consume(broker.bootstrap, f"enriched-{uid}", len(first), timeout=120))
    assert len(outputs) == len(first)
    for record in outputs:
        row = record.json()
        i = int(row["merchant_id"][1:])
        assert (row["m_mcc"], row["m_country"]) == (str(5000 + i), ["FR", "DE"][i % 2])
    # No hop topic: the join needs none.
    spec = w1.get("/pipeline").json()
    assert not [t for t in spec["topics"] if "-by-" in t["name"]]

    # An update reaches both replicas: payments of every card (both workers) see it.
    asyncio.run(produce(broker.bootstrap, f"merchants-{uid}", [merchant(7, "XX")]))
    wait_for(lambda: w1.get("/tables/merchants/m7").json()["value"]["country"] == "XX", "the update")
    later = payments(10_000, 400, lambda i: 7)
    asyncio.run(produce(broker.bootstrap, f"payments-{uid}", later))

    def seen_xx() -> bool:
        records = asyncio.run(
            consume(broker.bootstrap, f"enriched-{uid}", len(first) + len(later), timeout=5)
        )
        rows = [r.json() for r in records if r.json()["ts"] >= T0 + 10_000]
        return len(rows) == len(later) and {r["m_country"] for r in rows} == {"XX"}

    wait_for(seen_xx, "payments joined with the updated row on both workers", timeout=120)

    # A restart resumes the replica where it stopped (its positions are stored with its rows).
    w1.stop()
    again = workers(global_pipeline, "w1", data_dir=tmp_path / "data-w1")
    again.wait_ready(120)
    assert (
        f"global lookup topic merchants-{uid}: 4 of 4 partitions resume from stored positions" in again.log()
    )
