"""Dead letters: the original record, unchanged, with headers saying why and where it came from."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

from app.metrics import DEAD_LETTERS
from app.records import BadRecord

logger = logging.getLogger(__name__)


def source_headers(message: Any) -> list[tuple[str, bytes]]:
    """`hydrant-source-*` headers naming a consumed record; consumers use them to drop repeats."""
    return [
        ("hydrant-source-topic", message.topic.encode()),
        ("hydrant-source-partition", str(message.partition).encode()),
        ("hydrant-source-offset", str(message.offset).encode()),
    ]


async def send_dead_letter(producer: Any, dlq_topic: str, message: Any, error: BadRecord) -> Awaitable[Any]:
    """Queue the record for ``dlq_topic``; returns the delivery future (awaited per batch)."""
    DEAD_LETTERS.labels(error.reason).inc()
    logger.warning(
        "dead letter %s/%s/%s -> %s: %s: %s",
        message.topic,
        message.partition,
        message.offset,
        dlq_topic,
        error.reason,
        error,
    )
    headers = [
        ("hydrant-reason", error.reason.encode()),
        ("hydrant-error", str(error)[:1000].encode("utf-8", errors="replace")),
        *source_headers(message),
    ]
    future: Awaitable[Any] = await producer.send(dlq_topic, message.key, message.value, None, None, headers)
    return future
