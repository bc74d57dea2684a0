"""The passes of a stream batch (decode and shard, read state, run the shards, send and write) and
the loop that overlaps them; the worker's I/O comes in as :class:`WorkerIO` and :class:`Source`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, cast

import numpy as np

from app.config.routing import stream_stages
from app.config.spec import Pipeline, StreamSpec
from app.engine.expiry import Sweeper
from app.engine.helpers import HelperPool
from app.engine.replay import Replayer
from app.engine.shards import (
    BatchWork,
    Hop,
    Overlay,
    Shard,
    ShardEvent,
    ShardResult,
    changed_records,
    is_hop,
    lay_over,
    mark_expired,
    read_records,
)
from app.engine.watermarks import Watermarks, stream_channels
from app.kafka.batches import RecordBatches, partition_count
from app.kafka.dead_letters import forward, send_dead_letter
from app.metrics import (
    BATCH_SECONDS,
    DUPLICATE_EVENTS,
    EVENTS_CONSUMED,
    EVENTS_PRODUCED,
    LATE_EVENTS,
    PROCESSING_DELAY,
    PROCESSING_SECONDS,
    UNKEYED_EVENTS,
)
from app.records.decode import BadRecord, decode_event
from app.records.keys import key_of
from app.records.partitioning import is_home, partition_for
from app.records.source import (
    carried,
    hop_headers,
    route_identity,
    source_headers,
    source_position,
)
from app.system.memory import collections_paused, settle_garbage_collector
from tables.expiry import clock_record, read_clock
from tables.registry import StateTables
from tables.store import StateWriter

logger = logging.getLogger(__name__)

BATCH_WITHIN_S = 0.05  # how long a batch waits for more records once its first is there
YIELD_EVERY = 8  # events between two turns of the event loop inside a batch (lookup latency)
#: With a replay not wanting a turn now, how long the loop waits for events before it asks again: a
#: wait without end would leave a replay stopped by a rebalance stopped until the next event.
REPLAY_RECHECK_S = 0.5


class WorkerIO(Protocol):
    """What the engine uses of the running worker (app/faust_ext/worker_io.py gives Faust's)."""

    @property
    def should_stop(self) -> bool:
        """True once the worker is stopping: take no new batch."""

    @property
    def producer(self) -> Any:
        """Sends single records: ``await producer.send(topic, key, value, partition, ts, headers)``."""

    @property
    def kafka_producer(self) -> Any:
        """The started AIOKafkaProducer, for record batches."""

    def assignment(self) -> set[Any]:
        """The partitions (with ``.topic``, ``.partition``) assigned to this worker now."""

    def topic_partitions(self, topic: str) -> int | None:
        """How many partitions ``topic`` has, as the consumer's metadata shows it (None: unknown)."""

    async def crash(self, exc: BaseException) -> None:
        """Stop the worker because of ``exc``."""

    def ready(self) -> bool:
        """Tables recovered and no rebalance running (partitions may be written outside batches)."""

    def committed(self, topic: str, partition: int) -> int | None:
        """The group's committed offset of an input partition (None: none yet)."""

    def behind(self, topics: Collection[str]) -> bool:
        """Whether an assigned partition of ``topics`` holds records not processed yet."""


class Source(Protocol):
    """Batches of fetched records (app/faust_ext/intake.py): each has ``offsets`` per partition."""

    async def take(self, max_: int, within: float) -> Any:
        """Wait for a record, then up to ``within`` seconds for up to ``max_`` records."""

    def take_ready(self, max_: int) -> Any:
        """Up to ``max_`` records already fetched, without waiting (may be empty)."""

    def ack(self, batch: Any) -> None:
        """Mark every record of ``batch`` processed; call in batch order."""


@dataclass(frozen=True)
class StreamRoute:
    """What a topic's records are: which stream, at which of its stages (app/config/routing.py),
    whether they already took a hop (to the stream key's partition or to a later stage's)."""

    name: str
    spec: StreamSpec
    repartitioned: bool
    stage: int
    key: tuple[str, ...]  # the stage's key fields
    hop_topics: tuple[str, ...]  # per stage of the stream, the topic that brings events there
    consumed: Any
    produced: tuple[Any, ...]  # per output of the stream, as BatchWork builds its rows

    @property
    def rekey_topic(self) -> str:
        """Where a record that arrived off the partition of its stream key is re-keyed."""
        return self.hop_topics[0]


def stream_routes(pipeline: Pipeline, group_id: str, work: BatchWork) -> dict[str, StreamRoute]:
    """Every topic the stream batches read: each stream's topic and the hop topic of each stage."""
    routes: dict[str, StreamRoute] = {}
    for name, spec in pipeline.streams.items():
        stages = stream_stages(pipeline, name, group_id)
        hops = tuple(stage.topic for stage in stages)
        consumed = EVENTS_CONSUMED.labels(name, spec.topic)
        produced = tuple(EVENTS_PRODUCED.labels(b.name, b.topic) for b in work.stages[name][0].builders)
        routes[spec.topic] = StreamRoute(name, spec, False, 0, stages[0].key, hops, consumed, produced)
        for stage in stages:
            routes[stage.topic] = StreamRoute(
                name, spec, True, stage.index, stage.key, hops, consumed, produced
            )
    return routes


class Step(NamedTuple):
    """What pass 3 does with one record of a batch."""

    message: Any
    route: StreamRoute
    error: BadRecord | None  # set: a dead letter
    key: bytes
    shard: int  # -1: forward to the repartition topic
    position: int  # the event's position in its shard
    mark: int = 0  # its stage's progress as of it, sent on with it to a later stage (watermarks.py)
    ts: int = 0  # its event time (ms), for the clocks of groups with a ttl (tables/expiry.py)


class PartitionCounts:
    """Partition counts of the input topics as the consumer's metadata last showed them (the
    snapshot is empty for a moment during a rebalance; a topic's count does not change then)."""

    def __init__(self, ask: Callable[[str], int | None]) -> None:
        self._ask = ask
        self._known: dict[str, int] = {}

    def __call__(self, topic: str) -> int | None:
        count = self._ask(topic)
        if count is None:
            return self._known.get(topic)
        self._known[topic] = count
        return int(count)


@dataclass
class Batch:
    """A batch after pass 1: what passes 2 and 3 do with each of its records."""

    messages: Sequence[Any]  # with ``offsets``: {partition: [offsets]}
    started: float
    shards: list[Shard]
    steps: list[Step] = field(default_factory=list)
    shard_of: dict[bytes, int] = field(default_factory=dict)  # entity key -> its shard
    #: entity key -> the partition its state is read from and written to
    home_of: dict[bytes, int] = field(default_factory=dict)
    counts: dict[Any, int] = field(default_factory=dict)  # consumed/produced counters, added when done
    times: dict[str, list[int]] = field(default_factory=dict)  # per stream, the event times applied


class StreamEngine:
    """Runs the stream batches of one worker: ``tables`` on its ``partitions``, shards run by
    ``helpers``; ``on_write(table, partition)`` is told of each local state write."""

    def __init__(
        self,
        work: BatchWork,
        routes: dict[str, StreamRoute],
        tables: StateTables,
        helpers: HelperPool,
        partitions: int,
        batch_max: int,
        on_write: Callable[[str, int], None] | None = None,
        replay: Replayer | None = None,
        idle_ms: int = 60_000,
    ) -> None:
        self.work = work
        self.replay = replay  # runs between batches, within its share (app/engine/replay.py)
        self.routes = routes
        self.tables = tables
        self.helpers = helpers
        self.partitions = partitions
        self.batch_max = batch_max
        self.on_write = on_write
        stages: dict[str, dict[int, tuple[str, ...]]] = {}
        for route in routes.values():
            stages.setdefault(route.name, {})[route.stage] = route.key
        self.watermarks = Watermarks(
            {name: stream_channels(sorted(keys.items()), partitions) for name, keys in stages.items()},
            idle_ms,
        )
        self.retention = {g: plan.retention for g, plan in tables.plans.items()}
        #: per (stream, stage), the groups with a ttl its events feed there; their partitions' clocks
        #: (tables/expiry.py) as stored and moved by each batch, kept while the assignment stays
        self.ttl_groups = {
            (at.stream, at.stage.index): tuple(g for g in at.stage.groups if tables.plans[g].ttl is not None)
            for stages in work.stages.values()
            for at in stages
        }
        self.expiring = any(self.ttl_groups.values())  # some group has a ttl
        self.clocks: dict[tuple[str, int], int | None] = {}
        self._assigned: set[Any] = set()
        sweeper = Sweeper(tables, partitions, self.clock, on_write)  # takes its turns between batches
        self.sweeper = sweeper if sweeper.groups else None
        self.late = {g: LATE_EVENTS.labels(g) for g in tables.plans}
        self.duplicates = {g: DUPLICATE_EVENTS.labels(g) for g in tables.plans}

    async def run(self, io: WorkerIO, source: Source) -> None:
        """Process batches from ``source`` until the worker stops, overlapping consecutive batches;
        a batch is acked, in batch order, once all its deliveries are done. An error crashes the worker."""
        await self.helpers.connect()
        if self.helpers.count:
            logger.info("helper processes for batches: pids %s", self.helpers.pids())
        settle_garbage_collector()  # started and recovered: what exists now lives as long as the worker
        counts = PartitionCounts(io.topic_partitions)
        replay = self.replay if self.replay is not None and self.replay.active else None
        sweeper = self.sweeper
        delivering: asyncio.Task[None] | None = None  # the previous batch, until delivered and acked
        batch: Batch | None = None  # running in the shards
        running: Awaitable[dict[int, ShardResult]] | None = None
        try:
            while batch is not None or not io.should_stop:  # a batch taken is a batch processed
                began = time.monotonic()
                with collections_paused():
                    if batch is None or running is None:
                        # No batch has read state that is not written yet: a sweep or replay step may run.
                        if sweeper is not None and sweeper.due() and io.ready():
                            if delivering is not None:  # its changelog records come first
                                await delivering
                                delivering = None
                            await sweeper.step(io.kafka_producer)
                            continue
                        if replay is not None and replay.wants_turn(io):
                            if replay.due():
                                if delivering is not None:  # its changelog records come first
                                    await delivering
                                    delivering = None
                                await replay.step(io)
                                continue
                            try:  # wait for events a moment; the time without any is the replay's
                                messages = await asyncio.wait_for(
                                    source.take(self.batch_max, BATCH_WITHIN_S), replay.wait()
                                )
                            except TimeoutError:  # none came: the loop is idle
                                replay.earn(idle=time.monotonic() - began)
                                continue
                            if not io.behind(self.routes):  # else the wait was for a fetch under way
                                replay.earn(idle=time.monotonic() - began - BATCH_WITHIN_S)
                            began = time.monotonic()
                        elif replay is not None:  # not now (a rebalance, a recovery): look again soon
                            try:
                                messages = await asyncio.wait_for(
                                    source.take(self.batch_max, BATCH_WITHIN_S), REPLAY_RECHECK_S
                                )
                            except TimeoutError:
                                continue
                        elif sweeper is not None:  # an idle loop still gives the sweep its turns
                            try:
                                messages = await asyncio.wait_for(
                                    source.take(self.batch_max, BATCH_WITHIN_S), sweeper.wait()
                                )
                            except TimeoutError:
                                continue
                        else:
                            messages = await source.take(self.batch_max, BATCH_WITHIN_S)
                        batch = await self.decode_batch(messages, io.assignment(), counts)
                        running = await self.run_batch(batch, {})
                    # A replay step due: no next batch reads state before this one is written.
                    pause = (replay is not None and replay.due() and replay.wants_turn(io)) or (
                        sweeper is not None and sweeper.due()
                    )
                    ready = () if io.should_stop or pause else source.take_ready(self.batch_max)
                    # Decoded and read as batch k is written: what batch k + 1 changes is laid over.
                    after = await self.decode_batch(ready, io.assignment(), counts) if ready else None
                    done = await running
                    if after is not None:  # start the next batch before this one's state is written
                        running = await self.run_batch(after, changed_records(done.values()))
                    deliveries = await self.send_batch(batch, done, io.producer, io.kafka_producer)
                if delivering is not None:
                    await delivering  # acks stay in batch order; at most one batch awaits its deliveries
                delivering = asyncio.ensure_future(_acked(deliveries, source, batch.messages))
                batch = after
                if replay is not None:
                    replay.earn(busy=time.monotonic() - began)
            if delivering is not None:
                await delivering
        except Exception as exc:
            logger.exception("the stream batches failed")
            await io.crash(exc)
        finally:
            if replay is not None:
                await replay.close()

    async def decode_batch(
        self, messages: Any, assigned: set[Any], topic_partitions: Callable[[str], int | None]
    ) -> Batch:
        """Pass 1: decode, route and shard by key; then pass 2a, :meth:`read_batch`."""
        batch = Batch(messages, time.perf_counter(), [Shard() for _ in range(1 + self.helpers.count)])
        stale = set(messages.offsets) - assigned
        if stale:  # fetched before a revocation: another worker may own these partitions now
            logger.warning("batch holds events of partitions no longer assigned here: %s", sorted(stale))
        partitions = self.partitions
        routes, add, shard_for = self.routes, self.work.add, self.helpers.shard_for
        watermarks = self.watermarks
        watermarks.begin(assigned)
        if assigned != self._assigned:  # partitions came or went: their clocks are read again
            self.clocks.clear()
            self._assigned = set(assigned)
        topic_counts: dict[str, int | None] = {}  # asked once per topic and batch
        times = batch.times
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
            route = routes[message.topic]
            if not route.repartitioned:
                counts[route.consumed] = counts.get(route.consumed, 0) + 1
            try:  # records are aiokafka's, as fetched: timestamps in milliseconds
                decoded = decode_event(message.value, route.spec, message.timestamp)
            except BadRecord as exc:
                steps.append(Step(message, route, exc, b"", 0, 0))
                continue
            key, ts, fields = decoded
            stage = route.stage
            mark = 0  # its stage partition's progress as of it (app/engine/watermarks.py), set below
            if stage:  # a later stage: keyed by the stage's key
                path, parts, sent = carried(message)
                held = watermarks.stage(
                    message.topic, message.partition, route.name, stage, path.rpartition(b">")[2], sent
                )
                mark = ts if held is None else held
                found = key_of(fields, route.key)
                if found is None:  # the stage before checked it: a record written by another spec
                    missing = BadRecord("missing_key", f"no value for the key {'+'.join(route.key)}")
                    steps.append(Step(message, route, missing, b"", 0, 0))
                    continue
                key = found
            raw_key = key.encode("utf-8")
            if not route.repartitioned:
                topic = message.topic
                if topic not in topic_counts:
                    topic_counts[topic] = topic_partitions(topic)
                if not is_home(raw_key, message.partition, topic_counts[topic], partitions):
                    steps.append(Step(message, route, None, raw_key, -1, 0))
                    continue
            if not stage:  # at home: the progress of the first stage's partition (direct or re-keyed)
                mark = watermarks.stream(route.name, message.partition, ts)
            s = shard_of.get(raw_key)
            if s is None:
                s = shard_of[raw_key] = shard_for(len(shard_of))
                home_of[raw_key] = message.partition
            source, offset = source_position(message, route.repartitioned)
            if stage:  # events of one source reach a later stage in order only along one route
                source = route_identity(source, path.decode())
                event = ShardEvent(route.name, decoded, source, offset, stage, key, parts, held)
            else:
                event = ShardEvent(route.name, decoded, source, offset)
            steps.append(
                Step(message, route, None, raw_key, s, add(shards[s], event, key, raw_key, ts), mark, ts)
            )
            applied = times.get(route.name)
            if applied is None:
                times[route.name] = [ts]
            else:
                applied.append(ts)
        self.read_batch(batch)
        return batch

    def read_batch(self, batch: Batch) -> None:
        """Pass 2a: read what each shard needs from the local state."""
        home_of, features, lookups = batch.home_of, self.tables.features, self.tables.lookups
        replicas = self.tables.replicas

        def feature_db(group: str, key: bytes) -> Any:
            return features[group].db(home_of[key])

        def lookup_db(name: str, key: bytes) -> Any:  # co-partitioned with the key, or global
            return replicas[name].db if name in replicas else lookups[name].db(home_of[key])

        retention = self.retention
        for shard in batch.shards:
            if shard.events:
                read_records(shard, feature_db, lookup_db, retention)

    async def run_batch(self, batch: Batch, overlay: Overlay) -> Awaitable[dict[int, ShardResult]]:
        """Pass 2b: lay ``overlay`` (the previous batch's changes) over what each shard read, start the
        helpers' shards and run the worker's own; returns the wait for every shard's result."""
        running = {}
        plans, home_of = self.tables.plans, batch.home_of

        def clock(group: str, raw_key: bytes) -> int | None:
            return self.clock(group, home_of[raw_key])

        expiring = self.expiring
        for s, shard in enumerate(batch.shards[1:], 1):
            if shard.events:
                lay_over(shard, overlay)
                if expiring:
                    mark_expired(shard, plans, clock)
                running[s] = asyncio.ensure_future(self.helpers.run(s, shard))
        own = ShardResult()
        if batch.shards[0].events:
            lay_over(batch.shards[0], overlay)
            if expiring:
                mark_expired(batch.shards[0], plans, clock)
            for n, _ in enumerate(self.work.steps(batch.shards[0], own), 1):
                if n % YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # let HTTP requests in between events

        async def results() -> dict[int, ShardResult]:
            done = dict(zip(running, await asyncio.gather(*running.values()), strict=True))
            done[0] = own
            return done

        return results()

    def clock(self, group: str, partition: int) -> int | None:
        """The clock of ``group``'s table partition (tables/expiry.py): its newest event time applied."""
        slot = (group, partition)
        if slot not in self.clocks:
            self.clocks[slot] = read_clock(self.tables.features[group].db(partition).get)
        return self.clocks[slot]

    async def send_batch(
        self, batch: Batch, done: dict[int, ShardResult], producer: Any, kafka_producer: Any
    ) -> Awaitable[None]:
        """Pass 3: send outputs, forwards and dead letters in batch order and write the state locally;
        returns the wait for every delivery and changelog ack."""
        partitions = self.partitions
        counts, home_of = batch.counts, batch.home_of
        deliveries: list[Awaitable[Any]] = []
        outputs = RecordBatches()  # outputs and hops to later stages
        output_partitions: dict[str, int] = {}  # asked once per batch
        outcomes = {s: result.outcomes for s, result in done.items()}
        add = outputs.add
        ttl_groups, expiring = self.ttl_groups, self.expiring
        moved: dict[tuple[str, int], int] = {}  # the clocks this batch moves
        for n, (message, route, error, raw_key, s, position, mark, ts) in enumerate(batch.steps, 1):
            if n % (4 * YIELD_EVERY) == 0:
                await asyncio.sleep(0)
            if error is None and s < 0:
                target = partition_for(raw_key, partitions)
                deliveries.append(await forward(producer, route.rekey_topic, raw_key, target, message))
                continue
            outcome = outcomes[s][position] if error is None else None
            if expiring and outcome is not None and not (isinstance(outcome, tuple) and len(outcome) == 2):
                for group in ttl_groups[route.name, route.stage]:  # applied (or a duplicate) there
                    slot = (group, home_of[raw_key])
                    if ts > moved.get(slot, -1):
                        moved[slot] = ts
            if outcome is not None and is_hop(outcome):
                stage, key, parts = cast(Hop, outcome)
                hop_key = key.encode("utf-8")
                add(
                    route.hop_topics[stage],
                    partition_for(hop_key, partitions),
                    hop_key,
                    message.value,
                    hop_headers(message, route.repartitioned, route.stage, route.key, parts, mark),
                    message.timestamp,
                )
                continue
            if error is not None or isinstance(outcome, tuple):
                if error is None:
                    error = BadRecord(*outcome)  # type: ignore[misc]
                deliveries.append(
                    await send_dead_letter(
                        producer, route.spec.dlq_topic, message, error, route.repartitioned
                    )
                )
                continue
            if not outcome:
                continue  # a stream without outputs
            headers = source_headers(message, route.repartitioned)
            for (topic, value), counter in zip(outcome, route.produced, strict=True):
                count = output_partitions.get(topic)
                if count is None:
                    count = output_partitions[topic] = await partition_count(kafka_producer, topic)
                add(topic, partition_for(raw_key, count), raw_key, value, headers)
                counts[counter] = counts.get(counter, 0) + 1
        deliveries.extend(sent.future for sent in await outputs.send(kafka_producer))
        writer = StateWriter(kafka_producer, on_write=self.on_write)
        features = self.tables.features
        for (group, partition), ts in moved.items():
            known = self.clock(group, partition)
            if known is None or ts > known:
                self.clocks[group, partition] = ts
                writer.write_many(features[group], partition, [clock_record(ts)])
        for result in done.values():
            for group, entity, changes in result.changes:
                writer.write_many(features[group], home_of[entity], changes)
            for group, count in result.late.items():
                self.late[group].inc(count)
            for group, count in result.duplicates.items():
                self.duplicates[group].inc(count)
            for (group, stream), count in result.unkeyed.items():
                UNKEYED_EVENTS.labels(group, stream).inc(count)
        await writer.send()  # the state is now local: the batch after the next reads it
        return self._delivered(writer, deliveries, counts, batch)

    async def _delivered(
        self, writer: StateWriter, deliveries: list[Awaitable[Any]], counts: dict[Any, int], batch: Batch
    ) -> None:
        await writer.acked()
        await asyncio.gather(*deliveries)
        for counter, count in counts.items():
            counter.inc(count)
        now_ms = time.time() * 1000
        for stream, applied in batch.times.items():
            PROCESSING_DELAY.observe_many(stream, (now_ms - np.asarray(applied, dtype=np.float64)) / 1000)
        elapsed = time.perf_counter() - batch.started
        for name in {self.routes[tp.topic].name for tp in batch.messages.offsets}:  # type: ignore[attr-defined]
            BATCH_SECONDS.labels(name).observe(elapsed)
            PROCESSING_SECONDS.labels(name).observe(elapsed / len(batch.messages))


async def _acked(deliveries: Awaitable[None], source: Source, messages: Iterable[Any]) -> None:
    """Ack ``messages`` once every delivery of their batch is done."""
    await deliveries
    source.ack(messages)
