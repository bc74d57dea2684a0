"""A record's source: the input record it started as (topic, partition, offset, Kafka key), carried
in ``hydrant-source-*`` headers through the repartition hop so dead letters and outputs name it."""

from __future__ import annotations

import base64
import functools
import hashlib
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
#: on a hop to a later stage: ``>tag:p`` per stage it went through (its key's tag, its partition)
HOP_PATH = "hydrant-path"
TAG_CHARS = 4  # a stage key's tag: 24 bits of BLAKE2b in base64url
#: on a hop to a later stage: its sender's progress in event time as of it (ms; app/engine/watermarks.py)
HOP_WATERMARK = "hydrant-watermark"


@functools.lru_cache(maxsize=256)
def stage_tag(key: tuple[str, ...]) -> bytes:
    """The tag naming the stage of key ``key`` (its fields) in a path: the same in every worker and
    release, whatever other stages the spec has."""
    digest = hashlib.blake2b("+".join(key).encode("utf-8"), digest_size=3).digest()
    return base64.urlsafe_b64encode(digest)


def hop_headers(
    message: Any, repartitioned: bool, stage: int, key: tuple[str, ...], parts: bytes, watermark: int
) -> list[tuple[str, bytes]]:
    """Headers of a record sent on from ``stage`` (key fields ``key``, on the message's partition) to a
    later stage: its source, its original Kafka key, the path of stages it took, ``parts``, and the
    sender's progress ``watermark``."""
    headers = source_headers(message, repartitioned)
    original = source_key(message, repartitioned)
    if original is not None:
        headers.append((SOURCE_KEY, original))
    path = carried_path(message) if stage else b""
    headers.append((HOP_PATH, b"%b>%b:%d" % (path, stage_tag(key), message.partition)))
    headers.append((HOP_PARTS, parts))
    headers.append((HOP_WATERMARK, b"%d" % watermark))
    return headers


def carried(message: Any) -> tuple[bytes, bytes | None, int | None]:
    """What a hop record carries, from one pass over its headers: its path (:func:`carried_path`),
    its parts (None on other records) and its sender's progress (None: a record of an earlier release)."""
    path, parts, mark = b"", None, None
    for name, value in _header_items(message):
        if name == HOP_PATH:
            path = value
        elif name == HOP_PARTS:
            parts = value
        elif name == HOP_WATERMARK:
            mark = int(value)
    return path, parts, mark


def carried_path(message: Any) -> bytes:
    """The stages a hop record went through, ``>tag:p`` each (empty on other records): with its
    source, the identity window state dedups it by (docs/pipeline.md: one route, one order)."""
    return next((v for k, v in _header_items(message) if k == HOP_PATH), b"")


@functools.lru_cache(maxsize=4096)
def route_identity(source: str, path: str) -> str:
    """The identity of an event at a later stage: its source and route (``src>tag:p>tag:q``). A route
    written partly by the previous release (some steps without a tag, during a rolling upgrade) is
    named in that release's form (:func:`legacy_identity`), so that the same event sent again by an
    upgraded stage is still recognised."""
    identity = source + path
    steps = path.split(">")[1:]
    if any(":" not in step for step in steps) and any(":" in step for step in steps):
        return legacy_identity(identity) or identity
    return identity


@functools.lru_cache(maxsize=4096)
def legacy_identity(identity: str) -> str | None:
    """The identity the previous release gave an event of route identity ``identity`` (its path
    without the stages' tags: ``src>3>1``), which state written by it may hold; None when
    ``identity`` has no path or is in that form already."""
    source, sep, path = identity.partition(">")
    if not sep or ":" not in path:
        return None
    return source + "".join(">" + step.rpartition(":")[2] for step in (">" + path).split(">")[1:])
