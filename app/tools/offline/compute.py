"""`hydrant compute`: a pipeline's features from files, as the worker computes them: at ``--at`` times,
or point in time per ``--labels`` row (semantics: docs/offline.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from app.config.spec import Pipeline
from app.errors import InputFileError
from app.records.cells import csv_text, parquet_ready
from app.records.partitioning import partition_for
from app.tools.offline.events import (
    DEFAULT_PARTITIONS,
    Accepted,
    GroupEvents,
    StreamEvents,
    accept,
    evaluate_where,
    read_inputs,
    time_to_ms,
)
from app.tools.offline.keys import EntityKeys, Parts, combine, field_parts
from app.tools.offline.states import (
    LifetimeWindow,
    Merged,
    States,
    merge_windows,
    segment_states,
    value_hashes,
)
from tables.plans import LIFETIME, AggregationPlan, GroupPlan, group_plans

Progress = Callable[[str], None]
NEWEST_EVENT, STALE = "newest_event", "stale"  # a group's freshness columns: <group>.newest_event, ...
LABEL_TIME_COLUMNS = ("at", "event_timestamp", "timestamp", "ts", "time")


@dataclass
class ComputeReport:
    """What a run read and dropped, for the summary line."""

    events: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    late: int = 0
    rows: int = 0

    def line(self, out: Path, seconds: float) -> str:
        """The one-line summary printed at the end."""
        rate = self.events / seconds if seconds > 0 else float("inf")
        dropped = ", ".join(f"{n:,} {reason}" for reason, n in sorted(self.dropped.items()) if n)
        extra = f"; left out like the worker does: {dropped}" if dropped else ""
        late = f"; {self.late:,} late" if self.late else ""
        return (
            f"computed {self.rows:,} rows from {self.events:,} events in {seconds:.2f}s "
            f"({rate:,.0f} events/s) -> {out}{late}{extra}"
        )


@dataclass
class _AggInput:
    """One aggregation's events of one group: accepted, `where` holds, value not null; sorted by
    key, bucket, then processing order."""

    key_codes: np.ndarray
    buckets: np.ndarray
    times: np.ndarray
    values: np.ndarray
    numeric: bool
    hashes: np.ndarray | None  # value_hash of each value, when the aggregation counts distinct


_EMPTY = np.zeros(0, dtype=np.int64)


def _sorted_order(keys: np.ndarray, buckets: np.ndarray) -> np.ndarray:
    """Stable order by (key, bucket): events keep their processing order within a bucket."""
    if not len(keys):
        return _EMPTY
    if int(keys.max()) < 2**16:  # buckets first (nearly sorted already), then numpy's radix sort of keys
        by_bucket = np.argsort(buckets, kind="stable")
        return by_bucket[np.argsort(keys[by_bucket].astype(np.uint16), kind="stable")]
    lo_b = int(buckets.min())
    span = int(buckets.max()) - lo_b + 1
    if (int(keys.max()) + 1) * span < 2**62:
        return np.argsort(keys * span + (buckets - lo_b), kind="stable")
    return np.lexsort((np.arange(len(keys)), buckets, keys))


def _agg_input(
    agg: AggregationPlan,
    events: GroupEvents,
    order: np.ndarray,
    streams: Mapping[str, StreamEvents],
    stream_index: int,
    coded: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> _AggInput:
    """``order``: the group's events sorted by (key, bucket, processing order)."""
    stream = streams.get(agg.stream)
    if stream is None:
        return _AggInput(_EMPTY, _EMPTY, _EMPTY, np.zeros(0), True, _EMPTY)
    chosen = events.stream[order] == stream_index
    pos = events.position[order]
    if agg.where is not None:
        holds = stream.where.get(agg.where.source)
        if holds is None:
            holds = evaluate_where(agg.where, stream.fields, len(stream.keys))[0]
        chosen &= holds[np.where(chosen, pos, 0)]
    numeric = True
    values: np.ndarray
    hashes = None
    if agg.field is None:
        sel = order[chosen]
        values = np.ones(len(sel), dtype=bool)
        if agg.distinct:
            hashes = value_hashes(values[:1]).repeat(len(sel))
    else:
        column = stream.fields[agg.field]
        numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
        if pd.api.types.is_float_dtype(column) or pd.api.types.is_integer_dtype(column):
            notnull = column.notna().to_numpy()
            chosen &= notnull[np.where(chosen, pos, 0)]
            sel = order[chosen]
            if pd.api.types.is_float_dtype(column):
                values = column.to_numpy(dtype=np.float64, na_value=np.nan)[events.position[sel]]
            else:
                values = column.to_numpy(dtype=np.int64, na_value=0)[events.position[sel]]
            if agg.distinct:
                hashes = value_hashes(values)
        else:  # strings, bools: coded once per stream field (pandas factorizes Arrow strings fast)
            slot = (agg.stream, agg.field)
            if slot not in coded:
                codes, uniques = pd.factorize(column, use_na_sentinel=True)
                table = np.asarray(uniques, dtype=object)
                coded[slot] = (np.asarray(codes, dtype=np.int64), table, value_hashes(table))
            codes, table, table_hashes = coded[slot]
            chosen &= codes[np.where(chosen, pos, 0)] >= 0
            sel = order[chosen]
            value_codes = codes[events.position[sel]]
            values = table[value_codes]
            if agg.distinct:
                hashes = table_hashes[value_codes]
    return _AggInput(events.keys[sel], events.buckets[sel], events.times[sel], values, numeric, hashes)


