"""What a feature service answers (docs/api.md): its columns in order with their types, and where
each comes from; derived from a valid spec. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from app.config.expressions import Expression
from app.config.spec import Pipeline

#: JSON type of each op's value over a field of each type ("": the field's own type)
_OP_TYPES = {
    "count": "int",
    "distinct": "int",
    "sum": "float",
    "avg": "float",
    "stddev": "float",
    "percentile": "float",
    "last_n": "list",
    "top_k": "list",
}


@dataclass(frozen=True)
class ServiceGroup:
    """One feature group a service reads: the entity fields of its key, and (feature, column) pairs."""

    group: str
    key: tuple[str, ...]
    features: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ServiceJoin:
    """One lookup a service joins on an entity field, and its (field, column) pairs."""

    lookup: str
    on: str
    columns: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ServicePlan:
    """A service's request fields, groups, joins and computed columns; ``columns``: every answered
    column in answer order with its JSON type (int, float, str, bool, or any for computed)."""

    name: str
    entities: tuple[str, ...]
    request: dict[str, str]
    groups: tuple[ServiceGroup, ...]
    joins: tuple[ServiceJoin, ...]
    computed: tuple[tuple[str, Expression], ...]
    columns: tuple[tuple[str, str], ...]


def feature_types(pipeline: Pipeline, group: str) -> dict[str, str]:
    """The JSON type of each feature of ``group``: int for counts, float for sums, means and
    percentiles, the field's type for min, max, first and last (values may be null: empty windows),
    list for last_n (of the field's values) and top_k (of [value, count] pairs)."""
    types = {}
    for agg in pipeline.features[group].aggregations:
        field = pipeline.streams[agg.stream].fields.get(agg.field or "", "float")
        for op, label in agg.op_labels():
            for window in agg.windows:
                types[f"{agg.name}_{label}_{window}"] = _OP_TYPES.get(op, field)
    return types


def service_plan(pipeline: Pipeline, name: str) -> ServicePlan:
    """The plan of service ``name`` of a valid ``pipeline``."""
    spec = pipeline.services[name]
    columns: dict[str, str] = dict(spec.request)
    reads: dict[str, list[tuple[str, str]]] = {}
    for item in spec.features:
        group, feature = (item.group, None) if item.group else (item.feature or "").partition(".")[::2]
        assert group is not None
        types = feature_types(pipeline, group)
        for each in [feature] if feature else pipeline.features[group].feature_names():
            reads.setdefault(group, []).append((each, item.prefix + each))
            columns[item.prefix + each] = types[each]
    joins = []
    for join in spec.join:
        lookup = pipeline.lookups[join.lookup]
        pairs = tuple((field, join.prefix + field) for field in lookup.fields)
        joins.append(ServiceJoin(join.lookup, join.on or lookup.key, pairs))
        columns.update((column, lookup.fields[field]) for field, column in pairs)
    computed = tuple((column, Expression(source)) for column, source in spec.computed.items())
    columns.update((column, "any") for column, _ in computed)
    groups = tuple(
        ServiceGroup(group, pipeline.features[group].key_fields, tuple(pairs))
        for group, pairs in reads.items()
    )
    return ServicePlan(
        name, tuple(spec.entities), dict(spec.request), groups, tuple(joins), computed, tuple(columns.items())
    )
