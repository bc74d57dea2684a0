"""Replaying input history into new or changed aggregations, exactly once (docs/operations.md,
"Changing a pipeline"). Pure: the rules and the records; app/engine/replay.py runs them.

A new or changed aggregation (another identity, tables/plans.py) is applied live from the moment a
worker runs the new spec, and a replay applies the events read before. Two markers per bucket and
source partition, in the bucket's offsets, tell which of its events the aggregation holds:

- ``<identity>|<source>``: the first offset the live path applied to it in this bucket. Events of a
  key come from a source in offset order, so from that offset on, the live path has them;
- ``<identity><<source>``: the highest offset the replay applied to it in this bucket.

The replay reads each input partition from its earliest offset up to its end when the replay began.
A hop topic to a later stage (a group on another key than its stream's) holds only the events sent
on to that key since a spec first used it, so a job reading one never counts as holding all history.
It applies an event that a worker has processed already (read below the group's committed offset
when the replay began, or listed as processed by the key's head) below the live marker and above the
replay marker, and writes the marker with the state it changes (one record): so a crash or a
rebalance at any point counts no event twice, and the events an old worker processed after its last
commit (the new one skips them as duplicates) are replayed too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from tables.apply import update_state
from tables.key_state import KeyState
from tables.plans import AggregationPlan, GroupPlan
from tables.read import Selection
from tables.rollup import roll_up, rollup_marks
from tables.state_format import AGGREGATIONS, LAYOUT, OFFSETS, Bucket, convert, note_event, note_rollup

#: The record of a partition's replay in its group's table. No entity key is empty, and the records
#: of a key all start with the key and a NUL: this key is no entity's record.
JOB_KEY = b"\x00replay"
BACKFILL_KEY = b"\x00backfill"  # ... and of its backfill from files (app/tools/backfill.py)
#: How a hop topic to a later stage is named (app/config/routing.py, hop_topic): the inputs of a job
#: recorded before jobs listed their hop inputs.
HOP_TOPIC = re.compile(r"-stream-.+-by-.+-repartition$")


def live_mark(ident: str, source: str) -> str:
    """The offsets entry naming the first offset of ``source`` applied live to aggregation ``ident``."""
    return f"{ident}|{source}"


def replay_mark(ident: str, source: str) -> str:
    """The offsets entry naming the highest offset of ``source`` replayed into aggregation ``ident``."""
    return f"{ident}<{source}"


def replay_event(
    plan: GroupPlan,
    state: KeyState,
    chosen: list[AggregationPlan],
    fields: Mapping[str, Any],
    time_ms: int,
    source: str,
    offset: int,
    before_change: bool,
) -> int:
    """Apply one event read from history to the aggregations of ``chosen`` (those being replayed
    whose `where` holds) that do not hold it yet; how many took it. ``before_change``: the record was
    read below the group's committed offset when the replay began (processed by a worker before
    the change); a later record counts only if the key's head says it was processed (the live path
    takes the others). Its bucket is one the key still keeps, or (an aggregation with a lifetime
    window) the roll-up; otherwise no window reads it."""
    if not before_change and state.processed.get(source, -1) < offset:
        return 0
    number = time_ms // plan.period_ms
    newest = state.newest
    values = []
    for agg in chosen:
        value = fields.get(agg.field) if agg.field is not None else True
        if value is not None:
            values.append((agg, value))
    if not values:
        return 0
    if newest is not None and number <= state.floor:  # its bucket expired
        return _into_rollup(plan, state, values, time_ms, source, offset)
    if newest is None or number > newest:  # history newer than anything live: a newer bucket, but the
        limit = None if newest is None else state.floor  # floor stays where the live events left it
        if plan.rollup:
            roll_up(plan, state, number, limit)
        state.advance(number, limit)
    record = state.bucket(number)
    if record is not None and record[LAYOUT] != plan.tag:
        record = convert(plan, record)
    if record is None:
        record = state._create(number, len(plan.aggregations), plan.tag)
    offsets = record[OFFSETS]
    slots = record[AGGREGATIONS]
    took = 0
    for agg, value in values:
        live = offsets.get(live_mark(agg.ident, source))
        mark = replay_mark(agg.ident, source)
        if (live is not None and offset >= live) or offsets.get(mark, -1) >= offset:
            continue
        slots[agg.index] = update_state(slots[agg.index], value, time_ms, agg)
        offsets[mark] = offset
        took += 1
    if took:
        note_event(plan, number, record, time_ms)
        state._dirty.add(number)
    return took


def _into_rollup(
    plan: GroupPlan,
    state: KeyState,
    values: list[tuple[AggregationPlan, Any]],
    time_ms: int,
    source: str,
    offset: int,
) -> int:
    """An event older than the key's kept buckets, into the roll-up of its lifetime aggregations."""
    lifetime = [(agg, value) for agg, value in values if agg.lifetime]
    if not lifetime:
        return 0
    record: Bucket | None = state.rollup()
    if record is None:
        record = [[None] * len(plan.aggregations), plan.tag, None]
    elif record[LAYOUT] != plan.tag:
        record = convert(plan, record)
    marks = rollup_marks(record)
    slots = record[AGGREGATIONS]
    took = 0
    for agg, value in lifetime:
        mark = replay_mark(agg.ident, source)
        if marks.get(mark, -1) >= offset or _live_from(state, marks, live_mark(agg.ident, source)) <= offset:
            continue
        slots[agg.index] = update_state(slots[agg.index], value, time_ms, agg)
        marks[mark] = offset
        took += 1
    if took:
        note_rollup(plan, record, time_ms)
        state.set_rollup(record)
    return took


