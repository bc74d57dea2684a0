"""Offline bucket states and window merges, vectorized and bit-identical to tables/apply.py and
tables/read.py: the worker's float operations in its order, across all segments at once (docs/offline.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tables.apply import add_distinct, add_frequent, add_value
from tables.plans import AggregationPlan
from tables.read import MergedWindow, latest, most_frequent, quantile, window_results, window_values
from tables.rollup import merge_state
from tables.state_format import EXACT_DISTINCT, AggState, value_hash, value_text

_EMPTY_I = np.zeros(0, dtype=np.int64)


def ranges(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(segment number, index) of every element of the ranges [starts[i], starts[i] + lengths[i])."""
    lengths = lengths.astype(np.int64)
    total = int(lengths.sum())
    if total == 0:
        return _EMPTY_I, _EMPTY_I
    seg = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    first = np.cumsum(lengths) - lengths
    index = np.arange(total, dtype=np.int64) - np.repeat(first, lengths) + np.repeat(starts, lengths)
    return seg, index


def _python(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def value_hashes(values: np.ndarray) -> np.ndarray:
    """``tables.state_format.value_hash`` of every value, computed once per distinct value."""
    if len(values) == 0:
        return _EMPTY_I
    codes, uniques = pd.factorize(values)
    table = np.array([value_hash(_python(u)) for u in np.asarray(uniques, dtype=object)], dtype=np.int64)
    return table[codes]


@dataclass
class States:
    """Aggregation states of segments (buckets, or partial buckets): one row per segment."""

    count: np.ndarray
    sum: np.ndarray
    shift: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray
    first: np.ndarray
    last: np.ndarray
    hash_start: np.ndarray  # len + 1: the segment's exact hashes are hashes[hash_start[i]:hash_start[i+1]]
    hashes: np.ndarray
    sketches: dict[int, Any] = field(
        default_factory=dict
    )  # segment -> live HLL sketch (no exact hashes then)
    recent: np.ndarray | None = None  # last_n: per segment its latest [time, value] pairs, oldest first
    frequent: np.ndarray | None = None  # top_k: per segment its counts by value text, or its sketch
    kept: np.ndarray | None = None  # percentile: per segment its values, or its t-digest

    def __len__(self) -> int:
        return len(self.count)

    @staticmethod
    def concat(parts: list[States]) -> States:
        """The segments of ``parts``, in order, as one States."""
        offsets = np.cumsum([0] + [len(p) for p in parts[:-1]])
        hash_offsets = np.cumsum([0] + [len(p.hashes) for p in parts[:-1]])
        sketches: dict[int, Any] = {}
        for p, off in zip(parts, offsets, strict=True):
            sketches.update({int(k) + int(off): v for k, v in p.sketches.items()})
        hash_start = np.concatenate(
            [p.hash_start[:-1] + ho for p, ho in zip(parts, hash_offsets, strict=True)]
            + [np.array([sum(len(p.hashes) for p in parts)], dtype=np.int64)]
        )

        def cat(name: str) -> np.ndarray:
            arrays = [getattr(p, name) for p in parts]
            if any(a.dtype == object for a in arrays):
                arrays = [a.astype(object) for a in arrays]
            return np.concatenate(arrays)

        def lists(name: str) -> np.ndarray | None:
            arrays = [getattr(p, name) for p in parts]
            if all(a is None for a in arrays):
                return None
            filled = [a if a is not None else _no_recent(len(p)) for a, p in zip(arrays, parts, strict=True)]
            return np.concatenate(filled)

        recent, frequent, kept = lists("recent"), lists("frequent"), lists("kept")
        return States(
            cat("count"), cat("sum"), cat("shift"), cat("mean"), cat("m2"),
            cat("min"), cat("max"), cat("first"), cat("last"),
            hash_start=hash_start, hashes=np.concatenate([p.hashes for p in parts]), sketches=sketches,
            recent=recent, frequent=frequent, kept=kept,
        )  # fmt: skip


def segment_states(
    segment: np.ndarray,
    values: np.ndarray,
    times: np.ndarray,
    numeric: bool,
    ops: frozenset[str],
    hashes: np.ndarray | None = None,
    last_n: int = 0,
) -> States:
    """States of the segments of events given in processing order grouped by ``segment`` (sorted
    ascending, each segment contiguous), exactly as tables.apply._update builds them; ``last_n``:
    how many values the op last_n keeps."""
    n = len(segment)
    if n == 0:
        empty_f = np.zeros(0)
        return States(
            _EMPTY_I, empty_f, empty_f, empty_f, empty_f, values[:0], values[:0], values[:0], values[:0],
            np.zeros(1, dtype=np.int64), _EMPTY_I, recent=_no_recent(0) if last_n else None,
            frequent=_no_recent(0) if "top_k" in ops else None,
            kept=_no_recent(0) if "percentile" in ops else None,
        )  # fmt: skip
    starts = np.flatnonzero(np.r_[True, segment[1:] != segment[:-1]])
    sizes = np.diff(np.r_[starts, n])
    count = sizes.astype(np.int64)
    nseg = len(starts)
    distinct = "distinct" in ops
    # count, sum and Welford's mean / m2 of (value - shift), event by event in processing order.
    if numeric and ops & {"sum", "avg", "stddev"}:
        x = values.astype(np.float64)
        perm = np.argsort(-sizes, kind="stable")
        s_sorted, z = starts[perm], sizes[perm]
        acc = x[s_sorted].copy()
        shift = acc.copy()
        mean = np.zeros(nseg)
        m2 = np.zeros(nseg)
        negz = -z
        for j in range(1, int(z[0])):
            c = int(np.searchsorted(negz, -j, side="left"))
            xi = x[s_sorted[:c] + j]
            acc[:c] += xi
            shifted = xi - shift[:c]
            delta = shifted - mean[:c]
            mean[:c] += delta / (j + 1)
            m2[:c] += delta * (shifted - mean[:c])
        inv = np.empty(nseg, dtype=np.int64)
        inv[perm] = np.arange(nseg)
        total, shift, mean, m2 = acc[inv], shift[inv], mean[inv], m2[inv]
    else:
        total = np.zeros(nseg)
        shift = np.zeros(nseg)
        mean = np.zeros(nseg)
        m2 = np.zeros(nseg)
    # min / max (exact whatever the order) and first / last by (time, arrival).
    if not ops & {"min", "max", "first", "last"}:  # not asked for: placeholders
        vmin = vmax = first = last = np.zeros(nseg)
    elif values.dtype == object:
        series = pd.Series(values)
        seg_ids = np.repeat(np.arange(nseg), sizes)
        grouped = series.groupby(seg_ids, sort=True)
        vmin = np.asarray(grouped.min().to_numpy(dtype=object), dtype=object)
        vmax = np.asarray(grouped.max().to_numpy(dtype=object), dtype=object)
    else:
        vmin = np.minimum.reduceat(values, starts)
        vmax = np.maximum.reduceat(values, starts)
    if ops & {"first", "last", "last_n"}:
        by_time = np.lexsort((np.arange(n), times, segment))
    if ops & {"first", "last"}:
        first = values[by_time[starts]]
        last = values[by_time[np.r_[starts[1:], n] - 1]]
    else:
        first = last = np.zeros(nseg)
    # last_n: each bucket's latest values by (time, arrival), as tables.apply.add_recent keeps them.
    recent = None
    if "last_n" in ops:
        recent = _no_recent(nseg)
        ends = np.r_[starts[1:], n]
        listed = values.tolist()
        stamps = times.tolist()
        for s_, (start, end) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
            kept = by_time[max(start, end - last_n) : end].tolist()
            recent[s_] = [[stamps[i], listed[i]] for i in kept]
    # top_k: each bucket's counts by value text, replayed through tables.apply.add_frequent in order.
    frequent = None
    if "top_k" in ops:
        frequent = np.empty(nseg, dtype=object)
        texts = [value_text(v) for v in values.tolist()]
        ends = np.r_[starts[1:], n]
        for s_, (start, end) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
            counts: Any = {}
            for text in texts[start:end]:
                counts = add_frequent(counts, text)
            frequent[s_] = counts
    # percentile: each bucket's values, replayed through tables.apply.add_value in order.
    kept = None
    if "percentile" in ops:
        kept = np.empty(nseg, dtype=object)
        floats = values.astype(np.float64).tolist()
        for s_, (start, end) in enumerate(zip(starts.tolist(), np.r_[starts[1:], n].tolist(), strict=True)):
            held: Any = []
            for x in floats[start:end]:
                held = add_value(held, x)
            kept[s_] = held
    # distinct: the exact hash list per bucket up to EXACT_DISTINCT, else the worker's sketch.
    hash_start = np.zeros(nseg + 1, dtype=np.int64)
    exact = _EMPTY_I
    sketches: dict[int, Any] = {}  # live HLL sketches
    if distinct:
        h = hashes if hashes is not None else value_hashes(values)
        frame = pd.DataFrame({"s": np.repeat(np.arange(nseg), sizes), "h": h})
        unique = frame.drop_duplicates()  # keeps first occurrences, in processing order
        per = np.bincount(unique["s"].to_numpy(), minlength=nseg)
        big = np.flatnonzero(per > EXACT_DISTINCT)
        for s in big.tolist():
            state: Any = []
            for value in h[starts[s] : starts[s] + sizes[s]].tolist():
                state = add_distinct(state, value)
            assert not isinstance(state, list)
            sketches[s] = state
        if len(big):
            unique = unique[~unique["s"].isin(big)]
            per[big] = 0
        exact = unique["h"].to_numpy(dtype=np.int64)
        hash_start[1:] = np.cumsum(per)
    return States(
        count,
        total,
        shift,
        mean,
        m2,
        vmin,
        vmax,
        first,
        last,
        hash_start,
        exact,
        sketches,
        recent,
        frequent,
        kept,
    )


def _no_recent(size: int) -> np.ndarray:
    """``size`` empty last_n lists (an object array)."""
    out = np.empty(size, dtype=object)
    for i in range(size):
        out[i] = []
    return out


@dataclass
class Merged:
    """Window results for each query (the values tables.read.MergedWindow.result gives)."""

    count: np.ndarray
    sum: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray
    first: np.ndarray
    last: np.ndarray
    distinct: np.ndarray
    latest: np.ndarray | None = None  # last_n: per query its values, newest first
    top: np.ndarray | None = None  # top_k: per query its [value, count] pairs
    spreads: np.ndarray | None = None  # percentile: per query tables.read.window_values

    def quantile(self, q: float) -> tuple[np.ndarray, np.ndarray]:
        """(values, valid mask) of percentile ``q`` (null for an empty window)."""
        assert self.spreads is not None
        values = np.array(
            [quantile(spread, q) if n else np.nan for spread, n in zip(self.spreads, self.count, strict=True)]
        )
        return values.astype(np.float64), self.count > 0

    def result(self, op: str) -> tuple[np.ndarray, np.ndarray]:
        """(values, valid mask) of ``op``; invalid means null (empty window, or stddev below 2)."""
        has = self.count > 0
        if op in ("last_n", "top_k"):
            lists = self.latest if op == "last_n" else self.top
            assert lists is not None
            return lists, np.ones(len(has), dtype=bool)
        if op == "count":
            return self.count, np.ones(len(has), dtype=bool)
        if op == "distinct":
            return self.distinct, np.ones(len(has), dtype=bool)
        if op == "sum":
            return self.sum, np.ones(len(has), dtype=bool)
        if op == "avg":
            with np.errstate(divide="ignore", invalid="ignore"):
                return self.sum / np.maximum(self.count, 1), has
        if op == "stddev":
            two = self.count >= 2
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.sqrt(np.maximum(self.m2, 0.0) / np.maximum(self.count - 1, 1)), two
        return getattr(self, op), has


def merge_windows(
    states: States,
    lo: np.ndarray,
    length: np.ndarray,
    extra: np.ndarray,
    distinct: bool,
    last_n: int = 0,
    top_k: int = 0,
    percentile: bool = False,
) -> Merged:
    """Merge, per query, the states ``lo .. lo + length - 1`` and then ``extra`` (a row of
    ``states``, or -1 for none), in that order, with the operations of tables.read.MergedWindow.add
    (and tables.read.latest for last_n, tables.read.most_frequent for top_k)."""
    q = len(lo)
    total_len = length + (extra >= 0)
    perm = np.argsort(-total_len, kind="stable")
    lo_p, len_p, ex_p, tl = lo[perm], length[perm], extra[perm], total_len[perm]
    count = np.zeros(q, dtype=np.int64)
    s_sum = np.zeros(q)
    shift = np.zeros(q)
    mean = np.zeros(q)
    m2 = np.zeros(q)
    obj = states.min.dtype == object
    vmin = np.empty(q, dtype=object) if obj else np.zeros(q, dtype=states.min.dtype)
    vmax = vmin.copy()
    first = vmin.copy()
    last = vmin.copy()
    negtl = -tl
    steps = int(tl[0]) if q else 0
    for j in range(steps):
        c = int(np.searchsorted(negtl, -j, side="left"))
        idx = np.where(j < len_p[:c], lo_p[:c] + j, ex_p[:c])
        n_a = count[:c]
        n_b = states.count[idx]
        tot = n_a + n_b
        fresh = n_a == 0
        shift[:c] = np.where(fresh, states.shift[idx], shift[:c])
        delta = (states.shift[idx] - shift[:c]) + states.mean[idx] - mean[:c]
        mean[:c] += delta * n_b / tot
        m2[:c] += states.m2[idx] + delta * delta * n_a * n_b / tot
        count[:c] = tot
        s_sum[:c] += states.sum[idx]
        cand_min, cand_max = states.min[idx], states.max[idx]
        if j == 0:
            vmin[:c], vmax[:c], first[:c] = cand_min, cand_max, states.first[idx]
        else:
            vmin[:c] = np.where(np.asarray(cand_min < vmin[:c], dtype=bool), cand_min, vmin[:c])
            vmax[:c] = np.where(np.asarray(cand_max > vmax[:c], dtype=bool), cand_max, vmax[:c])
        last[:c] = states.last[idx]
    dist = np.zeros(q, dtype=np.int64)
    if distinct and q:
        dist[perm] = _distinct_counts(states, lo_p, len_p, ex_p)
    inv = np.empty(q, dtype=np.int64)
    inv[perm] = np.arange(q)
    # The list-valued ops: per query, the worker's own read over its rows' states.
    window = (lo, length, extra)
    latest_n = _per_window(states.recent, *window, lambda s: latest(s, 0, last_n)) if last_n else None
    top = _per_window(states.frequent, *window, lambda s: most_frequent(s, 0, top_k)) if top_k else None
    spreads = _per_window(states.kept, *window, lambda s: window_values(s, 0)) if percentile else None
    return Merged(
        count[inv],
        s_sum[inv],
        mean[inv],
        m2[inv],
        vmin[inv],
        vmax[inv],
        first[inv],
        last[inv],
        dist,
        latest_n,
        top,
        spreads,
    )


def _rows(lo: np.ndarray, length: np.ndarray, extra: np.ndarray) -> Iterator[list[int]]:
    """Per query, its rows in merge order: ``lo ..`` then ``extra``."""
    for first, size, last in zip(lo.tolist(), length.tolist(), extra.tolist(), strict=True):
        yield [*range(first, first + size), *([last] if last >= 0 else [])]


def _per_window(
    column: np.ndarray | None,
    lo: np.ndarray,
    length: np.ndarray,
    extra: np.ndarray,
    read: Callable[[list[AggState]], Any],
) -> np.ndarray:
    """Per query, ``read`` (a tables.read function) over its rows' states of one list-valued field
    (``column``: per segment, as the worker keeps it), given as one-field states in merge order."""
    assert column is not None
    out = np.empty(len(lo), dtype=object)
    for i, rows in enumerate(_rows(lo, length, extra)):
        out[i] = read([[column[r]] for r in rows])
    return out


def _distinct_counts(states: States, lo: np.ndarray, length: np.ndarray, extra: np.ndarray) -> np.ndarray:
    q = len(lo)
    out = np.zeros(q, dtype=np.int64)
    hs = states.hash_start
    sketch_rows = np.zeros(len(states) + 1, dtype=np.int64)
    if states.sketches:
        sketch_rows[1:] = np.cumsum(np.isin(np.arange(len(states)), list(states.sketches)))
        with_sketch = (sketch_rows[lo + length] - sketch_rows[lo] > 0) | np.isin(extra, list(states.sketches))
    else:
        with_sketch = np.zeros(q, dtype=bool)
    plain = ~with_sketch
    # Exact: the hashes of a key's consecutive buckets are one slice of ``states.hashes``.
    has_extra = extra >= 0
    ex = np.where(has_extra, extra, 0)
    seg1, idx1 = ranges(hs[lo], np.where(plain, hs[lo + length] - hs[lo], 0))
    seg2, idx2 = ranges(hs[ex], np.where(plain & has_extra, hs[ex + 1] - hs[ex], 0))
    seg = np.concatenate([seg1, seg2])
    if len(seg):
        frame = pd.DataFrame({"q": seg, "h": states.hashes[np.concatenate([idx1, idx2])]})
        per = frame.drop_duplicates().groupby("q", sort=False).size()
        out[per.index.to_numpy()] = per.to_numpy()
    for i in np.flatnonzero(with_sketch).tolist():  # the worker's own merge (HLL union)
        merged = MergedWindow()
        rows = list(range(int(lo[i]), int(lo[i] + length[i]))) + ([int(extra[i])] if extra[i] >= 0 else [])
        for r in rows:
            digest = states.sketches[r] if r in states.sketches else states.hashes[hs[r] : hs[r + 1]].tolist()
            merged.add([int(states.count[r]), 0.0, 0.0, 0.0, 0, 0, 0, 0, 0, 0, digest, 0.0])
        out[i] = merged.distinct()
    return out


class LifetimeWindow:
    """Each query's lifetime features, computed as the worker computes them: the roll-up (the key's
    buckets up to the query's split merged with tables/rollup.py, in bucket order) and the buckets after
    it, read with tables.read.window_results; the same interface as :class:`Merged`."""

    def __init__(self, agg: AggregationPlan, size: int) -> None:
        self.agg = agg
        self.parts = agg.labels()
        self.ops = tuple((op, j, q) for j, (op, _, q) in enumerate(self.parts))
        self.out = np.empty((size, len(self.parts)), dtype=object)

    def fill(
        self,
        states: States,
        k: np.ndarray,
        b: np.ndarray,
        q_codes: np.ndarray,
        q_split: np.ndarray,
        q_last: np.ndarray,
        extra: np.ndarray,
    ) -> LifetimeWindow:
        """``k``, ``b``: key code and bucket of the rows of ``states`` (sorted, then partial rows);
        per query its key, the last bucket in the roll-up, the last full bucket read and its partial
        row (-1: none)."""
        agg = self.agg
        keys = k.tolist()
        buckets = b.tolist()
        order = sorted(range(len(q_codes)), key=lambda i: (int(q_codes[i]), int(q_split[i])))
        key_start: dict[int, int] = {}
        for row, key in enumerate(keys):
            key_start.setdefault(key, row)
        current: tuple[int, int] | None = None  # (key, next row to merge) of the roll-up below
        rolled: AggState | None = None
        for i in order:
            key, split, last = int(q_codes[i]), int(q_split[i]), int(q_last[i])
            start = key_start.get(key)
            if current is None or current[0] != key:
                current, rolled = (key, start if start is not None else len(keys)), None
            row = current[1]
            while row < len(keys) and keys[row] == key and buckets[row] <= split:
                rolled = merge_state(rolled, _agg_state(states, row, buckets[row], agg), agg)
                row += 1
            current = (key, row)
            window: list[AggState] = [] if rolled is None else [rolled]
            while row < len(keys) and keys[row] == key and buckets[row] <= last:
                window.append(_agg_state(states, row, buckets[row], agg))
                row += 1
            if extra[i] >= 0:
                window.append(_agg_state(states, int(extra[i]), last + 1, agg))
            result: list[Any] = [None] * len(self.parts)
            window_results(window, self.ops, agg.at, result, agg.n, agg.k)
            self.out[i] = result
        return self

    def _values(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        column = self.out[:, j]
        valid = np.array([v is not None for v in column], dtype=bool)
        return column, valid

    def quantile(self, q: float) -> tuple[np.ndarray, np.ndarray]:
        """(values, valid mask) of percentile ``q``."""
        j = next(j for j, (op, _, quant) in enumerate(self.parts) if op == "percentile" and quant == q)
        column, valid = self._values(j)
        return np.array([v if v is not None else np.nan for v in column], dtype=np.float64), valid

    def result(self, op: str) -> tuple[np.ndarray, np.ndarray]:
        """(values, valid mask) of ``op``, typed as :meth:`Merged.result` types them."""
        j = next(j for j, (name, _, _) in enumerate(self.parts) if name == op)
        column, valid = self._values(j)
        if op in ("last_n", "top_k"):
            return column, np.ones(len(column), dtype=bool)
        if op in ("count", "distinct"):
            return column.astype(np.int64), valid
        if op in ("sum", "avg", "stddev"):
            return np.array([v if v is not None else np.nan for v in column], dtype=np.float64), valid
        present = [v for v in column if v is not None]
        if present and all(isinstance(v, bool | np.bool_) for v in present):
            return np.array([bool(v) if v is not None else False for v in column]), valid
        if present and all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in present):
            return np.array([int(v) if v is not None else 0 for v in column], dtype=np.int64), valid
        if present and all(isinstance(v, float | np.floating) for v in present):
            return np.array([float(v) if v is not None else np.nan for v in column], dtype=np.float64), valid
        return column, valid


def _agg_state(states: States, row: int, bucket: int, agg: AggregationPlan) -> AggState:
    """Row ``row`` of ``states`` as the worker keeps an aggregation state, in ``agg``'s layout; its
    first and last times are the bucket number (rows are merged in bucket order, one per bucket)."""
    hs = states.hash_start
    distinct = states.sketches.get(row)
    if distinct is None:
        distinct = states.hashes[hs[row] : hs[row + 1]].tolist()
    canonical = (
        int(states.count[row]), float(states.sum[row]), float(states.mean[row]), float(states.m2[row]),
        _python(states.min[row]), _python(states.max[row]), bucket, _python(states.first[row]),
        bucket, _python(states.last[row]), distinct, float(states.shift[row]),
        states.recent[row] if states.recent is not None else [],
        states.frequent[row] if states.frequent is not None else {},
        states.kept[row] if states.kept is not None else [],
    )  # fmt: skip
    return [canonical[f] for f in agg.layout]
