"""Demo data for the examples: the shop (users, then orders and clicks) and payments (merchants, then
payments of cards at merchants from devices); `hydrant demo --example NAME`, or the one the pipeline fits."""

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


EXAMPLES = ("shop", "payments")
#: what each example writes: (lookup, streams)
_NEEDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "shop": ("users", ("orders", "clicks")),
    "payments": ("merchants", ("payments",)),
}


def pick_example(pipeline: Pipeline, example: str | None = None) -> str:
    """The example whose topics ``pipeline`` has (``example``, or the first that fits); HydrantError
    naming what is missing otherwise."""
    for name in [example] if example else EXAMPLES:
        lookup, streams = _NEEDS[name]
        if lookup in pipeline.lookups and all(s in pipeline.streams for s in streams):
            return name
    wanted = [example] if example else list(EXAMPLES)
    needs = "; ".join(f"{n}: lookup {_NEEDS[n][0]}, streams {', '.join(_NEEDS[n][1])}" for n in wanted)
    raise HydrantError(
        f"the demo generator writes the example pipelines ({needs}); this pipeline lacks them: "
        "run with --no-demo and produce your own data"
    )


def demo_topics(pipeline: Pipeline) -> tuple[str, str, str]:
    """(users, orders, clicks) topics of a shop-like pipeline; HydrantError for any other pipeline."""
    pick_example(pipeline, "shop")
    return pipeline.lookups["users"].topic, pipeline.streams["orders"].topic, pipeline.streams["clicks"].topic


def demo_merchant(rng: random.Random, merchant_id: str) -> dict[str, Any]:
    """A random merchant row (the merchants lookup)."""
    return {
        "merchant_id": merchant_id,
        "mcc": str(rng.choice((5411, 5812, 5999, 4121, 7011))),
        "country": rng.choice(COUNTRIES),
    }


def demo_payment(rng: random.Random, card: str, merchant: str, now_ms: int) -> dict[str, Any]:
    """A random payment of ``card`` at ``merchant``; 5 % without a device, 8 % declined."""
    return {
        "card_id": card,
        "merchant_id": merchant,
        "device_id": None if rng.random() < 0.05 else f"dev-{card[1:]}",
        "amount": round(rng.lognormvariate(3.5, 1.0), 2),
        "status": "declined" if rng.random() < 0.08 else "ok",
        "ts": now_ms,
    }


async def run_demo(
    settings: Settings,
    pipeline: Pipeline,
    stop: asyncio.Event,
    users: int = 200,
    rate: float = 50.0,
    seed: int = 7,
    example: str | None = None,
) -> int:
    """Publish the example's lookup rows, then its events at about ``rate`` events/s until ``stop``,
    keyed by the stream key (UTF-8, docs/product.md); returns how many stream events were sent."""
    name = pick_example(pipeline, example)
    rng = random.Random(seed)  # noqa: S311 - demo data, not security
    producer = bulk_producer(settings)
    await producer.start()
    try:
        write = _shop if name == "shop" else _payments
        return await write(producer, pipeline, stop, users, rate, rng)
    finally:
        await producer.stop()


async def _pause(stop: asyncio.Event, tick: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=tick)
    except TimeoutError:
        pass


async def _shop(
    producer: Any, pipeline: Pipeline, stop: asyncio.Event, users: int, rate: float, rng: random.Random
) -> int:
    users_topic, orders_topic, clicks_topic = demo_topics(pipeline)
    ids = [f"u{i:04d}" for i in range(users)]
    sent = 0
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
        await _pause(stop, tick)
    await producer.flush()
    return sent


async def _payments(
    producer: Any, pipeline: Pipeline, stop: asyncio.Event, cards: int, rate: float, rng: random.Random
) -> int:
    merchants_topic, payments_topic = pipeline.lookups["merchants"].topic, pipeline.streams["payments"].topic
    card_ids = [f"c{i:05d}" for i in range(cards * 10)]
    merchant_ids = [f"m{i:04d}" for i in range(max(10, cards // 2))]
    for merchant in merchant_ids:
        await producer.send(
            merchants_topic, orjson.dumps(demo_merchant(rng, merchant)), key=merchant.encode()
        )
    await producer.flush()
    logger.info("demo: published %d merchants", len(merchant_ids))
    sent = 0
    tick = 0.1
    while not stop.is_set():
        now_ms = int(time.time() * 1000)
        for _ in range(max(1, int(rate * tick))):
            card = rng.choice(card_ids)
            merchant = merchant_ids[min(len(merchant_ids) - 1, int(rng.expovariate(8 / len(merchant_ids))))]
            payment = demo_payment(rng, card, merchant, now_ms)
            await producer.send(payments_topic, orjson.dumps(payment), key=card.encode())
            sent += 1
        if rng.random() < 0.02:  # an occasional merchant change, and a rare one closing (deleted)
            merchant = rng.choice(merchant_ids)
            row = None if rng.random() < 0.1 else orjson.dumps(demo_merchant(rng, merchant))
            await producer.send(merchants_topic, row, key=merchant.encode())
        await _pause(stop, tick)
    await producer.flush()
    return sent
