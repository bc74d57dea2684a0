"""Reading features from a key's window state: each window merges its buckets (docs/state-format.md)
with the same float operations in the same order as the offline tools; and the retention check. Pure."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import datasketches
import orjson

from tables.expiry import is_expired
from tables.key_state import KeyState
from tables.plans import (
    COUNT,
    DISTINCT,
    FIRST_T,
    FIRST_V,
    FREQUENT,
    LAST_T,
    LAST_V,
    LIFETIME,
    M2,
    MAX,
    MEAN,
    MIN,
    RECENT,
    SHIFT,
    SUM,
    VALUES,
    GroupPlan,
)
from tables.rollup import rollup_record
from tables.state_format import (
    AGGREGATIONS,
    FREQUENT_LG,
    HLL_LG_K,
    LAYOUT,
    NEWEST,
    OFFSETS,
    TDIGEST_K,
    THROUGH,
    AggState,
    bucket_key,
    convert,
    digest_of,
    frequent_of,
    head_key,
    newest_event,
    rollup_newest,
    sketch_of,
)


@dataclass
class MergedWindow:
    """A window's merge of bucket states given with all twelve canonical fields (as app/tools/offline
    builds them); the worker's reads merge states in their layout with :func:`window_results`."""

    count: int = 0
    sum: float = 0.0
    shift: float = 0.0
    mean: float = 0.0  # of the values minus ``shift``
    m2: float = 0.0
    min: Any = None
    max: Any = None
    first: tuple[int, Any] | None = None
    last: tuple[int, Any] | None = None
    hashes: set[int] = field(default_factory=set)
    sketches: list[Any] = field(default_factory=list)  # live or in their stored form

    def add(self, agg: AggState) -> None:
        """Merge in the next bucket's state (buckets in ascending order)."""
        n_a, n_b = self.count, agg[COUNT]
        total = n_a + n_b
        if n_a == 0:
            self.shift = agg[SHIFT]
        # Chan et al.: both means in this shift's frame; (shift_b - shift_a) is exact for close shifts.
        delta = (agg[SHIFT] - self.shift) + agg[MEAN] - self.mean
        self.mean += delta * n_b / total
        self.m2 += agg[M2] + delta * delta * n_a * n_b / total
        self.count = total
        self.sum += agg[SUM]
        self.min = agg[MIN] if self.min is None or agg[MIN] < self.min else self.min
        self.max = agg[MAX] if self.max is None or agg[MAX] > self.max else self.max
        # Buckets are merged in time order, so on equal times the earlier bucket's value stands.
        if self.first is None or agg[FIRST_T] < self.first[0]:
            self.first = (agg[FIRST_T], agg[FIRST_V])
        if self.last is None or agg[LAST_T] >= self.last[0]:
            self.last = (agg[LAST_T], agg[LAST_V])
        if isinstance(agg[DISTINCT], list):
            self.hashes.update(agg[DISTINCT])
        else:
            self.sketches.append(agg[DISTINCT])

    def distinct(self) -> int:
        """The number of distinct values (exact, or the HLL union's estimate)."""
        return _distinct_count(self.hashes, self.sketches)

    def result(self, op: str) -> Any:
        """The window's value of ``op`` (None for an empty window, except count/sum/distinct)."""
        if op == "count":
            return self.count
        if op == "distinct":
            return self.distinct()
        if op == "sum":
            return self.sum
        if self.count == 0:
            return None
        if op == "avg":
            return self.sum / self.count
        if op == "stddev":
            return math.sqrt(max(self.m2, 0.0) / (self.count - 1)) if self.count >= 2 else None
        if op == "min":
            return self.min
        if op == "max":
            return self.max
        if op == "first":
            return self.first[1] if self.first else None
        if op == "last":
            return self.last[1] if self.last else None
        raise ValueError(f"unknown op {op!r}")


def _distinct_count(hashes: set[int], sketches: list[Any]) -> int:
    """The number of distinct values: exact from the hashes alone, else the HLL union's estimate
    (``sketches`` live or in their stored form)."""
    if not sketches:
        return len(hashes)
    union = datasketches.hll_union(HLL_LG_K)
    for sketch in sketches:
        union.update(sketch_of(sketch) if isinstance(sketch, str) else sketch)
    for h in hashes:
        single = datasketches.hll_sketch(HLL_LG_K)
        single.update(h)
        union.update(single)
    return round(union.get_estimate())


