"""A record's source: the input record it started as (topic, partition, offset, Kafka key), carried
in ``hydrant-source-*`` headers through the repartition hop so dead letters and outputs name it."""

from __future__ import annotations

import functools
from typing import Any

SOURCE_TOPIC = "hydrant-source-topic"
SOURCE_PARTITION = "hydrant-source-partition"
SOURCE_OFFSET = "hydrant-source-offset"
SOURCE_KEY = "hydrant-source-key"  # only on repartitioned records whose original key was not null
_SOURCE_NAMES = (SOURCE_TOPIC, SOURCE_PARTITION, SOURCE_OFFSET)


def _header_items(message: Any) -> list[tuple[str, bytes]]:
    headers = message.headers or ()
    return list(headers.items()) if isinstance(headers, dict) else list(headers)


def source_headers(message: Any, repartitioned: bool = False) -> list[tuple[str, bytes]]:
    """`hydrant-source-*` headers naming the original record; copied from a repartitioned record's
    headers, never taken from a user record's (it may be another pipeline's output)."""
    if repartitioned:
        return [(k, v) for k, v in _header_items(message) if k in _SOURCE_NAMES]
    return [*_partition_headers(message.topic, message.partition), (SOURCE_OFFSET, b"%d" % message.offset)]


@functools.lru_cache(maxsize=4096)
def _source_name(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


@functools.lru_cache(maxsize=4096)
def _partition_headers(topic: str, partition: int) -> tuple[tuple[str, bytes], tuple[str, bytes]]:
    return (SOURCE_TOPIC, topic.encode()), (SOURCE_PARTITION, str(partition).encode())


def source_key(message: Any, repartitioned: bool = False) -> bytes | None:
    """The Kafka key the record was first produced with."""
    if not repartitioned:
        return message.key
    return next((v for k, v in _header_items(message) if k == SOURCE_KEY), None)


def source_position(message: Any, repartitioned: bool = False) -> tuple[str, int]:
    """(``"<topic>:<partition>"``, offset) of the original record: the identity window state uses
    to recognise a redelivered event, the same before and after a repartition hop."""
    if not repartitioned:
        return _source_name(message.topic, message.partition), message.offset
    values = dict(source_headers(message, repartitioned=True))
    return f"{values[SOURCE_TOPIC].decode()}:{values[SOURCE_PARTITION].decode()}", int(values[SOURCE_OFFSET])


HOP_PARTS = "hydrant-parts"  # on a hop to a later stage: what the event's outputs read so far (orjson)
HOP_PATH = "hydrant-path"  # on a hop to a later stage: ">p" per stage partition it went through


def hop_headers(message: Any, repartitioned: bool, stage: int, parts: bytes) -> list[tuple[str, bytes]]:
    """Headers of a record sent on from ``stage`` (on the message's partition) to a later stage: its
    source, its original Kafka key, the path of stage partitions it took, ``parts``."""
    headers = source_headers(message, repartitioned)
    original = source_key(message, repartitioned)
    if original is not None:
        headers.append((SOURCE_KEY, original))
    path = carried_path(message) if stage else b""
    headers.append((HOP_PATH, path + b">%d" % message.partition))
    headers.append((HOP_PARTS, parts))
    return headers


def carried_parts(message: Any) -> bytes | None:
    """The parts a hop record carries (None on other records)."""
    return next((v for k, v in _header_items(message) if k == HOP_PARTS), None)


def carried_path(message: Any) -> bytes:
    """The stage partitions a hop record went through, ``>p`` each (empty on other records): with
    its source, the identity window state dedups it by (docs/pipeline.md: one path, one order)."""
    return next((v for k, v in _header_items(message) if k == HOP_PATH), b"")
