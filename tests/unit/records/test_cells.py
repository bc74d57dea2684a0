"""app/records/cells.py: list-valued features in CSV cells are JSON arrays that read back as written."""

from __future__ import annotations

import io

import orjson
import pandas as pd

from app.records.cells import csv_text


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
