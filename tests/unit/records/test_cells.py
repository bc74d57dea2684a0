"""app/records/cells.py: list-valued features in CSV cells are JSON arrays that read back as written."""

from __future__ import annotations

import io

import orjson
import pandas as pd

from app.records.cells import csv_text, parquet_ready


def test_list_cells_are_json_and_other_cells_unchanged() -> None:
    frame = pd.DataFrame(
        {"key": ["a", "b"], "last3": [["x, y", 'q"'], []], "n": [1, 2], "mixed": [None, [1.5, 2]]}
    )
    text = csv_text(frame)
    back = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    assert [orjson.loads(v) for v in back["last3"]] == [["x, y", 'q"'], []]
    assert list(back["n"]) == ["1", "2"]
    assert list(back["mixed"]) == ["", "[1.5,2]"]
    assert frame["last3"].tolist() == [["x, y", 'q"'], []]  # the caller's frame is left as it was


def test_top_k_cells_become_structs_in_parquet() -> None:
    frame = pd.DataFrame({"key": ["a", "b"], "top2": [[["x", 3], ["y", 1]], []], "last2": [[1.5, 2.0], []]})
    buffer = io.BytesIO()
    parquet_ready(frame).to_parquet(buffer, index=False)
    back = pd.read_parquet(io.BytesIO(buffer.getvalue()))
    assert [list(map(dict, cell)) for cell in back["top2"]] == [
        [{"value": "x", "count": 3}, {"value": "y", "count": 1}],
        [],
    ]
    assert [list(cell) for cell in back["last2"]] == [[1.5, 2.0], []]
    assert frame["top2"][0] == [["x", 3], ["y", 1]]  # the caller's frame is left as it was
