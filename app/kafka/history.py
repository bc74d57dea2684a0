"""Reading input topics' retained history over offset ranges, for the replay of new or changed
aggregations (app/engine/replay.py): a group-less consumer of its own, so the worker's consumer and
its committed offsets are untouched."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from app.kafka.end_offsets import exact_end_offsets

FETCH_BYTES = 8 * 1024 * 1024
FETCH_WAIT_MS = 100  # unless the options say (HYDRANT_FETCH_MAX_WAIT_MS)


def _partition(name: str) -> TopicPartition:
    topic, _, partition = name.rpartition(":")
    return TopicPartition(topic, int(partition))


class History:
    """Input partitions (``"topic:partition"``) read from given offsets, a fetch at a time."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self._options = dict(options)
        self._consumer: AIOKafkaConsumer | None = None
        self._assigned: frozenset[str] = frozenset()

    async def _started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            options = {"fetch_max_wait_ms": FETCH_WAIT_MS, **self._options}  # the worker's wait, if set
            self._consumer = AIOKafkaConsumer(
                **options,
                group_id=None,
                enable_auto_commit=False,
                fetch_max_bytes=FETCH_BYTES,
                max_partition_fetch_bytes=FETCH_BYTES,
                auto_offset_reset="earliest",
            )
            await self._consumer.start()
        return self._consumer

    async def bounds(self, names: list[str]) -> tuple[dict[str, int], dict[str, int]]:
        """The earliest retained offset and the end offset of each partition of ``names``."""
        consumer = await self._started()
        tps = {name: _partition(name) for name in names}
        first = await consumer.beginning_offsets(list(tps.values()))
        approx = await consumer.end_offsets(list(tps.values()))
        ends = await exact_end_offsets(self._options, approx)  # the bundled broker's answer is short
        return {n: int(first[tp]) for n, tp in tps.items()}, {n: int(ends[tp]) for n, tp in tps.items()}

    async def read(self, positions: Mapping[str, int], max_records: int) -> list[Any]:
        """Up to ``max_records`` records from ``positions`` (the next offset per partition), in offset
        order per partition; [] when none came within a fetch wait. Reading the same partitions on
        continues where the last read ended; other positions seek."""
        consumer = await self._started()
        tps = {name: _partition(name) for name in positions}
        if frozenset(positions) != self._assigned:
            consumer.assign(list(tps.values()))
            self._assigned = frozenset(positions)
        for name, tp in tps.items():
            if await consumer.position(tp) != positions[name]:
                consumer.seek(tp, positions[name])
        fetched = await consumer.getmany(*tps.values(), timeout_ms=200, max_records=max_records)
        return [record for records in fetched.values() for record in records]

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
            self._assigned = frozenset()
