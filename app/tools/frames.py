"""Event files as pandas DataFrames, for `hydrant produce` and `hydrant compute`: CSV / Parquet / JSONL
reading, event times read as the worker reads them, rows as JSON records, event-time order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from app.errors import InputFileError
from app.records.decode import BadRecord, event_time_ms

_INT_KINDS = "iu"
FORMATS = ("csv", "parquet", "jsonl")
_SUFFIXES = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
# pandas 3 parses CSV floats exactly by default; pandas 2 needs the round-trip parser for that.
_CSV_OPTIONS: dict[str, Any] = (
    {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}
)


def detect_format(path: Path, fmt: str | None = None) -> str:
    """The file format from ``fmt`` or the file suffix; InputFileError when unknown."""
    if fmt:
        return fmt
    try:
        return _SUFFIXES[path.suffix.lower()]
    except KeyError:
        raise InputFileError(
            f"{path}: cannot tell the format from the suffix {path.suffix!r}; use --format csv|parquet|jsonl"
        ) from None


def read_table(path: Path, fmt: str | None = None) -> pd.DataFrame:
    """The file as a DataFrame; InputFileError with a one-line reason when it cannot be read.
    CSV floats are parsed round-trip exact, so every reader of a file sees the same values."""
    kind = detect_format(path, fmt)
    if not path.is_file():
        raise InputFileError(f"{path}: no such file")
    try:
        if kind == "csv":
            return pd.read_csv(path, **_CSV_OPTIONS)
        if kind == "parquet":
            return pd.read_parquet(path)
        return pd.read_json(path, lines=True)
    except Exception as exc:  # pandas raises many types; the user needs one line either way
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputFileError(f"{path}: cannot read as {kind}: {reason}") from None


def encode_rows(frame: pd.DataFrame, key: str | None) -> tuple[list[bytes | None], list[bytes]]:
    """(keys, JSON values) for every row (NaN -> null, datetimes -> epoch ms, floats round-trip exact);
    InputFileError when the key column is missing."""
    if key is not None and key not in frame.columns:
        raise InputFileError(f"key column {key!r} not found; columns: {', '.join(map(str, frame.columns))}")
    frame = _datetimes_to_epoch_ms(frame)
    names = [str(c) for c in frame.columns]
    columns = [_python_values(frame[c]) for c in frame.columns]
    options = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
    values = [orjson.dumps(dict(zip(names, row, strict=True)), default=str, option=options)
              for row in zip(*columns, strict=True)]  # fmt: skip
    if not columns:
        values = [b"{}"] * len(frame)
    if key is None:
        return [None] * len(values), values
    column = frame[key]
    keys: list[bytes | None] = [None if pd.isna(v) else _key_text(v).encode("utf-8") for v in column.tolist()]
    return keys, values


def _python_values(column: pd.Series) -> list[Any]:
    """The column as plain Python values, nulls (NaN, NA, NaT, None) as None."""
    return column.astype(object).where(column.notna(), None).tolist()


def order_by_time(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """Rows in event-time order (stable: ties keep the file order; rows without a time go last).
    The column is epoch ms, ISO-8601 or a datetime, read as the worker reads event times."""
    if column not in frame.columns:
        raise InputFileError(
            f"order column {column!r} not found; columns: {', '.join(map(str, frame.columns))}"
        )
    times, valid = time_to_ms(frame[column].reset_index(drop=True), column)
    order = np.lexsort((np.arange(len(frame)), times, ~valid))
    return frame.iloc[order].reset_index(drop=True)


def _datetimes_to_epoch_ms(frame: pd.DataFrame) -> pd.DataFrame:
    """Datetime columns as epoch milliseconds (Hydrant's event-time form); NaT becomes null."""
    stamps = [name for name in frame.columns if pd.api.types.is_datetime64_any_dtype(frame[name])]
    if not stamps:
        return frame
    frame = frame.copy()
    for name in stamps:
        column = frame[name]
        zero = pd.Timestamp(0, tz=column.dt.tz)
        frame[name] = ((column - zero) // pd.Timedelta(1, "ms")).astype("Int64")
    return frame


def _key_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def time_to_ms(column: pd.Series, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(epoch ms as int64, valid mask) as the worker reads a time field: numbers truncated like ``int()``,
    strings by :func:`app.records.decode.event_time_ms`, datetimes floored to ms (as `hydrant produce`)."""
    n = len(column)
    if pd.api.types.is_datetime64_any_dtype(column):
        zero = pd.Timestamp(0, tz=column.dt.tz)
        valid = column.notna().to_numpy()
        ms = ((column - zero) // pd.Timedelta(1, "ms")).to_numpy(dtype="float64", na_value=np.nan)
        return np.where(valid, ms, 0).astype(np.int64), valid
    if pd.api.types.is_bool_dtype(column):
        return np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    if pd.api.types.is_numeric_dtype(column):
        values = column.to_numpy(dtype="float64", na_value=np.nan)
        valid = np.isfinite(values)
        if column.dtype.kind in _INT_KINDS:
            return column.to_numpy(dtype=np.int64), np.ones(n, dtype=bool)
        return np.trunc(np.where(valid, values, 0)).astype(np.int64), valid
    codes, uniques = pd.factorize(column, use_na_sentinel=True)
    parsed = np.zeros(len(uniques), dtype=np.int64)
    ok = np.zeros(len(uniques), dtype=bool)
    for i, value in enumerate(uniques.tolist()):
        try:
            parsed[i] = event_time_ms(value, name)
            ok[i] = True
        except BadRecord:
            pass
    valid = (codes >= 0) & ok[np.maximum(codes, 0)]
    return np.where(valid, parsed[np.maximum(codes, 0)], 0), valid
