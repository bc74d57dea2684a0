"""`update_<lookup>`: apply each lookup topic's records (upserts and tombstones) to its table."""

from __future__ import annotations

from typing import Any

from app.dead_letters import send_dead_letter
from app.main import app, pipeline
from app.metrics import LOOKUP_UPDATES
from app.records import BadRecord, decode_lookup
from app.spec import LookupSpec
from tables.lookups import apply_lookup


def _make_agent(name: str, spec: LookupSpec) -> Any:
    async def update_lookup(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            try:
                key, fields = decode_lookup(message.key, message.value, spec)
            except BadRecord as exc:
                await (await send_dead_letter(app.producer, spec.dlq_topic, message, exc))
                continue
            LOOKUP_UPDATES.labels(name, apply_lookup(name, key, fields)).inc()

    update_lookup.__name__ = update_lookup.__qualname__ = f"update_{name}"
    return update_lookup


for _name, _spec in pipeline.lookups.items():
    _topic = app.topic(_spec.topic, key_serializer="raw", value_serializer="raw")
    app.agent(_topic, name=f"update_{_name}")(_make_agent(_name, _spec))