def _bucket_table(
    data: _AggInput, ops: frozenset[str], last_n: int = 0
) -> tuple[np.ndarray, np.ndarray, States]:
    """(key code, bucket, states) of every (key, bucket) with values, sorted by key then bucket."""
    k, b = data.key_codes, data.buckets
    if not len(k):
        empty = segment_states(_EMPTY, data.values[:0], _EMPTY, data.numeric, ops, _EMPTY, last_n)
        return _EMPTY, _EMPTY, empty
    change = np.r_[True, (k[1:] != k[:-1]) | (b[1:] != b[:-1])]
    segment = np.cumsum(change) - 1
    states = segment_states(segment, data.values, data.times, data.numeric, ops, data.hashes, last_n)
    return k[change], b[change], states


def _partial_table(
    data: _AggInput,
    q_key: np.ndarray,
    q_end: np.ndarray,
    q_time: np.ndarray,
    ops: frozenset[str],
    last_n: int = 0,
) -> tuple[np.ndarray, States]:
    """Per query: the state of its own bucket b(T) holding only the events with time <= T.
    Returns (row of that state or -1, states)."""
    left = pd.DataFrame({"k": q_key, "b": q_end, "t": q_time, "q": np.arange(len(q_key))})
    right = pd.DataFrame(
        {"k": data.key_codes, "b": data.buckets, "et": data.times, "i": np.arange(len(data.key_codes))}
    )
    pairs = left.merge(right, on=["k", "b"], how="inner")
    pairs = pairs[pairs["et"].to_numpy() <= pairs["t"].to_numpy()]
    pairs = pairs.sort_values(["q", "i"], kind="stable")
    qs = pairs["q"].to_numpy(dtype=np.int64)
    idx = pairs["i"].to_numpy(dtype=np.int64)
    hashes = data.hashes[idx] if data.hashes is not None else None
    states = segment_states(qs, data.values[idx], data.times[idx], data.numeric, ops, hashes, last_n)
    row = np.full(len(q_key), -1, dtype=np.int64)
    if len(qs):
        owners = qs[np.r_[True, qs[1:] != qs[:-1]]]
        row[owners] = np.arange(len(owners))
    return row, states


