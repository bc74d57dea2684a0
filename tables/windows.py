"""Sliding-window feature state: pure functions over one entity key's records, no I/O.

A key's state in a feature table is a few small records, so an event costs one small write whatever
the windows:

- the head, under ``<key>\\0``: ``{"n": newest bucket seen (any stream of the group, before `where`
  filters), "m": which of the R buckets (n - R, n] are stored, as a hex bitmask (bit i = bucket
  n - i; so the head has the same small size whatever the windows), "o": {source: highest offset
  processed}}``; rewritten only when a bucket is created or expired (at most once per period per key);
- one record per bucket, under ``<key>\\0<bucket>``: ``[[aggregation state or None, one per
  aggregation], layout (below), {"<source topic>:<partition>": highest source offset applied to this
  bucket}]`` (a JSON array: it decodes in half the time of an object with the same values, and a
  feature read decodes every bucket of its widest window).

Every window of an aggregation is answered from the same buckets, so a read merges O(window / period)
buckets. The applied offsets live in the record they guard: a bucket is restored from one changelog
record together with the offsets it contains, so a redelivered event (crash, rebalance, restore) is
recognised and never counted twice. Within a flush the buckets are written before the head, and
expired buckets are deleted last (one partition, in order), so after a crash the stored records are
a prefix of that sequence: a bucket the head does not list yet was created by events that were not
committed, which are redelivered and rebuild it; the head's offsets are never ahead of the buckets,
so they may also mark a redelivered event as a duplicate — the only way to recognise one whose
bucket has expired meanwhile.

An aggregation state is a list of the running values its ops need, in the order ``[count, sum,
mean, m2, min, max, first_t, first_v, last_t, last_v, distinct, shift]`` (the *canonical* fields):
count and sum are exact running values, mean/m2 are Welford's over the values minus ``shift`` (the
bucket's first value, so large offsets such as timestamps lose no digits) and are merged with Chan's
formula, so stddev stays stable; distinct is a list of 64-bit value hashes while a bucket has at most
``EXACT_DISTINCT`` values, then a HyperLogLog sketch (Apache DataSketches) in base64. count is always
kept; sum for sum/avg, mean/m2/shift for stddev, min, max, first_t/first_v, last_t/last_v, distinct
for their ops (:data:`_FIELDS`). A shop bucket record is about 120 bytes instead of 291 with every
field, and decoding, merging and freeing it costs about half as much.

A bucket record names the fields it holds: its layout, per aggregation the bitmask of its canonical
fields, in hex, comma-separated. Earlier formats are read too: an object ``{"o": offsets, "a":
states, "l": layout}``, and before layouts the same without ``"l"`` (every aggregation holding all
twelve fields). A record whose fields differ from what the spec's ops need now (an op was added or
removed) is converted when read; an aggregation whose bucket lacks a field that an op added since
needs is left out of that bucket's windows (logged once), until such buckets expire.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import datasketches
import orjson

from app.config.expressions import Expression
from app.config.spec import FeatureGroupSpec, Pipeline, parse_duration

AggState = list[Any]
#: A bucket record, decoded: [aggregation states (None: no value yet), layout tag, applied offsets]
Bucket = list[Any]
_AGGREGATIONS, _LAYOUT, _OFFSETS = range(3)
Outcome = Literal["applied", "duplicate", "late"]

EXACT_DISTINCT = 128  # per bucket; beyond it a bucket keeps a sketch instead of the hashes
HLL_LG_K = 14  # relative standard error ~0.8 %; 8 KiB per dense bucket sketch
_COUNT, _SUM, _MEAN, _M2, _MIN, _MAX, _FIRST_T, _FIRST_V, _LAST_T, _LAST_V, _DISTINCT, _SHIFT = range(12)
_ALL_FIELDS = (1 << 12) - 1
#: The canonical fields each op reads (count is always kept).
_FIELDS: dict[str, tuple[int, ...]] = {
    "count": (),
    "sum": (_SUM,),
    "avg": (_SUM,),
    "stddev": (_MEAN, _M2, _SHIFT),
    "min": (_MIN,),
    "max": (_MAX,),
    "first": (_FIRST_T, _FIRST_V),
    "last": (_LAST_T, _LAST_V),
    "distinct": (_DISTINCT,),
}
logger = logging.getLogger(__name__)


def value_hash(value: Any) -> int:
    """A stable signed 64-bit hash of a field value (the same online and offline)."""
    if isinstance(value, float):
        value += 0.0  # -0.0 == 0.0: one distinct value, one hash
    digest = hashlib.blake2b(orjson.dumps(value), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


@dataclass(frozen=True)
class AggregationPlan:
    """One aggregation of a group, ready to run: which stream, field, filter, windows in buckets."""

    index: int
    name: str
    stream: str
    field: str | None
    ops: tuple[str, ...]
    windows: tuple[tuple[str, int], ...]  # (label as written, number of buckets)
    where: Expression | None
    # whether it keeps value hashes (`dataclasses.`: the attribute `field` above shadows the function)
    distinct: bool = dataclasses.field(init=False, compare=False, repr=False)
    #: bitmask of the canonical fields its state keeps; the canonical fields kept, in order; per
    #: canonical field, its position in the state (-1: not kept)
    mask: int = dataclasses.field(init=False, compare=False, repr=False)
    layout: tuple[int, ...] = dataclasses.field(init=False, compare=False, repr=False)
    at: tuple[int, ...] = dataclasses.field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "distinct", "distinct" in self.ops)
        mask = 1 << _COUNT
        for op in self.ops:
            for canonical in _FIELDS[op]:
                mask |= 1 << canonical
        layout = _layout(mask)
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "layout", layout)
        object.__setattr__(self, "at", tuple(layout.index(f) if f in layout else -1 for f in range(12)))

    def wants(self, fields: Mapping[str, Any]) -> bool:
        """Whether an event feeds this aggregation (its `where` holds). Raises on expression failure."""
        return self.where is None or bool(self.where.evaluate(fields))


def _layout(mask: int) -> tuple[int, ...]:
    """The canonical fields of ``mask``, in canonical order."""
    return tuple(f for f in range(12) if mask >> f & 1)


@dataclass(frozen=True)
class GroupPlan:
    """A feature group's aggregations, per stream, with the bucket arithmetic of PRODUCT.md."""

    name: str
    key: str
    period_ms: int
    retention: int  # R = largest window / period, in buckets
    aggregations: tuple[AggregationPlan, ...]
    by_stream: Mapping[str, tuple[AggregationPlan, ...]] = field(default_factory=dict)
    # Precomputed once for read_features: the feature names (output order, each once), then per
    # (aggregation, window): (aggregation index, buckets, ((op, position in names), ...)).
    _written: tuple[str, ...] = field(init=False, compare=False, repr=False)  # as feature_names() lists them
    names: tuple[str, ...] = field(init=False, compare=False, repr=False)
    reads: tuple[tuple[int, int, tuple[tuple[str, int], ...]], ...] = field(
        init=False, compare=False, repr=False
    )
    widest: int = field(init=False, compare=False, repr=False)  # buckets of the largest window
    tag: str = field(init=False, compare=False, repr=False)  # a bucket record's "l" in this layout

    def __post_init__(self) -> None:
        object.__setattr__(self, "tag", ",".join(format(a.mask, "x") for a in self.aggregations))
        written = [
            f"{a.name}_{op}_{label}" for a in self.aggregations for op in a.ops for label, _ in a.windows
        ]
        names = tuple(dict.fromkeys(written))
        position = {name: i for i, name in enumerate(names)}
        reads = tuple(
            (a.index, size, tuple((op, position[f"{a.name}_{op}_{label}"]) for op in a.ops))
            for a in self.aggregations
            for label, size in a.windows
        )
        object.__setattr__(self, "_written", tuple(written))
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "reads", reads)
        object.__setattr__(self, "widest", max((size for _, size, _ in reads), default=0))

    @classmethod
    def from_spec(cls, name: str, spec: FeatureGroupSpec) -> GroupPlan:
        period = spec.period_ms
        aggs = tuple(
            AggregationPlan(
                index=i,
                name=a.name,
                stream=a.stream,
                field=a.field,
                ops=tuple(a.ops),
                windows=tuple((w, parse_duration(w) // period) for w in a.windows),
                where=Expression(a.where) if a.where else None,
            )
            for i, a in enumerate(spec.aggregations)
        )
        by_stream: dict[str, tuple[AggregationPlan, ...]] = {}
        for agg in aggs:
            by_stream[agg.stream] = (*by_stream.get(agg.stream, ()), agg)
        return cls(name, spec.key, period, spec.retention_ms // period, aggs, by_stream)

    def bucket(self, time_ms: int) -> int:
        return time_ms // self.period_ms

    def feature_names(self) -> list[str]:
        return list(self._written)


def group_plans(pipeline: Pipeline) -> dict[str, GroupPlan]:
    return {name: GroupPlan.from_spec(name, spec) for name, spec in pipeline.features.items()}


def head_key(key: bytes) -> bytes:
    return key + b"\x00"


def bucket_key(key: bytes, bucket: int) -> bytes:
    return b"%b\x00%d" % (key, bucket)


Loader = Callable[[bytes], bytes | None]
#: Every (record key, value) whose key starts with the given prefix, in key order (a range read).
Scanner = Callable[[bytes], Iterable[tuple[bytes, bytes]]]
_UNREAD: Any = object()  # KeyState._buckets: not looked up yet


class KeyState:
    """One key's head and the buckets touched so far, with what changed since the last
    :meth:`changes`. The stored buckets are a bitmask (an int) anchored at the newest bucket n:
    bit i is bucket n - i, for i < R.

    Records are read through ``load`` (a table get), the head at once and each bucket when first
    needed (an event touches one); or, given ``scan``, all of the key's records in one range read
    (a feature read needs every bucket of its widest window: one seek instead of one get per
    bucket, about 3x cheaper in RocksDB), each bucket decoded when first needed."""

    __slots__ = (
        "_buckets",
        "_deleted",
        "_dirty",
        "_head_dirty",
        "_load",
        "_raw",
        "_retention",
        "key",
        "mask",
        "newest",
        "processed",
    )

    def __init__(self, key: bytes, load: Loader, retention: int, scan: Scanner | None = None) -> None:
        self.key = key
        self._load = load
        self._retention = retention
        # scanned: the encoded stored buckets (a bucket absent here is not stored); else None
        self._raw: dict[int, bytes] | None = None
        if scan is None:
            raw = load(key + b"\x00")  # head_key(key)
        else:
            raw, self._raw = self._scan(scan)
        self.newest: int | None
        self.processed: dict[str, int]
        if raw is None:
            self.newest, self.mask, self.processed = None, 0, {}
        else:
            head = orjson.loads(raw)
            self.newest, self.mask, self.processed = head["n"], int(head["m"], 16), head["o"]
        self._buckets: dict[int, Bucket | None] = {}
        self._head_dirty = False
        self._dirty: set[int] = set()
        self._deleted: set[int] = set()

    def _scan(self, scan: Scanner) -> tuple[bytes | None, dict[int, bytes]]:
        """The head and the encoded buckets, from one range read of the key's records. Records of
        other keys that share the prefix (a key that itself contains a NUL) do not parse as a bucket
        number and are skipped; the head decides below which buckets count as stored."""
        prefix = self.key + b"\x00"
        head: bytes | None = None
        buckets: dict[int, bytes] = {}
        size = len(prefix)
        for record_key, value in scan(prefix):
            rest = record_key[size:]
            if not rest:
                head = value
            elif rest.isdigit() or (rest[:1] == b"-" and rest[1:].isdigit()):  # -?[0-9]+, 5x a regex
                buckets[int(rest)] = value
        return head, buckets

    @property
    def exists(self) -> bool:
        """False for a key that never had an event (of the group's streams)."""
        return self.newest is not None

    def stored(self, lo: int, hi: int) -> list[int]:
        """The stored bucket numbers in [lo, hi], ascending."""
        n = self.newest
        if n is None:
            return []
        hi = min(hi, n)
        lo = max(lo, n - self._retention + 1)
        if lo > hi:
            return []
        bits = (self.mask >> (n - hi)) & ((1 << (hi - lo + 1)) - 1)
        found = []
        while bits:
            low = bits & -bits
            found.append(hi - (low.bit_length() - 1))
            bits ^= low
        found.reverse()
        return found

    def stored_buckets(self) -> list[int]:
        n = self.newest
        return [] if n is None else self.stored(n - self._retention + 1, n)

    def is_stored(self, number: int) -> bool:
        n = self.newest
        return n is not None and 0 <= n - number < self._retention and bool(self.mask >> (n - number) & 1)

    def bucket(self, number: int) -> Bucket | None:
        record = self._buckets.get(number, _UNREAD)
        if record is _UNREAD:
            record = self._decoded(number) if self.is_stored(number) else self._cache(number, None)
        return record

    def _decoded(self, number: int) -> Bucket | None:
        """Stored bucket ``number``, decoded and kept (the caller knows it is stored)."""
        raw = self._raw.get(number) if self._raw is not None else self._load(bucket_key(self.key, number))
        if raw is None:
            return self._cache(number, None)
        record = orjson.loads(raw)
        if type(record) is dict:  # the earlier format: {"o": ..., "a": ..., "l": ...}
            record = [record["a"], record.get("l"), record["o"]]
        return self._cache(number, record)

    def _cache(self, number: int, record: Bucket | None) -> Bucket | None:
        self._buckets[number] = record
        return record

    def advance(self, number: int) -> None:
        """Make ``number`` the newest bucket; buckets now <= n - R are expired (deleted on write)."""
        if self.newest is not None:
            shifted = self.mask << (number - self.newest)
            expired = shifted >> self._retention
            while expired:  # bit j: bucket number - R - j
                low = expired & -expired
                self._deleted.add(number - self._retention - (low.bit_length() - 1))
                expired ^= low
            self.mask = shifted & ((1 << self._retention) - 1)
        self.newest = number
        self._head_dirty = True

    def _create(self, number: int, size: int, tag: str) -> Bucket:
        record: Bucket = [[None] * size, tag, {}]
        self._buckets[number] = record
        if not self.is_stored(number):
            assert self.newest is not None and number <= self.newest
            self.mask |= 1 << (self.newest - number)
            self._head_dirty = True
        return record

    def changes(self) -> list[tuple[bytes, bytes | None]]:
        """(record key, value or None to delete) to write in this order: buckets, head, deletions
        (see the module docstring for why); then forgets them."""
        if not (self._dirty or self._head_dirty or self._deleted):
            return []
        out: list[tuple[bytes, bytes | None]] = [
            (bucket_key(self.key, number), orjson.dumps(self._buckets[number]))
            for number in sorted(self._dirty - self._deleted)
        ]
        if self._head_dirty:
            head = {"n": self.newest, "m": format(self.mask, "x"), "o": self.processed}
            out.append((head_key(self.key), orjson.dumps(head)))
        out.extend((bucket_key(self.key, number), None) for number in sorted(self._deleted))
        self._head_dirty = False
        self._dirty.clear()
        self._deleted.clear()
        return out


def is_late(plan: GroupPlan, state: KeyState, time_ms: int) -> bool:
    """PRODUCT.md: late when b(event) <= n - R, n the newest bucket of any earlier event of the key."""
    newest = state.newest
    return newest is not None and plan.bucket(time_ms) <= newest - plan.retention


def choose(plan: GroupPlan, stream: str, fields: Mapping[str, Any]) -> list[AggregationPlan]:
    """The aggregations of ``stream`` that this event feeds (their `where` holds). Raises when a
    `where` expression fails, before any state changes."""
    return [agg for agg in plan.by_stream.get(stream, ()) if agg.where is None or agg.where.evaluate(fields)]


def apply_event(
    plan: GroupPlan,
    state: KeyState,
    chosen: list[AggregationPlan],
    fields: Mapping[str, Any],
    time_ms: int,
    source: str,
    offset: int,
) -> Outcome:
    """Apply one event to a key's state: 'applied', 'duplicate' (this source offset was applied to
    its bucket before) or 'late' (dropped; the caller dead-letters it). ``chosen`` comes from
    :func:`choose`. Events of one source partition arrive in offset order, so the highest applied
    offset per source partition in a bucket tells which of its events that bucket already holds."""
    processed = state.processed
    if processed.get(source, -1) >= offset:
        return "duplicate"
    number = time_ms // plan.period_ms
    newest = state.newest
    late = newest is not None and number <= newest - plan.retention  # is_late
    record = None if late else state.bucket(number)
    if record is not None and record[_LAYOUT] != plan.tag:
        record = _convert(plan, record)
    if record is not None and record[_OFFSETS].get(source, -1) >= offset:
        return "duplicate"
    processed[source] = offset  # persisted with the head's next write, after the buckets
    if late:
        return "late"
    if newest is None or number > newest:
        state.advance(number)
    values = []
    for agg in chosen:
        value = fields.get(agg.field) if agg.field is not None else True
        if value is not None:  # like pandas: nulls don't count
            values.append((agg, value))
    if not values:
        return "applied"
    if record is None:
        record = state._create(number, len(plan.aggregations), plan.tag)
    slots = record[_AGGREGATIONS]
    for agg, value in values:
        index = agg.index
        slots[index] = _update(slots[index], value, time_ms, agg)
    record[_OFFSETS][source] = offset
    state._dirty.add(number)
    return "applied"


_NUMBERS = (int, float)


def _update(agg: AggState | None, value: Any, time_ms: int, plan: AggregationPlan) -> AggState:
    """``agg`` (None: a new state) with one more value, in ``plan``'s layout."""
    numeric = isinstance(value, _NUMBERS) and not isinstance(value, bool)
    at = plan.at
    if agg is None:
        x = float(value) if numeric else 0.0
        hashes = [value_hash(value)] if plan.distinct else []
        canonical = (1, x, 0.0, 0.0, value, value, time_ms, value, time_ms, value, hashes, x)
        return [canonical[f] for f in plan.layout]
    count = agg[0] + 1  # count: always the first field
    agg[0] = count
    if numeric:
        x = float(value)
        i = at[_SUM]
        if i >= 0:
            agg[i] += x
        i = at[_MEAN]
        if i >= 0:  # with m2 and shift (stddev)
            m2 = at[_M2]
            shifted = x - agg[at[_SHIFT]]
            delta = shifted - agg[i]
            agg[i] += delta / count
            agg[m2] += delta * (shifted - agg[i])
    i = at[_MIN]
    if i >= 0 and value < agg[i]:
        agg[i] = value
    i = at[_MAX]
    if i >= 0 and value > agg[i]:
        agg[i] = value
    i = at[_FIRST_T]  # first_v follows it
    if i >= 0 and time_ms < agg[i]:  # ties: the first to arrive stays first
        agg[i], agg[i + 1] = time_ms, value
    i = at[_LAST_T]  # last_v follows it
    if i >= 0 and time_ms >= agg[i]:  # ties: the last to arrive becomes last
        agg[i], agg[i + 1] = time_ms, value
    i = at[_DISTINCT]
    if i >= 0:  # hashing costs more than everything else here: only for aggregations that need it
        agg[i] = _add_distinct(agg[i], value_hash(value))
    return agg


_WARNED: set[tuple[str, str]] = set()  # (group, aggregation) whose older buckets lack fields


def _convert(plan: GroupPlan, record: Bucket) -> Bucket:
    """``record`` (a bucket written with other fields: earlier format or spec) in ``plan``'s layout,
    in place. An aggregation state lacking a field that its ops need now is dropped."""
    aggregations, tag = record[_AGGREGATIONS], record[_LAYOUT]
    masks = [_ALL_FIELDS] * len(aggregations) if tag is None else [int(m, 16) for m in tag.split(",")]
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
                    sorted(op for op in agg.ops if any(not mask >> f & 1 for f in _FIELDS[op])),
                )
            slots.append(None)
        else:
            canonical = dict(zip(_layout(mask), old, strict=True))
            slots.append([canonical[f] for f in agg.layout])
    record[_AGGREGATIONS] = slots
    record[_LAYOUT] = plan.tag
    return record


def _add_distinct(distinct: list[int] | str, h: int) -> list[int] | str:
    if isinstance(distinct, list):
        if h in distinct:
            return distinct
        if len(distinct) < EXACT_DISTINCT:
            distinct.append(h)
            return distinct
        sketch = _sketch_of(distinct)
    else:
        sketch = datasketches.hll_sketch.deserialize(base64.b64decode(distinct))
    sketch.update(h)
    return base64.b64encode(sketch.serialize_compact()).decode("ascii")


def _sketch_of(hashes: list[int]) -> Any:
    sketch = datasketches.hll_sketch(HLL_LG_K, datasketches.tgt_hll_type.HLL_4)
    for h in hashes:
        sketch.update(h)
    return sketch


@dataclass
class _Merged:
    """A window's merge of bucket states given with all twelve canonical fields (app/offline builds
    them so); the worker's reads merge states in their layout with :func:`_window_results`."""

    count: int = 0
    sum: float = 0.0
    shift: float = 0.0
    mean: float = 0.0  # of the values minus ``shift``
    m2: float = 0.0
    min: Any = None
    max: Any = None
    first: tuple[int, Any] | None = None
    last: tuple[int, Any] | None = None
    hashes: set[int] = field(default_factory=set)
    sketches: list[str] = field(default_factory=list)

    def add(self, agg: AggState) -> None:
        n_a, n_b = self.count, agg[_COUNT]
        total = n_a + n_b
        if n_a == 0:
            self.shift = agg[_SHIFT]
        # Chan et al.: both means in this shift's frame; (shift_b - shift_a) is exact for close shifts.
        delta = (agg[_SHIFT] - self.shift) + agg[_MEAN] - self.mean
        self.mean += delta * n_b / total
        self.m2 += agg[_M2] + delta * delta * n_a * n_b / total
        self.count = total
        self.sum += agg[_SUM]
        self.min = agg[_MIN] if self.min is None or agg[_MIN] < self.min else self.min
        self.max = agg[_MAX] if self.max is None or agg[_MAX] > self.max else self.max
        # Buckets are merged in time order, so on equal times the earlier bucket's value stands.
        if self.first is None or agg[_FIRST_T] < self.first[0]:
            self.first = (agg[_FIRST_T], agg[_FIRST_V])
        if self.last is None or agg[_LAST_T] >= self.last[0]:
            self.last = (agg[_LAST_T], agg[_LAST_V])
        if isinstance(agg[_DISTINCT], list):
            self.hashes.update(agg[_DISTINCT])
        else:
            self.sketches.append(agg[_DISTINCT])

    def distinct(self) -> int:
        return _distinct_count(self.hashes, self.sketches)

    def result(self, op: str) -> Any:
        if op == "count":
            return self.count
        if op == "distinct":
            return self.distinct()
        if op == "sum":
            return self.sum
        if self.count == 0:
            return None
        if op == "avg":
            return self.sum / self.count
        if op == "stddev":
            return math.sqrt(max(self.m2, 0.0) / (self.count - 1)) if self.count >= 2 else None
        if op == "min":
            return self.min
        if op == "max":
            return self.max
        if op == "first":
            return self.first[1] if self.first else None
        if op == "last":
            return self.last[1] if self.last else None
        raise ValueError(f"unknown op {op!r}")


def _distinct_count(hashes: set[int], sketches: list[str]) -> int:
    if not sketches:
        return len(hashes)
    union = datasketches.hll_union(HLL_LG_K)
    for encoded in sketches:
        union.update(datasketches.hll_sketch.deserialize(base64.b64decode(encoded)))
    for h in hashes:
        single = datasketches.hll_sketch(HLL_LG_K)
        single.update(h)
        union.update(single)
    return round(union.get_estimate())


def _window_results(
    states: list[AggState], ops: tuple[tuple[str, int], ...], at: tuple[int, ...], out: list[Any]
) -> None:
    """``out[position] = result`` for each (op, position) of ``ops`` over bucket states in time order
    (in the layout ``at``: position per canonical field): the operations of :meth:`_Merged.add` and
    :meth:`_Merged.result`, in the same order (so the same floats), only those that the ops need."""
    count = 0
    for agg in states:
        count += agg[0]  # count: always the first field
    total: float | None = None
    for op, position in ops:
        if op == "count":
            out[position] = count
        elif op == "sum" or op == "avg":
            if total is None:
                total = 0.0
                i = at[_SUM]
                for agg in states:
                    total += agg[i]
            out[position] = total if op == "sum" else total / count if count else None
        elif op == "distinct":
            hashes: set[int] = set()
            sketches: list[str] = []
            i = at[_DISTINCT]
            for agg in states:
                digest = agg[i]
                if isinstance(digest, list):
                    hashes.update(digest)
                else:
                    sketches.append(digest)
            out[position] = _distinct_count(hashes, sketches)
        elif not count:
            out[position] = None
        elif op == "stddev":
            i_mean, i_m2, i_shift = at[_MEAN], at[_M2], at[_SHIFT]
            n_a, shift, mean, m2 = 0, states[0][i_shift], 0.0, 0.0
            for agg in states:  # Chan et al., as _Merged.add (whose shift is the first bucket's)
                n_b = agg[0]
                n = n_a + n_b
                delta = (agg[i_shift] - shift) + agg[i_mean] - mean
                mean += delta * n_b / n
                m2 += agg[i_m2] + delta * delta * n_a * n_b / n
                n_a = n
            out[position] = math.sqrt(max(m2, 0.0) / (count - 1)) if count >= 2 else None
        elif op == "min":
            i = at[_MIN]
            low = None
            for agg in states:
                if low is None or agg[i] < low:
                    low = agg[i]
            out[position] = low
        elif op == "max":
            i = at[_MAX]
            high = None
            for agg in states:
                if high is None or agg[i] > high:
                    high = agg[i]
            out[position] = high
        elif op == "first":
            i = at[_FIRST_T]  # first_v follows it
            first = states[0]
            for agg in states:  # on equal times the earlier bucket's value stands
                if agg[i] < first[i]:
                    first = agg
            out[position] = first[i + 1]
        elif op == "last":
            i = at[_LAST_T]  # last_v follows it
            last = states[0]
            for agg in states:
                if agg[i] >= last[i]:
                    last = agg
            out[position] = last[i + 1]
        else:
            raise ValueError(f"unknown op {op!r}")


def read_features(
    plan: GroupPlan, state: KeyState, at_ms: int, names: frozenset[str] | set[str] | None = None
) -> dict[str, Any]:
    """Every feature (or those in ``names``) with windows ending at ``at_ms``: a window W covers
    buckets (b(at) - W/P, b(at)]. Empty windows: count/sum/distinct 0, the others None."""
    end = at_ms // plan.period_ms
    all_names = plan.names
    reads = plan.reads
    widest = plan.widest
    if names is not None:
        reads = tuple(
            (index, size, wanted)
            for index, size, ops in reads
            if (wanted := tuple((op, i) for op, i in ops if all_names[i] in names))
        )
        if not reads:
            return {}
        widest = max(size for _, size, _ in reads)
    # Every window ends at `end`: the buckets of the widest one, loaded once, serve them all.
    numbers: list[int] = []
    slots: list[list[AggState | None]] = []  # per bucket, its aggregation states
    loaded = state._buckets
    tag = plan.tag
    for number in state.stored(end - widest + 1, end):
        record = loaded.get(number, _UNREAD)
        if record is _UNREAD:
            record = state._decoded(number)  # stored: no need to ask again (KeyState.bucket)
        if record is not None:
            if record[_LAYOUT] != tag:
                record = _convert(plan, record)
            numbers.append(number)
            slots.append(record[_AGGREGATIONS])
    out: list[Any] = [None] * len(all_names)
    aggregations = plan.aggregations
    for index, size, ops in reads:
        states = [agg for a in slots[bisect_left(numbers, end - size + 1) :] if (agg := a[index]) is not None]
        _window_results(states, ops, aggregations[index].at, out)
    if names is None:
        return dict(zip(all_names, out, strict=True))
    return {name: value for name, value in zip(all_names, out, strict=True) if name in names}


def outside_retention(
    plan: GroupPlan, state: KeyState, at_ms: int, names: frozenset[str] | set[str] | None = None
) -> bool:
    """PRODUCT.md: a window W at T needs buckets from b(T) - W/P + 1; when that is <= n - R, those
    buckets may be gone and the answer would be wrong. Checked for the largest window among the
    features asked for (all of the group's when ``names`` is None)."""
    newest = state.newest
    if newest is None:
        return False
    widest = plan.widest
    if names is not None:
        widest = max(
            (
                size
                for agg in plan.aggregations
                for label, size in agg.windows
                if any(f"{agg.name}_{op}_{label}" in names for op in agg.ops)
            ),
            default=0,
        )
    return plan.bucket(at_ms) - widest + 1 <= newest - plan.retention
