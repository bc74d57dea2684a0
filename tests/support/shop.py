"""Seeded shop events (orders and clicks with disorder), their pandas ground truth, and publishing
them to a test's topics."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import orjson
import pandas as pd

from app.config.spec import load_pipeline
from tests.support.broker import BrokerUnderTest
from tests.support.ground_truth import GroundTruth
from tests.support.kafka import produce

HOUR = 3_600_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z

Event = dict[str, object]


def make_events(
    seed: int = 1, keys: int = 500, count: int = 20_000, every_key: bool = False, hours: int = 20
) -> list[Event]:
    """``count`` shop events over ``keys`` keys (``every_key``: each key at least once), event times
    over ``hours`` hours, shuffled within ±30 minutes; 60 % orders, 40 % clicks.

    Keep ``hours`` + 1 below the group's 24 h retention when the test compares with the ground
    truth: a worker reads the orders and clicks topics at its own pace, so with a wider span an
    event could be late (dropped) in the worker's processing order but not in the list's order."""
    rng = random.Random(seed)
    width = max(3, len(str(keys - 1)))
    events: list[Event] = []
    for n in range(count):
        user = f"u{(n if every_key and n < keys else rng.randrange(keys)):0{width}d}"
        ts = T0 + int(n * hours * HOUR / count) + rng.randint(-HOUR // 2, HOUR // 2)
        if rng.random() < 0.6:
            events.append(
                {
                    "stream": "orders",
                    "user_id": user,
                    "order_id": f"o-{n}",
                    "product": f"p{rng.randrange(40)}",
                    "amount": round(rng.uniform(1, 300), 2),
                    "status": rng.choice(["paid", "failed", "paid"]),
                    "ts": ts,
                }
            )
        else:
            events.append({"stream": "clicks", "user_id": user, "page": rng.choice("abcdef"), "ts": ts})
    return events


def truth_of(pipeline: Path, events: list[Event], group: str = "user") -> GroundTruth:
    frame = pd.DataFrame(events).rename(columns={"ts": "time"})
    frame["key"] = frame["user_id"]
    frame["ts"] = frame["time"]
    return GroundTruth(load_pipeline(pipeline).features[group], frame)


def publish(broker: BrokerUnderTest, uid: str, events: list[Event]) -> None:
    """Each event to its stream's topic (``<stream>-<uid>``), keyed by the user."""
    for stream in ("orders", "clicks"):
        payload = [
            (str(e["user_id"]).encode(), orjson.dumps({k: v for k, v in e.items() if k != "stream"}))
            for e in events
            if e["stream"] == stream
        ]
        asyncio.run(produce(broker.bootstrap, f"{stream}-{uid}", payload))


def newest_times(events: list[Event]) -> dict[str, int]:
    newest: dict[str, int] = {}
    for e in events:
        key, ts = str(e["user_id"]), int(e["ts"])  # type: ignore[call-overload]
        newest[key] = max(newest.get(key, ts), ts)
    return newest


def at_values(events: list[Event]) -> dict[str, list[int]]:
    """Per key: its newest event time and three earlier reference times (some outside retention)."""
    return {k: [t, t - HOUR, t - 6 * HOUR - 1, t - 20 * HOUR] for k, t in newest_times(events).items()}
