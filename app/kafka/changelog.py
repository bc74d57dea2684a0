"""Bulk reading of table changelogs, ahead of Faust's own recovery.

Faust restores a changelog record by record through its whole stream machinery (fetcher, conductor,
recovery queue, one event object per record): about 2,000 records/s on these machines. Hydrant's
tables are raw bytes in RocksDB, so a changelog record *is* the RocksDB write: :func:`restore` reads
each partition with its own group-less consumer in large fetches and hands each partition's records
of one fetch to ``apply`` (tables/restore.py ``write_fetch``: one rocksdict ``WriteBatch``, then the
partition's persisted offset, exactly as Faust's ``apply_changelog_batch`` would). Faust's recovery
runs it when it computes where recovery starts (app/faust_ext/recovery.py
``HydrantRecovery._build_offsets``), so Faust then finds nothing (or only the newest records) left to
read.

Only active partitions are restored this way (standbys catch up in the background after the worker
is ready), each up to the high watermark Faust measured just before, so its consistency check
(start offset never past the high watermark) holds; partitions with fewer than ``MIN_RECORDS`` to
read are left to Faust. The records of one fetch are written before the offset that covers them,
so a crash in between only makes the next recovery read some records again (the same writes).
The restore gives up after ``budget_s`` (Faust waits at most its request timeout for this step);
Faust's recovery then reads the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

logger = logging.getLogger(__name__)

FETCH_BYTES = 32 * 1024 * 1024
STALL_S = 10.0
#: Fewer records than this are left to Faust (starting a consumer costs more than reading them).
MIN_RECORDS = 500


async def restore(
    options: Mapping[str, Any],
    starts: Mapping[Any, int | None],
    ends: Mapping[Any, int],
    budget_s: float,
    apply: Callable[[Any, list[Any]], None],
) -> dict[Any, int]:
    """Read the changelog records of each partition in ``starts`` (Faust TPs: the last offset
    already applied, None or -1 for none) up to the offset in ``ends`` (the last one to apply) and
    hand them to ``apply(tp, records)``, one fetch of a partition at a time, in offset order;
    returns the last offset applied per partition that moved."""
    todo = {
        tp: start for tp, start in starts.items() if ends.get(tp, -1) - first_offset(start) + 1 >= MIN_RECORDS
    }
    if not todo:
        return {}
    reader = AIOKafkaConsumer(
        **{"fetch_max_wait_ms": 50, **options},  # HYDRANT_FETCH_MAX_WAIT_MS when the options say
        group_id=None,
        enable_auto_commit=False,
        fetch_max_bytes=FETCH_BYTES,
        max_partition_fetch_bytes=FETCH_BYTES,
        auto_offset_reset="earliest",
    )
    await reader.start()
    applied: dict[Any, int] = {}
    count = 0
    began = time.monotonic()
    try:
        wanted = {TopicPartition(tp.topic, tp.partition): tp for tp in todo}
        reader.assign(list(wanted))
        for ktp, tp in wanted.items():
            reader.seek(ktp, first_offset(todo[tp]))
        pending = set(wanted)
        last_progress = time.monotonic()
        while pending and time.monotonic() - began < budget_s and time.monotonic() - last_progress < STALL_S:
            batches = await reader.getmany(*pending, timeout_ms=200, max_records=50_000)
            for ktp, records in batches.items():
                tp = wanted[ktp]
                records = [r for r in records if r.offset <= ends[tp]]
                if records:
                    apply(tp, records)
                    applied[tp] = records[-1].offset
                    count += len(records)
                    last_progress = time.monotonic()
                if applied.get(tp, -1) >= ends[tp]:
                    pending.discard(ktp)
            await asyncio.sleep(0)  # let the worker's other tasks (HTTP, heartbeats) run
        if pending:
            logger.warning(
                "bulk restore stopped with %d partitions unfinished; Faust's recovery reads the rest",
                len(pending),
            )
    finally:
        await reader.stop()
    elapsed = time.monotonic() - began
    logger.info(
        "bulk restore: %d changelog records into %d partitions in %.1fs (%.0f records/s)",
        count,
        len(applied),
        elapsed,
        count / max(elapsed, 1e-9),
    )
    return applied


def first_offset(start: int | None) -> int:
    """The first offset to read after ``start`` (Faust's last applied offset, None/-1 for none)."""
    return 0 if start is None or start < 0 else start + 1
