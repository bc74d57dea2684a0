"""`hydrant produce` file handling without a broker: formats, keys, JSON encoding, errors."""

from __future__ import annotations

from pathlib import Path

import orjson
import pandas as pd
import pytest

from app.errors import InputFileError
from app.tools.frames import detect_format, encode_rows, read_table
from app.tools.produce import ProduceSummary


def test_encode_rows_keys_and_json_types() -> None:
    frame = pd.DataFrame(
        {
            "id": [1, 2, None],
            "name": ["a", None, "c"],
            "x": [1.5, float("nan"), 3.0],
            "when": pd.to_datetime(["2023-11-14T22:13:20Z"] * 3),
        }
    )
    keys, values = encode_rows(frame, "id")
    assert keys == [b"1", b"2", None]
    rows = [orjson.loads(v) for v in values]
    assert rows[0] == {"id": 1.0, "name": "a", "x": 1.5, "when": 1_700_000_000_000}
    assert rows[1]["name"] is None and rows[1]["x"] is None


def test_encode_rows_without_key() -> None:
    keys, values = encode_rows(pd.DataFrame({"a": [1, 2]}), None)
    assert keys == [None, None] and [orjson.loads(v) for v in values] == [{"a": 1}, {"a": 2}]


def test_missing_key_column() -> None:
    with pytest.raises(InputFileError, match="key column 'nope' not found; columns: a, b"):
        encode_rows(pd.DataFrame({"a": [1], "b": [2]}), "nope")


def test_formats(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    frame.to_csv(tmp_path / "f.csv", index=False)
    frame.to_parquet(tmp_path / "f.parquet")
    frame.to_json(tmp_path / "f.jsonl", orient="records", lines=True)
    for name in ("f.csv", "f.parquet", "f.jsonl"):
        pd.testing.assert_frame_equal(read_table(tmp_path / name), frame)
    assert detect_format(Path("x.ndjson")) == "jsonl"
    assert detect_format(Path("x.data"), "csv") == "csv"
    with pytest.raises(InputFileError, match="use --format"):
        detect_format(Path("x.data"))


def test_summary_line() -> None:
    assert ProduceSummary("t", 10_000, 0, 2.0).line() == "sent 10,000 records to t in 2.00s (5,000/s)"
    assert ProduceSummary("t", 3, 1, 1.0).line().endswith(", 1 without a key")
