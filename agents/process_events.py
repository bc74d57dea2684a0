"""`process_events`: the one agent of every stream — decode, window state, joins, outputs.

All stream topics (and their repartition topics) feed this single agent, so exactly one coroutine
writes the feature tables: no two batches interleave a read-modify-write of the same key.

Records of the stream topics come in batches straight from the consumer (app/intake.py), not
one Faust Event at a time. Per batch:
1. decode each event (bad ones go to the dead-letter topic with their reason);
2. forward events that are not on their key's home partition to the stream's repartition topic;
3. apply the event to each feature group's state of its key (held in the batch, read once);
4. build every output row (lookups, features as of the event's time, computed columns); the rows
   leave as one record batch per output partition (app/batches.py);
5. write each touched key's state once (tables/store.py StateWriter), then await every delivery of
   the batch (state changelog, outputs, forwards, dead letters) before its records are acked, so a
   committed offset never runs ahead of the state it produced (at-least-once outputs; window state
   is exactly-once through its applied offsets).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from agents.serving_process import SERVING
from app.batches import RecordBatches
from app.dead_letters import forward, send_dead_letter, source_headers, source_position
from app.enrich import OutputBuilder, output_builders
from app.intake import Intake
from app.main import app, pipeline, settings
from app.memory import collections_paused, settle_garbage_collector
from app.metrics import (
    BATCH_SECONDS,
    DUPLICATE_EVENTS,
    EVENTS_CONSUMED,
    EVENTS_PRODUCED,
    LATE_EVENTS,
    PROCESSING_SECONDS,
)
from app.partitioning import is_home, partition_for
from app.records import BadRecord, decode_event
from app.spec import StreamSpec, repartition_topic
from tables.features import GROUPS, local_state, store_changes
from tables.lookups import lookup_row
from tables.store import StateWriter
from tables.windows import KeyState, apply_event, choose, is_late, read_features

logger = logging.getLogger(__name__)

BATCH_MAX = 2000
BATCH_WITHIN_S = 0.05
YIELD_EVERY = 8  # events between two turns of the event loop inside a batch (lookup latency)
GROUP_ID = settings.group_id(pipeline.name)


@dataclass(frozen=True)
class StreamRoute:
    """What a topic's records are: which stream, whether they already took the repartition hop."""

    name: str
    spec: StreamSpec
    repartitioned: bool
    groups: tuple[str, ...]
    reads: frozenset[str]  # groups whose features its output rows carry (their state is read whole)
    builders: tuple[OutputBuilder, ...]
    rekey_topic: str
    consumed: Any
    produced: tuple[Any, ...]


def _routes() -> dict[str, StreamRoute]:
    routes: dict[str, StreamRoute] = {}
    for name, spec in pipeline.streams.items():
        builders = tuple(output_builders(pipeline, name))
        groups = tuple(g for g, plan in GROUPS.items() if name in plan.by_stream)
        reads = frozenset(g for b in builders for g in b.groups)
        rekey = repartition_topic(GROUP_ID, "stream", name)
        consumed = EVENTS_CONSUMED.labels(name, spec.topic)
        produced = tuple(EVENTS_PRODUCED.labels(b.name, b.topic) for b in builders)
        for topic, repartitioned in ((spec.topic, False), (rekey, True)):
            routes[topic] = StreamRoute(
                name, spec, repartitioned, groups, reads, builders, rekey, consumed, produced
            )
    return routes


ROUTES = _routes()
LATE = {g: LATE_EVENTS.labels(g) for g in GROUPS}
DUPLICATES = {g: DUPLICATE_EVENTS.labels(g) for g in GROUPS}


class BatchState:
    """The window states a batch touches: each record read at most once and written once."""

    def __init__(self) -> None:
        self.states: dict[tuple[str, bytes], tuple[int, KeyState]] = {}

    def get(self, group: str, key: bytes, partition: int, whole: bool = False) -> KeyState:
        """The state of ``key`` in its home ``partition`` (the partition its events arrive on);
        ``whole`` when its features will be read (all its records in one range read)."""
        slot = (group, key)
        entry = self.states.get(slot)
        if entry is None:
            entry = self.states[slot] = (partition, local_state(group, partition, key, scan=whole))
        return entry[1]

    async def flush(self, writer: StateWriter) -> None:
        for n, ((group, _), (partition, state)) in enumerate(self.states.items(), 1):
            if n % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            await store_changes(writer, group, partition, state)


