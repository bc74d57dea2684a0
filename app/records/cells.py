"""List-valued features (last_n, top_k) in tables: a CSV cell holds the JSON array (pandas would write
Python's repr); in Parquet a top_k cell is a list of {value, count} structs (a [value, count] pair
mixes types, which Arrow lists cannot). Pure."""

from __future__ import annotations

import orjson
import pandas as pd


def _pairs(column: pd.Series) -> bool:
    """Whether ``column`` holds top_k answers: lists of [value, count] pairs."""
    return column.dtype == object and any(
        isinstance(v, list) and v and isinstance(v[0], list) for v in column
    )


def parquet_ready(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with each top_k cell as a list of ``{"value", "count"}`` (a copy when it changes)."""
    paired = [name for name in frame.columns if _pairs(frame[name])]
    if paired:
        frame = frame.copy()
        for name in paired:
            cells = [
                [{"value": v, "count": c} for v, c in cell] if isinstance(cell, list) else cell
                for cell in frame[name]
            ]
            frame[name] = pd.Series(cells, index=frame.index, dtype=object)
    return frame


def csv_text(frame: pd.DataFrame) -> str:
    """``frame`` as CSV (no index), list cells as JSON arrays."""
    listed = [
        name
        for name in frame.columns
        if frame[name].dtype == object and any(isinstance(v, list) for v in frame[name])
    ]
    if listed:
        frame = frame.copy()
        for name in listed:
            frame[name] = [orjson.dumps(v).decode() if isinstance(v, list) else v for v in frame[name]]
    return frame.to_csv(index=False)