def window_results(
    states: list[AggState],
    ops: tuple[tuple[str, int, float | None], ...],
    at: tuple[int, ...],
    out: list[Any],
    last_n: int = 0,
    top_k: int = 0,
) -> None:
    """``out[position] = result`` for each (op, position, quantile) of ``ops`` over bucket states in
    time order (in the layout ``at``: position per canonical field): the operations of
    :meth:`MergedWindow.add` and :meth:`MergedWindow.result`, in the same order (so the same floats),
    only those that the ops need."""
    count = 0
    for agg in states:
        count += agg[0]  # count: always the first field
    total: float | None = None
    spread: Any = None  # percentile: the window's values (sorted) or merged t-digest, made once
    for op, position, q in ops:
        if op == "percentile":
            if spread is None:
                spread = window_values(states, at[VALUES])
            out[position] = quantile(spread, q) if count else None
        elif op == "last_n":
            out[position] = latest(states, at[RECENT], last_n)
        elif op == "top_k":
            out[position] = most_frequent(states, at[FREQUENT], top_k)
        elif op == "count":
            out[position] = count
        elif op == "sum" or op == "avg":
            if total is None:
                total = 0.0
                i = at[SUM]
                for agg in states:
                    total += agg[i]
            out[position] = total if op == "sum" else total / count if count else None
        elif op == "distinct":
            hashes: set[int] = set()
            sketches: list[Any] = []
            i = at[DISTINCT]
            for agg in states:
                digest = agg[i]
                if isinstance(digest, list):
                    hashes.update(digest)
                else:
                    if isinstance(digest, str):  # decoded once per loaded bucket, kept live
                        digest = agg[i] = sketch_of(digest)
                    sketches.append(digest)
            out[position] = _distinct_count(hashes, sketches)
        elif not count:
            out[position] = None
        elif op == "stddev":
            i_mean, i_m2, i_shift = at[MEAN], at[M2], at[SHIFT]
            n_a, shift, mean, m2 = 0, states[0][i_shift], 0.0, 0.0
            for agg in states:  # Chan et al., as MergedWindow.add (whose shift is the first bucket's)
                n_b = agg[0]
                n = n_a + n_b
                delta = (agg[i_shift] - shift) + agg[i_mean] - mean
                mean += delta * n_b / n
                m2 += agg[i_m2] + delta * delta * n_a * n_b / n
                n_a = n
            out[position] = math.sqrt(max(m2, 0.0) / (count - 1)) if count >= 2 else None
        elif op == "min":
            i = at[MIN]
            low = None
            for agg in states:
                if low is None or agg[i] < low:
                    low = agg[i]
            out[position] = low
        elif op == "max":
            i = at[MAX]
            high = None
            for agg in states:
                if high is None or agg[i] > high:
                    high = agg[i]
            out[position] = high
        elif op == "first":
            i = at[FIRST_T]  # first_v follows it
            first = states[0]
            for agg in states:  # on equal times the earlier bucket's value stands
                if agg[i] < first[i]:
                    first = agg
            out[position] = first[i + 1]
        elif op == "last":
            i = at[LAST_T]  # last_v follows it
            last = states[0]
            for agg in states:
                if agg[i] >= last[i]:
                    last = agg
            out[position] = last[i + 1]
        else:
            raise ValueError(f"unknown op {op!r}")


@dataclass(frozen=True)
class Selection:
    """The features one read answers (all of a group's, or ``names``) and what reading them takes:
    made once per request by :func:`selection`, then applied to every key."""

    reads: tuple[tuple[int, int, tuple[tuple[str, int, float | None], ...]], ...]  # as GroupPlan.reads
    widest: int  # buckets of the widest window read (lifetime aside)
    outputs: tuple[tuple[str, int], ...] | None  # (name, position in plan.names); None: all
    lifetime: bool  # a lifetime window is read


def selection(plan: GroupPlan, names: frozenset[str] | set[str] | None = None) -> Selection:
    """What reading ``names`` (None: every feature) of ``plan`` takes."""
    if names is None:
        return Selection(plan.reads, plan.widest, None, plan.rollup)
    all_names = plan.names
    reads = tuple(
        (index, size, wanted)
        for index, size, ops in plan.reads
        if (wanted := tuple((op, i, q) for op, i, q in ops if all_names[i] in names))
    )
    outputs = tuple((name, i) for i, name in enumerate(all_names) if name in names)
    widest = max((size for _, size, _ in reads), default=0)
    return Selection(reads, widest, outputs, any(size == LIFETIME for _, size, _ in reads))


def latest(states: list[AggState], i: int, n: int) -> list[Any]:
    """The last ``n`` values of bucket states in time order (each keeping its latest ``[time, value]``
    pairs at position ``i``, oldest first), newest first."""
    values: list[Any] = []
    for agg in reversed(states):  # a later bucket's values are all newer
        recent = agg[i]
        for j in range(len(recent) - 1, -1, -1):
            values.append(recent[j][1])
            if len(values) == n:
                return values
    return values


