"""Dead letters (the original record with its reason) and forwards to a repartition topic, each
queued on the producer; the caller awaits the returned delivery futures per batch."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable
from typing import Any

from app.metrics import DEAD_LETTERS
from app.records.decode import BadRecord
from app.records.source import SOURCE_KEY, source_headers, source_key

logger = logging.getLogger(__name__)

#: The last dead letters this worker sent (reason, error, source position), newest last: what the
#: console shows (app/api/status.py); the dead-letter topics hold them all.
RECENT: deque[dict[str, Any]] = deque(maxlen=20)


async def send_dead_letter(
    producer: Any, dlq_topic: str, message: Any, error: BadRecord, repartitioned: bool = False
) -> Awaitable[Any]:
    """Queue the original record for ``dlq_topic``; returns the delivery future (awaited per batch)."""
    DEAD_LETTERS.labels(error.reason).inc()
    source = source_headers(message, repartitioned)
    where = "/".join(v.decode() for _, v in source)
    logger.warning("dead letter %s -> %s: %s: %s", where, dlq_topic, error.reason, error)
    now = int(time.time() * 1000)
    RECENT.append(
        {"time": now, "topic": dlq_topic, "reason": error.reason, "error": str(error)[:300], "source": where}
    )
    headers = [
        ("hydrant-reason", error.reason.encode()),
        ("hydrant-error", str(error)[:1000].encode("utf-8", errors="replace")),
        *source,
    ]
    key = source_key(message, repartitioned)
    future: Awaitable[Any] = await producer.send(dlq_topic, key, message.value, None, None, headers)
    return future


async def forward(producer: Any, topic: str, key: bytes, partition: int, message: Any) -> Awaitable[Any]:
    """Re-key a record (aiokafka's, timestamp in ms) onto ``partition`` of a repartition topic, value
    and timestamp unchanged."""
    headers = source_headers(message)
    if message.key is not None:
        headers.append((SOURCE_KEY, message.key))
    future: Awaitable[Any] = await producer.send(
        topic, key, message.value, partition, message.timestamp / 1000, headers
    )
    return future
