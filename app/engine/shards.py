"""Shards: some keys' events of a batch with the stored records they read, and :class:`BatchWork`,
which turns a shard into output rows, dead-letter reasons and state changes as a pure function."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from app.config.routing import Stage, stream_stages
from app.config.spec import Pipeline
from app.records.decode import BadRecord
from app.records.enrich import OutputBuilder, group_part, join_part, output_builders
from app.records.keys import key_of
from app.records.source import legacy_identity
from tables.apply import apply_event, choose, is_late
from tables.expiry import head_expired
from tables.key_state import KeyState, expiring_records
from tables.plans import GroupPlan, group_plans
from tables.read import read_features
from tables.state_format import bucket_key, head_key

Slot = tuple[str, bytes]  # (feature group, entity key)
Decoded = tuple[str, int, dict[str, Any]]  # decode_event's (key, event time ms, fields)
Rows = list[tuple[str, bytes]]  # (output topic, value) per output of the event's stream
Rejected = tuple[str, str]  # a BadRecord's (reason, message)
#: (next stage, its key's string form, the parts gathered so far as orjson): the event goes on to
#: that stage's hop topic (a plain tuple: results cross to the worker by ``marshal``)
Hop = tuple[int, str, bytes]
Changes = list[tuple[bytes, bytes | None]]  # (record key, value or None: deleted), in write order
Overlay = dict[Slot, Changes]  # what a batch changed per slot, before it is written locally
LATE = "late"  # the parts' entry naming why the event was late at an earlier stage


def is_hop(outcome: Rows | Rejected | Hop) -> bool:
    """Whether an event's outcome sends it on to a later stage."""
    return isinstance(outcome, tuple) and len(outcome) == 3


class Wants(NamedTuple):
    """What the worker reads for a (group, key) slot of a shard."""

    whole: bool  # every record of the key (its features are read, or it has a roll-up): one range read
    buckets: set[int]  # else: the head and these buckets (those its events fall in)


@dataclass
class ShardEvent:
    """One decoded stream event of a shard at one of its stages, with its original record's position."""

    stream: str
    decoded: Decoded  # decode_event's result, as the worker decoded it to route the record
    source: str  # "<topic>:<partition>" of the original record (window state's duplicate check)
    offset: int
    stage: int = 0  # which of its stream's stages (app/config/routing.py) it is at
    key: str = ""  # the stage key's string form ("": the stream key, decoded[0])
    carry: bytes | None = None  # the parts earlier stages gathered (orjson), None at stage 0
    #: at a later stage, every upstream partition's progress as the event arrived (event time, ms;
    #: app/engine/watermarks.py); None: at the stream's own key, or nothing holds the stage back
    mark: int | None = None


@dataclass
class Shard:
    """Some keys' events of one batch, in batch order, and the stored records they read."""

    events: list[ShardEvent] = field(default_factory=list)
    #: per slot: (whole: every record of the key, by range read; else the head and the buckets of
    #: ``buckets``) -- what the worker must read
    wants: dict[Slot, Wants] = field(default_factory=dict)
    #: per slot: {record key: stored value, None when absent} (filled by the worker)
    records: dict[Slot, dict[bytes, bytes | None]] = field(default_factory=dict)
    #: (lookup, key) -> the stored row (orjson) or None (filled by the worker)
    lookups: dict[tuple[str, str], bytes | None] = field(default_factory=dict)
    #: per slot, its KeyState as the shard's run built and changed it; kept here so that a helper
    #: frees them after it has answered
    states: dict[Slot, KeyState] = field(default_factory=dict)
    #: the slots whose key's ttl expired (tables/expiry.py): they start afresh (filled by the worker)
    expired: set[Slot] = field(default_factory=set)


