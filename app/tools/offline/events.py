"""Offline input: files -> typed events in the worker's processing order, with late events, failing
`where` filters and bad records left out as the worker leaves them out (docs/offline.md)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from app.config.expressions import Expression
from app.config.spec import Pipeline, StreamSpec
from app.errors import InputFileError
from app.tools.frames import time_to_ms
from tables.plans import GroupPlan

_INT_KINDS = "iu"


@dataclass
class StreamEvents:
    """One stream's usable events, in file order: entity key, event time, typed declared fields."""

    name: str
    index: int  # position of the stream in the spec (ties in the processing order)
    keys: np.ndarray  # int64 codes into the key names (read_inputs: shared by all streams)
    times: np.ndarray  # int64 epoch ms
    rows: np.ndarray  # int64 row number in the file
    fields: dict[str, pd.Series]  # declared fields, typed (see _typed_column), aligned with keys
    dropped: dict[str, int]  # reason -> rows left out (decode/missing_key/type/expression)
    where: dict[str, np.ndarray] = field(default_factory=dict)  # `where` source -> holds, per event
    local_keys: list[str] = field(default_factory=list)  # before read_inputs: this file's key texts


def _typed_column(column: pd.Series | None, kind: str, n: int) -> tuple[pd.Series, np.ndarray]:
    """(values as the worker types them, mask of rows the worker rejects with reason `type`).

    float -> float64 (NaN = null); int -> Int64; str -> object of str; bool -> object of bool. A value
    of another JSON type is a type error online (the event goes to the dead letters), so it is here."""
    bad = np.zeros(n, dtype=bool)
    if column is None:
        empty = pd.Series([None] * n, dtype=object)
        return (pd.Series(np.full(n, np.nan)) if kind == "float" else empty), bad
    column = column.reset_index(drop=True)
    null = column.isna().to_numpy()
    inferred = pd.api.types.infer_dtype(column, skipna=True)
    if inferred == "empty":
        return (
            pd.Series(np.full(n, np.nan)) if kind == "float" else pd.Series([None] * n, dtype=object)
        ), bad
    if kind == "str" and inferred == "string":  # every value is a str: nothing to check per row
        return column, bad
    if kind == "bool" and inferred == "boolean":
        return column.astype(object).where(~pd.Series(null), None), bad
    if kind == "float":
        if pd.api.types.is_bool_dtype(column) or not pd.api.types.is_numeric_dtype(column):
            if column.dtype == object:
                numeric = column.map(lambda v: isinstance(v, int | float) and not isinstance(v, bool))
                bad = ~null & ~numeric.to_numpy(dtype=bool)
                values = column.where(numeric, None).astype("float64")
                return values, bad
            return pd.Series(np.full(n, np.nan)), ~null
        return column.astype("float64"), bad
    if kind == "int":
        if pd.api.types.is_bool_dtype(column):
            return pd.Series([None] * n, dtype="Int64"), ~null
        if pd.api.types.is_numeric_dtype(column):
            floats = column.to_numpy(dtype="float64", na_value=np.nan)
            if column.dtype.kind not in _INT_KINDS:  # integral floats (a CSV column with blanks) pass
                bad = ~null & (np.trunc(floats) != floats)
            out = column.where(~pd.Series(bad), None).astype("Float64").astype("Int64")
            return out, bad
        integral = column.map(lambda v: isinstance(v, int) and not isinstance(v, bool))
        bad = ~null & ~integral.to_numpy(dtype=bool)
        return column.where(integral, None).astype("Int64"), bad
    if kind == "str":
        is_str = column.map(lambda v: isinstance(v, str)).to_numpy(dtype=bool)
        bad = ~null & ~is_str
        return column.astype(object).where(is_str, None), bad
    is_bool = column.map(lambda v: isinstance(v, bool | np.bool_)).to_numpy(dtype=bool)
    bad = ~null & ~is_bool
    return column.astype(object).where(is_bool, None).map(lambda v: None if v is None else bool(v)), bad


