"""The pipeline spec: YAML -> validated, frozen models. SpecError lists every problem at once as
``path.to.field: message (line N)``; cross-section references are checked by ``_CHECKS``."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from app.config.expressions import Expression, ExpressionError
from app.errors import SpecError

FIELD_TYPES = ("str", "int", "float", "bool")
OPS = (
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "stddev",
    "first",
    "last",
    "distinct",
    "last_n",
    "top_k",
    "percentile",
)
MAX_LAST_N = 1_000  # the largest ``n`` of last_n: a bucket keeps at most n values
LIFETIME = "lifetime"  # the window of every event of the key since its first (docs/features.md)
MAX_TOP_K = 1_000  # the largest ``k`` of top_k (exact up to 1,000 distinct values per bucket)
_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d|w)\s*$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def parse_duration(value: object) -> int:
    """``"10m"`` -> 600000 (milliseconds). Units: ms, s, m, h, d, w. Raises ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"bad duration {value!r}: expected e.g. 10m, 1h, 24h, 7d")
    match = _DURATION.match(str(value)) if isinstance(value, str) else None
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"bad duration {value!r}: expected a positive number and a unit (ms, s, m, h, d, w)")
    return int(match.group(1)) * _UNITS_MS[match.group(2)]


def _duration_text(value: object) -> str:
    """Validate a duration and keep it as written: feature names use the spec's spelling (24h, not 1d)."""
    parse_duration(value)
    return re.sub(r"\s+", "", str(value))


def _window_text(value: object) -> str:
    """A window: a duration as written, or ``lifetime``."""
    if value == LIFETIME:
        return LIFETIME
    try:
        return _duration_text(value)
    except ValueError as exc:
        raise ValueError(f"{exc}, or lifetime") from None


def window_ms(window: str) -> int | None:
    """A window's length in milliseconds; None for ``lifetime`` (every event of the key)."""
    return None if window == LIFETIME else parse_duration(window)


def _field_type(value: str) -> str:
    if value not in FIELD_TYPES:
        raise ValueError(f"unknown type {value!r} (expected one of {', '.join(FIELD_TYPES)})")
    return value


def _op(value: str) -> str:
    if value not in OPS:
        raise ValueError(f"unknown op {value!r} (expected one of {', '.join(OPS)})")
    return value


def quantile_label(q: float) -> str:
    """A quantile's part of its feature name: 0.5 -> ``p50``, 0.999 -> ``p99_9``."""
    return "p" + f"{q * 100:.6g}".replace(".", "_")


def feature_parts(
    ops: Sequence[str], n: int | None, k: int | None, quantiles: Sequence[float]
) -> list[tuple[str, str, float | None]]:
    """(op, its part of the feature names, its quantile or None) per feature of each window, in
    spec order: percentile gives one per quantile."""
    out: list[tuple[str, str, float | None]] = []
    for op in ops:
        if op == "percentile":
            out += [(op, quantile_label(q), q) for q in quantiles]
        else:
            out.append((op, op_label(op, n, k), None))
    return out


def op_label(op: str, n: int | None, k: int | None) -> str:
    """An op's part of its feature names: ``last{n}`` for last_n, ``top{k}`` for top_k, else the op."""
    if op == "last_n":
        return f"last{n}"
    if op == "top_k":
        return f"top{k}"
    return op


def _name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"bad name {value!r}: use letters, digits and _ (not starting with a digit)")
    return value


def _topic(value: str) -> str:
    if not _TOPIC.match(value):
        raise ValueError(f"bad topic name {value!r}: use letters, digits, '.', '_' and '-'")
    return value


