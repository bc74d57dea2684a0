"""Where a key lives: Kafka's default partitioner (murmur2, as the Java client and aiokafka compute
it) over HYDRANT_PARTITIONS; a record read elsewhere takes the repartition hop (docs/pipeline.md)."""

from __future__ import annotations

from functools import lru_cache

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's 32-bit murmur2 of ``data`` (seed 0x9747B28C), unsigned (aiokafka's value)."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length - whole
    if rest:
        if rest == 3:
            h ^= data[whole + 2] << 16
        if rest >= 2:
            h ^= data[whole + 1] << 8
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


@lru_cache(maxsize=131_072)
def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def is_home(key: bytes, partition: int, topic_partitions: int | None, partitions: int) -> bool:
    """True when a record of ``key`` read from ``partition`` of a topic with ``topic_partitions``
    partitions is on the key's home partition; ``topic_partitions`` None (unknown): by partition alone."""
    if topic_partitions is not None and topic_partitions != partitions:
        return False
    return partition == partition_for(key, partitions)
