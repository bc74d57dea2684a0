"""HTTP ingest (issue 25): events/s through ``POST /ingest/{stream}`` and the latency of ``wait=true``,
on the bundled broker, one worker, the shop pipeline's orders (or the payments example's four stages).

- (a) ingest: E events in requests of B, C connections at once, until every request is answered;
  beside it, in the same run, (raw) the same events produced by one aiokafka producer straight to
  the topic (what `hydrant produce` does): the ratio says what HTTP and validation cost.
- (b) ``wait=true``: R sequential requests of one event each (a new key each time), with the worker
  idle, then while K events/s are produced beside them: p50 / p99 / max in ms.

Figures, not pass/fail.

    .venv/bin/python -m bench.ingest [--events 100000] [--batch 1000] [--connections 2] [--requests 300]
                                     [--load 1000] [--example shop|payments]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaProducer

from app.kafka.broker import EmbeddedBroker
from bench.pipeline import T0, create_hydrant_topics, shop_value
from tests.conftest import payments_pipeline_text, shop_pipeline_text
from tests.support.broker import BrokerUnderTest
from tests.support.worker import WorkerProcess, wait_for


def event(example: str, rng: random.Random, i: int, ts: int, key: str | None = None) -> dict[str, Any]:
    """Event ``i`` of the stream the bench sends to (orders or payments), at ``ts``."""
    if example == "shop":
        return shop_value(rng, 1, key or f"u{rng.randrange(10_000):05d}", ts, f"o{i}")
    card = key or f"c{rng.randrange(10_000):05d}"
    return {
        "card_id": card,
        "merchant_id": key or f"m{rng.randrange(300):03d}",
        "device_id": f"d-{card}",
        "amount": round(rng.uniform(1, 900), 2),
        "status": "ok",
        "ts": ts,
    }


async def ingest_rate(url: str, stream: str, bodies: list[bytes], connections: int) -> tuple[float, int]:
    """(seconds, events accepted) to send every body, ``connections`` requests at a time."""
    queue = list(reversed(bodies))
    accepted = 0

    async def sender(session: aiohttp.ClientSession) -> None:
        nonlocal accepted
        while queue:
            body = queue.pop()
            async with session.post(f"{url}/ingest/{stream}", data=body) as answer:
                assert answer.status == 200, await answer.text()
                accepted += (await answer.json())["accepted"]

    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        await asyncio.gather(*(sender(session) for _ in range(connections)))
        return time.perf_counter() - started, accepted


async def raw_rate(bootstrap: str, topic: str, events: list[dict[str, Any]], key: str) -> float:
    """Seconds to produce ``events`` with one aiokafka producer (send per event, one wait at the end)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=10, max_batch_size=1_000_000)
    await producer.start()
    try:
        started = time.perf_counter()
        futures = [await producer.send(topic, orjson.dumps(e), key=str(e[key]).encode()) for e in events]
        await asyncio.gather(*futures)
        return time.perf_counter() - started
    finally:
        await producer.stop()


async def wait_latencies(
    url: str, stream: str, example: str, requests: int, load: float, bootstrap: str, topic: str, key: str
) -> list[float]:
    """Milliseconds of each of ``requests`` sequential one-event ``wait=true`` requests; with ``load``,
    that many events/s are produced to the topic meanwhile."""
    rng = random.Random(7)
    stop = asyncio.Event()

    async def background() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        await producer.start()
        try:
            i, started = 0, time.perf_counter()
            while not stop.is_set():
                for _ in range(max(1, int(load) // 20)):
                    e = event(example, rng, i, int(time.time() * 1000))
                    await producer.send(topic, orjson.dumps(e), key=str(e[key]).encode())
                    i += 1
                await asyncio.sleep(max(0.0, started + i / load - time.perf_counter()))
        finally:
            await producer.stop()

    task = asyncio.ensure_future(background()) if load else None
    out = []
    try:
        async with aiohttp.ClientSession() as session:
            for i in range(requests):
                body = orjson.dumps(
                    [event(example, rng, i, int(time.time() * 1000), key=f"w{uuid.uuid4().hex[:8]}")]
                )
                started = time.perf_counter()
                async with session.post(
                    f"{url}/ingest/{stream}", params={"wait": "true"}, data=body
                ) as answer:
                    assert answer.status == 200, await answer.text()
                    await answer.read()
                out.append((time.perf_counter() - started) * 1000)
    finally:
        stop.set()
        if task is not None:
            await task
    return out


def summary(ms: list[float]) -> str:
    ordered = sorted(ms)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {statistics.median(ordered):.1f} ms, p99 {p99:.1f} ms, max {ordered[-1]:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--load", type=float, default=1_000, help="events/s produced beside the waits")
    parser.add_argument("--example", choices=("shop", "payments"), default="shop")
    args = parser.parse_args()
    uid = uuid.uuid4().hex[:8]
    stream, key = ("orders", "user_id") if args.example == "shop" else ("payments", "card_id")
    topic = f"{stream}-{uid}"
    rng = random.Random(1)
    events = [event(args.example, rng, i, T0 + i * 50) for i in range(args.events)]
    bodies = [orjson.dumps(events[i : i + args.batch]) for i in range(0, len(events), args.batch)]
    with tempfile.TemporaryDirectory() as tmp_name, EmbeddedBroker() as embedded:
        tmp = Path(tmp_name)
        broker = BrokerUnderTest(embedded.url, "tansu", "tansu")
        spec = tmp / "pipeline.yaml"
        text = shop_pipeline_text(uid) if args.example == "shop" else payments_pipeline_text(uid)
        spec.write_text(text)
        app_id = f"hydrant-ingest-{uid}"
        create_hydrant_topics(broker.url, spec, app_id)
        worker = WorkerProcess(broker, spec, tmp / "data", app_id, tmp / "worker.log")
        worker.start()
        try:
            worker.wait_ready(180)
            raw_s = asyncio.run(raw_rate(broker.bootstrap, topic, events, key))
            http_s, accepted = asyncio.run(ingest_rate(worker.url, stream, bodies, args.connections))
            assert accepted == len(events), accepted
            print(f"example {args.example}, {args.events:,} events in requests of {args.batch:,}, "
                  f"{args.connections} connections")  # fmt: skip
            print(f"(raw)    aiokafka producer: {len(events) / raw_s:,.0f} events/s")
            print(
                f"(a)      POST /ingest:      {len(events) / http_s:,.0f} events/s "
                f"= {raw_s / http_s:.0%} of (raw)"
            )
            backlog = 2 * len(events)  # processed before the waits are timed
            wait_for(
                lambda: (
                    worker.metric("hydrant_events_consumed_total") >= backlog
                    and worker.metric("hydrant_consumer_lag") == 0
                ),  # hop topics too
                "the backlog",
                600,
            )
            for load in (0.0, args.load):
                ms = asyncio.run(
                    wait_latencies(
                        worker.url, stream, args.example, args.requests, load, broker.bootstrap, topic, key
                    )
                )
                print(
                    f"(b)      wait=true, {args.requests} requests of 1 event, "
                    f"{load:,.0f} events/s beside: {summary(ms)}"
                )
        finally:
            worker.stop()


if __name__ == "__main__":
    main()
