"""app/records/keys.py: the string form of a key is one value as it is, or the values joined by `|`
with `|` and `\\` escaped; it splits back into the same values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.records.keys import key_of, key_string, split_key


def test_string_forms() -> None:
    assert key_string(["c1"]) == "c1" and key_string(["a|b"]) == "a|b"  # one field: as it is
    assert key_string(["c1", "m9"]) == "c1|m9"
    assert key_string(["c|1", "m\\9"]) == "c\\|1|m\\\\9"
    assert key_string(["c1", 42]) == "c1|42"


def test_an_event_without_a_key_value_has_no_key() -> None:
    assert key_of({"a": "x", "b": 3}, ("a", "b")) == "x|3"
    assert key_of({"a": "x", "b": None}, ("a", "b")) is None
    assert key_of({"a": "x"}, ("a", "b")) is None
    assert key_of({"a": "", "b": "y"}, ("a", "b")) is None


@given(st.lists(st.text(alphabet="ab|\\", max_size=5), min_size=2, max_size=4))
def test_a_composite_key_splits_back(values: list[str]) -> None:
    assert split_key(key_string(values), len(values)) == values


def test_split_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="has 3 values; the key has 2 fields"):
        split_key("a|b|c", 2)
    with pytest.raises(ValueError, match="unfinished escape"):
        split_key("a|b\\", 2)
