"""What each feature group's state was built with, kept in Kafka: the compacted topic
``<consumer group>-definitions``, one record per group (key: the group's name, value: its
definition, app/config/changes.py). A worker reads it before it starts, compares it with its spec and
writes its own (docs/operations.md, "Changing a pipeline")."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from app.config.changes import GroupChange, definitions, plan_changes, render_changes
from app.config.routing import TopicPlan
from app.config.settings import Settings
from app.config.spec import Pipeline
from app.errors import SpecChangeError
from app.kafka.clients import client_options, create_topics
from app.kafka.end_offsets import exact_end_offsets

READ_TIMEOUT_S = 30.0
logger = logging.getLogger(__name__)


def definitions_topic(group_id: str) -> str:
    """The topic of consumer group ``group_id``'s definitions."""
    return f"{group_id}-definitions"


async def read_definitions(settings: Settings, topic: str) -> dict[str, dict[str, Any]]:
    """The latest definition of every group in ``topic`` (created, empty, if it does not exist)."""
    await create_topics(settings, [TopicPlan(topic, "state", "definitions", 1, True)])
    options = client_options(settings)
    consumer = AIOKafkaConsumer(**options, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        approx = await consumer.end_offsets([partition])
        end = (await exact_end_offsets(options, approx))[partition]
        await consumer.seek_to_beginning(partition)
        found: dict[str, dict[str, Any]] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READ_TIMEOUT_S
        while await consumer.position(partition) < end:
            if loop.time() > deadline:
                raise TimeoutError(f"reading {topic} took over {READ_TIMEOUT_S:.0f} s")
            for records in (await consumer.getmany(partition, timeout_ms=1000)).values():
                for record in records:
                    if record.key is None:
                        continue
                    if record.value is None:
                        found.pop(record.key.decode(), None)
                    else:
                        found[record.key.decode()] = orjson.loads(record.value)
        return found
    finally:
        await consumer.stop()


async def write_definitions(settings: Settings, topic: str, groups: dict[str, dict[str, Any]]) -> None:
    """Record ``groups``' definitions (by group name) in ``topic``; others stay as they are."""
    producer = AIOKafkaProducer(**client_options(settings), acks="all")
    await producer.start()
    try:
        for name, value in groups.items():
            await producer.send_and_wait(topic, orjson.dumps(value), key=name.encode(), partition=0)
    finally:
        await producer.stop()


async def reconcile(settings: Settings, pipeline: Pipeline) -> list[GroupChange]:
    """Compare ``pipeline`` with the definitions its state was built with, log the changes, raise
    SpecChangeError if a group's state cannot be reused, else record the new definitions."""
    topic = definitions_topic(settings.group_id(pipeline.name))
    stored = await read_definitions(settings, topic)
    wanted = definitions(pipeline)
    changes = plan_changes(stored, wanted)
    refused = [group.refused for group in changes if group.refused]
    if refused:
        raise SpecChangeError("; ".join(refused))
    if all(group.kind == "unchanged" for group in changes):
        logger.info("feature definitions unchanged (%s)", topic)
    else:
        logger.info("feature definitions changed (%s):\n%s", topic, "\n".join(render_changes(changes)))
    await write_definitions(settings, topic, {g: d for g, d in wanted.items() if stored.get(g) != d})
    return changes
