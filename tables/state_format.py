"""The stored form of a key's window state (docs/state-format.md): record keys, the bucket record layout,
value hashes for distinct, and the conversion of buckets in earlier formats or layouts."""

from __future__ import annotations

import base64
import hashlib
import logging
from typing import Any

import datasketches
import orjson

from app.config.changes import IDENTITY_CHARS
from tables.plans import ALL_FIELDS, BY_IDENTITY, LAST_T, OP_FIELDS, GroupPlan, layout_of

AggState = list[Any]
#: A bucket record, decoded: [aggregation states (None: no value yet), layout tag, applied offsets,
#: newest event time]; a roll-up record has the newest bucket merged into it in place of the offsets
#: (and its newest event time at ROLLUP_NEWEST).
Bucket = list[Any]
AGGREGATIONS, LAYOUT, OFFSETS, NEWEST = range(4)
THROUGH = OFFSETS  # a roll-up record's: every stored bucket up to this one is merged into it
ROLLUP_MARKS = 3  # a roll-up record's position of the replay marks (present once there was one)
ROLLUP_NEWEST = 4  # a roll-up record's newest event time (after the marks, an empty object if none)

EXACT_DISTINCT = 128  # per bucket; beyond it a bucket keeps a sketch instead of the hashes
HLL_LG_K = 14  # HyperLogLog precision of a bucket's sketch (docs/state-format.md)
EXACT_TOP = 1_000  # top_k: distinct values a bucket counts exactly; beyond, a frequent-items sketch
FREQUENT_LG = 10  # log2 of the frequent-items sketch's largest map (counts within 0.34 % of N)
TOP_PREFIX = "f:"  # a stored frequent-items sketch: "f:" + base64 (an exact count map is an object)
EXACT_QUANTILE = 100  # percentile: values a bucket keeps exactly; beyond, a t-digest
TDIGEST_K = 400  # the t-digest's compression (docs/features.md: rank error, size)
logger = logging.getLogger(__name__)


