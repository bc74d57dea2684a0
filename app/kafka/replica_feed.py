"""Reading a whole topic on every worker (a global lookup's replica): all partitions, no consumer
group, from the positions the replica stored, handing each fetch to the replica's updater."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

logger = logging.getLogger(__name__)

FETCH_MAX = 5_000  # records per fetch handed over at once
POLL_MS = 500


async def follow_topic(
    options: Mapping[str, Any],
    topic: str,
    positions: Mapping[int, int],
    apply: Callable[[list[Any]], None],
    caught_up: asyncio.Event,
    stop: asyncio.Event,
) -> None:
    """Read every partition of ``topic`` from ``positions`` (absent: the beginning) until ``stop``,
    calling ``apply(records)`` per fetch; ``caught_up`` is set once every partition was read to the
    high watermark its fetches reported (exact on every broker: docs/broker.md)."""
    consumer = AIOKafkaConsumer(
        **options, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        partitions = None
        while not partitions and not stop.is_set():
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                await consumer._client.force_metadata_update()  # aiokafka: no public call for this
                await asyncio.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(partitions or ())]
        consumer.assign(tps)
        resumed = sum(1 for tp in tps if tp.partition in positions)
        logger.info(
            "global lookup topic %s: %d of %d partitions resume from stored positions",
            topic,
            resumed,
            len(tps),
        )
        for tp in tps:
            if tp.partition in positions:
                consumer.seek(tp, positions[tp.partition])
            else:
                await consumer.seek_to_beginning(tp)
        while not stop.is_set():
            fetched = await consumer.getmany(timeout_ms=POLL_MS, max_records=FETCH_MAX)
            records = [record for batch in fetched.values() for record in batch]
            if records:
                apply(records)
            if not caught_up.is_set() and await _at_end(consumer, tps):
                logger.info("global lookup topic %s read to its end", topic)
                caught_up.set()
    finally:
        await consumer.stop()


async def _at_end(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> bool:
    for tp in tps:
        highwater = consumer.highwater(tp)
        if highwater is None or await consumer.position(tp) < highwater:
            return False
    return True
