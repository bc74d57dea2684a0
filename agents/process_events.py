"""`process_events`: the one agent of every stream — decode, window state, joins, outputs.

All stream topics (and their repartition topics) feed this single agent, so exactly one coroutine
writes the feature tables: no two batches interleave a read-modify-write of the same key.

Records of the stream topics come in batches straight from the consumer (app/faust_ext/intake.py), not
one Faust Event at a time. Per batch:
1. decode each event (bad ones go to the dead-letter topic with their reason), forward events that
   are not on their key's home partition to the stream's repartition topic, and split the rest by
   entity key into shards, one per helper process (HYDRANT_COMPUTE_PROCESSES; with none, the
   worker's own shard takes every key);
2. read each shard's stored records (each key's state read once) and lookup rows, and run the
   shards (app/engine/shards.py) in the helpers. A shard applies each event to its key's window state
   and builds its output rows (lookups, features as of the event's time, computed columns);
3. in batch order, send the output rows (one record batch per output partition, app/kafka/batches.py),
   dead letters and forwards; write each touched key's state once (tables/store.py StateWriter),
   then await every delivery of the batch (state changelog, outputs, forwards, dead letters) before
   its records are acked, so a committed offset never runs ahead of the state it produced
   (at-least-once outputs; window state is exactly-once through its applied offsets).

Batches overlap (see :func:`process_events`): the helpers run batch k + 1 while the worker does
pass 3 of batch k, then passes 1 and 2a (decode, read) of batch k + 2, and batch k's deliveries are
awaited in the background.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from agents.serving_process import SERVING
from app.config.spec import StreamSpec, repartition_topic
from app.engine.shards import (
    BatchWork,
    HelperPool,
    Overlay,
    Shard,
    ShardEvent,
    ShardResult,
    changed_records,
    lay_over,
    read_records,
)
from app.faust_ext.intake import Intake, Taken
from app.kafka.batches import RecordBatches, partition_count
from app.kafka.dead_letters import forward, send_dead_letter, source_headers, source_position
from app.metrics import (
    BATCH_SECONDS,
    DUPLICATE_EVENTS,
    EVENTS_CONSUMED,
    EVENTS_PRODUCED,
    LATE_EVENTS,
    PROCESSING_SECONDS,
)
from app.records.decode import BadRecord, decode_event
from app.records.partitioning import is_home, partition_for
from app.runtime import FETCH_RECORDS, app, pipeline, settings
from app.system.memory import collections_paused, settle_garbage_collector
from tables.features import FEATURE_TABLES, GROUPS
from tables.lookups import LOOKUP_TABLES
from tables.store import StateWriter, local_db

logger = logging.getLogger(__name__)

BATCH_MAX = FETCH_RECORDS  # at most what one fetch hands over
BATCH_WITHIN_S = 0.05
YIELD_EVERY = 8  # events between two turns of the event loop inside a batch (lookup latency)
GROUP_ID = settings.group_id(pipeline.name)


@dataclass(frozen=True)
class StreamRoute:
    """What a topic's records are: which stream, whether they already took the repartition hop."""

    name: str
    spec: StreamSpec
    repartitioned: bool
    rekey_topic: str
    consumed: Any
    produced: tuple[Any, ...]  # per output of the stream, as BatchWork builds its rows


def _routes() -> dict[str, StreamRoute]:
    routes: dict[str, StreamRoute] = {}
    for name, spec in pipeline.streams.items():
        rekey = repartition_topic(GROUP_ID, "stream", name)
        consumed = EVENTS_CONSUMED.labels(name, spec.topic)
        produced = tuple(EVENTS_PRODUCED.labels(b.name, b.topic) for b in WORK.streams[name].builders)
        for topic, repartitioned in ((spec.topic, False), (rekey, True)):
            routes[topic] = StreamRoute(name, spec, repartitioned, rekey, consumed, produced)
    return routes


WORK = BatchWork(pipeline)
#: Helper processes that run every batch's shards (HYDRANT_COMPUTE_PROCESSES): started before Faust
#: (app/tools/cli.py `worker`), attached to the event loop by the agent.
HELPERS = HelperPool(settings.compute_processes, settings.pipeline)
ROUTES = _routes()
LATE = {g: LATE_EVENTS.labels(g) for g in GROUPS}
DUPLICATES = {g: DUPLICATE_EVENTS.labels(g) for g in GROUPS}


class PartitionCounts:
    """Partition counts of the input topics as the consumer's metadata last showed them (the
    snapshot is empty for a moment during a rebalance; a topic's count does not change then)."""

    def __init__(self, consumer: Any) -> None:
        self._consumer = consumer
        self._known: dict[str, int] = {}

    def __call__(self, topic: str) -> int | None:
        count = self._consumer.topic_partitions(topic)
        if count is None:
            return self._known.get(topic)
        self._known[topic] = count
        return int(count)