def _entity_keys(column: pd.Series) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """(codes into the key texts, -1 when unusable; key texts; missing mask; wrong-type mask), as
    app.records.decode._entity_key decides — once per distinct value."""
    codes, uniques = pd.factorize(column.reset_index(drop=True), use_na_sentinel=True)
    codes = np.asarray(codes, dtype=np.int64)
    texts: list[str] = []
    status = np.zeros(len(uniques) + 1, dtype=np.int8)  # 0 usable, 1 missing, 2 wrong type; [-1]: null
    status[-1] = 1
    if pd.api.types.infer_dtype(uniques, skipna=True) == "string":  # the usual case: no loop
        texts = np.asarray(uniques, dtype=object).tolist()
        status[:-1] = np.array([t == "" for t in texts], dtype=bool)
        state = status[codes]
        return np.where(state == 0, codes, -1), texts, state == 1, state == 2
    for i, raw in enumerate(np.asarray(uniques, dtype=object).tolist()):
        value = _python(raw)
        if value is None or value == "":
            status[i] = 1
        elif isinstance(value, bool) or not isinstance(value, str | int):
            status[i] = 2
        texts.append(str(value) if status[i] == 0 else "")
    state = status[codes]
    return np.where(state == 0, codes, -1), texts, state == 1, state == 2


def stream_events(name: str, index: int, stream: StreamSpec, frame: pd.DataFrame) -> StreamEvents:
    """The stream's rows typed as the worker types them; rows the worker dead-letters left out."""
    if stream.time is None:
        raise InputFileError(
            f"stream {name!r} has no `time` field: online it uses the Kafka record timestamp, which a "
            f"file does not have; declare the event-time field in the pipeline"
        )
    if stream.key not in frame.columns:
        raise InputFileError(
            f"stream {name!r}: key column {stream.key!r} not found; columns: "
            f"{', '.join(map(str, frame.columns))}"
        )
    if stream.time not in frame.columns:
        raise InputFileError(
            f"stream {name!r}: time column {stream.time!r} not found; columns: "
            f"{', '.join(map(str, frame.columns))}"
        )
    n = len(frame)
    frame = frame.reset_index(drop=True)
    codes, texts, missing, bad_key = _entity_keys(frame[stream.key])
    times, time_ok = time_to_ms(frame[stream.time], stream.time)
    bad_type = bad_key.copy()
    fields: dict[str, pd.Series] = {}
    for field_name, kind in stream.fields.items():
        if field_name == stream.key:
            continue
        values, bad = _typed_column(frame[field_name] if field_name in frame.columns else None, kind, n)
        fields[field_name] = values
        bad_type |= bad
    bad_type |= ~missing & ~time_ok
    keep = ~missing & ~bad_type
    dropped = {"missing_key": int(missing.sum()), "type": int((bad_type & ~missing).sum())}
    rows = np.flatnonzero(keep).astype(np.int64)
    fields = {f: s[keep].reset_index(drop=True) for f, s in fields.items()}
    return StreamEvents(name, index, codes[keep], times[keep], rows, fields, dropped, local_keys=texts)


def _python(value: Any) -> Any:
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def evaluate_where(
    expression: Expression, fields: Mapping[str, pd.Series], n: int
) -> tuple[np.ndarray, np.ndarray]:
    """(holds, fails) per event for a `where` filter, by the worker's expression engine
    (app.config.expressions), evaluated once per distinct combination of the columns it names."""
    names = sorted(expression.names & set(fields))
    if not names:
        row = dict.fromkeys(expression.names)
        try:
            value = bool(expression.evaluate(row))
            return np.full(n, value), np.zeros(n, dtype=bool)
        except Exception:
            return np.zeros(n, dtype=bool), np.ones(n, dtype=bool)
    codes = []
    uniques: list[list[Any]] = []
    for name in names:
        code, unique = pd.factorize(fields[name], use_na_sentinel=True)
        codes.append(code.astype(np.int64))
        uniques.append([_python(v) for v in np.asarray(unique, dtype=object).tolist()])
    combined = np.zeros(n, dtype=np.int64)
    for code, values in zip(codes, uniques, strict=True):
        combined = combined * (len(values) + 1) + (code + 1)  # -1 (null) -> 0
    combo_codes, combo_values = pd.factorize(combined)
    combo_index = []
    for value in np.asarray(combo_values, dtype=np.int64).tolist():
        parts = []
        for values in reversed(uniques):
            value, part = divmod(value, len(values) + 1)
            parts.append(part - 1)
        combo_index.append(tuple(reversed(parts)))
    holds = np.zeros(len(combo_index), dtype=bool)
    fails = np.zeros(len(combo_index), dtype=bool)
    base = dict.fromkeys(expression.names)
    for i, combo in enumerate(combo_index):
        row = dict(base)
        for name, code, values in zip(names, combo, uniques, strict=True):
            row[name] = None if code < 0 else values[code]
        try:
            holds[i] = bool(expression.evaluate(row))
        except Exception:  # the worker dead-letters the event (reason `expression`)
            fails[i] = True
    return holds[combo_codes], fails[combo_codes]


