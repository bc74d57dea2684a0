"""`hydrant backfill PIPELINE --input STREAM=FILE ...`: history older than the input topics hold, from
files, into the feature groups (docs/operations.md, "Changing a pipeline").

The rule, so that no event counts twice: per stream, the events of its file whose time is before the
earliest event time its topic still holds are taken; the others are the topic's to count. The taken
events go, keyed by each group's key, to a topic per group (``<consumer group>-backfill-<group>``),
and a record in the definitions topic tells the workers: at their next start each applies, to the
partitions it holds, every event of that topic to every aggregation of the group, exactly once (the
replay's marks, tables/replay.py), listing the group's features as incomplete until it is done."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from app.config.routing import TopicPlan, stream_stages
from app.config.settings import Settings
from app.config.spec import Pipeline
from app.engine.replay import STREAM_HEADER
from app.errors import HydrantError
from app.kafka.clients import bulk_producer, consumer_options, create_topics
from app.kafka.definitions import backfill_key, definitions_topic, read_definitions, write_definitions
from app.kafka.end_offsets import exact_end_offsets
from app.records.decode import BadRecord, decode_event
from app.records.keys import key_of
from app.records.partitioning import partition_for
from app.tools.frames import encode_rows, read_table


@dataclass
class BackfillSummary:
    """What a backfill read, took and wrote."""

    cutoffs: dict[str, int | None] = field(default_factory=dict)  # per stream; None: its topic is empty
    rows: dict[str, int] = field(default_factory=dict)
    bad: dict[str, int] = field(default_factory=dict)
    taken: dict[str, int] = field(default_factory=dict)
    written: dict[str, int] = field(default_factory=dict)  # per group

    def lines(self) -> list[str]:
        out = []
        for stream, rows in self.rows.items():
            cutoff = self.cutoffs[stream]
            rule = "its topic is empty: all" if cutoff is None else f"before {cutoff} (the topic's earliest)"
            bad, taken = self.bad[stream], self.taken[stream]
            out.append(f"stream {stream}: {rows} rows, {bad} not events, {taken} taken ({rule})")
        out += [f"group {group}: {count} events to backfill" for group, count in self.written.items()]
        out.append("restart the workers: each applies the backfill to the partitions it holds")
        return out


def backfill_topic(group_id: str, group: str, run: str) -> str:
    """The topic of one backfill run's events of ``group``."""
    return f"{group_id}-backfill-{group}-{run}"


async def earliest_time(settings: Settings, pipeline: Pipeline, stream: str) -> int | None:
    """The earliest event time among the records ``stream``'s topic holds (None: it holds none)."""
    spec = pipeline.streams[stream]
    options = consumer_options(settings)
    consumer = AIOKafkaConsumer(
        **options, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(spec.topic) or set()
        if not partitions:
            await consumer.topics()
            partitions = consumer.partitions_for_topic(spec.topic) or set()
        tps = [TopicPartition(spec.topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        ends = await exact_end_offsets(options, await consumer.end_offsets(tps))
        await consumer.seek_to_beginning(*tps)
        pending = {tp for tp in tps if ends[tp] > 0}
        earliest: int | None = None
        while pending:
            for tp, records in (await consumer.getmany(*pending, timeout_ms=500, max_records=50_000)).items():
                for record in records:
                    if record.offset >= ends[tp]:
                        continue
                    try:
                        _, ts, _ = decode_event(record.value, spec, record.timestamp)
                    except BadRecord:
                        continue
                    earliest = ts if earliest is None else min(earliest, ts)
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        return earliest
    finally:
        await consumer.stop()


async def backfill(settings: Settings, pipeline: Pipeline, inputs: Mapping[str, Path]) -> BackfillSummary:
    """Take each stream's file events older than its topic holds into a backfill topic per group fed by
    it, then tell the workers (module docstring). Refused for a group backfilled before."""
    group_id = settings.group_id(pipeline.name)
    partitions = settings.partitions
    for stream in inputs:
        if stream not in pipeline.streams:
            raise HydrantError(
                f"no stream {stream!r} in the pipeline (streams: {', '.join(pipeline.streams)})"
            )
        if pipeline.streams[stream].time is None:
            raise HydrantError(
                f"stream {stream!r} takes its event time from the Kafka record: a file has none to backfill"
            )
    fed: dict[str, list[tuple[str, tuple[str, ...]]]] = {}  # stream -> (group, its key fields) it feeds
    for stream in inputs:
        for stage in stream_stages(pipeline, stream, group_id):
            for group in stage.groups:
                fed.setdefault(stream, []).append((group, pipeline.features[group].key_fields))
    groups = sorted({group for pairs in fed.values() for group, _ in pairs})
    if not groups:
        raise HydrantError("none of these streams feeds a feature group")
    topic = definitions_topic(group_id)
    stored = await read_definitions(settings, topic)
    done = [g for g in groups if backfill_key(g) in stored]
    if done:
        raise HydrantError(
            f"feature group {done[0]!r} was backfilled before; to backfill it again, reset it first "
            f"(`hydrant state reset {done[0]} --yes`)"
        )
    run = uuid.uuid4().hex[:8]
    topics = {g: backfill_topic(group_id, g, run) for g in groups}
    await create_topics(settings, [TopicPlan(t, "state", g, partitions, False) for g, t in topics.items()])
    summary = BackfillSummary()
    producer = bulk_producer(settings)
    await producer.start()
    try:
        for stream, path in inputs.items():
            spec = pipeline.streams[stream]
            cutoff = await earliest_time(settings, pipeline, stream)
            summary.cutoffs[stream] = cutoff
            _, values = encode_rows(read_table(path), None)
            summary.rows[stream], summary.bad[stream], summary.taken[stream] = len(values), 0, 0
            sent: list[Any] = []
            for value in values:
                try:
                    _, ts, fields = decode_event(value, spec, 0)  # its time field gives the time
                except BadRecord:
                    summary.bad[stream] += 1
                    continue
                if cutoff is not None and ts >= cutoff:
                    continue  # the topic's to count
                summary.taken[stream] += 1
                for group, key_fields in fed.get(stream, ()):
                    key = key_of(fields, key_fields)
                    if key is None:
                        continue
                    raw_key = key.encode("utf-8")
                    sent.append(
                        await producer.send(
                            topics[group],
                            value,
                            key=raw_key,
                            partition=partition_for(raw_key, partitions),
                            timestamp_ms=ts,
                            headers=[(STREAM_HEADER, stream.encode())],
                        )
                    )
                    summary.written[group] = summary.written.get(group, 0) + 1
                if len(sent) >= 10_000:
                    await asyncio.gather(*sent)
                    sent = []
            await asyncio.gather(*sent)
    finally:
        await producer.stop()
    cutoffs = {s: c for s, c in summary.cutoffs.items()}
    await write_definitions(
        settings,
        topic,
        {backfill_key(g): {"topic": topics[g], "cutoffs": cutoffs, "run": run} for g in groups},
    )
    return summary