INTAKE = Intake(app, ROUTES, max_buffered=4 * BATCH_MAX)
#: Subscribes the consumer to the stream topics; their records reach INTAKE, not this channel.
app.topics.add(app.topic(*ROUTES, key_serializer="raw", value_serializer="raw"))


@dataclass
class Batch:
    """A batch after pass 1: what passes 2 and 3 do with each of its records."""

    messages: Taken
    started: float
    # Per record: (message, route, BadRecord | None, key, shard, position in shard); shard -1: forward
    # to the repartition topic.
    steps: list[tuple[Any, StreamRoute, BadRecord | None, bytes, int, int]] = field(default_factory=list)
    shards: list[Shard] = field(default_factory=lambda: [Shard() for _ in range(1 + HELPERS.count)])
    shard_of: dict[bytes, int] = field(default_factory=dict)  # entity key -> its shard
    #: entity key -> the partition its state is read from and written to
    home_of: dict[bytes, int] = field(default_factory=dict)
    counts: dict[Any, int] = field(default_factory=dict)  # consumed/produced counters, added when done


@app.task
async def process_events() -> None:
    """Take batches from the intake until the worker stops. An unexpected error stops the worker
    (its batch is not acked, so a restart redelivers it) instead of leaving its records pending.

    Batches overlap: while the helpers run batch k + 1, the worker sends and writes batch k and
    decodes batch k + 2. Batch k + 1 reads its state before batch k's is written locally, so the
    records batch k changes are laid over what it reads (:func:`changed_records`). Batch k's
    deliveries are awaited, and then its records acked in batch order, in the background."""
    await HELPERS.connect()
    if HELPERS.count:
        logger.info("helper processes for batches: pids %s", HELPERS.pids())
    settle_garbage_collector()  # started and recovered: what exists now lives as long as the worker
    topic_partitions = PartitionCounts(app.consumer)
    delivering: asyncio.Task[None] | None = None  # the previous batch, until delivered and acked
    batch: Batch | None = None  # running in the shards
    running: Awaitable[dict[int, ShardResult]] | None = None
    try:
        while batch is not None or not app.should_stop:  # a batch taken is a batch processed
            with collections_paused():
                if batch is None or running is None:
                    messages = await INTAKE.take(BATCH_MAX, BATCH_WITHIN_S)
                    batch = await decode_batch(messages, topic_partitions)
                    running = await run_batch(batch, {})
                ready = Taken(()) if app.should_stop else INTAKE.take_ready(BATCH_MAX)
                # Decoded and read as batch k is written: what batch k + 1 changes is laid over.
                after = await decode_batch(ready, topic_partitions) if ready else None
                done = await running
                if after is not None:  # start the next batch before this one's state is written
                    running = await run_batch(after, changed_records(done.values()))
                deliveries = await send_batch(batch, done)
            if delivering is not None:
                await delivering  # acks stay in batch order; at most one batch awaits its deliveries
            delivering = asyncio.ensure_future(_acked(deliveries, batch.messages))
            batch = after
        if delivering is not None:
            await delivering
    except Exception as exc:
        logger.exception("process_events failed")
        await app.crash(exc)


async def _acked(deliveries: Awaitable[None], messages: Taken) -> None:
    """Ack ``messages`` once every delivery of their batch is done."""
    await deliveries
    INTAKE.ack(messages)


async def decode_batch(messages: Taken, topic_partitions: PartitionCounts) -> Batch:
    """Pass 1: decode, route and shard by key; then pass 2a, :func:`read_batch`."""
    batch = Batch(messages, time.perf_counter())
    stale = set(messages.offsets) - app.consumer.assignment()
    if stale:  # fetched before a revocation: another worker may own these partitions now
        logger.warning("batch holds events of partitions no longer assigned here: %s", sorted(stale))
    partitions = settings.partitions
    topic_counts: dict[str, int | None] = {}  # asked once per topic and batch
    counts, shards, shard_of, home_of, steps = (
        batch.counts,
        batch.shards,
        batch.shard_of,
        batch.home_of,
        batch.steps,
    )
    for n, message in enumerate(messages, 1):
        if n % (4 * YIELD_EVERY) == 0:
            await asyncio.sleep(0)
        route = ROUTES[message.topic]
        if not route.repartitioned:
            counts[route.consumed] = counts.get(route.consumed, 0) + 1
        try:  # records are aiokafka's, as fetched (app/faust_ext/intake.py): timestamps in milliseconds
            decoded = decode_event(message.value, route.spec, message.timestamp)
        except BadRecord as exc:
            steps.append((message, route, exc, b"", 0, 0))
            continue
        key, ts, _ = decoded
        raw_key = key.encode("utf-8")
        if not route.repartitioned:
            topic = message.topic
            if topic not in topic_counts:
                topic_counts[topic] = topic_partitions(topic)
            if not is_home(raw_key, message.partition, topic_counts[topic], partitions):
                steps.append((message, route, None, raw_key, -1, 0))
                continue
        s = shard_of.get(raw_key)
        if s is None:
            s = shard_of[raw_key] = HELPERS.shard_for(len(shard_of))
            home_of[raw_key] = message.partition
        source, offset = source_position(message, route.repartitioned)
        event = ShardEvent(route.name, decoded, source, offset)
        steps.append((message, route, None, raw_key, s, WORK.add(shards[s], event, key, raw_key, ts)))
    read_batch(batch)
    return batch