@dataclass
class ShardResult:
    """What a shard's run gives back: per event its rows, hop or rejection, per key its changes, counts."""

    outcomes: list[Rows | Rejected | Hop] = field(default_factory=list)  # per event of the shard
    changes: list[tuple[str, bytes, Changes]] = field(default_factory=list)
    late: dict[str, int] = field(default_factory=dict)  # per group
    duplicates: dict[str, int] = field(default_factory=dict)
    unkeyed: dict[tuple[str, str], int] = field(default_factory=dict)  # per (group, stream)


@dataclass(frozen=True)
class StageWork:
    """What a stream's events need at one stage: the groups they feed and read, the joins, and (at
    the last stage an event reaches) the stream's output builders."""

    stream: str
    stage: Stage
    reads: frozenset[str]  # groups whose features its output rows carry (read whole)
    builders: tuple[OutputBuilder, ...]
    later: tuple[Stage, ...]  # the stream's stages after this one
    #: (group, its part name) per group read here; (lookup, stream field, its part name) per join here
    read_parts: tuple[tuple[str, str], ...] = ()
    join_parts: tuple[tuple[str, tuple[str], str], ...] = ()


class BatchWork:
    """What every shard needs of the pipeline: group plans and, per stream and stage, its work."""

    def __init__(
        self, pipeline: Pipeline, group_id: str = "", replaying: Mapping[str, Collection[str]] | None = None
    ) -> None:
        self.plans = group_plans(pipeline, replaying)  # replaying: per group, identities (tables/replay.py)
        #: per stream, its stages' work in visiting order
        self.stages: dict[str, tuple[StageWork, ...]] = {}
        for name in pipeline.streams:
            builders = tuple(output_builders(pipeline, name))
            stages = stream_stages(pipeline, name, group_id)
            self.stages[name] = tuple(
                StageWork(
                    name,
                    stage,
                    frozenset(stage.reads),
                    builders,
                    stages[stage.index + 1 :],
                    tuple((g, group_part(g)) for g in stage.reads),
                    tuple((lookup, (on,), join_part(lookup, on)) for lookup, on in stage.joins),
                )
                for stage in stages
            )

    def add(self, shard: Shard, event: ShardEvent, key: str, raw_key: bytes, ts: int) -> int:
        """Add a decoded event, at home on the partition of its stage's ``key``, to ``shard`` and note
        the records it reads; its position there."""
        work = self.stages[event.stream][event.stage]
        wants = shard.wants
        plans = self.plans
        for group in work.stage.groups:
            wanted = wants.get((group, raw_key))
            if wanted is None:  # a roll-up merges the buckets that expire: read the key whole
                wanted = wants[group, raw_key] = Wants(group in work.reads or plans[group].rollup, set())
            wanted.buckets.add(ts // plans[group].period_ms)  # the event's bucket
        for group in work.reads:
            wanted = wants.get((group, raw_key))
            if wanted is None or not wanted.whole:
                wants[group, raw_key] = Wants(True, set() if wanted is None else wanted.buckets)
        fields = event.decoded[2]
        for lookup, on, _ in work.join_parts:  # by the joined field's value (the key, unless global)
            value = key_of(fields, on)
            if value is not None:
                shard.lookups[lookup, value] = None
        shard.events.append(event)
        return len(shard.events) - 1

    def run(self, shard: Shard) -> ShardResult:
        """Run every event of ``shard`` at once; its result."""
        result = ShardResult()
        for _ in self.steps(shard, result):
            pass
        return result

    def steps(self, shard: Shard, result: ShardResult) -> Iterator[None]:
        """Run every event of ``shard`` into ``result``, yielding after each event."""
        states = shard.states
        for slot, (whole, _) in shard.wants.items():
            states[slot] = _state(slot[1], whole, shard.records[slot], self.plans[slot[0]].retention)
        for slot in shard.expired:
            states[slot].reset()
        rows: dict[tuple[str, str], dict[str, Any] | None] = {
            name: orjson.loads(raw) if raw is not None else None for name, raw in shard.lookups.items()
        }
        for event in shard.events:
            result.outcomes.append(self._event(event, states, rows, result))
            yield None
        for (group, raw_key), state in states.items():
            changes = state.changes()
            if changes:
                result.changes.append((group, raw_key, changes))

    def _event(
        self,
        event: ShardEvent,
        states: dict[Slot, KeyState],
        lookups: dict[tuple[str, str], dict[str, Any] | None],
        result: ShardResult,
    ) -> Rows | Rejected | Hop:
        work = self.stages[event.stream][event.stage]
        try:
            key, ts, fields = event.decoded
            here = event.key or key
            raw_key = here.encode("utf-8")
            late = self._apply(work, states, raw_key, fields, ts, event, result)
            parts: dict[str, Any] = orjson.loads(event.carry) if event.carry is not None else {}
            if late is not None:
                parts.setdefault(LATE, late)
            plans = self.plans
            for group, part in work.read_parts:  # the group's state as this batch holds it, event applied
                parts[part] = read_features(plans[group], states[group, raw_key], ts)
            for lookup, on, part in work.join_parts:
                value = key_of(fields, on)
                parts[part] = None if value is None else lookups[lookup, value]
            for later in work.later:  # the next stage whose key the event has
                next_key = key_of(fields, later.key)
                if next_key is not None:
                    return (later.index, next_key, orjson.dumps(parts))
                for group in later.groups:
                    result.unkeyed[group, event.stream] = result.unkeyed.get((group, event.stream), 0) + 1
            if LATE in parts:
                raise BadRecord("late", parts[LATE])
            return [(b.topic, orjson.dumps(b.build(fields, parts))) for b in work.builders]
        except BadRecord as exc:
            return (exc.reason, str(exc))

    def _apply(
        self,
        work: StageWork,
        states: dict[Slot, KeyState],
        raw_key: bytes,
        fields: dict[str, Any],
        ts: int,
        event: ShardEvent,
        result: ShardResult,
    ) -> str | None:
        """Apply the event to every group its stream feeds at this stage; when it is late for any of
        them it is applied to none and the lateness is returned; BadRecord('expression') when a
        `where` fails."""
        groups = work.stage.groups
        if not groups:
            return None
        source, offset, mark = event.source, event.offset, event.mark
        plans = self.plans
        limits = (
            NO_LIMITS if mark is None else {g: plans[g].bucket(mark) - plans[g].retention for g in groups}
        )
        try:
            chosen = {g: choose(plans[g], work.stream, fields) for g in groups}
        except Exception as exc:
            raise BadRecord("expression", f"where filter: {type(exc).__name__}: {exc}") from None
        keyed = [(g, states[g, raw_key]) for g in groups]
        legacy = legacy_identity(source) if work.stage.index else None  # state of the previous release
        # A redelivery that a head already recorded is a duplicate there, even if its bucket expired since.
        late = [
            (g, state)
            for g, state in keyed
            if not _recorded(state.processed, source, legacy, offset)
            and is_late(plans[g], state, ts, limits[g])
        ]
        if late:
            for g, _ in late:
                result.late[g] = result.late.get(g, 0) + 1
            # Recorded as processed in every group of the stage (the head written with this batch), so
            # that a redelivery is a duplicate everywhere and applied nowhere.
            for _, state in keyed:
                state.mark_processed(source, offset)
            first, state = late[0]
            plan = plans[first]
            horizon = state.target(state.newest or 0, limits[first])
            return (
                f"event time {ts} is in bucket {plan.bucket(ts)} <= {horizon} (the key's newest bucket, "
                f"or every upstream partition's if lower, minus the retention of group {first!r})"
            )
        for g, state in keyed:
            outcome = apply_event(plans[g], state, chosen[g], fields, ts, source, offset, legacy, limits[g])
            if outcome == "duplicate":
                result.duplicates[g] = result.duplicates.get(g, 0) + 1
        return None


class _NoLimits(dict[str, int | None]):
    """Every group's limit is None (an event at its stream's own key)."""

    def __missing__(self, group: str) -> None:
        return None


NO_LIMITS = _NoLimits()


def _recorded(processed: dict[str, int], source: str, legacy: str | None, offset: int) -> bool:
    """Whether a head's processed offsets already hold event ``offset`` of ``source`` (or ``legacy``)."""
    return processed.get(source, -1) >= offset or (legacy is not None and processed.get(legacy, -1) >= offset)


def changed_records(results: Iterable[ShardResult]) -> Overlay:
    """Per (group, entity key), the records a batch's shards change: what the next batch reads in
    their place while they are not written locally yet (:func:`lay_over`)."""
    return {(group, entity): changes for result in results for group, entity, changes in result.changes}


def _state(key: bytes, whole: bool, records: dict[bytes, bytes | None], retention: int) -> KeyState:
    if whole:  # records: every record of the key, from one range read
        return KeyState(key, _unread, retention, lambda prefix: records.items())  # type: ignore[arg-type, return-value]
    # records: the head and the buckets the events fall in; any other read is a bug, never "absent"
    return KeyState(key, records.__getitem__, retention)


def _unread(record_key: bytes) -> bytes | None:
    raise AssertionError(f"record {record_key!r} was not read for this shard")


def read_records(
    shard: Shard,
    feature_db: Callable[[str, bytes], Any],
    lookup_db: Callable[[str, bytes], Any],
    retention: Mapping[str, int],
) -> None:
    """Fill ``shard`` with the stored records and lookup rows its events read (and the buckets they may
    expire); ``feature_db(group, key)`` and ``lookup_db(lookup, key)`` give the RocksDB partition
    (rocksdict, raw mode) of the key; ``retention``: R per group."""
    from tables.store import prefix_scan  # the worker's side only: it imports Faust, helpers need not

    scans: dict[int, Callable[[bytes], list[tuple[bytes, bytes]]]] = {}  # per database
    for slot, (whole, buckets) in shard.wants.items():
        group, raw_key = slot
        db = feature_db(group, raw_key)
        if whole:
            scan = scans.get(id(db))
            if scan is None:
                scan = scans[id(db)] = prefix_scan(db)
            shard.records[slot] = dict(scan(head_key(raw_key)))
        else:
            get = db.get
            head = get(head_key(raw_key))
            records = shard.records[slot] = {head_key(raw_key): head}
            for number in buckets:
                records[bucket_key(raw_key, number)] = get(bucket_key(raw_key, number))
            if head is not None and buckets:
                for number in expiring_records(head, max(buckets), retention[group]):
                    record_key = bucket_key(raw_key, number)
                    if record_key not in records:
                        records[record_key] = get(record_key)
    lookups = shard.lookups
    for name, key in list(lookups):
        raw_key = key.encode("utf-8")
        lookups[name, key] = lookup_db(name, raw_key).get(raw_key)


def lay_over(shard: Shard, overlay: Overlay) -> None:
    """Replace what :func:`read_records` read with the changes of ``overlay`` (a previous batch's,
    not written locally yet): a key read whole gets every changed record, others those they read."""
    for slot, (whole, _) in shard.wants.items():
        changes = overlay.get(slot)
        if not changes:
            continue
        records = shard.records[slot]
        if whole:
            for record_key, value in changes:
                if value is None:
                    records.pop(record_key, None)
                else:
                    records[record_key] = value
        else:
            records.update((record_key, value) for record_key, value in changes if record_key in records)


def mark_expired(
    shard: Shard, plans: Mapping[str, GroupPlan], clock: Callable[[str, bytes], int | None]
) -> None:
    """Note in ``shard`` the slots of groups with a ``ttl`` whose key expired (tables/expiry.py), by
    the head it read (a previous batch's laid over) and ``clock(group, key)``, its partition's clock."""
    for slot in shard.wants:
        group, raw_key = slot
        plan = plans[group]
        if plan.ttl is not None and head_expired(
            plan, shard.records[slot].get(head_key(raw_key)), clock(group, raw_key)
        ):
            shard.expired.add(slot)
