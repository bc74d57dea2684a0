"""The payments example driven through the real StreamEngine passes (tests/support/engine.py), hop
topics included: its events, a :class:`Driver` that feeds records and the hop records the engine
sends back in, like a broker, and a plain-Python :class:`Reference` of the groups' features."""

from __future__ import annotations

import asyncio
import random
from collections import deque
from typing import Any

import orjson
import pytest

from app.config.routing import stream_stages
from app.config.spec import load_pipeline
from app.records.keys import key_string
from app.records.partitioning import partition_for
from tests.conftest import PAYMENTS
from tests.support.engine import GROUP_ID, PARTITIONS, T0, Engine, FakeIO, Fetched, Record

PIPELINE = load_pipeline(PAYMENTS)
STAGES = stream_stages(PIPELINE, "payments", GROUP_ID)
HOPS = {stage.topic for stage in STAGES[1:]}
MINUTE = 60_000


def merchant_row(merchant: str, version: int = 0) -> dict[str, str]:
    return {"mcc": f"{5000 + int(merchant[1:])}", "country": "FR" if version == 0 else "DE"}


def payments(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """``n`` payments over 12 cards, 5 merchants, 4 devices (20 % without one), one a minute."""
    rng = random.Random(seed)
    events = []
    for i in range(n):
        device = None if rng.random() < 0.2 else f"d{rng.randrange(4)}"
        card, merchant = f"c{rng.randrange(12)}", f"m{rng.randrange(5)}"
        status = "declined" if rng.random() < 0.1 else "ok"
        amount = round(rng.uniform(1, 500), 2)
        events.append(
            {"card_id": card, "merchant_id": merchant, "device_id": device, "amount": amount,
             "status": status, "ts": T0 + i * MINUTE}
        )  # fmt: skip
    return events


def stream_record(offset: int, event: dict[str, Any]) -> Record:
    """A payment produced keyed by its card (the stream key): on the card's home partition."""
    key = event["card_id"].encode()
    return Record("payments", partition_for(key, PARTITIONS), offset, key, orjson.dumps(event), event["ts"])


def preload_merchants(engine: Engine, version: int = 0) -> None:
    table = engine.tables.lookups["merchants"]
    for m in range(5):
        key = f"m{m}".encode()
        table.db(partition_for(key, PARTITIONS))[key] = orjson.dumps(merchant_row(f"m{m}", version))


class Driver:
    """Feeds records through the engine's passes and the hop records it sends back in, like a broker."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.io = FakeIO(engine.engine.routes)
        self.read = 0  # records of io.kafka_producer.sent already fed back
        self.offsets: dict[tuple[str, int], int] = {}

    async def passes(self, records: list[Record]) -> None:
        engine = self.engine.engine
        batch = await engine.decode_batch(Fetched(records), self.io.assignment(), self.io.topic_partitions)
        done = await (await engine.run_batch(batch, {}))
        await (await engine.send_batch(batch, done, self.io.producer, self.io.kafka_producer))

    def hops(self) -> list[Record]:
        """The hop records sent since last asked, as a consumer of the hop topics reads them."""
        sent = self.io.kafka_producer.sent
        new, self.read = sent[self.read :], len(sent)
        records = []
        for s in new:
            if s.topic in HOPS:
                offset = self.offsets.get((s.topic, s.partition), 0)
                self.offsets[s.topic, s.partition] = offset + 1
                assert s.timestamp_ms is not None and s.key is not None and s.value is not None
                records.append(
                    Record(s.topic, s.partition, offset, s.key, s.value, s.timestamp_ms, s.headers)
                )
        return records

    def run(self, records: list[Record], batch: int, between: Any = None) -> None:
        """Every record in batches of ``batch``, each batch's hops before the next input batch."""

        async def main() -> None:
            todo = deque(Fetched(records[i : i + batch]) for i in range(0, len(records), batch))
            fed = 0
            while todo:
                current = todo.popleft()
                if between is not None and all(r.topic == "payments" for r in current):
                    between(fed)
                    fed += len(current)
                await self.passes(list(current))
                hops = self.hops()
                for i in reversed(range(0, len(hops), batch)):
                    todo.appendleft(Fetched(hops[i : i + batch]))

        asyncio.run(main())

    def outputs(self) -> list[dict[str, Any]]:
        return [orjson.loads(s.value) for s in self.io.sent_to("payments-enriched")]


class Reference:
    """The features of the payments groups over events in processing order, computed plainly."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def features(self, group: str, key: str, at: int) -> dict[str, Any]:
        spec = PIPELINE.features[group]
        period = spec.period_ms
        mine = [e for e in self.seen if key_of(e, spec.key_fields) == key]
        out: dict[str, Any] = {}
        for agg in spec.aggregations:
            for op in agg.ops:
                for label, window in zip(agg.windows, agg.windows_ms, strict=True):
                    low = at // period - window // period
                    inside = [
                        e for e in mine if low < e["ts"] // period <= at // period
                        and (agg.where is None or e["status"] == "declined")
                    ]  # fmt: skip
                    values = [e[agg.field] for e in inside] if agg.field else [1] * len(inside)
                    out[f"{agg.name}_{op}_{label}"] = aggregate(op, values)
        return out


def aggregate(op: str, values: list[Any]) -> Any:
    if op == "count":
        return len(values)
    if op == "sum":
        return sum(values)
    if op == "avg":
        return sum(values) / len(values) if values else None
    if op == "max":
        return max(values, default=None)
    if op == "distinct":
        return len(set(values))
    assert op == "last"
    return values[-1] if values else None


def key_of(event: dict[str, Any], fields: tuple[str, ...]) -> str | None:
    values = [event.get(f) for f in fields]
    return None if any(v is None for v in values) else key_string(values)


def assert_features(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        assert actual[name] == (pytest.approx(value, rel=1e-12) if isinstance(value, float) else value), name
