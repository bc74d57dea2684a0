"""An independent pandas reference for docs/product.md "Window semantics", to check the window
state in tables/ (apply.py, read.py).

It deliberately shares no code with ``tables``: it keeps every accepted event (no buckets, no
sketches, no merging) and recomputes each feature from the raw events with pandas.

The contract, as implemented here:

- period P, bucket b(t) = floor(t / P) (t in epoch ms), R = (largest window of the group) / P;
- an event is *late* when b(event) <= n - R, n the largest bucket of any earlier processed event of
  the same key (all streams of the group, before `where` filters); late events are dropped;
- a window W at reference time T covers the accepted events with bucket in (b(T) - W/P, b(T)];
- features are named ``{aggregation}_{op}_{window}`` (window as written in the spec); null field values
  are ignored; a `where` filter selects the events of the stream that feed the aggregation; an
  aggregation without a field counts events;
- empty window: count = 0, sum = 0, distinct = 0, every other op None; ``avg`` = sum / count;
  ``stddev`` = sample standard deviation (ddof = 1), None below 2 values; ``first`` / ``last`` = the
  value of the earliest / latest event time (ties: first / last in processing order); ``distinct`` =
  the exact number of distinct values.

Events are a DataFrame with columns ``key``, ``time`` (epoch ms) and ``stream``, plus one column per
event field, in *processing* order (row order); columns named ``seq``, ``bucket``, ``n_before`` or
``late`` are replaced by the reference's own. A `where` expression sees the event's row as a dict
(every column except ``key``/``time``/``stream``, nulls as None) through ``app.config.expressions``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from app.config.expressions import Expression
from app.config.spec import AggregationSpec, FeatureGroupSpec

BASE_COLUMNS = ("key", "time", "stream")
_EMPTY = pd.Series([], dtype=object)
_NO_TIMES = np.array([], dtype=np.int64)
_DERIVED = ("seq", "bucket", "n_before", "late")


def mark_late(events: pd.DataFrame, period_ms: int, retention_buckets: int) -> pd.DataFrame:
    """Every event (processing order kept), with ``seq`` (processing position), ``bucket``, ``n_before``
    (the key's newest earlier bucket, NaN for its first event) and ``late`` (bool)."""
    out = events.reset_index(drop=True).copy()
    out["seq"] = np.arange(len(out), dtype=np.int64)
    out["bucket"] = out["time"].astype("int64") // period_ms  # numpy floors, as b(t) = floor(t / P)
    # n before an event = max bucket of the key's earlier events. Late events never raise it (their
    # bucket is <= n - R < n), so a cumulative max over all earlier events is exact.
    running = out.groupby("key", sort=False)["bucket"].cummax()
    out["n_before"] = running.groupby(out["key"], sort=False).shift(1)
    out["late"] = out["n_before"].notna() & (out["bucket"] <= out["n_before"] - retention_buckets)
    return out


def accepted_events(events: pd.DataFrame, period_ms: int, retention_buckets: int) -> pd.DataFrame:
    """The events that are not late, in processing order, with ``seq`` and ``bucket`` columns."""
    marked = mark_late(events, period_ms, retention_buckets)
    return marked[~marked["late"]].drop(columns=["n_before", "late"])


def _python(value: Any) -> Any:
    """numpy scalars -> plain Python values (so comparisons and JSON behave as for the service)."""
    return value.item() if isinstance(value, np.generic) else value


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA


def window_value(
    op: str, values: pd.Series, times: np.ndarray, n: int = 0, k: int = 0, q: float | None = None
) -> Any:
    """One op over one window's non-null values (``times`` aligned with ``values``, processing order);
    ``n``: what last_n keeps, ``k``: what top_k answers, ``q``: the percentile's quantile."""
    count = len(values)
    if op == "percentile":
        return float(values.astype(float).quantile(q)) if count else None
    if op == "top_k":
        counts = Counter(_python(v) for v in values)
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return [[value, c] for value, c in ranked[:k]]
    if op == "last_n":
        # Newest first by time; on equal times the later arrival is newer (stable sort, reversed).
        order = np.argsort(times, kind="stable")[::-1][:n]
        return [_python(values.iloc[i]) for i in order]
    if op == "count":
        return count
    if op == "distinct":
        return int(values.nunique())
    if op == "sum":
        return _python(values.sum()) if count else 0
    if count == 0:
        return None
    if op == "avg":
        return _python(values.sum()) / count
    if op == "min":
        return _python(values.min())
    if op == "max":
        return _python(values.max())
    if op == "stddev":
        return float(values.std(ddof=1)) if count >= 2 else None
    if op in ("first", "last"):
        # A stable sort keeps processing order among equal times: the first row is the earliest time
        # (first to arrive on ties), the last row the latest time (last to arrive on ties).
        order = np.argsort(times, kind="stable")
        return _python(values.iloc[order[0] if op == "first" else order[-1]])
    raise ValueError(f"unknown op {op!r}")


@dataclass(frozen=True)
class _Inputs:
    """One key's inputs to one aggregation: accepted, chosen by `where`, non-null, processing order."""

    seq: np.ndarray
    time: np.ndarray
    bucket: np.ndarray
    value: np.ndarray


class GroundTruth:
    """The reference for one feature group over a fixed list of events (processing order).

    ``features(key, at_ms, upto=k)`` answers as if only the first ``k`` events had been processed
    (late-ness only depends on earlier events, so it is the same for every prefix).
    """

    def __init__(self, group_spec: FeatureGroupSpec, events: pd.DataFrame, *, drop_late: bool = True) -> None:
        self.spec = group_spec
        self.period_ms = group_spec.period_ms
        self.aggregations: list[AggregationSpec] = list(group_spec.aggregations)
        # (label, buckets); lifetime: 0 (every bucket of the key up to the read's)
        self.windows = [
            [(label, (ms or 0) // self.period_ms) for label, ms in zip(a.windows, a.windows_ms, strict=True)]
            for a in self.aggregations
        ]
        self.retention = group_spec.retention_ms // self.period_ms  # R, in buckets
        streams = {a.stream for a in self.aggregations}
        if events.empty:
            events = pd.DataFrame({"key": [], "time": [], "stream": []}, dtype=object)
        events = events[events["stream"].isin(streams)]
        events = events[[c for c in events.columns if c not in _DERIVED]]
        self.marked = mark_late(events, self.period_ms, self.retention)
        if not drop_late:
            self.marked["late"] = False
        self.accepted = self.marked[~self.marked["late"]]
        self._first_seq: dict[Any, int] = self.marked.groupby("key", sort=False)["seq"].min().to_dict()
        by_key = self.marked.groupby("key", sort=False)
        self._seqs = {k: g["seq"].to_numpy() for k, g in by_key}
        self._buckets = {k: g["bucket"].to_numpy() for k, g in by_key}
        self._inputs = [self._index(agg) for agg in self.aggregations]

    def _index(self, agg: AggregationSpec) -> dict[Any, _Inputs]:
        rows = self.accepted[self.accepted["stream"] == agg.stream]
        if agg.where is not None and len(rows):
            expression = Expression(agg.where)
            fields = [c for c in rows.columns if c not in BASE_COLUMNS and c not in _DERIVED]
            records = rows[fields].astype(object).to_dict("records")
            keep = [
                bool(expression.evaluate({str(k): None if _is_null(v) else v for k, v in r.items()}))
                for r in records
            ]
            rows = rows[np.array(keep, dtype=bool)]
        if agg.field is None:
            values = pd.Series(True, index=rows.index, dtype=object)
        else:
            values = rows[agg.field] if agg.field in rows.columns else pd.Series(None, index=rows.index)
            notnull = np.array([not _is_null(v) for v in values], dtype=bool)
            rows = rows[notnull]
            # Let pandas infer the column's dtype from the non-null Python values (float64, int64, str).
            values = pd.Series(
                values[notnull].tolist(), index=rows.index, dtype=None if len(rows) else object
            )
        out: dict[Any, _Inputs] = {}
        for key, group in rows.groupby("key", sort=False):
            out[key] = _Inputs(
                seq=group["seq"].to_numpy(),
                time=group["time"].to_numpy(dtype=np.int64),
                bucket=group["bucket"].to_numpy(),
                value=values.loc[group.index].to_numpy(),
            )
        return out

    # -- per key ---------------------------------------------------------------------------------

    def known(self, key: str, upto: int | None = None) -> bool:
        """Whether the key has stored state: it had a processed event (of the group's streams)."""
        first = self._first_seq.get(key)
        return first is not None and (upto is None or first < upto)

    def newest_bucket(self, key: str, upto: int | None = None) -> int | None:
        """n: the key's largest bucket over its processed events (the first ``upto`` events)."""
        if key not in self._seqs:
            return None
        buckets = self._buckets[key]
        if upto is not None:
            buckets = buckets[self._seqs[key] < upto]
        return int(buckets.max()) if len(buckets) else None

    def window_in_retention(self, key: str, at_ms: int, window_buckets: int, upto: int | None = None) -> bool:
        """docs/product.md: a window W at T needs buckets from b(T) - W/P + 1; it is answerable unless that
        is <= n - R (those buckets may have been deleted)."""
        n = self.newest_bucket(key, upto)
        if window_buckets == 0:  # lifetime: the roll-up holds every bucket <= n - R, so b(T) must be after
            return n is None or at_ms // self.period_ms > n - self.retention
        return n is None or at_ms // self.period_ms - window_buckets + 1 > n - self.retention

    def in_retention(self, key: str, at_ms: int, upto: int | None = None) -> bool:
        """Whether every window of the group at ``at_ms`` is answerable."""
        sizes = {size for windows in self.windows for _, size in windows}
        return all(self.window_in_retention(key, at_ms, size, upto) for size in sizes)

    def late_seqs(self) -> set[int]:
        return set(self.marked.loc[self.marked["late"], "seq"].tolist())

    def features(self, key: str, at_ms: int, upto: int | None = None) -> dict[str, Any]:
        """Every feature of the group for ``key`` with windows ending at ``at_ms``, in spec order."""
        end = at_ms // self.period_ms
        out: dict[str, Any] = {}
        for agg, windows, inputs in zip(self.aggregations, self.windows, self._inputs, strict=True):
            data = inputs.get(key)
            per_window: dict[str, tuple[pd.Series, np.ndarray]] = {}
            for label, size in windows:
                mask = None
                if data is not None:
                    mask = data.bucket <= end
                    if size:  # not lifetime
                        mask &= data.bucket > end - size
                    if upto is not None:
                        mask &= data.seq < upto
                if data is None or mask is None or not mask.any():
                    per_window[label] = (_EMPTY, _NO_TIMES)
                else:
                    per_window[label] = (pd.Series(data.value[mask], copy=False), data.time[mask])
            quantiles = iter(agg.quantiles or ())
            for op, op_label in agg.op_labels():
                q = next(quantiles) if op == "percentile" else None
                for label, _ in windows:
                    values, times = per_window[label]
                    value = window_value(op, values, times, agg.n or 0, agg.k or 0, q)
                    out[f"{agg.name}_{op_label}_{label}"] = value
        return out


def expected_features(
    group_spec: FeatureGroupSpec, accepted: pd.DataFrame, key: str, at_ms: int
) -> dict[str, Any]:
    """The features of ``key`` at ``at_ms`` from already-accepted events (see :func:`accepted_events`),
    none of them dropped again. For many reads over the same events build one :class:`GroundTruth`."""
    return GroundTruth(group_spec, accepted, drop_late=False).features(key, at_ms)