FieldType = Annotated[str, AfterValidator(_field_type)]
Op = Annotated[str, AfterValidator(_op)]
Duration = Annotated[str, BeforeValidator(_duration_text)]
Window = Annotated[str, BeforeValidator(_window_text)]
Name = Annotated[str, AfterValidator(_name)]
Topic = Annotated[str, AfterValidator(_topic)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class _InputSpec(_Model):
    """What streams and lookups share: a keyed input topic of typed JSON, and its dead letters."""

    topic: Topic
    key: Name
    fields: dict[Name, FieldType] = Field(min_length=1)
    dlq: Topic | None = None

    @property
    def dlq_topic(self) -> str:
        return self.dlq or f"{self.topic}.dlq"


class StreamSpec(_InputSpec):
    """An input topic of JSON events, keyed by the entity field ``key``."""

    time: Name | None = None


class LookupSpec(_InputSpec):
    """A changelog-backed lookup table fed by a (compacted) topic; ``global``: also replicated whole
    to every worker, so joins on any field read it without a hop (docs/pipeline.md)."""

    global_: bool = Field(default=False, alias="global")


class AggregationSpec(_Model):
    """Ops over one field of one stream, kept for several windows, optionally filtered by ``where``."""

    name: Name
    stream: Name
    field: Name | None = None
    ops: list[Op] = Field(min_length=1)
    windows: list[Window] = Field(min_length=1)
    where: str | None = None
    n: int | None = Field(default=None, ge=1, le=MAX_LAST_N, description="How many values last_n keeps.")
    k: int | None = Field(default=None, ge=1, le=MAX_TOP_K, description="How many values top_k answers.")
    quantiles: list[float] | None = Field(
        default=None, min_length=1, max_length=20, description="The quantiles percentile answers, in (0, 1)."
    )

    @property
    def windows_ms(self) -> list[int | None]:
        """The windows in milliseconds, in spec order (None: lifetime)."""
        return [window_ms(w) for w in self.windows]

    def op_labels(self) -> list[tuple[str, str]]:
        """(op, its part of the feature names) per op, in spec order: ``last_n`` with n: 10 is
        ``last10``, ``top_k`` with k: 5 is ``top5``, ``percentile`` one per quantile (``p50``, ``p99``,
        ``p99_9``), the other ops their own name."""
        return [(op, label) for op, label, _ in feature_parts(self.ops, self.n, self.k, self.quantiles or ())]

    def feature_names(self) -> list[str]:
        """``<name>_<op>_<window>`` per op and window, in spec order."""
        return [f"{self.name}_{label}_{w}" for _, label in self.op_labels() for w in self.windows]


def _key_fields(value: object) -> object:
    if isinstance(value, list) and len(set(map(str, value))) != len(value):
        raise ValueError("a key field is listed twice")
    return value


class FeatureGroupSpec(_Model):
    """Sliding-window aggregates per entity key (a field or a list of fields), bucketed by ``period``."""

    key: Annotated[Name | Annotated[list[Name], Field(min_length=1)], AfterValidator(_key_fields)]
    period: Duration
    aggregations: list[AggregationSpec] = Field(min_length=1)
    #: An answer whose newest event is older than this (before ``at``) says ``"stale": true``.
    max_age: Duration | None = None
    #: A key with no event for this long (by its partition's newest event time) is deleted.
    ttl: Duration | None = None

    @property
    def key_fields(self) -> tuple[str, ...]:
        """The key's fields, in the order of the key's string form."""
        return (self.key,) if isinstance(self.key, str) else tuple(self.key)

    @property
    def period_ms(self) -> int:
        """The bucket period in milliseconds."""
        return parse_duration(self.period)

    @property
    def retention_ms(self) -> int:
        """The largest window of the group (lifetime windows aside; one period when there is no
        other): buckets older than this behind the newest may go (lifetime keeps them rolled up)."""
        return max(
            (w for agg in self.aggregations for w in agg.windows_ms if w is not None), default=self.period_ms
        )

    def feature_names(self) -> list[str]:
        """Every feature of the group, aggregation by aggregation."""
        return [name for agg in self.aggregations for name in agg.feature_names()]


class JoinSpec(_Model):
    """Join a lookup on a stream field (``on``, default: the stream key); ``prefix`` renames its
    fields to avoid collisions."""

    lookup: Name
    on: Name | None = None
    prefix: str = ""


def _join_item(value: object) -> object:
    return {"lookup": value} if isinstance(value, str) else value


class OutputSpec(_Model):
    """An enriched topic: a stream's events plus joined lookups, features and computed columns."""

    topic: Topic
    from_: Name = Field(alias="from")
    join: list[Annotated[JoinSpec, BeforeValidator(_join_item)]] = Field(default_factory=list)
    features: list[Name] = Field(default_factory=list)
    computed: dict[Name, str] = Field(default_factory=dict)


class ServiceFeatureSpec(_Model):
    """Features a service answers: one (``feature: group.name``) or every one of a group
    (``group``), each named ``prefix`` + its name."""

    feature: str | None = None
    group: Name | None = None
    prefix: str = ""


def _service_feature_item(value: object) -> object:
    """``group.*`` -> a whole group, ``group.name`` -> one feature."""
    if isinstance(value, str):
        group, _, name = value.partition(".")
        return {"group": group} if name == "*" else {"feature": value}
    return value


def _distinct_names(value: object) -> object:
    if isinstance(value, list) and len(set(map(str, value))) != len(value):
        raise ValueError("a field is listed twice")
    return value


class ServiceSpec(_Model):
    """A model's feature vector in one call (docs/api.md): rows carry ``entities`` and ``request``
    fields; the answer has the request fields, the features, joined lookup columns and computed
    columns, in that order."""

    entities: Annotated[list[Name], Field(min_length=1), AfterValidator(_distinct_names)]
    request: dict[Name, FieldType] = Field(default_factory=dict)
    features: list[Annotated[ServiceFeatureSpec, BeforeValidator(_service_feature_item)]] = Field(
        min_length=1
    )
    join: list[Annotated[JoinSpec, BeforeValidator(_join_item)]] = Field(default_factory=list)
    computed: dict[Name, str] = Field(default_factory=dict)


class Pipeline(_Model):
    """A whole pipeline spec, validated."""

    name: Annotated[str, AfterValidator(_topic)]
    streams: dict[Name, StreamSpec] = Field(min_length=1)
    lookups: dict[Name, LookupSpec] = Field(default_factory=dict)
    features: dict[Name, FeatureGroupSpec] = Field(default_factory=dict)
    outputs: dict[Name, OutputSpec] = Field(default_factory=dict)
    services: dict[Name, ServiceSpec] = Field(default_factory=dict)


Loc = tuple[str | int, ...]


def _check_streams(p: Pipeline) -> Iterator[tuple[Loc, str]]:
    """Each stream's key and time are among its fields; yields (location, message) per problem."""
    for name, s in p.streams.items():
        if s.key not in s.fields:
            yield ("streams", name, "key"), f"key field {s.key!r} is not in fields"
        if s.time is not None and s.time not in s.fields:
            yield ("streams", name, "time"), f"time field {s.time!r} is not in fields"


def _check_lookups(p: Pipeline) -> Iterator[tuple[Loc, str]]:
    """Each lookup's key is not repeated in its fields; yields (location, message) per problem."""
    for name, lk in p.lookups.items():
        if lk.key in lk.fields:
            yield ("lookups", name, "key"), f"key {lk.key!r} must not be repeated in fields"


def _check_features(p: Pipeline) -> Iterator[tuple[Loc, str]]:
    """Every group's aggregations, checked against their streams; yields (location, message) per problem."""
    for gname, group in p.features.items():
        seen: set[str] = set()
        for i, agg in enumerate(group.aggregations):
            at: Loc = ("features", gname, "aggregations", i)
            if agg.name in seen:
                yield (*at, "name"), f"duplicate aggregation name {agg.name!r}"
            seen.add(agg.name)
            yield from _check_aggregation(p, group, agg, at)


def _check_aggregation(
    p: Pipeline, group: FeatureGroupSpec, agg: AggregationSpec, at: Loc
) -> Iterator[tuple[Loc, str]]:
    """One aggregation at ``at``: its stream, key, field, ops, where and windows."""
    stream = p.streams.get(agg.stream)
    if stream is None:
        yield (*at, "stream"), f"unknown stream {agg.stream!r} (streams: {', '.join(p.streams)})"
        return
    yield from _check_key_fields(stream, agg.stream, group.key_fields, (*at, "stream"), "the group's key")
    needs_field = any(op != "count" for op in agg.ops)
    if agg.field is None and needs_field:
        yield (*at, "field"), "a field is required for ops other than count"
    elif agg.field is not None and agg.field not in stream.fields:
        yield (*at, "field"), f"unknown field {agg.field!r} of stream {agg.stream!r}"
    elif agg.field is not None and stream.fields[agg.field] not in ("int", "float"):
        numeric = [op for op in agg.ops if op in ("sum", "avg", "stddev", "percentile")]
        if numeric:
            yield (*at, "ops"), f"{', '.join(numeric)}: needs a numeric field; {agg.field!r} is a str"
    if "last_n" in agg.ops and agg.n is None:
        yield (*at, "n"), "last_n needs n: how many of the window's latest values to keep (e.g. n: 10)"
    elif agg.n is not None and "last_n" not in agg.ops:
        yield (*at, "n"), "n is only read by the op last_n"
    if "percentile" in agg.ops and not agg.quantiles:
        yield (
            (*at, "quantiles"),
            "percentile needs quantiles: which to answer (e.g. quantiles: [0.5, 0.9, 0.99])",
        )
    elif agg.quantiles is not None and "percentile" not in agg.ops:
        yield (*at, "quantiles"), "quantiles is only read by the op percentile"
    elif agg.quantiles is not None:
        bad = [q for q in agg.quantiles if not 0 < q < 1]
        if bad:
            yield (*at, "quantiles"), f"{bad[0]!r} is not a quantile: each must lie strictly between 0 and 1"
        elif len({quantile_label(q) for q in agg.quantiles}) != len(agg.quantiles):
            yield (*at, "quantiles"), "duplicate quantile"
    if "top_k" in agg.ops and agg.k is None:
        yield (*at, "k"), "top_k needs k: how many of the window's most frequent values to answer (e.g. k: 5)"
    elif agg.k is not None and "top_k" not in agg.ops:
        yield (*at, "k"), "k is only read by the op top_k"
    if agg.where is not None:
        problem = _expression_problem(agg.where, stream.fields)
        if problem:
            yield (*at, "where"), problem
    for j, window in enumerate(agg.windows_ms):
        if window is not None and window % group.period_ms:
            yield (
                (*at, "windows", j),
                (f"window {agg.windows[j]} is not a multiple of the period {group.period}"),
            )
    if len(set(agg.windows_ms)) != len(agg.windows):  # 1h and 60m are the same window
        yield (*at, "windows"), "duplicate window"


KEY_TYPES = ("str", "int")  # field types a key can be made of (its string form: docs/pipeline.md)


def _check_key_fields(
    stream: StreamSpec, name: str, fields: tuple[str, ...], at: Loc, what: str
) -> Iterator[tuple[Loc, str]]:
    """Each of ``fields`` is a str or int field of ``stream``; yields (location, message) per problem."""
    for field in fields:
        kind = stream.fields.get(field)
        if kind is None:
            yield at, f"stream {name!r} has no field {field!r} ({what})"
        elif kind not in KEY_TYPES and field != stream.key:
            yield at, f"field {field!r} of stream {name!r} is a {kind}; {what} must be a str or int field"


def _check_topics(p: Pipeline) -> Iterator[tuple[Loc, str]]:
    """Topics of streams, lookups and outputs are distinct; dead-letter topics are no other entry's topic."""
    topic_owner: dict[str, Loc] = {}
    sections: list[tuple[str, dict[str, Any]]] = [
        ("streams", p.streams),
        ("lookups", p.lookups),
        ("outputs", p.outputs),
    ]
    for section, entries in sections:
        for name, entry in entries.items():
            here: Loc = (section, name, "topic")
            if entry.topic in topic_owner:
                other = ".".join(map(str, topic_owner[entry.topic][:2]))
                yield here, f"topic {entry.topic!r} is already used by {other}"
            topic_owner.setdefault(entry.topic, here)
    for section, entries in sections[:2]:
        for name, entry in entries.items():
            if entry.dlq_topic in topic_owner:
                other = ".".join(map(str, topic_owner[entry.dlq_topic][:2]))
                yield (
                    (section, name, "dlq"),
                    f"dead-letter topic {entry.dlq_topic!r} is already used by {other}",
                )


def _check_outputs(p: Pipeline) -> Iterator[tuple[Loc, str]]:
    """Each output's stream, joins, feature groups and computed columns; yields (location, message)."""
    for oname, out in p.outputs.items():
        at: Loc = ("outputs", oname)
        stream = p.streams.get(out.from_)
        if stream is None:
            yield (*at, "from"), f"unknown stream {out.from_!r} (streams: {', '.join(p.streams)})"
            continue
        columns: dict[str, str] = {f: "stream" for f in stream.fields}
        yield from _check_joins(p, out, stream, at, columns)
        yield from _check_output_features(p, out, stream, at, columns)
        yield from _check_computed(out, at, columns)


def _check_joins(
    p: Pipeline, out: OutputSpec, stream: StreamSpec, at: Loc, columns: dict[str, str]
) -> Iterator[tuple[Loc, str]]:
    """An output's joined lookups exist, join on a str or int field of the stream (a lookup's key is
    a string) and add no column twice; adds their columns to ``columns``."""
    for i, join in enumerate(out.join):
        lookup = p.lookups.get(join.lookup)
        if lookup is None:
            yield (*at, "join", i), f"unknown lookup {join.lookup!r}"
            continue
        if join.on is not None:
            what = f"the key of lookup {join.lookup!r} is a string: a join"
            yield from _check_key_fields(stream, out.from_, (join.on,), (*at, "join", i, "on"), what)
        yield from _joined_columns(join, lookup, (*at, "join", i), columns)


def _joined_columns(
    join: JoinSpec, lookup: LookupSpec, at: Loc, columns: dict[str, str]
) -> Iterator[tuple[Loc, str]]:
    """A joined lookup's columns (``prefix`` + field) are new; adds them to ``columns``."""
    for field in lookup.fields:
        column = join.prefix + field
        if column in columns:
            message = f"field {column!r} of lookup {join.lookup!r} collides with {columns[column]}"
            yield at, message + "; give the join a prefix"
        columns[column] = f"lookup {join.lookup}"


def _check_output_features(
    p: Pipeline, out: OutputSpec, stream: StreamSpec, at: Loc, columns: dict[str, str]
) -> Iterator[tuple[Loc, str]]:
    """An output's feature groups exist, are keyed by fields of its stream and add no column twice;
    adds them to ``columns``."""
    for i, gname in enumerate(out.features):
        joined_group = p.features.get(gname)
        if joined_group is None:
            yield (*at, "features", i), f"unknown feature group {gname!r}"
            continue
        missing = [f for f in joined_group.key_fields if f not in stream.fields]
        if missing:
            yield (
                (*at, "features", i),
                f"group {gname!r} is keyed by {', '.join(map(repr, missing))}, which stream "
                f"{out.from_!r} does not have",
            )
        for feature in joined_group.feature_names():
            if feature in columns:
                yield (*at, "features", i), f"feature {feature!r} collides with {columns[feature]}"
            columns[feature] = f"group {gname}"


def _check_computed(out: OutputSpec, at: Loc, columns: dict[str, str]) -> Iterator[tuple[Loc, str]]:
    """An output's computed columns are new and use only earlier columns; adds them to ``columns``."""
    for cname, source in out.computed.items():
        if cname in columns:
            yield (*at, "computed", cname), f"computed column {cname!r} collides with {columns[cname]}"
        problem = _expression_problem(source, columns)
        if problem:
            yield (*at, "computed", cname), problem
        columns[cname] = "computed"


def _check_services(p: Pipeline) -> Iterator[tuple[Loc, str]]:
    """Each service's fields, features, joins and computed columns; yields (location, message)."""
    for sname, service in p.services.items():
        at: Loc = ("services", sname)
        entities = set(service.entities)
        columns: dict[str, str] = {}
        for field in service.request:
            if field in entities:
                yield (*at, "request", field), f"request field {field!r} is also an entity field"
            columns[field] = "a request field"
        for i, item in enumerate(service.features):
            yield from _check_service_features(p, item, entities, (*at, "features", i), columns)
        for i, join in enumerate(service.join):
            lookup = p.lookups.get(join.lookup)
            if lookup is None:
                yield (*at, "join", i), f"unknown lookup {join.lookup!r} (lookups: {', '.join(p.lookups)})"
                continue
            on = join.on or lookup.key
            if on not in entities:
                yield (
                    (*at, "join", i, "on"),
                    f"{on!r} is not an entity field of the service (entities: {', '.join(service.entities)})",
                )
            yield from _joined_columns(join, lookup, (*at, "join", i), columns)
        for cname, source in service.computed.items():
            if cname in columns:
                yield (*at, "computed", cname), f"computed column {cname!r} collides with {columns[cname]}"
            problem = _expression_problem(source, {**dict.fromkeys(entities), **columns})
            if problem:
                yield (*at, "computed", cname), problem
            columns[cname] = "a computed column"


def _check_service_features(
    p: Pipeline, item: ServiceFeatureSpec, entities: set[str], at: Loc, columns: dict[str, str]
) -> Iterator[tuple[Loc, str]]:
    """One ``features`` entry of a service: its group (keyed by entity fields) and feature exist and
    its columns are new; adds them to ``columns``."""
    if (item.feature is None) == (item.group is None):
        yield at, "give either feature: GROUP.NAME or group: GROUP"
        return
    gname, name = (item.group, None) if item.group else (item.feature or "").partition(".")[::2]
    group = p.features.get(gname or "")
    if group is None:
        yield at, f"unknown feature group {gname!r} (groups: {', '.join(p.features)})"
        return
    missing = [f for f in group.key_fields if f not in entities]
    if missing:
        yield at, f"group {gname!r} is keyed by {', '.join(map(repr, missing))}: list it in entities"
    names = group.feature_names()
    if name is not None and name not in names:
        yield at, f"group {gname!r} has no feature {name!r} (features: {', '.join(names)})"
        return
    for feature in [name] if name is not None else names:
        column = item.prefix + feature
        if column in columns:
            yield at, f"column {column!r} collides with {columns[column]}; give a prefix"
        columns[column] = f"group {gname}"


# The cross-section checks, run in this order by parse_pipeline (the order of the reported problems).
_CHECKS: tuple[Callable[[Pipeline], Iterator[tuple[Loc, str]]], ...] = (
    _check_streams,
    _check_lookups,
    _check_features,
    _check_topics,
    _check_outputs,
    _check_services,
)


def _expression_problem(source: str, available: dict[str, Any]) -> str | None:
    """Why an expression cannot run on these columns (parse error, unknown name), or None."""
    try:
        Expression(source).check_names(set(available))
    except ExpressionError as exc:
        return str(exc)
    return None


def _line_of(doc: Any, loc: Loc) -> int | None:
    """The 1-based line of the deepest node of ``loc`` found in the ruamel document."""
    line = None
    node = doc
    for part in loc:
        lc = getattr(node, "lc", None)
        if isinstance(node, dict) and part in node:
            if lc is not None:
                line = lc.key(part)[0] + 1
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            if lc is not None:
                line = lc.item(part)[0] + 1
            node = node[part]
        else:
            break
    return line


def _format(doc: Any, loc: Loc, message: str) -> str:
    path = ".".join(str(part) for part in loc) or "(top level)"
    line = _line_of(doc, loc)
    return f"{path}: {message}" + (f" (line {line})" if line else "")


def _pydantic_message(err: Any) -> str:
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    return msg


def parse_pipeline(text: str, source: str = "") -> Pipeline:
    """Parse and validate YAML text; raise SpecError listing every problem with its line."""
    yaml = YAML(typ="rt")
    try:
        doc = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise SpecError([f"YAML syntax: {exc.problem}{line}"], source) from None
    except YAMLError as exc:  # e.g. ReaderError: a control character in the text
        raise SpecError([f"YAML: {exc}".replace("\n", " ")], source) from None
    except TypeError as exc:  # ruamel hashing a key that holds a nested mapping or list
        raise SpecError([f"YAML: a mapping key must be a plain value ({exc})"], source) from None
    if not isinstance(doc, dict):
        raise SpecError(
            ["(top level): expected a mapping with name, streams, lookups, features, outputs"], source
        )
    try:
        pipeline = Pipeline.model_validate(doc)
    except ValidationError as exc:
        problems = [_format(doc, tuple(e["loc"]), _pydantic_message(e)) for e in exc.errors()]
        raise SpecError(problems, source) from None
    problems = [_format(doc, loc, msg) for check in _CHECKS for loc, msg in check(pipeline)]
    if problems:
        raise SpecError(problems, source)
    return pipeline


def load_pipeline(path: Path | str) -> Pipeline:
    """Read and validate the pipeline file at ``path``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError([f"cannot read the pipeline file: {exc.strerror}"], str(path)) from None
    return parse_pipeline(text, str(path))
