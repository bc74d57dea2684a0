"""`hydrant state reset GROUP`: a feature group's state deleted where it lives, so workers rebuild it
from the input topics (docs/operations.md, "Changing a pipeline"): a tombstone for every record key
of the group's changelog (workers delete those records from RocksDB when they next recover it, a
wiped disk finds nothing), and a definitions record saying the group was reset (the next worker
replays every aggregation of it and takes the spec's definition, whatever the period or key)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from app.config.settings import Settings
from app.config.spec import Pipeline
from app.errors import HydrantError
from app.kafka.clients import client_options, consumer_options
from app.kafka.definitions import RESET, definitions_topic, replayed_key, write_definitions
from app.kafka.end_offsets import exact_end_offsets

READ_TIMEOUT_S = 300.0
logger = logging.getLogger(__name__)


def changelog_topic(group_id: str, group: str) -> str:
    """The changelog topic of feature group ``group``'s table (Faust: ``<app id>-<table>-changelog``)."""
    return f"{group_id}-features-{group}-changelog"


@dataclass(frozen=True)
class ResetSummary:
    topic: str
    partitions: int
    records: int  # changelog records read
    deleted: int  # record keys tombstoned

    def line(self) -> str:
        return (
            f"reset: {self.deleted} record keys of {self.topic} deleted ({self.records} records read over "
            f"{self.partitions} partitions); the next worker rebuilds the group from the topics"
        )


async def live_keys(settings: Settings, topic: str, partitions: int) -> tuple[dict[int, set[bytes]], int]:
    """Per partition of ``topic``, the record keys whose latest record is not a tombstone; records read."""
    options = consumer_options(settings)
    consumer = AIOKafkaConsumer(
        **options, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        ends = await exact_end_offsets(options, await consumer.end_offsets(tps))
        await consumer.seek_to_beginning(*tps)
        alive: dict[int, set[bytes]] = {p: set() for p in range(partitions)}
        read = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READ_TIMEOUT_S
        pending = {tp for tp in tps if ends[tp] > 0}
        while pending:
            if loop.time() > deadline:
                raise HydrantError(f"reading {topic} took over {READ_TIMEOUT_S:.0f} s")
            for tp, records in (await consumer.getmany(*pending, timeout_ms=500, max_records=50_000)).items():
                keys = alive[tp.partition]
                for record in records:
                    if record.offset >= ends[tp] or record.key is None:
                        continue
                    read += 1
                    if record.value is None:
                        keys.discard(record.key)
                    else:
                        keys.add(record.key)
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        return alive, read
    finally:
        await consumer.stop()


async def reset_group(settings: Settings, pipeline: Pipeline, group: str) -> ResetSummary:
    """Tombstone every record of ``group``'s changelog and mark the group reset in the definitions."""
    if group not in pipeline.features:
        raise HydrantError(
            f"no feature group {group!r} in the pipeline (groups: {', '.join(pipeline.features)})"
        )
    group_id = settings.group_id(pipeline.name)
    topic = changelog_topic(group_id, group)
    alive, read = await live_keys(settings, topic, settings.partitions)
    producer = AIOKafkaProducer(**client_options(settings), acks="all", linger_ms=10)
    await producer.start()
    try:
        sent = [
            await producer.send(topic, None, key=key, partition=partition)
            for partition, keys in alive.items()
            for key in sorted(keys)
        ]
        await producer.flush()
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    marks: dict[str, dict[str, object] | None] = {group: {RESET: True}}
    marks.update({replayed_key(group, p): None for p in range(settings.partitions)})
    await write_definitions(settings, definitions_topic(group_id), marks)
    summary = ResetSummary(topic, settings.partitions, read, len(sent))
    logger.info(summary.line())
    return summary