def apply_to_groups(
    route: StreamRoute, batch: BatchState, message: Any, key: bytes, fields: Mapping[str, Any], ts: int
) -> dict[str, KeyState]:
    """Apply the event to every group its stream feeds; BadRecord('late') when it is late for any
    of them (then it is applied to none), BadRecord('expression') when a `where` fails."""
    if not route.groups:
        return {}
    try:
        chosen = {g: choose(GROUPS[g], route.name, fields) for g in route.groups}
    except Exception as exc:
        raise BadRecord("expression", f"where filter: {type(exc).__name__}: {exc}") from None
    source, offset = source_position(message, route.repartitioned)
    states = {g: batch.get(g, key, message.partition, g in route.reads) for g in route.groups}
    # A redelivery that a head already recorded is a duplicate there, even if its bucket expired since.
    fresh = {g: state for g, state in states.items() if state.processed.get(source, -1) < offset}
    late = [g for g, state in fresh.items() if is_late(GROUPS[g], state, ts)]
    if late:
        for g in late:
            apply_event(GROUPS[g], fresh[g], [], fields, ts, source, offset)  # 'late': recorded as processed
            LATE[g].inc()
        plan = GROUPS[late[0]]
        horizon = (states[late[0]].newest or 0) - plan.retention
        raise BadRecord(
            "late",
            f"event time {ts} is in bucket {plan.bucket(ts)} <= {horizon} (the key's newest bucket minus "
            f"the retention of group {late[0]!r})",
        )
    for g, state in states.items():
        if apply_event(GROUPS[g], state, chosen[g], fields, ts, source, offset) == "duplicate":
            DUPLICATES[g].inc()
    return states


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


@app.task
async def process_events() -> None:
    """Take batches from the intake until the worker stops. An unexpected error stops the worker
    (its batch is not acked, so a restart redelivers it) instead of leaving its records pending."""
    settle_garbage_collector()  # started and recovered: what exists now lives as long as the worker
    topic_partitions = PartitionCounts(app.consumer)
    while not app.should_stop:
        messages = await INTAKE.take(BATCH_MAX, BATCH_WITHIN_S)
        try:
            with collections_paused():
                await process_batch(messages, topic_partitions)
        except Exception as exc:
            logger.exception("process_events failed on a batch of %d records", len(messages))
            await app.crash(exc)
            return
        INTAKE.ack(messages)


async def process_batch(messages: list[Any], topic_partitions: PartitionCounts) -> None:
    producer: Any = app.producer
    partitions = settings.partitions
    started = time.perf_counter()
    stale = {m.tp for m in messages} - app.consumer.assignment()
    if stale:  # fetched before a revocation: another worker may own these partitions now
        logger.warning("batch holds events of partitions no longer assigned here: %s", sorted(stale))
    deliveries: list[Awaitable[Any]] = []
    outputs = RecordBatches()
    aiokafka_producer = producer._ensure_producer()
    batch = BatchState()
    counts: dict[Any, int] = {}  # consumed and produced counters: added to once per batch, when done
    for n, message in enumerate(messages, 1):
        if n % YIELD_EVERY == 0:
            await asyncio.sleep(0)  # let HTTP requests in: a whole batch can take a second of CPU
        route = ROUTES[message.topic]
        if not route.repartitioned:
            counts[route.consumed] = counts.get(route.consumed, 0) + 1
        try:
            key, ts, fields = decode_event(message.value, route.spec, int(message.timestamp * 1000))
            raw_key = key.encode("utf-8")
            if not route.repartitioned and not is_home(
                raw_key, message.partition, topic_partitions(message.topic), partitions
            ):
                target = partition_for(raw_key, partitions)
                deliveries.append(await forward(producer, route.rekey_topic, raw_key, target, message))
                continue
            home = message.partition
            apply_to_groups(route, batch, message, raw_key, fields, ts)

            def features(
                group: str, _key: str, at: int, raw_key: bytes = raw_key, home: int = home
            ) -> dict[str, Any]:
                # The group's state as this batch holds it (applied above if its stream feeds it).
                return read_features(GROUPS[group], batch.get(group, raw_key, home, True), at)

            def lookup(name: str, join_key: str, home: int = home) -> dict[str, Any] | None:
                return lookup_row(name, join_key, home)  # lookups are co-partitioned with the streams

            rows = [
                (b.topic, orjson.dumps(b.build(key, ts, fields, lookup, features))) for b in route.builders
            ]
        except BadRecord as exc:
            deliveries.append(
                await send_dead_letter(producer, route.spec.dlq_topic, message, exc, route.repartitioned)
            )
            continue
        headers = source_headers(message, route.repartitioned)
        for (topic, value), counter in zip(rows, route.produced, strict=True):
            await outputs.add_keyed(aiokafka_producer, topic, raw_key, value, headers)
            counts[counter] = counts.get(counter, 0) + 1
    deliveries.extend(sent.future for sent in await outputs.send(aiokafka_producer))
    writer = StateWriter(producer, on_write=SERVING.wrote)
    await batch.flush(writer)
    await writer.delivered()
    await asyncio.gather(*deliveries)
    for counter, count in counts.items():
        counter.inc(count)
    elapsed = time.perf_counter() - started
    for name in {ROUTES[m.topic].name for m in messages}:
        BATCH_SECONDS.labels(name).observe(elapsed)
        PROCESSING_SECONDS.labels(name).observe(elapsed / len(messages))