def read_batch(batch: Batch) -> None:
    """Pass 2a: read what each shard needs from the local state."""
    home_of = batch.home_of

    def feature_db(group: str, key: bytes) -> Any:
        return local_db(FEATURE_TABLES[group], home_of[key])

    def lookup_db(name: str, key: bytes) -> Any:  # lookups are co-partitioned with the streams
        return local_db(LOOKUP_TABLES[name], home_of[key])

    for shard in batch.shards:
        if shard.events:
            read_records(shard, feature_db, lookup_db)


async def run_batch(batch: Batch, overlay: Overlay) -> Awaitable[dict[int, ShardResult]]:
    """Pass 2b: lay ``overlay``, the previous batch's changes, over what each shard read, start the
    helpers' shards and run the worker's own; the wait for every shard's result."""
    running = {}
    for s, shard in enumerate(batch.shards[1:], 1):
        if shard.events:
            lay_over(shard, overlay)
            running[s] = asyncio.ensure_future(HELPERS.run(s, shard))
    own = ShardResult()
    if batch.shards[0].events:
        lay_over(batch.shards[0], overlay)
        for n, _ in enumerate(WORK.steps(batch.shards[0], own), 1):
            if n % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # let HTTP requests in: a whole batch can take a second of CPU

    async def results() -> dict[int, ShardResult]:
        done = dict(zip(running, await asyncio.gather(*running.values()), strict=True))
        done[0] = own
        return done

    return results()


async def send_batch(batch: Batch, done: dict[int, ShardResult]) -> Awaitable[None]:
    """Pass 3: send, in batch order, and write the state; the wait for every delivery (later
    batches are processed meanwhile: the next one has read already and gets this batch's changes
    laid over; the one after reads them from the local state, committed here)."""
    producer: Any = app.producer
    partitions = settings.partitions
    counts, home_of = batch.counts, batch.home_of
    deliveries: list[Awaitable[Any]] = []
    outputs = RecordBatches()
    aiokafka_producer = producer._ensure_producer()
    output_partitions: dict[str, int] = {}  # asked once per batch
    outcomes = {s: result.outcomes for s, result in done.items()}
    add = outputs.add
    for n, (message, route, error, raw_key, s, position) in enumerate(batch.steps, 1):
        if n % (4 * YIELD_EVERY) == 0:
            await asyncio.sleep(0)
        if error is None and s < 0:
            target = partition_for(raw_key, partitions)
            deliveries.append(await forward(producer, route.rekey_topic, raw_key, target, message))
            continue
        outcome = outcomes[s][position] if error is None else None
        if error is not None or isinstance(outcome, tuple):
            if error is None:
                error = BadRecord(*outcome)  # type: ignore[misc]
            deliveries.append(
                await send_dead_letter(producer, route.spec.dlq_topic, message, error, route.repartitioned)
            )
            continue
        if not outcome:
            continue  # a stream without outputs
        headers = source_headers(message, route.repartitioned)
        for (topic, value), counter in zip(outcome, route.produced, strict=True):
            count = output_partitions.get(topic)
            if count is None:
                count = output_partitions[topic] = await partition_count(aiokafka_producer, topic)
            add(topic, partition_for(raw_key, count), raw_key, value, headers)
            counts[counter] = counts.get(counter, 0) + 1
    deliveries.extend(sent.future for sent in await outputs.send(aiokafka_producer))
    writer = StateWriter(producer, on_write=SERVING.wrote)
    for result in done.values():
        for group, entity, changes in result.changes:
            writer.write_many(FEATURE_TABLES[group], home_of[entity], changes)
        for group, count in result.late.items():
            LATE[group].inc(count)
        for group, count in result.duplicates.items():
            DUPLICATES[group].inc(count)
    await writer.send()  # the state is now local: the batch after the next reads it
    return _delivered(writer, deliveries, counts, batch)


async def _delivered(
    writer: StateWriter, deliveries: list[Awaitable[Any]], counts: dict[Any, int], batch: Batch
) -> None:
    await writer.acked()
    await asyncio.gather(*deliveries)
    for counter, count in counts.items():
        counter.inc(count)
    elapsed = time.perf_counter() - batch.started
    for name in {ROUTES[tp.topic].name for tp in batch.messages.offsets}:
        BATCH_SECONDS.labels(name).observe(elapsed)
        PROCESSING_SECONDS.labels(name).observe(elapsed / len(batch.messages))
