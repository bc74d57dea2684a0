"""Feature-group plans: a group's aggregations ready to run (streams, filters, windows in buckets) and
the canonical state fields each op keeps (docs/state-format.md). Pure."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from app.config.changes import definition, identity
from app.config.expressions import Expression
from app.config.spec import FeatureGroupSpec, Pipeline, feature_parts, parse_duration

#: The canonical fields of an aggregation state, by position (a state keeps those its ops read, in
#: this order; docs/state-format.md).
COUNT, SUM, MEAN, M2, MIN, MAX, FIRST_T, FIRST_V, LAST_T, LAST_V, DISTINCT, SHIFT = range(12)
RECENT, FREQUENT, VALUES = 12, 13, 14  # last_n, top_k, percentile
FIELDS = 15
#: The fields of a bucket written before layouts were recorded (no tag): the first twelve.
ALL_FIELDS = (1 << 12) - 1
#: A window's number of buckets that means lifetime: the roll-up and every bucket after it.
LIFETIME = 0
#: A bucket layout naming aggregations by their identity starts with this (an earlier one is hex masks).
BY_IDENTITY = "="
#: The canonical fields each op reads (count is always kept).
OP_FIELDS: dict[str, tuple[int, ...]] = {
    "count": (),
    "sum": (SUM,),
    "avg": (SUM,),
    "stddev": (MEAN, M2, SHIFT),
    "min": (MIN,),
    "max": (MAX,),
    "first": (FIRST_T, FIRST_V),
    "last": (LAST_T, LAST_V),
    "distinct": (DISTINCT,),
    "last_n": (RECENT,),
    "top_k": (FREQUENT,),
    "percentile": (VALUES,),
}


@dataclass(frozen=True)
class AggregationPlan:
    """One aggregation of a group, ready to run: which stream, field, filter, windows in buckets."""

    index: int
    name: str
    stream: str
    field: str | None
    ops: tuple[str, ...]
    windows: tuple[tuple[str, int], ...]  # (label as written, number of buckets; LIFETIME: lifetime)
    where: Expression | None
    n: int = 0  # values last_n keeps (0: no last_n)
    k: int = 0  # values top_k answers (0: no top_k)
    quantiles: tuple[float, ...] = ()  # what percentile answers
    #: names its definition in bucket layouts (:func:`identity`): a changed definition is another state
    ident: str = ""
    #: being replayed (tables/replay.py): the live path marks the first offset it applies per bucket
    replaying: bool = False
    # whether it keeps value hashes (`dataclasses.`: the attribute `field` above shadows the function)
    distinct: bool = dataclasses.field(init=False, compare=False, repr=False)
    lifetime: bool = dataclasses.field(init=False, compare=False, repr=False)  # has a lifetime window
    #: bitmask of the canonical fields its state keeps; the canonical fields kept, in order; per
    #: canonical field, its position in the state (-1: not kept)
    mask: int = dataclasses.field(init=False, compare=False, repr=False)
    layout: tuple[int, ...] = dataclasses.field(init=False, compare=False, repr=False)
    at: tuple[int, ...] = dataclasses.field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "distinct", "distinct" in self.ops)
        object.__setattr__(self, "lifetime", any(size == LIFETIME for _, size in self.windows))
        mask = 1 << COUNT
        for op in self.ops:
            for canonical in OP_FIELDS[op]:
                mask |= 1 << canonical
        layout = layout_of(mask)
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "layout", layout)
        object.__setattr__(self, "at", tuple(layout.index(f) if f in layout else -1 for f in range(FIELDS)))

    def labels(self) -> list[tuple[str, str, float | None]]:
        """(op, its part of the feature names, its quantile or None) per feature of each window, in
        spec order: percentile gives one per quantile (``p50``), last_n ``last10``, top_k ``top5``."""
        return feature_parts(self.ops, self.n, self.k, self.quantiles)

    def wants(self, fields: Mapping[str, Any]) -> bool:
        """Whether an event feeds this aggregation (its `where` holds). Raises on expression failure."""
        return self.where is None or bool(self.where.evaluate(fields))


def layout_of(mask: int) -> tuple[int, ...]:
    """The canonical fields of ``mask``, in canonical order."""
    return tuple(f for f in range(FIELDS) if mask >> f & 1)


@dataclass(frozen=True)
class GroupPlan:
    """A feature group's aggregations, per stream, with the bucket arithmetic of docs/product.md."""

    name: str
    key: tuple[str, ...]  # the key's fields, in the order of its string form
    period_ms: int
    retention: int  # R = largest window / period, in buckets
    aggregations: tuple[AggregationPlan, ...]
    by_stream: Mapping[str, tuple[AggregationPlan, ...]] = field(default_factory=dict)
    max_age: int | None = None  # ms: an answer whose newest event is older is stale
    ttl: int | None = None  # ms: a key with no event for this long is deleted (tables/expiry.py)
    # Precomputed once for read_features: the feature names (output order, each once), then per
    # (aggregation, window): (aggregation index, buckets, ((op, position in names, quantile), ...)).
    _written: tuple[str, ...] = field(init=False, compare=False, repr=False)  # as feature_names() lists them
    names: tuple[str, ...] = field(init=False, compare=False, repr=False)
    reads: tuple[tuple[int, int, tuple[tuple[str, int, float | None], ...]], ...] = field(
        init=False, compare=False, repr=False
    )
    widest: int = field(
        init=False, compare=False, repr=False
    )  # buckets of the largest window (lifetime aside)
    rollup: bool = field(init=False, compare=False, repr=False)  # an aggregation has a lifetime window
    tag: str = field(init=False, compare=False, repr=False)  # a bucket record's "l" in this layout

    def __post_init__(self) -> None:
        object.__setattr__(self, "tag", BY_IDENTITY + "".join(a.ident for a in self.aggregations))
        written = [
            f"{a.name}_{part}_{label}"
            for a in self.aggregations
            for _, part, _ in a.labels()
            for label, _ in a.windows
        ]
        names = tuple(dict.fromkeys(written))
        position = {name: i for i, name in enumerate(names)}
        reads = tuple(
            (a.index, size, tuple((op, position[f"{a.name}_{p}_{label}"], q) for op, p, q in a.labels()))
            for a in self.aggregations
            for label, size in a.windows
        )
        object.__setattr__(self, "_written", tuple(written))
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "reads", reads)
        object.__setattr__(self, "widest", max((size for _, size, _ in reads), default=0))
        object.__setattr__(self, "rollup", any(a.lifetime for a in self.aggregations))

    @classmethod
    def from_spec(
        cls, name: str, spec: FeatureGroupSpec, replaying: frozenset[str] = frozenset()
    ) -> GroupPlan:
        """The plan of feature group ``name`` of a validated spec; ``replaying``: the identities of its
        aggregations whose history is being replayed."""
        period = spec.period_ms
        aggs = tuple(
            AggregationPlan(
                index=i,
                name=a.name,
                stream=a.stream,
                field=a.field,
                ops=tuple(a.ops),
                windows=tuple(
                    (w, LIFETIME if ms is None else ms // period)
                    for w, ms in zip(a.windows, a.windows_ms, strict=True)
                ),
                where=Expression(a.where) if a.where else None,
                n=a.n or 0,
                k=a.k or 0,
                quantiles=tuple(a.quantiles or ()),
                ident=identity(a.name, definition(a)),
                replaying=identity(a.name, definition(a)) in replaying,
            )
            for i, a in enumerate(spec.aggregations)
        )
        by_stream: dict[str, tuple[AggregationPlan, ...]] = {}
        for agg in aggs:
            by_stream[agg.stream] = (*by_stream.get(agg.stream, ()), agg)
        return cls(
            name,
            spec.key_fields,
            period,
            spec.retention_ms // period,
            aggs,
            by_stream,
            None if spec.max_age is None else parse_duration(spec.max_age),
            None if spec.ttl is None else parse_duration(spec.ttl),
        )

    def bucket(self, time_ms: int) -> int:
        """b(t): the bucket number of an event time."""
        return time_ms // self.period_ms

    def feature_names(self) -> list[str]:
        """``<aggregation>_<op>_<window>`` of every feature, in spec order."""
        return list(self._written)


def group_plans(
    pipeline: Pipeline, replaying: Mapping[str, Collection[str]] | None = None
) -> dict[str, GroupPlan]:
    """Every feature group's plan, by name; ``replaying``: per group, the identities of the
    aggregations whose history is being replayed."""
    replaying = replaying or {}
    return {
        name: GroupPlan.from_spec(name, spec, frozenset(replaying.get(name, ())))
        for name, spec in pipeline.features.items()
    }
