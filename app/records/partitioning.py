"""Where a key lives: Kafka's default partitioner (murmur2), as Java clients and aiokafka use it.

Hydrant processes every record on partition ``partition_for(key, HYDRANT_PARTITIONS)`` of its
co-partitioned topics, so a key's lookup rows, window state and events meet on one worker. Records
that arrive elsewhere (another key, another partitioner, another partition count) are repartitioned.
"""

from __future__ import annotations

from functools import lru_cache

from aiokafka.partitioner import murmur2


@lru_cache(maxsize=131_072)
def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def is_home(key: bytes, partition: int, topic_partitions: int | None, partitions: int) -> bool:
    """True when a record of ``key`` read from ``partition`` of a topic with ``topic_partitions``
    partitions is where Hydrant keeps that key's state; otherwise it must be repartitioned.

    ``topic_partitions`` is None while the consumer's metadata snapshot is being rebuilt (during a
    rebalance). The record is then judged by its partition alone: sending a home record through the
    repartition topic would let later records of its source partition overtake it, and window state
    (which keeps the highest applied offset per source partition) would take it for a duplicate."""
    if topic_partitions is not None and topic_partitions != partitions:
        return False
    return partition == partition_for(key, partitions)
