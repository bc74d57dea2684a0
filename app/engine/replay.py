"""The replay of new or changed aggregations (docs/operations.md, "Changing a pipeline"): per feature
group and partition this worker holds, its input partitions read from their earliest retained offset
to their end when the replay began, each event applied to those aggregations by the rules of
tables/replay.py, in steps the stream engine runs between its batches (app/engine/batch.py) within a
bounded share of the event loop. Its progress is a record of the group's table (changelogged: it
moves with the partition and survives restarts).

Rebalances: the table is the job's only truth. A revocation (:meth:`Replayer.revoked`, from Faust's
``on_partitions_revoked``) stops the replay before the partitions leave: a step under way writes
nothing more, and every job is forgotten; after an assignment (:meth:`Replayer.assigned`) and the
tables' recovery, each step reads the jobs of the partitions held back from their tables, so a
partition resumes from its progress record and marks on whichever worker holds it next."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from app.config.spec import Pipeline
from app.engine.shards import BatchWork
from app.metrics import FEATURES_INCOMPLETE, REPLAY_LEFT, REPLAYED_EVENTS
from app.records.decode import decode_event
from app.records.keys import key_of
from app.records.partitioning import is_home
from app.records.source import carried_path, route_identity, source_position
from tables.apply import choose
from tables.key_state import KeyState
from tables.plans import GroupPlan
from tables.registry import StateTables
from tables.replay import BACKFILL_KEY, JOB_KEY, ReplayJob, incomplete_features, replay_event
from tables.store import StateWriter, prefix_scan

logger = logging.getLogger(__name__)

STREAM_HEADER = "hydrant-stream"  # a backfill record's stream (app/tools/backfill.py)
STEP_RECORDS = 1000  # records read and applied per step
YIELD_EVERY = 64  # records between two turns of the event loop inside a step
MAX_BUDGET_S = 0.5  # step time saved at most (a burst after a quiet while)
IDLE_WAIT_S = 0.02  # waited for events without any: the loop is idle, the replay may use the time
IDLE_STEPS = 20  # steps in a row without a record below its end: the partition has no more


class History(Protocol):
    """Input partitions read over offset ranges (app/kafka/history.py)."""

    async def bounds(self, names: list[str]) -> tuple[dict[str, int], dict[str, int]]:
        """Earliest retained and end offset of each ``"topic:partition"``."""

    async def read(self, positions: Mapping[str, int], max_records: int) -> list[Any]:
        """Records from ``positions``, in offset order per partition."""

    async def stop(self) -> None:
        """Close the reader."""


class ReplayIO(Protocol):
    """What the replay uses of the running worker (app/faust_ext/worker_io.py)."""

    @property
    def kafka_producer(self) -> Any: ...

    def ready(self) -> bool:
        """Tables recovered, no rebalance running: partitions may be written."""

    def committed(self, topic: str, partition: int) -> int | None:
        """The group's committed offset of an input partition (None: none)."""

    def topic_partitions(self, topic: str) -> int | None: ...


@dataclass
class _Route:
    """What a topic's records are to the replay (the stream engine's StreamRoute, in short)."""

    stream: str
    spec: Any
    repartitioned: bool
    stage: int
    key: tuple[str, ...]


Slot = tuple[str, int, bytes]  # (group, partition, the job's record key: a replay's or a backfill's)