def group_features(
    plan: GroupPlan,
    events: GroupEvents,
    streams: Mapping[str, StreamEvents],
    stream_names: Sequence[str],
    q_codes: np.ndarray,
    q_times: np.ndarray,
    point_in_time: bool,
    progress: Progress,
) -> dict[str, pd.Series]:
    """Every feature of ``plan`` for each query (key, time): columns in spec order."""
    q_end = q_times // plan.period_ms
    out: dict[str, pd.Series] = {}
    order = _sorted_order(events.keys, events.buckets)
    newest = _newest_buckets(events, q_codes, q_times if point_in_time else None) if plan.rollup else None
    coded: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    valued: list[_AggInput] = []  # per aggregation, the events that added a value to it
    for agg in plan.aggregations:
        progress(f"{plan.name}.{agg.name}")
        data = _agg_input(agg, events, order, streams, list(stream_names).index(agg.stream), coded)
        valued.append(data)
        ops = frozenset(agg.ops)
        k, b, full = _bucket_table(data, ops, agg.n)
        if point_in_time:
            extra, partial = _partial_table(data, q_codes, q_end, q_times, ops, agg.n)
            states = States.concat([full, partial])
            extra = np.where(extra >= 0, extra + len(full), -1)
        else:
            states, extra = full, np.full(len(q_codes), -1, dtype=np.int64)
        last = q_end - 1 if point_in_time else q_end
        per_window: dict[str, Merged | LifetimeWindow] = {}
        for label, size in agg.windows:
            if size == LIFETIME:  # the roll-up as the worker has it: up to b(T) - R, or its newest - R
                assert newest is not None
                split = np.minimum(newest - plan.retention, q_end)
                lifetime = LifetimeWindow(agg, len(q_codes))
                per_window[label] = lifetime.fill(states, k, b, q_codes, split, last, extra)
                continue
            lo, length = _window_rows(k, b, q_codes, q_end - size + 1, last)
            percentile = "percentile" in agg.ops
            per_window[label] = merge_windows(
                states, lo, length, extra, agg.distinct, agg.n, agg.k, percentile
            )
        for op, part, q in agg.labels():
            for label, _ in agg.windows:
                merged = per_window[label]
                values, valid = merged.quantile(q) if q is not None else merged.result(op)
                out[f"{agg.name}_{part}_{label}"] = _column(op, values, valid, data)
    newest, found = _newest_events(plan, valued, q_codes, q_times, point_in_time)
    out[NEWEST_EVENT] = pd.Series(pd.arrays.IntegerArray(newest, ~found))
    if plan.max_age is not None:
        out[STALE] = pd.Series(~found | (newest < q_times - plan.max_age))
    return out


def _newest_events(
    plan: GroupPlan, valued: list[_AggInput], q_codes: np.ndarray, q_times: np.ndarray, point_in_time: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Per query, (the newest event time among the events that added a value to an aggregation, in
    the buckets its answer reads: (b(T) - widest, b(T)], every bucket up to b(T) with a lifetime
    window; point in time, only those at or before T), whether there is one): the worker's
    ``newest_event`` (tables/read.py ``read_answer``)."""
    keys = np.concatenate([data.key_codes for data in valued]) if valued else _EMPTY
    times = np.concatenate([data.times for data in valued]) if valued else _EMPTY
    order = np.lexsort((times, keys))
    keys, times = keys[order], times[order]
    q_end = q_times // plan.period_ms
    last = q_times if point_in_time else (q_end + 1) * plan.period_ms - 1
    if plan.rollup:
        first = np.full(len(q_codes), np.iinfo(np.int64).min // 4, dtype=np.int64)
    else:
        first = (q_end - plan.widest + 1) * plan.period_ms
    lo, length = _window_rows(keys, times, q_codes, first, last)  # (key, time) rows in [first, last]
    found = length > 0
    newest = np.zeros(len(q_codes), dtype=np.int64)
    if len(times):
        newest[found] = times[(lo + length - 1)[found]]
    return newest, found


def _newest_buckets(events: GroupEvents, q_codes: np.ndarray, q_times: np.ndarray | None) -> np.ndarray:
    """Per query, the newest bucket of its key's accepted events (the worker's n after them all), or
    with ``q_times``, of those with time <= the query's (a worker that has processed the past only)."""
    low = np.iinfo(np.int64).min // 4
    if q_times is None:
        size = int(max(events.keys.max(initial=-1), q_codes.max(initial=-1))) + 1
        newest = np.full(size, low, dtype=np.int64)
        np.maximum.at(newest, events.keys, events.buckets)
        return newest[q_codes]
    order = np.lexsort((events.times, events.keys))
    keys, times = events.keys[order], events.times[order]
    # the last event of the query's key at or before its time: (key, time) pairs sorted
    last = np.searchsorted(keys, q_codes, side="right")  # one past the key's last event
    first = np.searchsorted(keys, q_codes, side="left")
    newest = np.full(len(q_codes), low, dtype=np.int64)
    for i in range(len(q_codes)):
        j = first[i] + int(np.searchsorted(times[first[i] : last[i]], q_times[i], side="right")) - 1
        if j >= first[i]:
            newest[i] = int(times[j]) // events.plan.period_ms
    return newest


