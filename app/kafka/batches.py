"""Records produced as aiokafka record batches, grouped per (topic, partition) in the order added:
one delivery future per record batch, resolving to its RecordMetadata (docs/performance.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


async def partition_count(producer: Any, topic: str) -> int:
    """How many partitions ``topic`` has, as ``producer`` (an AIOKafkaProducer) knows it; waits
    for the topic's metadata when it has none yet."""
    partitions = producer.client.cluster.partitions_for_topic(topic)
    if not partitions:
        await producer.client._wait_on_metadata(topic)
        partitions = producer.client.cluster.partitions_for_topic(topic)
    return len(partitions)


@dataclass(frozen=True)
class SentBatch:
    """One record batch handed to the producer: ``future`` resolves to its RecordMetadata."""

    topic: str
    partition: int
    count: int
    future: Any


_NO_HEADERS: list[Any] = []  # shared by every record without headers; aiokafka only reads it


class RecordBatches:
    """Records to send, grouped per (topic, partition) in the order they were added."""

    def __init__(self) -> None:
        self._records: dict[tuple[str, int], list[tuple[bytes, bytes | None, list[Any], int | None]]] = {}

    def __bool__(self) -> bool:
        return bool(self._records)

    def add(
        self,
        topic: str,
        partition: int,
        key: bytes,
        value: bytes | None,
        headers: list[Any] | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        """Queue a record (``timestamp_ms`` None: the time it is sent); ``headers`` (aiokafka wants a
        list) is kept, not copied: leave it as it is."""
        self._records.setdefault((topic, partition), []).append(
            (key, value, _NO_HEADERS if headers is None else headers, timestamp_ms)
        )

    async def send(self, producer: Any) -> list[SentBatch]:
        """Hand every record to ``producer`` (an AIOKafkaProducer) as record batches; empties this."""
        sent: list[SentBatch] = []
        for (topic, partition), records in self._records.items():
            batch = producer.create_batch()
            count = 0
            for key, value, headers, timestamp in records:
                if _append(batch, count, key, value, headers, timestamp):
                    count += 1
                    continue
                sent.append(await _send(producer, batch, count, topic, partition))  # full
                batch = producer.create_batch()
                if not _append(batch, 0, key, value, headers, timestamp):
                    raise ValueError(f"a record for {topic}[{partition}] is larger than a producer batch")
                count = 1
            if count:
                sent.append(await _send(producer, batch, count, topic, partition))
        self._records.clear()
        return sent


def _append(
    batch: Any, count: int, key: bytes, value: bytes | None, headers: list[Any], timestamp: int | None
) -> bool:
    """``BatchBuilder.append`` without its per-record checks, at relative offset ``count`` (aiokafka
    internals: 0.14, pinned in pyproject.toml); False when the batch is full."""
    return batch._builder.append(count, timestamp, key, value, headers) is not None


async def _send(producer: Any, batch: Any, count: int, topic: str, partition: int) -> SentBatch:
    """Close ``batch`` at ``count`` records (what ``BatchBuilder.append`` keeps) and hand it over."""
    batch._relative_offset = count
    batch.close()
    future = await producer.send_batch(batch, topic, partition=partition)
    return SentBatch(topic, partition, count, future)
