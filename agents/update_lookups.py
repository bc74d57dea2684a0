"""`update_<lookup>`: apply each lookup topic's records (upserts and tombstones) to its table.

Records are taken in batches; each batch's table writes and forwards are on the broker before
Faust acknowledges it. A record whose table key would live on another partition is first re-keyed
through the lookup's repartition topic (`update_<lookup>_repartitioned` applies it there), so each
row sits on the partition where the streams' events for that key are processed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from app.dead_letters import forward, send_dead_letter
from app.main import app, pipeline, settings
from app.metrics import LOOKUP_UPDATES
from app.partitioning import is_home, partition_for
from app.records import BadRecord, decode_lookup
from app.spec import LookupSpec, repartition_topic
from tables.lookups import apply_lookup
from tables.store import StateWriter

GROUP = settings.group_id(pipeline.name)
BATCH_MAX = 2000
BATCH_WITHIN_S = 0.05


def _make_agent(name: str, spec: LookupSpec, repartitioned: bool) -> Any:
    partitions = settings.partitions
    rekey_topic = repartition_topic(GROUP, "lookup", name)
    updates = {op: LOOKUP_UPDATES.labels(name, op) for op in ("upsert", "delete")}

    async def update_lookup(stream: Any) -> None:
        producer = app.producer
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
            writer = StateWriter(producer)
            deliveries: list[Awaitable[Any]] = []
            for event in events:
                message = event.message
                try:
                    key, fields = decode_lookup(message.key, message.value, spec)
                except BadRecord as exc:
                    deliveries.append(
                        await send_dead_letter(producer, spec.dlq_topic, message, exc, repartitioned)
                    )
                    continue
                raw_key = key.encode("utf-8")
                home = is_home(
                    raw_key, message.partition, app.consumer.topic_partitions(message.topic), partitions
                )
                if not repartitioned and not home:
                    target = partition_for(raw_key, partitions)
                    deliveries.append(await forward(producer, rekey_topic, raw_key, target, message))
                    continue
                updates[apply_lookup(writer, name, message.partition, raw_key, fields)].inc()
            # Every changelog record and forward is on the broker before Faust acknowledges the batch.
            await writer.delivered()
            await asyncio.gather(*deliveries)

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