def _expired(
    plan: GroupPlan,
    events: GroupEvents,
    names: np.ndarray,
    partitions: int,
    q_codes: np.ndarray,
    q_times: np.ndarray,
    point_in_time: bool,
) -> np.ndarray:
    """Per query, whether its key's ``ttl`` expired (tables/expiry.py): its newest bucket ended
    ``ttl`` or more before its partition's clock, the newest event time of the group's events there;
    point in time, of the events at or before the query's time."""
    assert plan.ttl is not None
    home = np.fromiter(
        (partition_for(str(name).encode("utf-8"), partitions) for name in names), np.int64, len(names)
    )
    newest = _newest_buckets(events, q_codes, q_times if point_in_time else None)
    q_home = home[q_codes] if len(home) else np.zeros(len(q_codes), dtype=np.int64)
    low = np.iinfo(np.int64).min // 4
    clock = np.full(len(q_codes), low, dtype=np.int64)
    event_home = home[events.keys] if len(events.keys) else events.keys
    for partition in range(partitions):
        times = np.sort(events.times[event_home == partition])
        mine = q_home == partition
        if not len(times) or not mine.any():
            continue
        if point_in_time:  # the newest event at or before the query's time
            at = np.searchsorted(times, q_times[mine], side="right") - 1
            clock[mine] = np.where(at >= 0, times[np.maximum(at, 0)], low)
        else:
            clock[mine] = times[-1]
    known = (newest > low) & (clock > low)
    return known & ((newest + 1) * plan.period_ms <= clock - plan.ttl)


