"""`enrich_<stream>`: decode each stream's events per fetched batch, join lookups, write the outputs.

Events come in batches (``take_events``); every output record of a batch is queued on the producer
without awaiting its delivery, and the batch's deliveries are awaited together before Faust acks
the batch (at-least-once: nothing is acked before its output is written).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

import orjson

from app.dead_letters import send_dead_letter, source_headers
from app.main import app, pipeline
from app.metrics import BATCH_SECONDS, EVENTS_CONSUMED, EVENTS_PRODUCED, PROCESSING_SECONDS
from app.records import BadRecord, decode_event
from app.spec import OutputSpec, StreamSpec
from tables.lookups import lookup_row

BATCH_MAX = 2000
BATCH_WITHIN_S = 0.05


def enriched_row(fields: dict[str, Any], key: str, output: OutputSpec) -> dict[str, Any]:
    """The stream fields, then each joined lookup's fields (null when the key is absent)."""
    row = dict(fields)
    for join in output.join:
        found = lookup_row(join.lookup, key)
        for field in pipeline.lookups[join.lookup].fields:
            row[join.prefix + field] = found.get(field) if found is not None else None
    return row


def _make_agent(name: str, spec: StreamSpec, outputs: list[OutputSpec]) -> Any:
    consumed = EVENTS_CONSUMED.labels(name, spec.topic)
    produced = {o.topic: EVENTS_PRODUCED.labels(oname, o.topic) for oname, o in pipeline.outputs.items()}
    per_event = PROCESSING_SECONDS.labels(name)
    per_batch = BATCH_SECONDS.labels(name)

    async def enrich_stream(stream: Any) -> None:
        producer = app.producer
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
            started = time.perf_counter()
            deliveries: list[Awaitable[Any]] = []
            for event in events:
                message = event.message
                try:
                    key, _ts, fields = decode_event(message.value, spec, int(message.timestamp * 1000))
                except BadRecord as exc:
                    deliveries.append(await send_dead_letter(producer, spec.dlq_topic, message, exc))
                    continue
                headers = source_headers(message)
                for output in outputs:
                    value = orjson.dumps(enriched_row(fields, key, output))
                    deliveries.append(
                        await producer.send(output.topic, key.encode(), value, None, None, headers)
                    )
                    produced[output.topic].inc()
            await asyncio.gather(*deliveries)
            consumed.inc(len(events))
            elapsed = time.perf_counter() - started
            per_batch.observe(elapsed)
            per_event.observe(elapsed / len(events))

    enrich_stream.__name__ = enrich_stream.__qualname__ = f"enrich_{name}"
    return enrich_stream


for _name, _spec in pipeline.streams.items():
    _outputs = [o for o in pipeline.outputs.values() if o.from_ == _name]
    _topic = app.topic(_spec.topic, key_serializer="raw", value_serializer="raw")
    app.agent(_topic, name=f"enrich_{_name}")(_make_agent(_name, _spec, _outputs))
