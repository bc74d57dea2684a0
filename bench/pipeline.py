"""End-to-end events/s of the shop pipeline on the bundled broker, one worker.

Preloads 10,000 users and N events (half orders -> enriched output with lookup join, features and a
computed column; half clicks -> window state only), starts a worker (a real process), and times
from /readyz 200 until every event was consumed (`hydrant_events_consumed_total`). Batch figures
come from the worker's own histograms.

    .venv/bin/python -m bench.pipeline [--events 50000]

Issue 8 adds the baselines of the same run (a plain Faust per-event agent, a raw aiokafka loop)
and their ratios; until then this prints Hydrant's figure alone.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
import uuid
from pathlib import Path

import orjson

from app.broker import EmbeddedBroker
from tests.conftest import shop_pipeline_text
from tests.support.broker import BrokerUnderTest
from tests.support.kafka import create_pipeline_topics_for, produce
from tests.support.worker import WorkerProcess, wait_for

T0 = 1_767_225_600_000


def shop_events(
    n: int, keys: int, seed: int = 1
) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    rng = random.Random(seed)
    orders, clicks = [], []
    for i in range(n):
        user = f"u{rng.randrange(keys):05d}"
        ts = T0 + i * 50
        if i % 2:
            value = {
                "user_id": user,
                "order_id": f"o{i}",
                "product": f"p{rng.randrange(50)}",
                "amount": round(rng.uniform(1, 100), 2),
                "status": "paid",
                "ts": ts,
            }
            orders.append((user.encode(), orjson.dumps(value)))
        else:
            clicks.append((user.encode(), orjson.dumps({"user_id": user, "page": "/", "ts": ts})))
    return orders, clicks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--keys", type=int, default=10_000)
    args = parser.parse_args()
    uid = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as embedded:
        broker = BrokerUnderTest(embedded.url, "tansu", "tansu")
        pipeline = Path(tmp) / "pipeline.yaml"
        pipeline.write_text(shop_pipeline_text(uid))
        create_pipeline_topics_for(broker.url, pipeline, uid)
        users = [
            (f"u{i:05d}".encode(), orjson.dumps({"user_id": f"u{i:05d}", "country": "DE", "segment": "vip"}))
            for i in range(args.keys)
        ]
        orders, clicks = shop_events(args.events, args.keys)
        for topic, records in ((f"users-{uid}", users), (f"orders-{uid}", orders), (f"clicks-{uid}", clicks)):
            asyncio.run(produce(broker.bootstrap, topic, records))
        worker = WorkerProcess(
            broker, pipeline, Path(tmp) / "data", f"hydrant-bench-{uid}", Path(tmp) / "w.log"
        )
        worker.start()
        try:
            worker.wait_ready(120)
            started = time.monotonic()
            wait_for(
                lambda: worker.metric("hydrant_events_consumed_total") >= args.events, "all consumed", 3600
            )
            seconds = time.monotonic() - started
            batches = worker.metric("hydrant_batch_seconds_count", stream="orders")
            busy = worker.metric("hydrant_batch_seconds_sum", stream="orders")
        finally:
            worker.stop()
    print(
        f"{args.events:,} events ({len(orders):,} orders enriched, {len(clicks):,} clicks), "
        f"{args.keys:,} keys"
    )
    print(
        f"hydrant pipeline: {args.events / seconds:,.0f} events/s ({seconds:.1f}s from ready to last event)"
    )
    print(
        f"batches: {batches:,.0f}, mean {args.events / max(batches, 1):,.0f} events, "
        f"{busy / seconds:.0%} of the time inside the batch body"
    )


if __name__ == "__main__":
    main()
