"""What each feature group's state was built with, kept in Kafka: the compacted topic
``<consumer group>-definitions``, one record per group (key: the group's name, value: its
definition, app/config/changes.py). A worker reads it before it starts, compares it with its spec and
writes its own (docs/operations.md, "Changing a pipeline")."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from app.config.changes import (
    GroupChange,
    definition,
    definitions,
    identity,
    plan_changes,
    render_changes,
)
from app.config.routing import TopicPlan
from app.config.settings import Settings
from app.config.spec import Pipeline
from app.errors import SpecChangeError
from app.kafka.clients import client_options, consumer_options, create_topics
from app.kafka.end_offsets import exact_end_offsets

READ_TIMEOUT_S = 30.0
#: A group's definitions record after `hydrant state reset` (app/kafka/reset.py): its state was deleted.
RESET = "reset"
logger = logging.getLogger(__name__)


def definitions_topic(group_id: str) -> str:
    """The topic of consumer group ``group_id``'s definitions."""
    return f"{group_id}-definitions"


async def read_definitions(settings: Settings, topic: str) -> dict[str, dict[str, Any]]:
    """The latest definition of every group in ``topic`` (created, empty, if it does not exist)."""
    await create_topics(settings, [TopicPlan(topic, "state", "definitions", 1, True)])
    options = consumer_options(settings)
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


async def write_definitions(
    settings: Settings, topic: str, groups: Mapping[str, Mapping[str, Any] | None]
) -> None:
    """Record ``groups``' definitions (by record key; None: delete it) in ``topic``; others stay."""
    producer = AIOKafkaProducer(**client_options(settings), acks="all")
    await producer.start()
    try:
        for name, value in groups.items():
            payload = None if value is None else orjson.dumps(value)
            await producer.send_and_wait(topic, payload, key=name.encode(), partition=0)
    finally:
        await producer.stop()


def backfill_key(group: str) -> str:
    """The record of ``group``'s backfill from files (app/tools/backfill.py): its topic."""
    return f"{group}\x00backfill"


def replayed_key(group: str, partition: int) -> str:
    """The record saying which aggregations partition ``partition`` of ``group`` has replayed."""
    return f"{group}\x00replayed\x00{partition}"


async def record_replayed(
    settings: Settings, group_id: str, group: str, partition: int, idents: list[str]
) -> None:
    """Record that ``partition`` of ``group`` finished replaying the aggregations ``idents``."""
    await write_definitions(
        settings, definitions_topic(group_id), {replayed_key(group, partition): {"aggregations": idents}}
    )


def _replaying(
    pipeline: Pipeline,
    stored: dict[str, dict[str, Any]],
    changes: list[GroupChange],
    replayed: dict[tuple[str, int], set[str]],
    partitions: int,
) -> dict[str, dict[str, str]]:
    """Per group, the aggregations to replay (identity -> name): those new or changed now (none on a
    pipeline's first start: there is no state to complete) and those still replaying since an earlier
    change, but those every partition has replayed."""
    first_start = not stored  # a reset group's record is stored: its aggregations are all new
    out: dict[str, dict[str, str]] = {}
    for change in changes:
        spec = pipeline.features.get(change.name)
        if spec is None:
            continue
        by_name = {agg.name: identity(agg.name, definition(agg)) for agg in spec.aggregations}
        pending = dict(stored.get(change.name, {}).get("replay", {}))
        if not first_start:
            for agg in change.aggregations:
                if agg.kind in ("new", "changed"):
                    pending[by_name[agg.name]] = agg.name
        current = set(by_name.values())
        pending = {
            ident: name
            for ident, name in pending.items()
            if ident in current
            and not all(ident in replayed.get((change.name, p), ()) for p in range(partitions))
        }
        if pending:
            out[change.name] = pending
    return out


@dataclass(frozen=True)
class Reconciled:
    """What a worker starts with: the changes, per group the aggregations to replay (identity ->
    name), and per group the topic of a backfill from files."""

    changes: list[GroupChange]
    replaying: dict[str, dict[str, str]]
    backfills: dict[str, str]


async def reconcile(settings: Settings, pipeline: Pipeline) -> Reconciled:
    """Compare ``pipeline`` with the definitions its state was built with, log the changes, raise
    SpecChangeError if a group's state cannot be reused, else record the new definitions."""
    topic = definitions_topic(settings.group_id(pipeline.name))
    records = await read_definitions(settings, topic)
    stored = {name: value for name, value in records.items() if "\x00" not in name}
    reset = {name for name, value in stored.items() if value.get(RESET)}  # rebuilt from the topics
    replayed = {
        (name.split("\x00")[0], int(name.split("\x00")[2])): set(value["aggregations"])
        for name, value in records.items()
        if "\x00replayed\x00" in name
    }
    wanted = definitions(pipeline)
    changes = plan_changes({g: _defined(d) for g, d in stored.items() if g not in reset}, wanted)
    refused = [group.refused for group in changes if group.refused]
    if refused:
        raise SpecChangeError("; ".join(refused))
    if all(group.kind == "unchanged" for group in changes):
        logger.info("feature definitions unchanged (%s)", topic)
    else:
        logger.info("feature definitions changed (%s):\n%s", topic, "\n".join(render_changes(changes)))
    replaying = _replaying(pipeline, stored, changes, replayed, settings.partitions)
    if replaying:
        logger.info(
            "replaying history into: %s",
            "; ".join(f"{g}: {', '.join(sorted(aggs.values()))}" for g, aggs in replaying.items()),
        )
    records_now = {g: {**d, "replay": replaying[g]} if g in replaying else d for g, d in wanted.items()}
    await write_definitions(settings, topic, {g: d for g, d in records_now.items() if stored.get(g) != d})
    return Reconciled(changes, replaying, backfills(records, pipeline))


def backfills(records: Mapping[str, Any], pipeline: Pipeline) -> dict[str, str]:
    """Per group of ``pipeline`` with a backfill recorded (app/tools/backfill.py), its topic."""
    return {g: records[backfill_key(g)]["topic"] for g in pipeline.features if backfill_key(g) in records}


def _defined(record: dict[str, Any]) -> dict[str, Any]:
    """A group's definition record without its replay state."""
    return {k: v for k, v in record.items() if k != "replay"}
