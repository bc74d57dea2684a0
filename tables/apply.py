"""Applying one event to a key's window state: lateness, which aggregations it feeds, duplicate
detection by source offset, and the per-bucket running values (docs/state-format.md). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import datasketches

from tables.key_state import KeyState
from tables.plans import (
    DISTINCT,
    FIRST_T,
    FREQUENT,
    LAST_T,
    M2,
    MAX,
    MEAN,
    MIN,
    RECENT,
    SHIFT,
    SUM,
    VALUES,
    AggregationPlan,
    GroupPlan,
)
from tables.rollup import roll_up
from tables.state_format import (
    AGGREGATIONS,
    EXACT_DISTINCT,
    EXACT_QUANTILE,
    EXACT_TOP,
    FREQUENT_LG,
    HLL_LG_K,
    LAYOUT,
    NEWEST,
    OFFSETS,
    TDIGEST_K,
    AggState,
    convert,
    digest_of,
    frequent_of,
    note_event,
    sketch_of,
    value_hash,
    value_text,
)

Outcome = Literal["applied", "duplicate", "late"]


def is_late(plan: GroupPlan, state: KeyState, time_ms: int, limit: int | None = None) -> bool:
    """docs/features.md: late when b(event) <= min(n - R, limit), n the newest bucket of any earlier
    event of the key, ``limit`` the bucket of every upstream partition's progress minus R (None: at the
    stream's own key), and never above a bucket already expired."""
    newest = state.newest
    return newest is not None and plan.bucket(time_ms) <= state.target(newest, limit)


def choose(plan: GroupPlan, stream: str, fields: Mapping[str, Any]) -> list[AggregationPlan]:
    """The aggregations of ``stream`` that this event feeds (their `where` holds). Raises when a
    `where` expression fails, before any state changes."""
    return [agg for agg in plan.by_stream.get(stream, ()) if agg.where is None or agg.where.evaluate(fields)]


def apply_event(
    plan: GroupPlan,
    state: KeyState,
    chosen: list[AggregationPlan],
    fields: Mapping[str, Any],
    time_ms: int,
    source: str,
    offset: int,
    legacy: str | None = None,
    limit: int | None = None,
) -> Outcome:
    """Apply one event (``chosen``: from :func:`choose`) to a key's state: 'applied', 'duplicate' (its
    source offset is already in the bucket or head, under ``source`` or under ``legacy``, the identity
    an earlier release gave it) or 'late' (dropped; the caller dead-letters it)."""
    processed = state.processed
    if processed.get(source, -1) >= offset or (legacy is not None and processed.get(legacy, -1) >= offset):
        return "duplicate"
    number = time_ms // plan.period_ms
    newest = state.newest
    late = newest is not None and number <= state.target(newest, limit)  # is_late
    record = None if late else state.bucket(number)
    if record is not None and record[LAYOUT] != plan.tag:
        record = convert(plan, record)
    if record is not None:
        marks = record[OFFSETS]
        if marks.get(source, -1) >= offset or (legacy is not None and marks.get(legacy, -1) >= offset):
            return "duplicate"
    processed[source] = offset  # persisted with the head's next write, after the buckets
    if late:
        return "late"
    if state.moves(number, limit):
        if plan.rollup:
            roll_up(plan, state, number, limit)  # before the buckets it expires go
        state.advance(number, limit)
    values = []
    for agg in chosen:
        value = fields.get(agg.field) if agg.field is not None else True
        if value is not None:  # like pandas: nulls don't count
            values.append((agg, value))
    if not values:
        return "applied"
    if record is None:
        record = state._create(number, len(plan.aggregations), plan.tag)
    slots = record[AGGREGATIONS]
    offsets = record[OFFSETS]
    for agg, value in values:
        index = agg.index
        slots[index] = update_state(slots[index], value, time_ms, agg)
        if agg.replaying:  # its replay applies the events before this one (tables/replay.py)
            offsets.setdefault(f"{agg.ident}|{source}", offset)
    offsets[source] = offset
    if len(record) > NEWEST:  # the newest event time of the bucket's values (tables/state_format.py)
        known = record[NEWEST]
        if known is None or time_ms > known:
            record[NEWEST] = time_ms
    else:
        note_event(plan, number, record, time_ms)
    state._dirty.add(number)
    return "applied"


_NUMBERS = (int, float)


