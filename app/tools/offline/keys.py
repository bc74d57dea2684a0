"""Offline entity keys: the key of every event (or label row) for a group's key fields, as codes into
the key's string forms (app.records.keys), worked out once per distinct value, never per event."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from app.records.keys import ESCAPE, SEPARATOR, key_string

#: (codes into texts, -1 where the row has no usable value; the distinct texts, an object array)
Parts = tuple[np.ndarray, np.ndarray]

_OBJECTS = np.zeros(0, dtype=object)


def _text(value: Any) -> str | None:
    """A key value's string form as the worker builds it; None when it keys nothing (null, empty)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float):
        if value != value:
            return None
        if value.is_integer():  # an integer column with blanks reads as floats (CSV)
            value = int(value)
    return key_string([value]) or None


def distinct_parts(codes: np.ndarray, texts: np.ndarray, usable: np.ndarray) -> Parts:
    """``codes`` (-1: null) into ``texts`` re-pointed at the distinct usable texts: values of other
    types with one string form (5 and "5") become one key, an unusable text -1."""
    sub, distinct = pd.factorize(texts[usable])
    mapping = np.full(len(texts) + 1, -1, dtype=np.int64)  # [-1]: the null code
    mapping[:-1][usable] = sub
    return mapping[codes], np.asarray(distinct, dtype=object)


def field_parts(column: pd.Series) -> Parts:
    """One key field's values as :data:`Parts` (str as is, integers in decimal; null or "" -> -1)."""
    codes, uniques = pd.factorize(column.reset_index(drop=True), use_na_sentinel=True)
    codes = np.asarray(codes, dtype=np.int64)
    kind = pd.api.types.infer_dtype(uniques, skipna=True)
    if kind == "string":  # the usual case: no loop
        texts = np.asarray(uniques, dtype=object)
        return distinct_parts(codes, texts, texts != "")
    if kind == "integer" and pd.api.types.is_integer_dtype(uniques):
        texts = np.asarray(np.asarray(uniques, dtype=np.int64).astype(str), dtype=object)
        return distinct_parts(codes, texts, np.ones(len(texts), dtype=bool))
    listed = [_text(v) for v in np.asarray(uniques, dtype=object).tolist()]
    texts = np.array([t or "" for t in listed], dtype=object)
    return distinct_parts(codes, texts, np.array([t is not None for t in listed], dtype=bool))


def _escaped(texts: np.ndarray) -> np.ndarray:
    """Each text as one value of a composite key's string form (key_string's escaping)."""
    if not len(texts):
        return _OBJECTS
    series = pd.Series(texts, dtype=object).str.replace(ESCAPE, ESCAPE + ESCAPE, regex=False)
    return series.str.replace(SEPARATOR, ESCAPE + SEPARATOR, regex=False).to_numpy(dtype=object)


@dataclass(frozen=True)
class Keyed:
    """Rows' keys: each row's code into the distinct keys (-1: none), each key's string form, and
    per key field each key's value (as text)."""

    codes: np.ndarray
    texts: np.ndarray
    values: tuple[np.ndarray, ...]


def combine(parts: Sequence[Parts]) -> Keyed:
    """The key of one or more fields (their parts in key order), with the string forms key_string
    gives; -1 where any field is -1."""
    codes, texts = parts[0]
    if len(parts) == 1:
        return Keyed(codes, texts, (texts,))
    values = [texts]
    texts = _escaped(texts)
    for more_codes, more_texts in parts[1:]:
        width = max(len(more_texts), 1)
        both = (codes >= 0) & (more_codes >= 0)
        pairs, uniques = pd.factorize(codes[both] * width + more_codes[both])
        before, after = np.divmod(np.asarray(uniques, dtype=np.int64), width)
        texts = texts[before] + SEPARATOR + _escaped(more_texts)[after]
        values = [*(v[before] for v in values), more_texts[after]]
        codes = np.full(len(both), -1, dtype=np.int64)
        codes[both] = pairs
    return Keyed(codes, np.asarray(texts, dtype=object), tuple(values))


@dataclass
class EntityKeys:
    """One key (its fields) numbered across streams: each code's string form and field values, and
    per stream each event's code (-1: a key value is null or empty, so the event feeds none of the
    key's groups)."""

    fields: tuple[str, ...]
    names: np.ndarray  # object: code -> string form
    values: tuple[np.ndarray, ...]  # per field, object: code -> the field's value as text
    codes: dict[str, np.ndarray]

    @staticmethod
    def number(fields: tuple[str, ...], local: Mapping[str, Keyed]) -> EntityKeys:
        """One numbering of the key over every stream's keys, in order of first appearance."""
        if len(local) == 1:  # the distinct keys of one stream are the numbering already
            ((stream, keyed),) = local.items()
            return EntityKeys(fields, keyed.texts, keyed.values, {stream: keyed.codes})
        joined = np.concatenate([k.texts for k in local.values()]) if local else _OBJECTS
        codes, names = pd.factorize(joined)  # numbered in order of first appearance, so a new
        first = np.flatnonzero(np.diff(np.maximum.accumulate(codes), prepend=-1) > 0)  # maximum: a first
        values = tuple(
            np.concatenate([k.values[i] for k in local.values()])[first] if local else _OBJECTS
            for i in range(len(fields))
        )
        out: dict[str, np.ndarray] = {}
        start = 0
        for stream, keyed in local.items():
            mapping = np.append(codes[start : start + len(keyed.texts)], -1).astype(np.int64)
            out[stream] = mapping[keyed.codes]
            start += len(keyed.texts)
        return EntityKeys(fields, np.asarray(names, dtype=object), values, out)

    def lookup(self, keyed: Keyed) -> tuple[np.ndarray, np.ndarray]:
        """(code of each row's key, len(names) when no event has it; mask of rows without a key)."""
        found = pd.Index(self.names, dtype=object).get_indexer(pd.Index(keyed.texts, dtype=object))
        found = np.where(found < 0, len(self.names), found)
        missing = keyed.codes < 0
        return np.where(missing, len(self.names), np.append(found, -1)[keyed.codes]).astype(np.int64), missing

    def columns(self, codes: np.ndarray, integer: Sequence[bool]) -> dict[str, np.ndarray]:
        """Per key field, its value in the keys ``codes``: int for ``integer`` fields, else str."""
        return {
            name: values[codes].astype(np.int64) if whole else values[codes]
            for name, values, whole in zip(self.fields, self.values, integer, strict=True)
        }

    def sorted_codes(self, codes: np.ndarray) -> np.ndarray:
        """``codes`` in the order of their string forms (code point order, as Python sorts str)."""
        texts = pa.array(self.names[codes], type=pa.string())
        return codes[np.asarray(pc.array_sort_indices(texts), dtype=np.int64)]
