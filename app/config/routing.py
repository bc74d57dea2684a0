"""How a pipeline's events travel (docs/pipeline.md): per stream, the keys its events visit (stages,
each on the partition of its key, reached through a hop topic), and every topic Hydrant creates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from app.config.spec import Pipeline


@dataclass(frozen=True)
class Stage:
    """One key a stream's events visit: the groups they feed there, and what the stream's outputs
    read there (groups' features, lookups joined on that key); stage 0 is the stream's own key."""

    index: int
    key: tuple[str, ...]  # the key's fields, in the order of its string form
    topic: str  # the hop topic its records arrive on once re-keyed (stage 0: the stream's repartition topic)
    groups: tuple[str, ...]  # feature groups the stream feeds on this key
    reads: tuple[str, ...]  # groups whose features the stream's outputs carry, read here
    joins: tuple[tuple[str, str], ...]  # (lookup, stream field) the stream's outputs join here


def repartition_topic(group: str, kind: Literal["stream", "lookup"], name: str) -> str:
    """Internal topic where records that arrived on the wrong partition for their key are re-keyed."""
    return f"{group}-{kind}-{name}-repartition"


def hop_topic(group: str, stream: str, key: tuple[str, ...]) -> str:
    """Internal topic that brings events of ``stream`` to the partitions of the key ``key``."""
    return f"{group}-stream-{stream}-by-{'-'.join(key)}-repartition"


def stream_stages(pipeline: Pipeline, stream: str, group: str) -> tuple[Stage, ...]:
    """The stages of ``stream`` in visiting order: its own key first, then each other key its groups
    or its outputs' groups and joins use, in the order the spec first names them."""
    spec = pipeline.streams[stream]
    own = (spec.key,)
    fed = {g for g, gs in pipeline.features.items() if any(a.stream == stream for a in gs.aggregations)}
    outputs = [o for o in pipeline.outputs.values() if o.from_ == stream]
    read = {g for o in outputs for g in o.features}
    keys: dict[tuple[str, ...], tuple[list[str], list[str], list[tuple[str, str]]]] = {own: ([], [], [])}
    for name, gs in pipeline.features.items():
        if name in fed or name in read:
            groups, reads, _ = keys.setdefault(gs.key_fields, ([], [], []))
            if name in fed:
                groups.append(name)
            if name in read:
                reads.append(name)
    for output in outputs:
        for join in output.join:
            on = join.on or spec.key
            # A global lookup is on every worker: joined at the first stage, on whatever field.
            here = own if pipeline.lookups[join.lookup].global_ else (on,)
            joins = keys.setdefault(here, ([], [], []))[2]
            if (join.lookup, on) not in joins:
                joins.append((join.lookup, on))
    # Keys of fewer fields first: a composite key then comes after the keys of its fields, so its
    # events arrive along few paths (window state keeps an offset per path: docs/pipeline.md).
    order = [own, *sorted((k for k in keys if k != own), key=len)]
    return tuple(
        Stage(
            i,
            key,
            repartition_topic(group, "stream", stream) if i == 0 else hop_topic(group, stream, key),
            tuple(keys[key][0]),
            tuple(keys[key][1]),
            tuple(keys[key][2]),
        )
        for i, key in enumerate(order)
    )


Role = Literal["stream", "lookup", "output", "dead-letter", "repartition", "state"]


@dataclass(frozen=True)
class TopicPlan:
    """One topic Hydrant creates: its role, which spec entry uses it, partitions, compaction."""

    name: str
    role: Role
    owner: str
    partitions: int
    compacted: bool


def topic_plans(pipeline: Pipeline, partitions: int, group: str) -> list[TopicPlan]:
    """Every topic ``pipeline`` needs (inputs, lookups, outputs, dead letters, and the internal
    repartition and hop topics of consumer group ``group``), in a stable order."""
    plans: dict[str, TopicPlan] = {}

    def plan(topic: str, role: Role, owner: str) -> None:
        plans.setdefault(topic, TopicPlan(topic, role, owner, partitions, role == "lookup"))

    for name, stream in pipeline.streams.items():
        plan(stream.topic, "stream", name)
        plan(stream.dlq_topic, "dead-letter", name)
    for name, lookup in pipeline.lookups.items():
        plan(lookup.topic, "lookup", name)
        plan(lookup.dlq_topic, "dead-letter", name)
    for name, output in pipeline.outputs.items():
        plan(output.topic, "output", name)
    for name in pipeline.streams:
        for stage in stream_stages(pipeline, name, group):
            plan(stage.topic, "repartition", name)
    for name in pipeline.lookups:
        plan(repartition_topic(group, "lookup", name), "repartition", name)
    return list(plans.values())