def update_state(agg: AggState | None, value: Any, time_ms: int, plan: AggregationPlan) -> AggState:
    """``agg`` (None: a new state) with one more value, in ``plan``'s layout (may change it in place)."""
    numeric = isinstance(value, _NUMBERS) and not isinstance(value, bool)
    at = plan.at
    if agg is None:
        x = float(value) if numeric else 0.0
        hashes = [value_hash(value)] if plan.distinct else []
        canonical: tuple[Any, ...] = (1, x, 0.0, 0.0, value, value, time_ms, value, time_ms, value, hashes, x)
        if plan.layout[-1] >= RECENT:  # last_n, top_k or percentile: their fields come last
            canonical += ([[time_ms, value]], {value_text(value): 1} if plan.k else {}, [x])
        return [canonical[f] for f in plan.layout]
    count = agg[0] + 1  # count: always the first field
    agg[0] = count
    if numeric:
        x = float(value)
        i = at[SUM]
        if i >= 0:
            agg[i] += x
        i = at[MEAN]
        if i >= 0:  # with m2 and shift (stddev)
            m2 = at[M2]
            shifted = x - agg[at[SHIFT]]
            delta = shifted - agg[i]
            agg[i] += delta / count
            agg[m2] += delta * (shifted - agg[i])
    i = at[MIN]
    if i >= 0 and value < agg[i]:
        agg[i] = value
    i = at[MAX]
    if i >= 0 and value > agg[i]:
        agg[i] = value
    i = at[FIRST_T]  # first_v follows it
    if i >= 0 and time_ms < agg[i]:  # ties: the first to arrive stays first
        agg[i], agg[i + 1] = time_ms, value
    i = at[LAST_T]  # last_v follows it
    if i >= 0 and time_ms >= agg[i]:  # ties: the last to arrive becomes last
        agg[i], agg[i + 1] = time_ms, value
    i = at[DISTINCT]
    if i >= 0:  # hashing costs more than everything else here: only for aggregations that need it
        agg[i] = add_distinct(agg[i], value_hash(value))
    i = at[RECENT]
    if i >= 0:
        add_recent(agg[i], time_ms, value, plan.n)
    i = at[FREQUENT]
    if i >= 0:
        agg[i] = add_frequent(agg[i], value_text(value))
    i = at[VALUES]
    if i >= 0 and numeric:
        agg[i] = add_value(agg[i], float(value))
    return agg


def add_value(values: list[float] | str | Any, x: float) -> list[float] | Any:
    """``values`` (the bucket's values in arrival order, a t-digest in its stored form, or live) with
    ``x``; a live t-digest past ``EXACT_QUANTILE`` values. May change it in place. The digest is
    compressed after every value: a stored digest reads back as the same state, so the answers do not
    depend on when a batch wrote it (and `hydrant compute`, which never stores one, gives the same)."""
    if isinstance(values, list):
        if len(values) < EXACT_QUANTILE:
            values.append(x)
            return values
        digest = datasketches.tdigest_double(TDIGEST_K)
        for known in values:
            digest.update(known)
    elif isinstance(values, str):
        digest = digest_of(values)
    else:
        digest = values
    digest.update(x)
    digest.compress()
    return digest


def add_frequent(counts: dict[str, int] | str | Any, text: str) -> dict[str, int] | Any:
    """``counts`` (exact counts by value text, a sketch in its stored form, or live) with one more
    ``text``; a live frequent-items sketch past ``EXACT_TOP`` distinct values. May change it in place."""
    if isinstance(counts, dict):
        if text in counts:
            counts[text] += 1
            return counts
        if len(counts) < EXACT_TOP:
            counts[text] = 1
            return counts
        sketch = datasketches.frequent_strings_sketch(FREQUENT_LG)
        for known, count in counts.items():
            sketch.update(known, count)
    elif isinstance(counts, str):
        sketch = frequent_of(counts)
    else:
        sketch = counts
    sketch.update(text)
    return sketch


def add_recent(recent: list[list[Any]], time_ms: int, value: Any, n: int) -> None:
    """Keep ``[time, value]`` in ``recent``, the bucket's latest ``n`` values in (time, arrival)
    order, oldest first: on equal times the later arrival counts as newer (as for last)."""
    if len(recent) >= n and time_ms < recent[0][0]:
        return  # older than every value kept
    position = len(recent)
    while position and recent[position - 1][0] > time_ms:  # events mostly arrive in time order
        position -= 1
    recent.insert(position, [time_ms, value])
    if len(recent) > n:
        del recent[0]


def add_distinct(distinct: list[int] | str | Any, h: int) -> list[int] | Any:
    """``distinct`` (exact hash list, HLL sketch in its stored form or live) with hash ``h`` added;
    a live sketch past ``EXACT_DISTINCT`` hashes. May change the list or sketch in place."""
    if isinstance(distinct, list):
        if h in distinct:
            return distinct
        if len(distinct) < EXACT_DISTINCT:
            distinct.append(h)
            return distinct
        sketch = _sketch_of(distinct)
    elif isinstance(distinct, str):
        sketch = sketch_of(distinct)
    else:
        sketch = distinct
    sketch.update(h)
    return sketch


def _sketch_of(hashes: list[int]) -> Any:
    sketch = datasketches.hll_sketch(HLL_LG_K, datasketches.tgt_hll_type.HLL_4)
    for h in hashes:
        sketch.update(h)
    return sketch