@dataclass
class GroupEvents:
    """A group's accepted events: the events of its streams in processing order minus late ones."""

    plan: GroupPlan
    keys: np.ndarray  # int64 key codes
    times: np.ndarray  # int64
    buckets: np.ndarray  # int64
    stream: np.ndarray  # int16: position in the spec's streams
    position: np.ndarray  # int64: index into that stream's StreamEvents arrays
    late: int  # events of the group's streams dropped as late (for this or another group)
    late_all: int  # late events of every stream


def _late(keys: np.ndarray, buckets: np.ndarray, counted: np.ndarray, retention: int) -> np.ndarray:
    """Per event (processing order): b <= n - R, n the largest bucket of the key's earlier counted
    events. A running maximum per key, as one numpy accumulate over (key, bucket) composites."""
    if not len(keys):
        return np.zeros(0, dtype=bool)
    small = int(keys.max()) < 2**16  # numpy sorts 16-bit keys with a (stable) radix sort
    order = np.argsort(keys.astype(np.uint16) if small else keys, kind="stable")
    k, b, c = keys[order], buckets[order], counted[order]
    lo = int(b.min())
    span = int(b.max()) - lo + 2  # value 0 = "no counted event yet"
    if (int(k.max()) + 1) * span >= 2**62:  # too sparse for one int64: pandas' grouped running max
        frame = pd.DataFrame({"k": k, "b": np.where(c, b - lo + 1, 0)})
        running_max = frame.groupby("k", sort=False)["b"].cummax().to_numpy()
        prior = np.r_[np.int64(0), running_max[:-1]]
        prior[np.r_[True, k[1:] != k[:-1]]] = 0
        result = np.empty(len(keys), dtype=bool)
        result[order] = (prior > 0) & (b - lo + 1 <= prior - retention)
        return result
    composite = k * span + np.where(c, b - lo + 1, 0)
    running = np.maximum.accumulate(composite)  # earlier keys' composites are all smaller
    before = np.r_[np.int64(-1), running[:-1]] - k * span  # this key's max before the event (0: none)
    first = np.r_[True, k[1:] != k[:-1]]
    before[first] = 0
    late_sorted = (before > 0) & (b - lo + 1 <= before - retention)
    out = np.empty(len(keys), dtype=bool)
    out[order] = late_sorted
    return out


def processing_order(streams: list[StreamEvents]) -> tuple[np.ndarray, np.ndarray]:
    """(stream index, position) of every event of ``streams``, in offline processing order."""
    if not streams:
        return np.zeros(0, dtype=np.int16), np.zeros(0, dtype=np.int64)
    pmax = np.concatenate([np.maximum.accumulate(s.times) if len(s.times) else s.times for s in streams])
    sidx = np.concatenate([np.full(len(s.times), s.index, dtype=np.int16) for s in streams])
    pos = np.concatenate([np.arange(len(s.times), dtype=np.int64) for s in streams])
    order = np.lexsort((pos, sidx, pmax))
    return sidx[order], pos[order]


