"""The lifetime roll-up: one state per aggregation with a lifetime window, into which a key's buckets
are merged, each once and in bucket order, as they expire (docs/state-format.md). Pure."""

from __future__ import annotations

from typing import Any

import datasketches
import orjson

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
from tables.state_format import (
    AGGREGATIONS,
    EXACT_DISTINCT,
    EXACT_QUANTILE,
    EXACT_TOP,
    FREQUENT_LG,
    HLL_LG_K,
    LAYOUT,
    OFFSETS,
    ROLLUP_MARKS,
    TDIGEST_K,
    THROUGH,
    AggState,
    Bucket,
    convert,
    digest_of,
    encode_bucket,
    frequent_of,
    newest_event,
    note_rollup,
    sketch_of,
)


def roll_up(plan: GroupPlan, state: KeyState, number: int, limit: int | None = None) -> None:
    """Before ``state`` sees bucket ``number`` (under ``limit``, KeyState.target): merge the stored
    buckets that this expires into the key's roll-up (those at or below its ``through`` already are: a
    redelivery after a crash between the roll-up's write and the head's merges nothing twice)."""
    expiring = state.expiring(number, limit)
    if not expiring:
        return
    record = state.rollup()
    if record is None:
        record = [[None] * len(plan.aggregations), plan.tag, None]
    elif record[LAYOUT] != plan.tag:
        record = convert(plan, record)
    through = record[THROUGH]
    slots = record[AGGREGATIONS]
    merged = False
    for bucket_number in expiring:
        if through is not None and bucket_number <= through:
            continue
        bucket = state.bucket(bucket_number)
        if bucket is None:
            continue
        if bucket[LAYOUT] != plan.tag:
            bucket = convert(plan, bucket)
        for agg in plan.aggregations:
            value = bucket[AGGREGATIONS][agg.index]
            if agg.lifetime and value is not None:
                slots[agg.index] = merge_state(slots[agg.index], value, agg)
        keep_marks(record, bucket[OFFSETS])
        note_rollup(plan, record, newest_event(plan, bucket_number, bucket))
        through = bucket_number
        merged = True
    if merged:
        record[THROUGH] = through
        state.set_rollup(record)


def rolled_up(states: list[AggState], agg: AggregationPlan) -> AggState | None:
    """The roll-up state of ``agg`` over bucket states in bucket order (what the worker builds from
    them as they expire; `hydrant compute` builds it so)."""
    out: AggState | None = None
    for state in states:
        out = merge_state(out, state, agg)
    return out


def merge_state(into: AggState | None, other: AggState, agg: AggregationPlan) -> AggState:
    """``into`` (a roll-up state, None: none yet; changed in place) with a later bucket's ``other`` merged
    in, in ``agg``'s layout: the float operations of tables.read.window_results, in its order.
    ``other`` is never changed: the first merge copies it (sketches in their stored form)."""
    if into is None:
        copied: AggState = orjson.loads(encode_bucket(other))
        return copied
    at = agg.at
    n_a, n_b = into[0], other[0]  # count: always the first field
    n = n_a + n_b
    into[0] = n
    i = at[SUM]
    if i >= 0:
        into[i] += other[i]
    i = at[MEAN]
    if i >= 0:  # Chan et al. in the roll-up's shift, as the read merges buckets
        i_m2, i_shift = at[M2], at[SHIFT]
        delta = (other[i_shift] - into[i_shift]) + other[i] - into[i]
        into[i] += delta * n_b / n
        into[i_m2] += other[i_m2] + delta * delta * n_a * n_b / n
    i = at[MIN]
    if i >= 0 and other[i] < into[i]:
        into[i] = other[i]
    i = at[MAX]
    if i >= 0 and other[i] > into[i]:
        into[i] = other[i]
    i = at[FIRST_T]  # first_v follows it; a later bucket's times are all later
    if i >= 0 and other[i] < into[i]:
        into[i], into[i + 1] = other[i], other[i + 1]
    i = at[LAST_T]
    if i >= 0 and other[i] >= into[i]:
        into[i], into[i + 1] = other[i], other[i + 1]
    i = at[DISTINCT]
    if i >= 0:
        into[i] = _merge_distinct(into[i], other[i])
    i = at[RECENT]
    if i >= 0:  # a later bucket's values are all newer
        into[i] = (into[i] + other[i])[-agg.n :]
    i = at[FREQUENT]
    if i >= 0:
        into[i] = _merge_frequent(into[i], other[i])
    i = at[VALUES]
    if i >= 0:
        into[i] = _merge_values(into[i], other[i])
    return into


