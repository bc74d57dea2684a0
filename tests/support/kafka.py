"""Produce and consume on the real broker from tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    timestamp: int

    def json(self) -> Any:
        return orjson.loads(self.value) if self.value is not None else None


async def create_topics(bootstrap: str, names: Iterable[str], partitions: int = 4) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(n, partitions, 1) for n in names if n not in existing]
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes | None]]) -> int:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=10, max_batch_size=256 * 1024, max_request_size=4 * 1024 * 1024
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in records]
        await asyncio.gather(*futures)
        return len(futures)
    finally:
        await producer.stop()


async def consume(
    bootstrap: str, topic: str, expected: int, timeout: float = 60.0, settle: float = 1.0
) -> list[Record]:
    """Read ``topic`` from the beginning (no consumer group) until ``expected`` records came and
    nothing more arrives for ``settle`` seconds, or ``timeout`` passes. Returns what was read, so a
    test can assert on too few and too many alike."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    out: list[Record] = []
    try:
        deadline = time.monotonic() + timeout
        partitions: set[int] | None = None
        while partitions is None and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic)
            if partitions is None:
                await consumer._client.force_metadata_update()  # topic metadata not loaded yet
                await asyncio.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(partitions or [])]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
            if any(batch.values()):
                quiet_since = time.monotonic()
            for messages in batch.values():
                for m in messages:
                    out.append(
                        Record(
                            m.topic, m.partition, m.offset, m.key, m.value, dict(m.headers or ()), m.timestamp
                        )
                    )
            if len(out) >= expected and time.monotonic() - quiet_since >= settle:
                break
        return out
    finally:
        await consumer.stop()


def create_pipeline_topics_for(broker_url: str, pipeline: Path, uid: str) -> None:
    """Every topic of ``pipeline`` for the consumer group the test workers use (hydrant-test-<uid>)."""
    from app.config.settings import load_settings
    from app.config.spec import load_pipeline
    from app.kafka.clients import create_pipeline_topics

    settings = load_settings(broker=broker_url, pipeline=pipeline, app_id=f"hydrant-test-{uid}")
    asyncio.run(create_pipeline_topics(settings, load_pipeline(pipeline)))
