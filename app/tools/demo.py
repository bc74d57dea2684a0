"""Demo data for the shop example: users first, then a steady flow of orders and clicks."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import orjson

from app.config.settings import Settings
from app.config.spec import Pipeline
from app.errors import HydrantError
from app.kafka.clients import bulk_producer

logger = logging.getLogger(__name__)

COUNTRIES = ("DE", "FR", "US", "BR", "JP", "IN")
SEGMENTS = ("new", "regular", "vip")
PRODUCTS = tuple(f"sku-{i:03d}" for i in range(60))
PAGES = ("/", "/search", "/cart", "/checkout", "/product", "/account")


def demo_user(rng: random.Random, user_id: str) -> dict[str, Any]:
    """A random user row (the users lookup)."""
    return {"user_id": user_id, "country": rng.choice(COUNTRIES), "segment": rng.choice(SEGMENTS)}


def demo_order(rng: random.Random, user_id: str, n: int, now_ms: int) -> dict[str, Any]:
    """A random order event at ``now_ms``."""
    return {
        "user_id": user_id,
        "order_id": f"o-{n}",
        "product": rng.choice(PRODUCTS),
        "amount": round(rng.lognormvariate(3.0, 0.8), 2),
        "status": "failed" if rng.random() < 0.08 else "paid",
        "ts": now_ms,
    }


def demo_click(rng: random.Random, user_id: str, now_ms: int) -> dict[str, Any]:
    """A random click event at ``now_ms``."""
    return {"user_id": user_id, "page": rng.choice(PAGES), "ts": now_ms}


def demo_topics(pipeline: Pipeline) -> tuple[str, str, str]:
    """(users, orders, clicks) topics of a shop-like pipeline; HydrantError for any other pipeline."""
    try:
        return (
            pipeline.lookups["users"].topic,
            pipeline.streams["orders"].topic,
            pipeline.streams["clicks"].topic,
        )
    except KeyError:
        raise HydrantError(
            "the demo generator writes the shop example (lookup users, streams orders and clicks); "
            "this pipeline lacks them: run with --no-demo and produce your own data"
        ) from None


async def run_demo(
    settings: Settings,
    pipeline: Pipeline,
    stop: asyncio.Event,
    users: int = 200,
    rate: float = 50.0,
    seed: int = 7,
) -> int:
    """Publish ``users`` users, then orders and clicks at about ``rate`` events/s until ``stop``, keyed
    by user id (UTF-8, docs/product.md); returns how many stream events were sent."""
    users_topic, orders_topic, clicks_topic = demo_topics(pipeline)
    rng = random.Random(seed)  # noqa: S311 - demo data, not security
    ids = [f"u{i:04d}" for i in range(users)]
    producer = bulk_producer(settings)
    await producer.start()
    sent = 0
    try:
        for user_id in ids:
            await producer.send(users_topic, orjson.dumps(demo_user(rng, user_id)), key=user_id.encode())
        await producer.flush()
        logger.info("demo: published %d users", users)
        tick = 0.1
        while not stop.is_set():
            now_ms = int(time.time() * 1000)
            for _ in range(max(1, int(rate * tick))):
                user_id = rng.choice(ids)
                if rng.random() < 0.4:
                    record = demo_order(rng, user_id, sent, now_ms)
                    await producer.send(orders_topic, orjson.dumps(record), key=user_id.encode())
                else:
                    await producer.send(
                        clicks_topic, orjson.dumps(demo_click(rng, user_id, now_ms)), key=user_id.encode()
                    )
                sent += 1
            if rng.random() < 0.02:  # an occasional profile change
                user_id = rng.choice(ids)
                await producer.send(users_topic, orjson.dumps(demo_user(rng, user_id)), key=user_id.encode())
            try:
                await asyncio.wait_for(stop.wait(), timeout=tick)
            except TimeoutError:
                pass
        await producer.flush()
    finally:
        await producer.stop()
    return sent
