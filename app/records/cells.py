"""Feature values in text tables: a CSV cell holds a list-valued feature (last_n) as JSON, so it reads
back with any JSON parser (pandas would write Python's repr). Pure."""

from __future__ import annotations

import orjson
import pandas as pd


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
