"""`hydrant compute --service NAME --labels FILE`: each label row with the columns a feature service
answers online at the row's time (docs/offline.md): its groups' features as of that time, null for a
key without an event yet (online: `missing`), the lookup rows of a snapshot file, computed columns."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from app.config.services import ServicePlan, service_plan
from app.config.spec import Pipeline
from app.errors import InputFileError
from app.tools.offline.compute import (
    ComputeReport,
    Progress,
    _label_queries,
    _masked,
    group_features,
    prepared,
)
from app.tools.offline.events import DEFAULT_PARTITIONS
from tables.plans import group_plans


def compute_service(
    pipeline: Pipeline,
    name: str,
    inputs: Mapping[str, Path],
    reader: Callable[[Path], pd.DataFrame],
    labels: pd.DataFrame,
    label_time: str | None = None,
    progress: Progress | None = None,
    order_by_time: bool = False,
    partitions: int = DEFAULT_PARTITIONS,
) -> tuple[pd.DataFrame, ComputeReport]:
    """The label rows, then the service's columns after its request fields (which the rows carry),
    in the service's order. ``inputs``: a file per stream its groups read and per lookup it joins."""
    if name not in pipeline.services:
        raise InputFileError(
            f"--service {name!r}: no such service (services: {', '.join(pipeline.services)})"
        )
    plan = service_plan(pipeline, name)
    say = progress or (lambda _stage: None)
    labels = labels.reset_index(drop=True)
    given = list(map(str, labels.columns))
    absent = [f for f in (*plan.entities, *plan.request) if f not in given]
    if absent:
        raise InputFileError(
            f"labels: no column {absent[0]!r} (service {name!r} needs {', '.join(plan.entities)}"
            f"{''.join(', ' + f for f in plan.request)}; columns: {', '.join(given)})"
        )
    for join in plan.joins:
        if join.lookup not in inputs:
            raise InputFileError(f"no input for lookup {join.lookup!r}: pass --input {join.lookup}=FILE")
    plans = {g.group: group_plans(pipeline)[g.group] for g in plan.groups}
    streams = {s: path for s, path in inputs.items() if s in pipeline.streams}
    events, accepted, entity, report = prepared(
        pipeline, plans, streams, reader, order_by_time, say, partitions
    )
    frame, queries, times = _label_queries(labels, plans, entity, None, label_time)
    columns: dict[str, pd.Series] = {
        f: _request_column(frame[f], f, kind) for f, kind in plan.request.items()
    }
    names = list(pipeline.streams)
    for group in plan.groups:
        group_plan = plans[group.group]
        codes, null = queries[group_plan.key]
        chosen = accepted.groups[group.group]
        # Online a key has state once one of its events was applied: here, one at or before the row's time.
        first = np.full(len(entity[group_plan.key].names) + 1, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first, chosen.keys, chosen.times)
        unknown = null | (first[codes] > times)
        features = group_features(group_plan, chosen, events, names, codes, times, True, say)
        for feature, column in group.features:
            columns[column] = _masked(features[feature].set_axis(frame.index), unknown)
    for join in plan.joins:
        rows = _lookup_rows(pipeline, join.lookup, reader(inputs[join.lookup]))
        found = [rows.get(str(v)) if v is not None else None for v in _values(frame[join.on])]
        for field, column in join.columns:
            columns[column] = pd.Series([(row or {}).get(field) for row in found], dtype=object)
    failed = _computed(plan, frame, columns)
    if failed:
        report.dropped["expression"] = failed
    out = pd.concat(
        [frame, pd.DataFrame({c: v for c, v in columns.items() if c not in plan.request})], axis=1
    )
    report.rows = len(out)
    return out, report


def _request_column(column: pd.Series, name: str, kind: str) -> pd.Series:
    """A request field's labels column as the service types it (an int is a float for a float field)."""
    if kind in ("int", "float"):
        numbers = pd.to_numeric(column, errors="coerce")
        bad = numbers.isna() & column.notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputFileError(f"labels: row {row}: {name!r} = {column.iloc[row]!r} is not a {kind}")
        return numbers.astype("Float64" if kind == "float" else "Int64")
    return column


def _lookup_rows(pipeline: Pipeline, lookup: str, frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """The lookup file's rows by key, typed as the spec declares its fields (a CSV's "5411" stays a
    string); the last row of a key wins, as on its compacted topic."""
    spec = pipeline.lookups[lookup]
    if spec.key not in frame.columns:
        given = ", ".join(map(str, frame.columns))
        raise InputFileError(f"lookup {lookup!r}: no key column {spec.key!r} (columns: {given})")
    fields = [f for f in spec.fields if f in frame.columns]
    rows = {}
    for record in frame[[spec.key, *fields]].to_dict("records"):
        rows[str(_python(record[spec.key]))] = {f: _typed(_python(record[f]), spec.fields[f]) for f in fields}
    return rows


def _typed(value: Any, kind: str) -> Any:
    """A lookup file's value as its field's type (None stays None)."""
    if value is None:
        return None
    return {"str": str, "int": int, "float": float, "bool": bool}[kind](value)


def _computed(plan: ServicePlan, frame: pd.DataFrame, columns: dict[str, pd.Series]) -> int:
    """Add the computed columns, row by row as the service evaluates them; rows whose expression
    fails (online: that row's `expression` error) get null. The number of such rows."""
    if not plan.computed:
        return 0
    scope_columns = {**{f: frame[f] for f in plan.entities}, **columns}
    rows = [
        dict(zip(scope_columns, values, strict=True))
        for values in zip(*map(_values, scope_columns.values()), strict=True)
    ]
    failed = set()
    for column, expression in plan.computed:
        out = []
        for index, row in enumerate(rows):
            try:
                value = row[column] = expression.evaluate(row)
            except Exception:  # user code: null here, an error row online
                value = row[column] = None
                failed.add(index)
            out.append(value)
        columns[column] = pd.Series(out, dtype=object)
    return len(failed)


def _values(column: pd.Series) -> list[Any]:
    """A column's values as Python scalars, None for missing ones."""
    return [_python(v) for v in column.astype(object).tolist()]


def _python(value: Any) -> Any:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value