def _live_from(state: KeyState, marks: dict[str, int], name: str) -> float:
    """The first offset the live path applied to an aggregation from a source, in any of the key's
    records (infinity: none). From it on, the live path has every event of the key from that source."""
    first = marks.get(name, math.inf)
    _, records = state.buckets_in(-(2**62), 2**62)
    for record in records:
        first = min(first, record[OFFSETS].get(name, math.inf))
    return first


@dataclass
class ReplayJob:
    """One partition's replay of a group: which aggregations (identity: name), which input
    partitions (``"topic:partition"``) from where (``start``, the earliest offset kept when it began)
    up to where (``end``, their end then), the group's committed offsets then (``change``), how far
    it got (``at``, the next offset to read), when it began (``since``, ms), which inputs are hop
    topics to a later stage (``hops``; None: recorded before jobs listed them, told by their names)."""

    aggregations: dict[str, str]
    start: dict[str, int]
    end: dict[str, int]
    change: dict[str, int] = field(default_factory=dict)
    at: dict[str, int] = field(default_factory=dict)
    since: int = 0
    replayed: int = 0  # events read
    done: bool = False
    hops: list[str] | None = None

    @property
    def whole_history(self) -> bool:
        """Whether the inputs held all history when the replay began: each from offset 0, and none a
        hop topic to a later stage (it lacks the events from before its key was first used)."""
        hops = self.hops
        if hops is None:
            hops = [name for name in self.start if HOP_TOPIC.search(name.rpartition(":")[0])]
        return not hops and all(offset == 0 for offset in self.start.values())

    def left(self) -> int:
        """Records still to read."""
        return sum(max(0, self.end[tp] - self.at.get(tp, self.start[tp])) for tp in self.end)

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "aggregations": self.aggregations,
                "start": self.start,
                "end": self.end,
                "change": self.change,
                "at": self.at,
                "since": self.since,
                "replayed": self.replayed,
                "done": self.done,
                "hops": self.hops,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> ReplayJob:
        return cls(**orjson.loads(raw))


def incomplete_features(plan: GroupPlan, job: ReplayJob | None, now_ms: int) -> list[str]:
    """The features of ``plan`` that a key of the job's partition cannot answer in full yet: those of
    its aggregations while the replay runs; after it, where the inputs did not hold all history
    (:attr:`ReplayJob.whole_history`: a truncated topic, a hop topic), a window until it has passed
    since the replay began (a lifetime window: for good)."""
    if job is None or not job.aggregations:
        return []
    out = []
    for agg in plan.aggregations:
        if agg.ident not in job.aggregations:
            continue
        for label, size in agg.windows:
            if job.done and job.whole_history:
                continue
            if job.done and size and now_ms - job.since >= size * plan.period_ms:
                continue
            out += [f"{agg.name}_{part}_{label}" for _, part, _ in agg.labels()]
    return out


def stored_incomplete(plan: GroupPlan, db: Any, now_ms: int) -> list[str]:
    """:func:`incomplete_features` of the partition whose database (the worker's or a secondary
    instance of it) is ``db``, from its replay record."""
    found: list[str] = []
    for record_key in (JOB_KEY, BACKFILL_KEY):
        raw = db.get(record_key)
        if raw is not None:
            found += [n for n in incomplete_features(plan, ReplayJob.decode(raw), now_ms) if n not in found]
    return found


def incomplete_selected(
    plan: GroupPlan, db: Any, names: frozenset[str] | Selection | None, now_ms: int
) -> list[str]:
    """The features of ``names`` (None: all) that keys of the partition ``db`` holds cannot answer in
    full yet at ``now_ms`` (a replay runs, or the topics lack the history: docs/operations.md)."""
    found = stored_incomplete(plan, db, now_ms)
    if not found or names is None:
        return found
    if isinstance(names, Selection):
        if names.outputs is None:
            return found
        names = frozenset(name for name, _ in names.outputs)
    return [name for name in found if name in names]