class Replayer:
    """The replays and backfills of this worker's partitions: which exist, which steps next, when."""

    def __init__(
        self,
        pipeline: Pipeline,
        work: BatchWork,
        routes: Mapping[str, Any],
        tables: StateTables,
        history: History,
        partitions: int,
        share: float,
        rate: float,
        on_done: Callable[[str, int, list[str]], Awaitable[None]],
        on_write: Callable[[str, int], None] | None = None,
        backfills: Mapping[str, str] | None = None,
    ) -> None:
        self.pipeline = pipeline
        #: groups with aggregations to replay; groups with a backfill (group -> its topic)
        self.replaying: dict[str, GroupPlan] = {
            g: plan for g, plan in work.plans.items() if any(a.replaying for a in plan.aggregations)
        }
        self.backfills = {g: t for g, t in (backfills or {}).items() if g in work.plans}
        self.plans = work.plans
        self.tables = tables
        self.history = history
        self.partitions = partitions
        self.share = share  # of the event loop while events arrive
        self.rate = rate  # records read per second at most (0: no limit)
        self.on_done = on_done
        self.on_write = on_write
        #: per replaying group, the topics whose records feed it, with what they are
        self.topics: dict[str, dict[str, _Route]] = {g: {} for g in self.replaying}
        for topic, route in routes.items():
            stage = work.stages[route.name][route.stage].stage
            for group in stage.groups:
                if group in self.topics:
                    self.topics[group][topic] = _Route(
                        route.name, route.spec, route.repartitioned, route.stage, route.key
                    )
        #: the jobs of the partitions held here, as their tables held them at the last step
        self.jobs: dict[Slot, ReplayJob] = {}
        self._reported: set[Slot] = set()  # done and told (on_done) by this worker
        #: moves at each revocation and assignment: a step begun before it writes nothing more
        self._generation = 0
        self._quiet = asyncio.Event()  # set while no step runs
        self._quiet.set()
        self._stopped = False
        self._io: ReplayIO | None = None  # the worker, as the last step saw it
        self.spent = 0.0  # seconds of the loop the steps took
        self._budget = 0.0  # seconds of steps earned (app/engine/batch.py tells it the loop's time)
        self._paced = 0.0  # monotonic time of the next step under the records-per-second limit
        self._checked = 0.0
        self._idle: dict[tuple[Slot, str], int] = {}  # steps in a row a partition gave nothing
        if self.replaying:
            logger.info(
                "replaying history into %s",
                "; ".join(
                    f"{g}: {', '.join(a.name for a in p.aggregations if a.replaying)}"
                    for g, p in self.replaying.items()
                ),
            )
        for group, topic in self.backfills.items():
            logger.info("backfilling group %r from %s", group, topic)

    @property
    def active(self) -> bool:
        """Whether anything is replayed or backfilled at all."""
        return bool(self.replaying or self.backfills)

    async def close(self) -> None:
        """Close the history reader (the worker stops): nothing runs a job here any more."""
        self._stopped = True
        self._forget()
        await self.history.stop()

    async def revoked(self) -> None:
        """The worker's partitions are being revoked (a rebalance began): a step under way writes
        nothing more (a write it began is finished and acked first, so that whoever recovers the
        partition next reads it), then every job is forgotten."""
        self._generation += 1
        await self._quiet.wait()
        self._forget()

    def assigned(self) -> None:
        """Partitions were assigned: the jobs are read back from the tables once they are recovered."""
        self._generation += 1
        self._forget()

    def running(self) -> set[Slot]:
        """The jobs this worker runs now: read from a table it holds since the last rebalance, not done
        (none during a rebalance and its recovery, or once the stream loop stopped)."""
        if self._io is not None and not self._io.ready():
            return set()
        return {slot for slot, job in self.jobs.items() if not job.done}

    def _forget(self) -> None:
        self.jobs.clear()
        self._idle.clear()
        self._checked = 0.0  # look for the partitions held as soon as the worker is ready
        self._measure()

    def _current(self, generation: int, io: ReplayIO, table: Any, partition: int) -> bool:
        """Whether a step begun at ``generation`` may still write ``partition`` of ``table``: no
        rebalance since, the worker ready, the partition active here."""
        return generation == self._generation and io.ready() and bool(table.serves(partition))

    def wants_turn(self, io: ReplayIO) -> bool:
        """Whether a step has work (a partition held here not done yet, or one to look at)."""
        if not self.active or self._stopped or not io.ready():
            return False
        if time.monotonic() - self._checked > 1.0:
            return True  # look for partitions assigned since
        return any(not job.done for job in self.jobs.values())

    def earn(self, busy: float = 0.0, idle: float = 0.0) -> None:
        """Time for steps: ``share`` / (1 - ``share``) of the time the loop spent on live batches
        (``busy``), all of the time it waited for events (``idle``); at most MAX_BUDGET_S saved."""
        self._budget = min(MAX_BUDGET_S, self._budget + busy * self.share / (1 - self.share) + max(idle, 0.0))

    def due(self) -> bool:
        """Whether a step may run now: time earned, and within the records-per-second limit."""
        return self._budget > 0 and time.monotonic() >= self._paced

    def wait(self) -> float:
        """How long to wait for events before the replay counts the loop idle (seconds)."""
        return max(IDLE_WAIT_S, self._paced - time.monotonic())

    async def step(self, io: ReplayIO) -> None:
        """Find the partitions held here, then run one step of the first unfinished job."""
        began = time.monotonic()
        generation = self._generation
        self._io = io
        self._quiet.clear()
        try:
            read = await self._step(io, generation)
        finally:
            self._quiet.set()
        self._measure()
        took = time.monotonic() - began
        self._budget -= took
        self.spent += took
        if self.rate:
            self._paced = began + read / self.rate

    async def _step(self, io: ReplayIO, generation: int) -> int:
        """:meth:`step`'s work; how many records it read."""
        if not await self._find_jobs(io, generation):
            return 0
        read = 0
        for slot, job in self.jobs.items():
            if not job.done:
                read = await self._replay(io, slot, job, generation)
                break
        for slot, job in list(self.jobs.items()):
            if job.done and slot not in self._reported:
                self._reported.add(slot)
                if slot[2] == JOB_KEY:
                    await self.on_done(slot[0], slot[1], sorted(job.aggregations))
        return read

    def _measure(self) -> None:
        now = int(time.time() * 1000)
        for group in {*self.replaying, *self.backfills}:
            jobs = [(slot, job) for slot, job in self.jobs.items() if slot[0] == group]
            REPLAY_LEFT.labels(group).set(sum(job.left() for _, job in jobs if not job.done))
            names: set[str] = set()
            for _, job in jobs:
                names.update(incomplete_features(self.plans[group], job, now))
            FEATURES_INCOMPLETE.labels(group).set(len(names))

    async def _find_jobs(self, io: ReplayIO, generation: int) -> bool:
        """Read the job of every partition held here from its table, or begin it; forget the others.
        False when a rebalance began meanwhile (the jobs are forgotten)."""
        self._checked = time.monotonic()
        wanted: list[tuple[str, bytes, dict[str, str]]] = [
            (g, JOB_KEY, {a.ident: a.name for a in plan.aggregations if a.replaying})
            for g, plan in self.replaying.items()
        ]
        wanted += [
            (g, BACKFILL_KEY, {a.ident: a.name for a in self.plans[g].aggregations}) for g in self.backfills
        ]
        for group, record_key, aggregations in wanted:
            table = self.tables.features[group]
            for partition in range(self.partitions):
                slot = (group, partition, record_key)
                if not table.serves(partition):
                    self.jobs.pop(slot, None)
                    continue
                names = self._inputs(io, group, partition, record_key)
                # The table, not this worker's memory: another worker may have run it since.
                raw = table.db(partition).get(record_key)
                job = ReplayJob.decode(raw) if raw is not None else None
                if job is None or job.aggregations != aggregations or set(job.end) != set(names):
                    job = await self._begin(io, slot, aggregations, names, generation)
                    if job is None:
                        return False
                elif slot not in self.jobs and not job.done:
                    logger.info(
                        "%s of group %r partition %d resumed: %d records read, %d left",
                        "backfill" if record_key == BACKFILL_KEY else "replay",
                        group,
                        partition,
                        job.replayed,
                        job.left(),
                    )
                self.jobs[slot] = job
        return True

    def _inputs(self, io: ReplayIO, group: str, partition: int, record_key: bytes) -> list[str]:
        """The input partitions (``"topic:partition"``) a job of ``group``'s ``partition`` reads."""
        if record_key == BACKFILL_KEY:
            return [f"{self.backfills[group]}:{partition}"]
        names = []
        for topic in self.topics[group]:
            count = io.topic_partitions(topic)
            if count is None or partition < count:
                names.append(f"{topic}:{partition}")
        return names

    async def _begin(
        self, io: ReplayIO, slot: Slot, aggregations: dict[str, str], names: list[str], generation: int
    ) -> ReplayJob | None:
        """A new job of ``slot``, recorded in its table; None when a rebalance began meanwhile."""
        group, partition, record_key = slot
        start, end = await self.history.bounds(names)
        if record_key == BACKFILL_KEY:
            change = dict(end)  # every record counts: it was never processed
        else:
            change = {}
            for name in names:
                topic, _, number = name.rpartition(":")
                change[name] = io.committed(topic, int(number)) or 0
        # A later stage's hop topic holds none of the events from before its key was first used.
        hops = [] if record_key == BACKFILL_KEY else [n for n in names if self._route(group, n).stage]
        since = int(time.time() * 1000)
        job = ReplayJob(aggregations, start, end, change, dict(start), since=since, hops=hops)
        if not await self._write(io, slot, {}, job, generation):
            return None
        logger.info(
            "%s of group %r partition %d: %d records (%s), from the offsets committed at %s",
            "backfill" if record_key == BACKFILL_KEY else "replay",
            group,
            partition,
            job.left(),
            ", ".join(f"{n} {start[n]}..{end[n]}" for n in names),
            change,
        )
        return job

    def _route(self, group: str, name: str) -> _Route:
        """What the records of input partition ``name`` (``"topic:partition"``) are to ``group``."""
        return self.topics[group][name.rpartition(":")[0]]

    def _decoded(self, io: ReplayIO, slot: Slot, record: Any, counts: dict[str, int | None]) -> Any:
        """(entity key, stream, fields, event time, source, offset) of a record a job reads, or None
        when it feeds nothing here (undecodable, keyless, forwarded: as the live path saw it)."""
        group = slot[0]
        if slot[2] == BACKFILL_KEY:  # the group's key, the event as its stream has it
            stream = dict(record.headers).get(STREAM_HEADER, b"").decode()
            spec = self.pipeline.streams.get(stream)
            if spec is None or record.key is None:
                return None
            _, ts, fields = decode_event(record.value, spec, record.timestamp)
            return record.key, stream, fields, ts, f"{record.topic}:{record.partition}", record.offset
        route = self.topics[group][record.topic]
        key, ts, fields = decode_event(record.value, route.spec, record.timestamp)
        if route.stage:
            found = key_of(fields, route.key)
            if found is None:
                return None
            key = found
        raw_key = key.encode("utf-8")
        if not route.repartitioned:
            if record.topic not in counts:
                counts[record.topic] = io.topic_partitions(record.topic)
            if not is_home(raw_key, record.partition, counts[record.topic], self.partitions):
                return None  # forwarded: replayed from the topic it was forwarded to
        source, offset = source_position(record, route.repartitioned)
        if route.stage:
            source = route_identity(source, carried_path(record).decode())
        return raw_key, route.stream, fields, ts, source, offset

    async def _replay(self, io: ReplayIO, slot: Slot, job: ReplayJob, generation: int) -> int:
        """One step of ``job``: read up to STEP_RECORDS, apply, write; how many were read. Nothing is
        written (and the job, read again from the table, redoes the step) when a rebalance began."""
        group, partition, record_key = slot
        todo = {name: at for name, at in job.at.items() if at < job.end[name]}
        records = await self.history.read(todo, STEP_RECORDS) if todo else []
        if generation != self._generation:
            return 0
        plan = self.plans[group]
        replaying_only = record_key == JOB_KEY  # a backfill feeds every aggregation
        db = self.tables.features[group].db(partition)
        scan = prefix_scan(db)
        states: dict[bytes, KeyState] = {}
        counts: dict[str, int | None] = {}
        for n, record in enumerate(records, 1):
            if n % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            name = f"{record.topic}:{record.partition}"
            if record.offset >= job.end[name] or record.offset < job.at[name]:
                continue
            job.at[name] = record.offset + 1
            job.replayed += 1
            try:
                decoded = self._decoded(io, slot, record, counts)
                chosen = [] if decoded is None else choose(plan, decoded[1], decoded[2])
            except Exception:  # undecodable, or a `where` failed: a dead letter when it came
                chosen = []
            if replaying_only:
                chosen = [a for a in chosen if a.replaying]
            if not chosen or decoded is None:
                continue
            raw_key, _, fields, ts, source, offset = decoded
            state = states.get(raw_key)
            if state is None:
                state = states[raw_key] = KeyState(raw_key, db.get, plan.retention, scan)
            before = record.offset < job.change.get(name, 0)
            replay_event(plan, state, chosen, fields, ts, source, offset, before)
        came = {f"{r.topic}:{r.partition}" for r in records}
        full = len(records) >= STEP_RECORDS  # the reader may have handed out only other partitions' records
        for name in todo:  # a partition giving nothing below its end (compacted away) ends where it is
            if name in came or full:
                self._idle[slot, name] = 0
            else:
                self._idle[slot, name] = self._idle.get((slot, name), 0) + 1
            if self._idle[slot, name] >= IDLE_STEPS:
                job.end[name] = job.at[name]
        job.done = all(job.at[name] >= job.end[name] for name in job.end)
        if not await self._write(io, slot, states, job, generation):
            return 0
        REPLAYED_EVENTS.labels(group).inc(len(records))
        if job.done:
            logger.info(
                "%s of group %r partition %d done: %d records (replay steps took %.1f s of the loop so far)",
                "backfill" if record_key == BACKFILL_KEY else "replay",
                group,
                partition,
                job.replayed,
                self.spent,
            )
        return len(records)

    async def _write(
        self, io: ReplayIO, slot: Slot, states: dict[bytes, KeyState], job: ReplayJob, generation: int
    ) -> bool:
        """The keys' changes, then the job's record (one partition: in this order); acked before it
        returns. Nothing is written, and False returned, when a rebalance began since ``generation``
        (the partition may be another worker's already: what the step read may be stale)."""
        group, partition, record_key = slot
        table = self.tables.features[group]
        if not self._current(generation, io, table, partition):
            self.jobs.pop(slot, None)
            return False
        writer = StateWriter(io.kafka_producer, on_write=self.on_write)
        for state in states.values():
            changes = state.changes()
            if changes:
                writer.write_many(table, partition, changes)
        writer.write(table, partition, record_key, job.encode())
        await writer.send()  # no await between the check above and the local write in here
        await writer.acked()
        return True