def value_hash(value: Any) -> int:
    """A stable signed 64-bit hash of a field value (the same online and offline)."""
    if isinstance(value, float):
        value += 0.0  # -0.0 == 0.0: one distinct value, one hash
    digest = hashlib.blake2b(orjson.dumps(value), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def sketch_of(text: str) -> Any:
    """A bucket's distinct sketch from its stored form (base64 of the compact HLL)."""
    return datasketches.hll_sketch.deserialize(base64.b64decode(text))


def frequent_of(text: str | Any) -> Any:
    """A bucket's top_k sketch from its stored form (``TOP_PREFIX`` + base64), or a live one as it would
    read back: merging depends on the order of a sketch's map, which reading it back may change, so
    every merge takes sketches in this form (the answers do not depend on when a batch wrote them)."""
    if isinstance(text, str):
        return datasketches.frequent_strings_sketch.deserialize(base64.b64decode(text[len(TOP_PREFIX) :]))
    return datasketches.frequent_strings_sketch.deserialize(text.serialize())


def digest_of(text: str) -> Any:
    """A bucket's percentile t-digest from its stored form (base64)."""
    return datasketches.tdigest_double.deserialize(base64.b64decode(text))


def value_text(value: Any) -> str:
    """A field value as top_k counts it: its JSON text (one text per value, whatever its type)."""
    if isinstance(value, float):
        value += 0.0  # -0.0 == 0.0: one value
    return orjson.dumps(value).decode()


def _stored_form(value: Any) -> str:
    """orjson's ``default`` for a bucket: a sketch kept live in memory, as stored."""
    if isinstance(value, datasketches.hll_sketch):
        return base64.b64encode(value.serialize_compact()).decode("ascii")
    if isinstance(value, datasketches.frequent_strings_sketch):
        return TOP_PREFIX + base64.b64encode(value.serialize()).decode("ascii")
    if isinstance(value, datasketches.tdigest_double):
        return base64.b64encode(value.serialize()).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not part of a bucket record")


def encode_bucket(record: Bucket | None) -> bytes:
    """A bucket record as stored; its distinct sketches (live objects while a batch runs, decoded
    once per bucket) in their stored form."""
    return orjson.dumps(record, default=_stored_form)


def head_key(key: bytes) -> bytes:
    """The record key of ``key``'s head: ``<key>\\0``."""
    return key + b"\x00"


def rollup_key(key: bytes) -> bytes:
    """The record key of ``key``'s lifetime roll-up: ``<key>\\0L``."""
    return key + b"\x00L"


def bucket_key(key: bytes, bucket: int) -> bytes:
    """The record key of one of ``key``'s buckets: ``<key>\\0<bucket number>``."""
    return b"%b\x00%d" % (key, bucket)


_WARNED: set[tuple[str, str]] = set()  # (group, aggregation) whose older buckets lack fields


def convert(plan: GroupPlan, record: Bucket) -> Bucket:
    """``record`` (a bucket written with other aggregations: another spec or an earlier format) in
    ``plan``'s layout, in place: each aggregation keeps the state stored under its identity; a new
    or changed one (another identity) has none, a removed one's is dropped."""
    aggregations, tag = record[AGGREGATIONS], record[LAYOUT]
    if tag is not None and tag.startswith(BY_IDENTITY):
        size = IDENTITY_CHARS
        stored = {
            tag[i : i + size]: state for i, state in zip(range(1, len(tag), size), aggregations, strict=True)
        }
        record[AGGREGATIONS] = [stored.get(agg.ident) for agg in plan.aggregations]
        record[LAYOUT] = plan.tag
        return record
    return _convert_masks(plan, record)


def _convert_masks(plan: GroupPlan, record: Bucket) -> Bucket:
    """:func:`convert` of a record whose layout is hex masks by position (written before layouts named
    aggregations; no tag: before layouts). An aggregation state lacking a field that its ops need now
    is dropped."""
    aggregations, tag = record[AGGREGATIONS], record[LAYOUT]
    masks = [ALL_FIELDS] * len(aggregations) if tag is None else [int(m, 16) for m in tag.split(",")]
    slots: list[AggState | None] = []
    for agg in plan.aggregations:
        old = aggregations[agg.index] if agg.index < len(aggregations) else None
        mask = masks[agg.index] if agg.index < len(masks) else 0
        if old is None:
            slots.append(None)
        elif agg.mask & ~mask:
            if (plan.name, agg.name) not in _WARNED:
                _WARNED.add((plan.name, agg.name))
                logger.warning(
                    "feature group %r, aggregation %r: buckets written before its ops %s were added "
                    "are left out of its windows until they expire",
                    plan.name,
                    agg.name,
                    sorted(op for op in agg.ops if any(not mask >> f & 1 for f in OP_FIELDS[op])),
                )
            slots.append(None)
        else:
            canonical = dict(zip(layout_of(mask), old, strict=True))
            slots.append([canonical[f] for f in agg.layout])
    record[AGGREGATIONS] = slots
    record[LAYOUT] = plan.tag
    return record


def newest_event(plan: GroupPlan, number: int, record: Bucket) -> int | None:
    """The newest event time (ms) among the events that added a value to bucket ``number`` (``record``
    in ``plan``'s layout; None: no event). A record written before buckets kept it gives the newest
    ``last`` time of its aggregations that keep one, else the bucket's last millisecond."""
    if len(record) > NEWEST:
        known: int | None = record[NEWEST]
        return known
    return _derived_newest(plan, number, record)


def note_event(plan: GroupPlan, number: int, record: Bucket, time_ms: int) -> None:
    """Bucket ``number``'s ``record`` (in ``plan``'s layout) got a value of an event at ``time_ms``."""
    if len(record) <= NEWEST:
        record.append(_derived_newest(plan, number, record))
    known = record[NEWEST]
    if known is None or time_ms > known:
        record[NEWEST] = time_ms


def rollup_newest(plan: GroupPlan, record: Bucket) -> int | None:
    """A roll-up record's newest event time (ms), as :func:`newest_event` gives a bucket's."""
    if len(record) > ROLLUP_NEWEST:
        known: int | None = record[ROLLUP_NEWEST]
        return known
    return None if record[THROUGH] is None else _derived_newest(plan, record[THROUGH], record)


def note_rollup(plan: GroupPlan, record: Bucket, time_ms: int | None) -> None:
    """Roll-up ``record`` got the values of an event at ``time_ms`` (or a bucket of that newest time)."""
    if time_ms is None:
        return
    known = (
        rollup_newest(plan, record) if record[THROUGH] is not None or len(record) > ROLLUP_NEWEST else None
    )
    while len(record) <= ROLLUP_NEWEST:
        record.append({})
    record[ROLLUP_NEWEST] = time_ms if known is None or time_ms > known else known


def _derived_newest(plan: GroupPlan, number: int, record: Bucket) -> int | None:
    times = [
        state[i]
        for agg, state in zip(plan.aggregations, record[AGGREGATIONS], strict=False)
        if state is not None and (i := agg.at[LAST_T]) >= 0
    ]
    if times:
        return max(times)
    if any(state is not None for state in record[AGGREGATIONS]):
        return (number + 1) * plan.period_ms - 1
    return None