def most_frequent(states: list[AggState], i: int, k: int) -> list[list[Any]]:
    """The ``k`` most frequent values of bucket states in time order (each keeping exact counts by
    value text, or a frequent-items sketch, at position ``i``) as ``[value, count]``, most frequent
    first, ties by smaller value: exact counts when every bucket is exact, else the merged sketch's
    estimates (docs/features.md gives the bound)."""
    exact: dict[str, int] = {}
    sketches: list[Any] = []
    for agg in states:
        counts = agg[i]
        if isinstance(counts, dict):
            for text, count in counts.items():
                exact[text] = exact.get(text, 0) + count
        else:  # stored, or live (changed in this batch): merged as it reads back from its stored form
            sketches.append(frequent_of(counts))
    if sketches:
        merged = datasketches.frequent_strings_sketch(FREQUENT_LG)
        for sketch in sketches:
            merged.merge(sketch)
        for text, count in exact.items():
            merged.update(text, count)
        rows = merged.get_frequent_items(datasketches.frequent_items_error_type.NO_FALSE_NEGATIVES)
        exact = {text: int(estimate) for text, estimate, _, _ in rows}
    ranked = sorted(((orjson.loads(text), count) for text, count in exact.items()), key=_by_count)
    return [[value, count] for value, count in ranked[:k]]


def _by_count(item: tuple[Any, int]) -> tuple[int, Any]:
    return -item[1], item[0]


def window_values(states: list[AggState], i: int) -> list[float] | Any:
    """The window's values for percentile from bucket states in time order (each keeping its values,
    or a t-digest, at position ``i``): all values sorted when every bucket kept them, else one
    t-digest merged in bucket order (exact buckets' values added in their arrival order)."""
    exact: list[float] = []
    digests: list[Any] = []
    for agg in states:
        kept = agg[i]
        if isinstance(kept, list):
            exact.extend(kept)
        else:
            if isinstance(kept, str):  # decoded once per loaded bucket, kept live
                kept = agg[i] = digest_of(kept)
            digests.append(kept)
    if not digests:
        exact.sort()
        return exact
    merged = datasketches.tdigest_double(TDIGEST_K)
    for digest in digests:
        merged.merge(digest)
    for x in exact:
        merged.update(x)
    return merged


def quantile(spread: list[float] | Any, q: float | None) -> float | None:
    """Quantile ``q`` of :func:`window_values`: of sorted values with linear interpolation (as numpy
    and pandas, default method), or the t-digest's estimate; None when there are no values."""
    assert q is not None
    if not isinstance(spread, list):
        return float(spread.get_quantile(q))
    if not spread:
        return None
    position = q * (len(spread) - 1)
    low = int(position)
    high = min(low + 1, len(spread) - 1)
    a, b, t = spread[low], spread[high], position - low
    return a + (b - a) * t if t < 0.5 else b - (b - a) * (1 - t)  # numpy's lerp


def read_features(
    plan: GroupPlan, state: KeyState, at_ms: int, names: frozenset[str] | set[str] | Selection | None = None
) -> dict[str, Any]:
    """Every feature (or those in ``names``, or of a :class:`Selection`) with windows ending at
    ``at_ms``: a window W covers buckets (b(at) - W/P, b(at)], lifetime the roll-up and the buckets
    after it up to b(at). Empty windows: count/sum/distinct 0, the others None."""
    return read_answer(plan, state, at_ms, names)[0]


def read_answer(
    plan: GroupPlan, state: KeyState, at_ms: int, names: frozenset[str] | set[str] | Selection | None = None
) -> tuple[dict[str, Any], int | None]:
    """:func:`read_features`, and the newest event time (ms) among the buckets those features read
    (with a lifetime window, the roll-up too): None when none of them holds an event."""
    if names is None:  # the common case: no selection to make
        reads, widest, outputs, lifetime = plan.reads, plan.widest, None, plan.rollup
    else:
        chosen = names if isinstance(names, Selection) else selection(plan, names)
        reads, widest, outputs, lifetime = chosen.reads, chosen.widest, chosen.outputs, chosen.lifetime
        if not reads:
            return {}, None
    end = at_ms // plan.period_ms
    lo = end - widest + 1
    rollup = rollup_record(plan, state) if lifetime else None
    after = -(2**62) if rollup is None else rollup[THROUGH] + 1  # lifetime's first bucket
    if lifetime:
        lo = min(lo, after)
    # Every window ends at `end`: the buckets of the widest one, loaded once, serve them all.
    numbers, records = state.buckets_in(lo, end)
    tag = plan.tag
    slots = [(r if r[LAYOUT] == tag else convert(plan, r))[AGGREGATIONS] for r in records]
    # A bucket's events lie in its period, so the newest event is the newest bucket's that holds one
    # (the roll-up's only when none does): from the last bucket back, usually one step.
    newest = None
    for i in range(len(records) - 1, -1, -1):
        record = records[i]
        newest = record[NEWEST] if len(record) > NEWEST else newest_event(plan, numbers[i], record)
        if newest is not None:
            break
    if newest is None and rollup is not None:
        newest = rollup_newest(plan, rollup)
    out: list[Any] = [None] * len(plan.names)
    aggregations = plan.aggregations
    for index, size, ops in reads:
        first = bisect_left(numbers, end - size + 1 if size != LIFETIME else after)
        states = [agg for a in slots[first:] if (agg := a[index]) is not None]
        if size == LIFETIME and rollup is not None and (rolled := rollup[AGGREGATIONS][index]) is not None:
            states.insert(0, rolled)
        aggregation = aggregations[index]
        window_results(states, ops, aggregation.at, out, aggregation.n, aggregation.k)
    if outputs is None:
        return dict(zip(plan.names, out, strict=True)), newest
    return {name: out[i] for name, i in outputs}, newest


