"""`update_<lookup>`: apply each lookup topic's records (upserts and tombstones) to its table.

A record whose table key would live on another partition is first re-keyed through the lookup's
repartition topic (`update_<lookup>_repartitioned` applies it there), so each row sits on the
partition where the streams' events for that key are processed.
"""

from __future__ import annotations

from typing import Any

from app.dead_letters import forward, send_dead_letter
from app.main import app, pipeline, settings
from app.metrics import LOOKUP_UPDATES
from app.partitioning import is_home, partition_for
from app.records import BadRecord, decode_lookup
from app.spec import LookupSpec, repartition_topic
from tables.lookups import apply_lookup

GROUP = settings.group_id(pipeline.name)


def _make_agent(name: str, spec: LookupSpec, repartitioned: bool) -> Any:
    partitions = settings.partitions
    rekey_topic = repartition_topic(GROUP, "lookup", name)
    updates = {op: LOOKUP_UPDATES.labels(name, op) for op in ("upsert", "delete")}

    async def update_lookup(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            try:
                key, fields = decode_lookup(message.key, message.value, spec)
            except BadRecord as exc:
                await (await send_dead_letter(app.producer, spec.dlq_topic, message, exc, repartitioned))
                continue
            raw_key = key.encode("utf-8")
            home = is_home(
                raw_key, message.partition, app.consumer.topic_partitions(message.topic), partitions
            )
            if not repartitioned and not home:
                partition = partition_for(raw_key, partitions)
                await (await forward(app.producer, rekey_topic, raw_key, partition, message))
                continue
            updates[apply_lookup(name, key, fields)].inc()

    suffix = "_repartitioned" if repartitioned else ""
    update_lookup.__name__ = update_lookup.__qualname__ = f"update_{name}{suffix}"
    return update_lookup


for _name, _spec in pipeline.lookups.items():
    _source = app.topic(_spec.topic, key_serializer="raw", value_serializer="raw")
    _rekeyed = app.topic(
        repartition_topic(GROUP, "lookup", _name), key_serializer="raw", value_serializer="raw"
    )
    app.agent(_source, name=f"update_{_name}")(_make_agent(_name, _spec, repartitioned=False))
    app.agent(_rekeyed, name=f"update_{_name}_repartitioned")(_make_agent(_name, _spec, repartitioned=True))