def accept(
    pipeline: Pipeline, plans: Mapping[str, GroupPlan], streams: Mapping[str, StreamEvents]
) -> dict[str, GroupEvents]:
    """Every group's accepted events: an event is dropped from every group when a `where` of its stream
    fails or it is late for any group its stream feeds (docs/product.md), as the worker drops it."""
    names = list(pipeline.streams)
    groups_of = {s: [g for g, p in plans.items() if s in p.by_stream] for s in names}
    # `where` failures: the worker evaluates every aggregation of every group of the stream first.
    for s, events in streams.items():
        fails = np.zeros(len(events.keys), dtype=bool)
        for g in groups_of[s]:
            for agg in plans[g].by_stream.get(s, ()):
                if agg.where is not None and agg.where.source not in events.where:
                    holds, failed = evaluate_where(agg.where, events.fields, len(events.keys))
                    events.where[agg.where.source] = holds
                    fails |= failed
        if fails.any():
            keep = ~fails
            events.dropped["expression"] = int(fails.sum())
            events.keys, events.times, events.rows = events.keys[keep], events.times[keep], events.rows[keep]
            events.fields = {f: c[keep].reset_index(drop=True) for f, c in events.fields.items()}
            events.where = {source: holds[keep] for source, holds in events.where.items()}
    used = [streams[s] for s in names if s in streams and groups_of[s]]
    sidx, pos = processing_order(used)
    by_index = {names.index(s): streams[s] for s in streams}
    n = len(sidx)
    keys = np.empty(n, dtype=np.int64)
    times = np.empty(n, dtype=np.int64)
    for i, ev in by_index.items():
        mask = sidx == i
        keys[mask] = ev.keys[pos[mask]]
        times[mask] = ev.times[pos[mask]]
    key_codes = keys
    member = {
        g: np.isin(sidx, [names.index(s) for s in plan.by_stream if s in streams])
        for g, plan in plans.items()
    }
    buckets = {g: times // plan.period_ms for g, plan in plans.items()}
    accepted = np.ones(n, dtype=bool)
    for _ in range(64):  # a fixed point is the sequential answer; one group converges at once
        late = np.zeros(n, dtype=bool)
        for g, plan in plans.items():
            sel = np.flatnonzero(member[g])
            late[sel] |= _late(key_codes[sel], buckets[g][sel], accepted[sel], plan.retention)
        if np.array_equal(~late, accepted):
            break
        accepted = np.asarray(~late, dtype=bool)
    else:  # pragma: no cover - not seen; would need groups whose lateness keeps flipping
        raise InputFileError("late events: no stable answer found across the feature groups")
    out: dict[str, GroupEvents] = {}
    for g, plan in plans.items():
        chosen = member[g] & accepted
        out[g] = GroupEvents(
            plan,
            keys[chosen],
            times[chosen],
            buckets[g][chosen],
            sidx[chosen],
            pos[chosen],
            int((member[g] & ~accepted).sum()),
            int((~accepted).sum()),
        )
    return out


def read_inputs(
    pipeline: Pipeline, inputs: Mapping[str, Path], reader: Any
) -> tuple[dict[str, StreamEvents], list[str]]:
    """Each named stream's file, read by ``reader(path, stream)`` and typed."""
    names = list(pipeline.streams)
    out: dict[str, StreamEvents] = {}
    for name, path in inputs.items():
        if name not in pipeline.streams:
            raise InputFileError(
                f"--input {name}=…: no stream {name!r} in the pipeline (streams: {', '.join(names)})"
            )
        out[name] = stream_events(name, names.index(name), pipeline.streams[name], reader(path, name))
    # One numbering of the keys across streams; the key field as a categorical for `where` filters.
    index: dict[str, int] = {}
    for events in out.values():
        mapping = np.array(
            [index.setdefault(t, len(index)) for t in events.local_keys] + [-1], dtype=np.int64
        )
        events.keys = mapping[events.keys]
        events.local_keys = []
    key_names = list(index)
    categories = pd.Index(key_names, dtype=object)
    for name, events in out.items():
        events.fields[pipeline.streams[name].key] = pd.Series(
            pd.Categorical.from_codes(events.keys, categories=categories)
        )
    return out, key_names
