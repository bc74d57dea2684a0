"""What changing a pipeline's spec does to its feature state: per feature group and aggregation,
unchanged, new, changed or removed, and the changes its state cannot follow (a group's period or key)
(docs/operations.md, "Changing a pipeline"). Pure."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from app.config.spec import AggregationSpec, FeatureGroupSpec, Pipeline

Kind = Literal["unchanged", "new", "changed", "removed"]
#: The environment variable through which a worker hands its processes the aggregations being
#: replayed: JSON, per group, identity -> aggregation name (set by `hydrant worker` at start).
REPLAYING_ENV = "HYDRANT_REPLAYING"
#: ... and the backfills from files: JSON, group -> its backfill topic.
BACKFILLS_ENV = "HYDRANT_BACKFILLS"
IDENTITY_CHARS = 4  # an aggregation's identity: 24 bits in base64url
#: What defines an aggregation's values, besides its group's period and key.
DEFINING = ("stream", "field", "ops", "windows", "where", "n", "k", "quantiles")


@dataclass(frozen=True)
class AggregationChange:
    """One aggregation of a group: what happens to it, and (changed) which of its settings differ."""

    name: str
    kind: Kind
    detail: str = ""


@dataclass(frozen=True)
class GroupChange:
    """One feature group: its aggregations' changes; ``refused`` says why its state cannot be reused."""

    name: str
    kind: Kind
    aggregations: tuple[AggregationChange, ...] = ()
    refused: str = ""


def definition(agg: AggregationSpec) -> dict[str, Any]:
    """The settings that define an aggregation's values (with its group's period and key)."""
    return {name: getattr(agg, name) for name in DEFINING}


def identity(name: str, defined: Mapping[str, Any]) -> str:
    """An aggregation's identity in bucket layouts (tables/plans.py): a hash of its name and the
    settings that define its values (:func:`definition`), ``IDENTITY_CHARS`` characters. What a
    changed aggregation stored under its old definition is then not read as its state."""
    text = orjson.dumps([name, defined], option=orjson.OPT_SORT_KEYS)
    return base64.urlsafe_b64encode(hashlib.blake2b(text, digest_size=3).digest()).decode("ascii")


def group_definition(group: FeatureGroupSpec) -> dict[str, Any]:
    """What a feature group's state is built with: its period, key and aggregations (JSON-ready)."""
    return {
        "period": group.period,
        "period_ms": group.period_ms,
        "key": list(group.key_fields),
        "aggregations": {agg.name: definition(agg) for agg in group.aggregations},
    }


def definitions(pipeline: Pipeline) -> dict[str, dict[str, Any]]:
    """:func:`group_definition` of every feature group, by name."""
    return {name: group_definition(group) for name, group in pipeline.features.items()}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    changed = [name for name in DEFINING if old.get(name) != new.get(name)]
    return "; ".join(f"{name} {_text(old.get(name))} -> {_text(new.get(name))}" for name in changed)


def _text(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return repr(value) if isinstance(value, str) else str(value)


def refusal(group: str, what: str) -> str:
    """Why group ``group``'s state cannot be reused, and the two ways out."""
    return (
        f"feature group {group!r}: {what}, so its stored state cannot be reused. Rename the group (it "
        "starts with new, empty state), or stop the workers and run "
        f"`hydrant state reset {group} --yes` (it deletes the group's state; the workers then rebuild it "
        "from the history the topics hold)"
    )


def group_change(name: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> GroupChange:
    """The change of group ``name`` from definition ``old`` to ``new`` (None: absent on that side)."""
    if old is None:
        fresh = new["aggregations"] if new is not None else {}
        return GroupChange(name, "new", tuple(AggregationChange(a, "new") for a in fresh))
    if new is None:
        gone = tuple(AggregationChange(a, "removed") for a in old["aggregations"])
        return GroupChange(name, "removed", gone)
    if old["period_ms"] != new["period_ms"]:
        why = f"its period changed from {old['period']} to {new['period']}"
        return GroupChange(name, "changed", refused=refusal(name, why))
    if old["key"] != new["key"]:
        was, now = " + ".join(old["key"]), " + ".join(new["key"])
        return GroupChange(name, "changed", refused=refusal(name, f"its key changed from {was} to {now}"))
    before, after = old["aggregations"], new["aggregations"]
    aggregations = []
    for agg, fields in after.items():
        if agg not in before:
            aggregations.append(AggregationChange(agg, "new"))
        elif before[agg] != fields:
            aggregations.append(AggregationChange(agg, "changed", _differences(before[agg], fields)))
        else:
            aggregations.append(AggregationChange(agg, "unchanged"))
    aggregations += [AggregationChange(agg, "removed") for agg in before if agg not in after]
    kind: Kind = "unchanged" if all(a.kind == "unchanged" for a in aggregations) else "changed"
    return GroupChange(name, kind, tuple(aggregations))


def plan_changes(old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]]) -> list[GroupChange]:
    """Every feature group of the definitions ``old`` or ``new`` (see :func:`definitions`): ``new``'s
    in its order, then the removed ones."""
    names = [*new, *(g for g in old if g not in new)]
    return [group_change(g, old.get(g), new.get(g)) for g in names]


#: What each kind means for the values served (docs/operations.md).
MEANING = {
    "unchanged": "keeps its state and values",
    "new": "applied from now on; the history the topics hold is replayed into it (listed as incomplete "
    "until then)",
    "changed": "its state under the old definition is dropped; applied from now on and rebuilt by "
    "replaying the history the topics hold (listed as incomplete until then)",
    "removed": "no longer served; its values are dropped from buckets as they are rewritten",
}


def render_changes(changes: list[GroupChange]) -> list[str]:
    """The plan as text lines (one per group and aggregation)."""
    lines = []
    for group in changes:
        if group.refused:
            lines.append(f"  group {group.name}: REFUSED: {group.refused}")
            continue
        lines.append(f"  group {group.name}: {group.kind}")
        for agg in group.aggregations:
            detail = f" ({agg.detail})" if agg.detail else ""
            lines.append(f"    {agg.name:<20} {agg.kind}{detail}: {MEANING[agg.kind]}")
    return lines


def replaying_from_env(environ: Mapping[str, str] | None = None) -> dict[str, dict[str, str]]:
    """Per group, the aggregations being replayed (identity -> name) as the worker handed them to its
    processes (:data:`REPLAYING_ENV`); empty when none."""
    raw = (os.environ if environ is None else environ).get(REPLAYING_ENV)
    return json.loads(raw) if raw else {}


def backfills_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Per group, the topic of a backfill from files the worker applies (:data:`BACKFILLS_ENV`)."""
    raw = (os.environ if environ is None else environ).get(BACKFILLS_ENV)
    return json.loads(raw) if raw else {}
