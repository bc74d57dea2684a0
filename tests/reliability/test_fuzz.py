"""Fuzzing the two parsers that take outside input: the pipeline spec loader and the event/lookup
decoders. Whatever the input, they answer with their own error (SpecError, BadRecord) or a value —
no other exception escapes to crash a worker or the CLI."""

from __future__ import annotations

import string
from pathlib import Path

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.config.routing import topic_plans
from app.config.spec import parse_pipeline
from app.errors import SpecError
from app.records.decode import BadRecord, decode_event, decode_lookup

SHOP = (Path(__file__).resolve().parents[2] / "examples" / "shop" / "pipeline.yaml").read_text()
PIPELINE = parse_pipeline(SHOP)
ORDERS = PIPELINE.streams["orders"]
USERS = PIPELINE.lookups["users"]

scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
json_values = st.recursive(
    scalars | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
order_like = st.fixed_dictionaries(
    {},
    optional={
        name: json_values
        | st.sampled_from(["u1", "2026-01-01T00:00:00Z", "1767225600000", "", "NaN", "1e400"])
        for name in ("user_id", "order_id", "product", "amount", "status", "ts")
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=300) | order_like.map(orjson.dumps) | json_values.map(orjson.dumps))
def test_event_decoder_returns_a_value_or_a_bad_record(raw: bytes) -> None:
    try:
        key, ts, fields = decode_event(raw, ORDERS, 1_767_225_600_000)
    except BadRecord as exc:
        assert exc.reason in {"decode", "missing_key", "type"} and str(exc)
        return
    assert isinstance(key, str) and key and isinstance(ts, int)
    assert set(fields) <= set(ORDERS.fields)


@settings(max_examples=300, deadline=None)
@given(
    key=st.none() | st.binary(max_size=20),
    raw=st.none() | st.binary(max_size=200) | json_values.map(orjson.dumps),
)
def test_lookup_decoder_returns_a_value_or_a_bad_record(key: bytes | None, raw: bytes | None) -> None:
    try:
        name, fields = decode_lookup(key, raw, USERS)
    except BadRecord as exc:
        assert exc.reason in {"decode", "missing_key", "type"} and str(exc)
        return
    assert isinstance(name, str)
    assert fields is None or set(fields) <= set(USERS.fields)


def _mutations() -> st.SearchStrategy[str]:
    """The shop spec with a slice replaced by random text, lines dropped or duplicated."""
    lines = SHOP.splitlines()
    junk = st.text(alphabet=string.printable, max_size=40)

    def replace(i: int, text: str) -> str:
        return "\n".join([*lines[:i], text, *lines[i + 1 :]])

    def drop(i: int) -> str:
        return "\n".join(lines[:i] + lines[i + 1 :])

    index = st.integers(0, len(lines) - 1)
    return st.one_of(
        st.builds(replace, index, junk),
        st.builds(drop, index),
        st.builds(lambda i, j: replace(i, lines[j]), index, index),
        st.text(max_size=200),
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_mutations())
def test_spec_loader_accepts_or_names_the_problem(text: str) -> None:
    try:
        pipeline = parse_pipeline(text, "fuzz.yaml")
    except SpecError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        return
    assert pipeline.streams  # a spec that loads is a usable pipeline
    topic_plans(pipeline, 4, "g")
