"""The lookup batches: each lookup topic's records (upserts and tombstones) into its table, re-keyed
through the lookup's repartition topic first when they arrive off their key's home partition."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from app.config.routing import repartition_topic
from app.config.spec import LookupSpec
from app.engine.batch import BATCH_WITHIN_S, Source, WorkerIO
from app.kafka.dead_letters import forward, send_dead_letter
from app.metrics import LOOKUP_UPDATES
from app.records.decode import BadRecord, decode_lookup
from app.records.partitioning import is_home, partition_for
from tables.registry import apply_lookup
from tables.store import StateTable, StateWriter

logger = logging.getLogger(__name__)

BATCH_MAX = 2000


class LookupUpdater:
    """Applies lookup ``name``'s records to ``table``, a batch at a time."""

    def __init__(
        self,
        name: str,
        spec: LookupSpec,
        table: StateTable,
        group_id: str,
        partitions: int,
        on_write: Callable[[str, int], None] | None = None,
    ) -> None:
        self.name = name
        self.on_write = on_write  # told of each local write (table, partition): the serving processes
        self.spec = spec
        self.table = table
        self.partitions = partitions
        self.rekey_topic = repartition_topic(group_id, "lookup", name)
        self.topics = (spec.topic, self.rekey_topic)
        self.updates = {op: LOOKUP_UPDATES.labels(name, op) for op in ("upsert", "delete")}  # from start

    async def run(self, io: WorkerIO, source: Source) -> None:
        """Take batches until the worker stops; an unexpected error stops the worker (its batch is
        not acked, so a restart reads it again)."""
        try:
            while not io.should_stop:
                records = await source.take(BATCH_MAX, BATCH_WITHIN_S)
                await self.apply_batch(io, records)
                source.ack(records)
        except Exception as exc:
            logger.exception("update_%s failed", self.name)
            await io.crash(exc)

    async def apply_batch(self, io: WorkerIO, records: Any) -> None:
        """Apply one batch (from the lookup's topic or its repartition topic); return once every
        table write, forward and dead letter of it is on the broker."""
        producer, spec, partitions = io.producer, self.spec, self.partitions
        writer = StateWriter(io.kafka_producer, on_write=self.on_write)
        deliveries: list[Awaitable[Any]] = []
        topic_counts: dict[str, int | None] = {}
        for record in records:
            repartitioned = record.topic == self.rekey_topic
            try:
                key, fields = decode_lookup(record.key, record.value, spec)
            except BadRecord as exc:
                deliveries.append(
                    await send_dead_letter(producer, spec.dlq_topic, record, exc, repartitioned)
                )
                continue
            raw_key = key.encode("utf-8")
            if not repartitioned:
                if record.topic not in topic_counts:
                    topic_counts[record.topic] = io.topic_partitions(record.topic)
                if not is_home(raw_key, record.partition, topic_counts[record.topic], partitions):
                    target = partition_for(raw_key, partitions)
                    deliveries.append(await forward(producer, self.rekey_topic, raw_key, target, record))
                    continue
            self.updates[apply_lookup(writer, self.table, record.partition, raw_key, fields)].inc()
        await writer.delivered()
        await asyncio.gather(*deliveries)
