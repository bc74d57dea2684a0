"""`update_<lookup>`: apply each lookup topic's records (upserts and tombstones) to its table.

Records come in batches straight from the consumer (app/faust_ext/intake.py, as for the streams), not one
Faust Event at a time: a lookup topic is read in full when a worker starts (10,000 rows cost the
worker about half a second through Faust's per-record path), while the streams already flow. Each
batch's table writes and forwards are on the broker before its records are acknowledged. A record
whose table key would live on another partition is first re-keyed through the lookup's repartition
topic (the same task applies it from there), so each row sits on the partition where the streams'
events for that key are processed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from app.config.spec import LookupSpec, repartition_topic
from app.faust_ext.intake import Intake, Taken
from app.kafka.dead_letters import forward, send_dead_letter
from app.metrics import LOOKUP_UPDATES
from app.records.decode import BadRecord, decode_lookup
from app.records.partitioning import is_home, partition_for
from app.runtime import app, pipeline, settings
from tables.lookups import apply_lookup
from tables.store import StateWriter

logger = logging.getLogger(__name__)

GROUP = settings.group_id(pipeline.name)
BATCH_MAX = 2000
BATCH_WITHIN_S = 0.05


async def apply_batch(
    name: str, spec: LookupSpec, rekey_topic: str, updates: dict[str, Any], records: Taken
) -> None:
    """Apply one batch of lookup ``name``'s records (from its topic or its repartition topic),
    counting them in ``updates`` per op; return once every table write, forward and dead letter of
    it is on the broker."""
    producer = app.producer
    partitions = settings.partitions
    writer = StateWriter(producer)
    deliveries: list[Awaitable[Any]] = []
    topic_counts: dict[str, int | None] = {}
    for record in records:
        repartitioned = record.topic == rekey_topic
        try:
            key, fields = decode_lookup(record.key, record.value, spec)
        except BadRecord as exc:
            deliveries.append(await send_dead_letter(producer, spec.dlq_topic, record, exc, repartitioned))
            continue
        raw_key = key.encode("utf-8")
        if not repartitioned:
            if record.topic not in topic_counts:
                topic_counts[record.topic] = app.consumer.topic_partitions(record.topic)
            if not is_home(raw_key, record.partition, topic_counts[record.topic], partitions):
                target = partition_for(raw_key, partitions)
                deliveries.append(await forward(producer, rekey_topic, raw_key, target, record))
                continue
        updates[apply_lookup(writer, name, record.partition, raw_key, fields)].inc()
    await writer.delivered()
    await asyncio.gather(*deliveries)


def _make_task(name: str, spec: LookupSpec) -> Callable[[], Coroutine[Any, Any, None]]:
    rekey_topic = repartition_topic(GROUP, "lookup", name)
    intake = Intake(app, (spec.topic, rekey_topic), max_buffered=4 * BATCH_MAX)
    updates = {op: LOOKUP_UPDATES.labels(name, op) for op in ("upsert", "delete")}  # exported from start
    #: Subscribes the consumer to both topics; their records reach the intake, not this channel.
    app.topics.add(app.topic(spec.topic, rekey_topic, key_serializer="raw", value_serializer="raw"))

    async def update_lookup() -> None:
        """Take batches until the worker stops; an unexpected error stops the worker (its batch is
        not acked, so a restart reads it again)."""
        try:
            while not app.should_stop:
                records = await intake.take(BATCH_MAX, BATCH_WITHIN_S)
                await apply_batch(name, spec, rekey_topic, updates, records)
                intake.ack(records)
        except Exception as exc:
            logger.exception("update_%s failed", name)
            await app.crash(exc)

    update_lookup.__name__ = update_lookup.__qualname__ = f"update_{name}"
    return update_lookup


for _name, _spec in pipeline.lookups.items():
    app.task(_make_task(_name, _spec))