def is_stale(plan: GroupPlan, newest: int | None, at_ms: int) -> bool:
    """An answer of a group with a ``max_age`` whose newest event (None: none in its windows) is
    older than ``at_ms - max_age`` (docs/features.md, "Freshness")."""
    assert plan.max_age is not None
    return newest is None or newest < at_ms - plan.max_age


def key_answer(
    plan: GroupPlan,
    key: str,
    state: KeyState,
    at_ms: int,
    names: frozenset[str] | set[str] | Selection | None = None,
    missing: list[str] | None = None,
    clock: int | None = None,
) -> dict[str, Any]:
    """One key's answer, as every read gives it (GET, batch result, scan row, service row): ``found``
    (false too for a key whose ``ttl`` expired by its partition's ``clock``: tables/expiry.py); then
    the retention ``error``, or ``features`` with ``newest_event`` and (groups with a ``max_age``)
    ``stale``; ``incomplete``: ``missing``, the features a replay still completes (when any)."""
    if not state.exists or is_expired(plan, state.newest, clock):
        return {"key": key, "found": False}
    if outside_retention(plan, state, at_ms, names):
        return {"key": key, "found": True, "error": retention_error(plan.name, at_ms)}
    features, newest = read_answer(plan, state, at_ms, names)
    result = {"key": key, "found": True, "features": features, "newest_event": newest}
    if plan.max_age is not None:
        result["stale"] = is_stale(plan, newest, at_ms)
    if missing:
        result["incomplete"] = missing
    return result


def retention_error(group: str, at: int) -> dict[str, str]:
    """The ``outside_retention`` error of a key of ``group`` at ``at``."""
    return {
        "code": "outside_retention",
        "message": f"at={at} needs buckets older than the retention of group {group!r} for this key",
    }


def outside_retention(
    plan: GroupPlan, state: KeyState, at_ms: int, names: frozenset[str] | set[str] | Selection | None = None
) -> bool:
    """Whether a feature asked for (all when ``names`` is None) needs buckets at or below n - R at
    ``at_ms``, which may be deleted, or (lifetime) is at or below n - R, where the roll-up may hold
    buckets after it (docs/product.md): the API answers 422 then."""
    newest = state.newest
    if newest is None:
        return False
    if names is None:
        widest, lifetime = plan.widest, plan.rollup
    else:
        chosen = names if isinstance(names, Selection) else selection(plan, names)
        widest, lifetime = chosen.widest, chosen.lifetime
    end = plan.bucket(at_ms)
    horizon = newest - plan.retention
    if widest and end - widest + 1 <= horizon:
        return True
    if lifetime:
        rollup = state.rollup()
        return end <= horizon or (rollup is not None and end < rollup[THROUGH])
    return False


def shows_applied(
    plan: GroupPlan, get: Callable[[bytes], bytes | None], key: bytes, source: str, offset: int, time_ms: int
) -> bool:
    """Whether a key's records (``get``: its partition's reads) show the event of ``source`` at
    ``offset`` and ``time_ms`` processed: its head lists the source at that offset or later, or the
    event's bucket does, or the event is late there (dropped and dead-lettered: the answers stay)."""
    raw = get(head_key(key))
    if raw is None:
        return False
    head = orjson.loads(raw)
    if head["o"].get(source, -1) >= offset:
        return True
    newest = head["n"]
    if newest is None:  # a key only marked with late events of its stage: nothing applied yet
        return False
    number = plan.bucket(time_ms)
    if number <= head.get("h", newest - plan.retention):  # expired there: late
        return True
    bucket = get(bucket_key(key, number))
    return bucket is not None and orjson.loads(bucket)[OFFSETS].get(source, -1) >= offset