def _merge_distinct(into: list[int] | str | Any, other: list[int] | str | Any) -> list[int] | Any:
    """Exact hashes while the union holds at most ``EXACT_DISTINCT``, else an HLL union's sketch."""
    parts: tuple[Any, ...] = (into, other)
    if isinstance(into, list) and isinstance(other, list):
        known = set(into)
        into.extend(h for h in other if h not in known)
        if len(into) <= EXACT_DISTINCT:
            return into
        parts = (into,)
    union = datasketches.hll_union(HLL_LG_K)
    for part in parts:
        if isinstance(part, list):
            sketch = datasketches.hll_sketch(HLL_LG_K, datasketches.tgt_hll_type.HLL_4)
            for h in part:
                sketch.update(h)
            union.update(sketch)
        else:
            union.update(sketch_of(part) if isinstance(part, str) else part)
    return union.get_result(datasketches.tgt_hll_type.HLL_4)


def _merge_frequent(
    into: dict[str, int] | str | Any, other: dict[str, int] | str | Any
) -> dict[str, int] | Any:
    """Exact counts while at most ``EXACT_TOP`` distinct values, else a frequent-items sketch."""
    parts: tuple[Any, ...] = (into, other)
    if isinstance(into, dict) and isinstance(other, dict):
        for text, count in other.items():
            into[text] = into.get(text, 0) + count
        if len(into) <= EXACT_TOP:
            return into
        parts = (into,)
    sketch = datasketches.frequent_strings_sketch(FREQUENT_LG)
    for part in parts:
        if isinstance(part, dict):
            for text, count in part.items():
                sketch.update(text, count)
        else:
            sketch.merge(frequent_of(part))
    return sketch


def _merge_values(into: list[float] | str | Any, other: list[float] | str | Any) -> list[float] | Any:
    """Every value while at most ``EXACT_QUANTILE``, else a t-digest (compressed, as stored)."""
    if isinstance(into, list) and isinstance(other, list) and len(into) + len(other) <= EXACT_QUANTILE:
        into.extend(other)
        return into
    if isinstance(into, list):
        digest = datasketches.tdigest_double(TDIGEST_K)
        for x in into:
            digest.update(x)
    else:
        digest = digest_of(into) if isinstance(into, str) else into
    if isinstance(other, list):
        for x in other:
            digest.update(x)
    else:
        digest.merge(digest_of(other) if isinstance(other, str) else other)
    digest.compress()
    return digest


def rollup_record(plan: GroupPlan, state: KeyState) -> Bucket | None:
    """The key's roll-up record in ``plan``'s layout (None: nothing expired yet)."""
    record = state.rollup()
    if record is not None and record[LAYOUT] != plan.tag:
        record = convert(plan, record)
    return record


def rollup_marks(record: Bucket) -> dict[str, int]:
    """The replay marks of a roll-up record (tables/replay.py), added if it had none."""
    while len(record) <= ROLLUP_MARKS:
        record.append({})
    marks: dict[str, int] = record[ROLLUP_MARKS]
    return marks


def keep_marks(record: Bucket, offsets: dict[str, int]) -> None:
    """The replay marks of a bucket merged into roll-up ``record``: what its aggregations then hold
    (the first live offset: the least; the highest replayed: the greatest)."""
    marks = None
    for name, offset in offsets.items():
        if "|" in name:
            marks = marks if marks is not None else rollup_marks(record)
            known = marks.get(name)
            marks[name] = offset if known is None else min(known, offset)
        elif "<" in name:
            marks = marks if marks is not None else rollup_marks(record)
            marks[name] = max(marks.get(name, -1), offset)