def _window_rows(
    k: np.ndarray, b: np.ndarray, q_key: np.ndarray, q_first: np.ndarray, q_last: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(first row, number of rows) of the (key, bucket) rows (sorted) with bucket in [first, last]
    for each query: one searchsorted over (key, bucket) composites in one int64."""
    if not len(k):
        return np.zeros(len(q_key), dtype=np.int64), np.zeros(len(q_key), dtype=np.int64)
    lo_b, hi_b = int(b.min()), int(b.max())
    span = hi_b - lo_b + 3  # query bounds are clipped to one below / one above the stored buckets
    top = max(int(k.max()), int(q_key.max()) if len(q_key) else 0) + 1
    if top * span < 2**62:
        composite = k * span + (b - lo_b + 1)
        first = q_key * span + (np.clip(q_first, lo_b - 1, hi_b + 1) - lo_b + 1)
        last = q_key * span + (np.clip(q_last, lo_b - 1, hi_b + 1) - lo_b + 1)
    else:  # sparse buckets: their dense ranks order the same
        ranks = np.unique(np.concatenate([b, q_first, q_last]))
        span = len(ranks)
        composite = k * span + np.searchsorted(ranks, b)
        first = q_key * span + np.searchsorted(ranks, q_first)
        last = q_key * span + np.searchsorted(ranks, q_last)
    lo = np.searchsorted(composite, first, side="left")
    hi = np.searchsorted(composite, last, side="right")
    return lo, np.maximum(hi - lo, 0)


def _column(op: str, values: np.ndarray, valid: np.ndarray, data: _AggInput) -> pd.Series:
    if op in ("last_n", "top_k"):  # lists ([] for an empty window)
        return pd.Series(values, dtype=object)
    if op in ("count", "distinct"):
        return pd.Series(values.astype(np.int64))
    if op == "sum":
        return pd.Series(values.astype(np.float64))
    if op in ("avg", "stddev", "percentile"):
        return pd.Series(pd.arrays.FloatingArray(values.astype(np.float64), ~valid))
    if values.dtype.kind == "f":
        return pd.Series(pd.arrays.FloatingArray(values.astype(np.float64), ~valid))
    if values.dtype.kind in "iu":
        return pd.Series(pd.arrays.IntegerArray(values.astype(np.int64), ~valid))
    if values.dtype.kind == "b":
        return pd.Series(pd.arrays.BooleanArray(values.astype(bool), ~valid))
    obj = values.astype(object)
    obj[~valid] = None
    return pd.Series(obj, dtype=object)


def _select_groups(pipeline: Pipeline, groups: Sequence[str] | None, one_key: bool) -> dict[str, GroupPlan]:
    """The chosen groups' plans; with ``one_key`` (query mode), they must share one key."""
    plans = group_plans(pipeline)
    if not plans:
        raise InputFileError("the pipeline defines no feature groups")
    names = list(groups) if groups else list(plans)
    unknown = [g for g in names if g not in plans]
    if unknown:
        raise InputFileError(f"no feature group {unknown[0]!r} (groups: {', '.join(plans)})")
    chosen = {g: plans[g] for g in names}
    if one_key and len({p.key for p in chosen.values()}) > 1:
        raise InputFileError(
            "the groups have different keys ("
            + ", ".join(f"{g}: {' + '.join(p.key)}" for g, p in chosen.items())
            + "); choose groups of one key with --group (--labels computes groups of different keys at once)"
        )
    return chosen


def _integer_fields(pipeline: Pipeline, plans: Iterable[GroupPlan], key: tuple[str, ...]) -> list[bool]:
    """Per field of ``key``: whether every stream feeding ``plans`` declares it int."""
    specs = [pipeline.streams[s] for plan in plans for s in plan.by_stream]
    return [all(spec.fields.get(name) == "int" for spec in specs) for name in key]


def _masked(column: pd.Series, null: np.ndarray) -> pd.Series:
    """``column`` with nulls where ``null`` holds (a nullable dtype for int and float columns)."""
    if not null.any():
        return column
    if column.dtype == np.int64:
        column = column.astype("Int64")
    elif column.dtype == np.float64:
        column = column.astype("Float64")
    elif column.dtype == object:
        values = column.to_numpy(dtype=object, copy=True)
        values[null] = None
        return pd.Series(values, index=column.index, dtype=object)
    return column.mask(pd.Series(null, index=column.index))


def compute(
    pipeline: Pipeline,
    inputs: Mapping[str, Path],
    reader: Callable[[Path], pd.DataFrame],
    ats: Sequence[int] = (),
    keys: Sequence[str] | None = None,
    labels: pd.DataFrame | None = None,
    label_key: str | None = None,
    label_time: str | None = None,
    groups: Sequence[str] | None = None,
    progress: Progress | None = None,
    order_by_time: bool = False,
    partitions: int = DEFAULT_PARTITIONS,
) -> tuple[pd.DataFrame, ComputeReport]:
    """The feature table: with ``labels``, each label row plus its groups' features as of its own
    time; otherwise one row per (at, key) with ``key``, one column per key field, ``at``, the features.
    ``partitions``: how the stream topics are partitioned (HYDRANT_PARTITIONS; the late rule's bound)."""
    say = progress or (lambda _stage: None)
    plans = _select_groups(pipeline, groups, one_key=labels is None)
    streams, accepted, entity, report = prepared(
        pipeline, plans, inputs, reader, order_by_time, say, partitions
    )
    if labels is not None:
        frame, queries, q_times = _label_queries(labels, plans, entity, label_key, label_time)
    else:
        key, one = next(iter(entity.items()))  # one key: _select_groups
        present = np.zeros(len(one.names), dtype=bool)
        for g in plans:
            present[accepted.groups[g].keys] = True
        if keys is not None:  # in the order asked, each known key
            found = pd.Index(one.names, dtype=object).get_indexer(pd.Index(list(keys), dtype=object))
            chosen = found[found >= 0]
            chosen = chosen[present[chosen]]
        else:
            chosen = one.sorted_codes(np.flatnonzero(present))
        q_codes = np.tile(chosen, len(ats)).astype(np.int64)
        q_times = np.repeat(np.asarray(list(ats), dtype=np.int64), len(chosen))
        fields = one.columns(q_codes, _integer_fields(pipeline, plans.values(), key))
        fields = {f: v for f, v in fields.items() if f not in ("key", "at")}  # a field so named: no copy
        frame = pd.DataFrame({"key": one.names[q_codes], **fields, "at": q_times})
        queries = {key: (q_codes, np.zeros(len(q_codes), dtype=bool))}
    columns: dict[str, pd.Series] = {}
    freshness: dict[str, pd.Series] = {}
    stream_names = list(pipeline.streams)
    for g, plan in plans.items():
        q_codes, null = queries[plan.key]
        features = group_features(
            plan, accepted.groups[g], streams, stream_names, q_codes, q_times, labels is not None, say
        )
        if plan.ttl is not None:  # an expired key answers found: false online
            names = entity[plan.key].names
            point_in_time = labels is not None
            null = null | _expired(
                plan, accepted.groups[g], names, partitions, q_codes, q_times, point_in_time
            )
        for name, column in features.items():
            if name in (NEWEST_EVENT, STALE):  # one per group, after every feature: named after it
                freshness[f"{g}.{name}"] = _masked(column.set_axis(frame.index), null)
                continue
            column_name = name if name not in columns and name not in frame.columns else f"{g}.{name}"
            columns[column_name] = _masked(column.set_axis(frame.index), null)
    columns.update(freshness)
    out = pd.concat([frame, pd.DataFrame(columns, index=frame.index)], axis=1)
    report.rows = len(out)
    return out, report


def prepared(
    pipeline: Pipeline,
    plans: Mapping[str, GroupPlan],
    inputs: Mapping[str, Path],
    reader: Callable[[Path], pd.DataFrame],
    order_by_time: bool,
    say: Progress,
    partitions: int = DEFAULT_PARTITIONS,
) -> tuple[dict[str, StreamEvents], Accepted, dict[tuple[str, ...], EntityKeys], ComputeReport]:
    """The input files read and typed, each group's accepted events (lateness per stage, as online)
    and each group key's numbering: what every query of ``plans`` starts from."""
    needed = {s for p in plans.values() for s in p.by_stream}
    missing = sorted(needed - set(inputs))
    if missing:
        raise InputFileError(
            "no input for stream(s) " + ", ".join(missing) + f": pass --input {missing[0]}=FILE"
        )
    say("read")

    def read(path: Path, stream: str) -> pd.DataFrame:
        frame = reader(path)
        time_field = pipeline.streams[stream].time
        if order_by_time and time_field is not None and time_field in frame.columns:
            from app.tools.frames import order_by_time as sort_by_time

            frame = sort_by_time(frame, time_field)  # as `hydrant produce --order-by` sends it
        return frame

    streams = read_inputs(pipeline, inputs, read)
    report = ComputeReport(events=sum(len(s.keys) + sum(s.dropped.values()) for s in streams.values()))
    say("late events")
    # Every group of the pipeline decides lateness at its key's stage (an event late for one group of
    # a stage is applied to none of them, as online), as far as the given files feed it.
    accepted = accept(pipeline, group_plans(pipeline), streams, partitions)
    for s in streams.values():
        for reason, n in s.dropped.items():
            report.dropped[reason] = report.dropped.get(reason, 0) + n
    report.late = accepted.late
    entity = {
        key: accepted.keys.get(key) or EntityKeys.number(key, {})
        for key in dict.fromkeys(p.key for p in plans.values())
    }
    return streams, accepted, entity, report


def _label_queries(
    labels: pd.DataFrame,
    plans: Mapping[str, GroupPlan],
    entity: Mapping[tuple[str, ...], EntityKeys],
    key_column: str | None,
    time_column: str | None,
) -> tuple[pd.DataFrame, dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """(label rows, per group key: each row's key code and mask of rows without that key, times).
    One key column (``key_column``, else ``key`` when the groups share one key) holds the key's
    string form; otherwise each group is looked up by columns named as its key fields."""
    columns = list(map(str, labels.columns))
    labels = labels.reset_index(drop=True)
    group_keys = list(entity)
    describe = ", ".join(f"{g}: {' + '.join(p.key)}" for g, p in plans.items())
    sources: dict[tuple[str, ...], list[pd.Series]] = {}
    if key_column is not None or (len(group_keys) == 1 and "key" in columns):
        if len(group_keys) > 1:
            raise InputFileError(
                f"--label-key names one key column, but the groups have different keys ({describe}); "
                "leave it out to look each group up by its key fields' columns"
            )
        column = key_column or "key"
        if column not in columns:
            raise InputFileError(
                f"labels: no key column {column!r} (columns: {', '.join(columns)}); use --label-key"
            )
        sources[group_keys[0]] = [labels[column]]
    else:
        for g, plan in plans.items():
            absent = [f for f in plan.key if f not in columns]
            if absent:
                hint = "; use --label-key" if len(group_keys) == 1 and len(plan.key) == 1 else ""
                raise InputFileError(
                    f"labels: no column {absent[0]!r} for group {g!r} (key {' + '.join(plan.key)}; "
                    f"columns: {', '.join(columns)}){hint}"
                )
            sources[plan.key] = [labels[f] for f in plan.key]
    time_col = time_column or next((c for c in LABEL_TIME_COLUMNS if c in columns), None)
    if time_col is None or time_col not in columns:
        raise InputFileError(
            f"labels: no time column (looked for {time_column or ', '.join(LABEL_TIME_COLUMNS)}; "
            f"columns: {', '.join(columns)}); use --label-time"
        )
    times, ok = time_to_ms(labels[time_col], time_col)
    if not ok.all():
        row = int(np.flatnonzero(~ok)[0])
        raise InputFileError(f"labels: row {row}: {time_col!r} is not epoch ms or ISO-8601")
    queries: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] = {}
    for key, series in sources.items():
        parts: list[Parts] = [field_parts(s) for s in series]
        queries[key] = entity[key].lookup(combine(parts))
    return labels, queries, times


def parse_at(value: str) -> int:
    """An ``--at`` value: epoch ms or ISO-8601 (UTC when no zone), as the API reads `at`."""
    from app.records.decode import BadRecord, event_time_ms

    text = value.strip()
    try:
        return event_time_ms(int(text), "at") if text.lstrip("-").isdigit() else event_time_ms(text, "at")
    except BadRecord as exc:
        raise InputFileError(f"--at {value!r}: {exc}") from None


def write_table(frame: pd.DataFrame, path: Path) -> None:
    """Parquet (.parquet/.pq), CSV (.csv) or JSONL (.jsonl/.ndjson) by the suffix."""
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        parquet_ready(frame).to_parquet(path, index=False)
    elif suffix == ".csv":
        path.write_text(csv_text(frame))
    elif suffix in (".jsonl", ".ndjson", ".json"):
        from app.tools.frames import encode_rows  # orjson: floats in their shortest round-trip form

        _, rows = encode_rows(frame, None)
        path.write_bytes(b"".join(row + b"\n" for row in rows))
    else:
        raise InputFileError(f"{path}: unknown output format {path.suffix!r}; use .parquet, .csv or .jsonl")
