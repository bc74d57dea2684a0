"""Exact end offsets on the bundled broker, whose ListOffsets answer is short (docs/broker.md).

Tansu answers ListOffsets(LATEST) with "first offset of the last record batch + 1", which is short
of the true end whenever that batch holds more than one record; the high watermark in Fetch
responses is right. Faust sizes table recovery with ListOffsets, so on Tansu it stops recovering
early (state comes back short) or refuses to start ("persisted offset is higher than highwater").

:func:`exact_end_offsets` asks for the end offset the way that works: take ListOffsets' answer
(never past the end), fetch from just before it with a short-lived group-less consumer, and read
the exact high watermark from that fetch. With HYDRANT_BROKER_PROFILE=tansu, Faust's consumer
thread computes its end offsets with it (app/faust_ext/consumer.py ``HydrantConsumerThread``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer

logger = logging.getLogger(__name__)
_PROBE_TIMEOUT_S = 10.0


async def exact_end_offsets(options: Mapping[str, Any], approx: Mapping[Any, int]) -> dict[Any, int]:
    """True end offsets of ``approx``'s partitions, given ListOffsets' lower bounds ``approx``."""
    wanted = {tp: offset for tp, offset in approx.items() if offset > 0}
    result = dict(approx)
    if not wanted:
        return result
    probe = AIOKafkaConsumer(**options, group_id=None, enable_auto_commit=False)
    await probe.start()
    try:
        probe.assign(list(wanted))
        for tp, offset in wanted.items():
            probe.seek(tp, offset - 1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _PROBE_TIMEOUT_S
        pending = set(wanted)
        while pending and loop.time() < deadline:
            await probe.getmany(*pending, timeout_ms=200)
            for tp in list(pending):
                highwater = probe.highwater(tp)
                if highwater is not None:
                    result[tp] = max(highwater, wanted[tp])
                    pending.discard(tp)
        if pending:
            logger.warning(
                "no high watermark for %s after %.0fs; using ListOffsets", pending, _PROBE_TIMEOUT_S
            )
    finally:
        await probe.stop()
    return result
