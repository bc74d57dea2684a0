"""The reliability harness: a seeded workload (good events with disorder plus malformed records),
its pandas ground truth, publishing it in slices, and a checker that asks the workers for every key
and counts mismatches, lost events and double-counted events.

Sizes: bounded by default (CI); ``HYDRANT_RELIABILITY=long`` multiplies them by five (see
docs/reliability.md), and the per-test time limit with them.
"""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

from tests.support.broker import BrokerUnderTest
from tests.support.checks import mismatches
from tests.support.ground_truth import GroundTruth
from tests.support.kafka import produce
from tests.support.shop import Event, make_events, newest_times, truth_of

LONG = os.environ.get("HYDRANT_RELIABILITY") == "long"
SCALE = 5 if LONG else 1
TIME_LIMIT_S = 600 * SCALE  # per scenario (pytest-timeout)
#: Counts that tell lost from double-counted events: every order feeds spend_count_24h, every click
#: clicks_count_1h (at the newest event time, over the last day / hour).
COUNTS = ("spend_count_24h", "clicks_count_1h")


@dataclass
class Workload:
    events: list[Event]
    malformed: list[tuple[str, bytes | None, bytes]]  # (stream, key, value)
    truth: GroundTruth
    end: int  # newest event time: every window of every key is inside retention there

    @property
    def keys(self) -> list[str]:
        return sorted(newest_times(self.events))


def make_workload(
    pipeline: Path, seed: int, keys: int, count: int, malformed_share: float = 0.0, hours: int = 20
) -> Workload:
    # 20 hours of event time (±30 min): no event can be late (24 h retention) whatever order the
    # worker reads the topics in, so the truth does not depend on the processing order. A wider span
    # is safe only while the worker reads both topics within hours of event time of each other.
    events = make_events(seed=seed, keys=keys, count=count, every_key=True, hours=hours)
    rng = random.Random(seed)
    kinds = [
        lambda n: (b"u0001", b'{"user_id": "u0001", "amount": 3'),  # truncated JSON
        lambda n: (b"x", orjson.dumps({"order_id": f"bad-{n}", "amount": 1.0})),  # no key field
        lambda n: (b"u0002", orjson.dumps({"user_id": "u0002", "order_id": f"bad-{n}", "amount": "lots"})),
        lambda n: (None, bytes(rng.getrandbits(8) for _ in range(64))),  # binary junk
    ]
    malformed = [("orders", *kinds[n % len(kinds)](n)) for n in range(int(count * malformed_share))]
    return Workload(events, malformed, truth_of(pipeline, events), max(newest_times(events).values()))


def publish_slice(broker: BrokerUnderTest, uid: str, workload: Workload, start: float, stop: float) -> None:
    """Publish the events (and malformed records) between fractions ``start`` and ``stop``."""
    events = workload.events[int(len(workload.events) * start) : int(len(workload.events) * stop)]
    bad = workload.malformed[int(len(workload.malformed) * start) : int(len(workload.malformed) * stop)]
    for stream in ("orders", "clicks"):
        records: list[tuple[bytes | None, bytes | None]] = [
            (str(e["user_id"]).encode(), orjson.dumps({k: v for k, v in e.items() if k != "stream"}))
            for e in events
            if e["stream"] == stream
        ]
        # malformed records interleaved with the good ones, not all at the end
        for i, (where, key, value) in enumerate(bad):
            if where == stream:
                records.insert((i * 37) % (len(records) + 1), (key, value))
        asyncio.run(produce(broker.bootstrap, f"{stream}-{uid}", records))


@dataclass
class Report:
    keys: int = 0
    mismatched: list[str] = field(default_factory=list)
    lost: int = 0  # events missing from the counts
    doubled: int = 0  # events counted more than once
    unanswered: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.mismatched or self.lost or self.doubled or self.unanswered)

    def __str__(self) -> str:
        first = (self.mismatched + self.unanswered)[:5]
        return (
            f"{self.keys} keys: {len(self.mismatched)} mismatched, {self.lost} lost, {self.doubled} "
            f"double-counted, {len(self.unanswered)} unanswered; first: {first}"
        )


def check(urls: list[str], workload: Workload, headers: dict[str, str] | None = None) -> Report:
    """Every key from every worker (batches of 1,000) at the newest event time, against the truth."""
    report = Report(keys=len(workload.keys))
    expected = {key: workload.truth.features(key, workload.end) for key in workload.keys}
    with httpx.Client(timeout=30, headers=headers) as client:
        for url in urls:
            for i in range(0, len(workload.keys), 1000):
                batch = workload.keys[i : i + 1000]
                answer = client.post(f"{url}/features/user", json={"keys": batch, "at": workload.end})
                if answer.status_code != 200:
                    report.unanswered.append(f"{url}: HTTP {answer.status_code} {answer.text[:200]}")
                    continue
                for result in answer.json()["results"]:
                    key, want = result["key"], expected[result["key"]]
                    got = result.get("features") or {}
                    if not result["found"]:
                        report.mismatched.append(f"{url} {key}: not found")
                        report.lost += sum(int(want[c]) for c in COUNTS)
                        continue
                    problems = mismatches(got, want)
                    report.mismatched += [f"{url} {key}: {p}" for p in problems[:2]]
                    for name in COUNTS:
                        diff = int(got.get(name) or 0) - int(want[name])
                        report.lost += max(0, -diff)
                        report.doubled += max(0, diff)
    return report


def settle(urls: list[str], workload: Workload, timeout: float = 240) -> Report:
    """Check until clean (the workers catch up) or ``timeout``; the last report."""
    import time

    deadline = time.monotonic() + timeout
    report = check(urls, workload)
    while not report.clean and time.monotonic() < deadline:
        time.sleep(3)
        report = check(urls, workload)
    return report
