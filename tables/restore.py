"""Bulk restore of active table partitions from their changelogs, run just before Faust's own recovery
(which then reads what is left): one RocksDB write batch per fetch (docs/operations.md, recovery)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import rocksdict
from aiokafka import AIOKafkaConsumer, TopicPartition

logger = logging.getLogger(__name__)

FETCH_BYTES = 32 * 1024 * 1024
STALL_S = 10.0
#: Fewer records than this are left to Faust (starting a consumer costs more than reading them).
MIN_RECORDS = 500


async def restore(
    options: Mapping[str, Any],
    tables: Mapping[Any, Any],
    starts: Mapping[Any, int | None],
    ends: Mapping[Any, int],
    budget_s: float,
) -> dict[Any, int]:
    """Apply each partition's changelog records after ``starts`` (last applied; None/-1: none) up to
    ``ends`` (inclusive) to its table, within ``budget_s``; the last offset applied per partition moved."""
    todo = {tp: start for tp, start in starts.items() if ends.get(tp, -1) - _first(start) + 1 >= MIN_RECORDS}
    if not todo:
        return {}
    reader = AIOKafkaConsumer(
        **options,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_bytes=FETCH_BYTES,
        max_partition_fetch_bytes=FETCH_BYTES,
        fetch_max_wait_ms=50,
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
            reader.seek(ktp, _first(todo[tp]))
        pending = set(wanted)
        last_progress = time.monotonic()
        while pending and time.monotonic() - began < budget_s and time.monotonic() - last_progress < STALL_S:
            batches = await reader.getmany(*pending, timeout_ms=200, max_records=50_000)
            for ktp, records in batches.items():
                tp = wanted[ktp]
                records = [r for r in records if r.offset <= ends[tp]]
                if records:
                    _apply(tables[tp], tp, records)
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


def _first(start: int | None) -> int:
    """The first offset to read after ``start`` (Faust's last applied offset, None/-1 for none)."""
    return 0 if start is None or start < 0 else start + 1


def _apply(table: Any, tp: Any, records: list[Any]) -> None:
    """One fetch's records of a partition as one RocksDB write batch, then the persisted offset."""
    batch = rocksdict.WriteBatch(raw_mode=True)
    for record in records:
        if record.value is None:
            batch.delete(record.key)
        else:
            batch.put(record.key, record.value)
    table.data._db_for_partition(tp.partition).write(batch)
    table.data.set_persisted_offset(tp, records[-1].offset)


def install(options: Mapping[str, Any]) -> None:
    """Run :func:`restore` at the start of every Faust recovery of active partitions."""
    from faust.tables.recovery import Recovery

    original = Recovery._build_offsets
    if getattr(original, "hydrant_restore", False):
        return

    async def _build_offsets(self: Any, consumer: Any, tps: Any, destination: Any, title: str) -> None:
        if title == "active":  # standbys catch up in the background, after the worker is ready
            tables = {tp: self.tp_to_table[tp] for tp in tps if tp in self.tp_to_table}
            starts = {tp: destination.get(tp) for tp in tables}
            budget = 0.5 * float(self.app.conf.broker_request_timeout)
            ends = dict(self.active_highwaters)  # Faust's high watermark - 1: the last offset
            for tp, offset in (await restore(options, tables, starts, ends, budget)).items():
                destination[tp] = offset
        await original(self, consumer, tps, destination, title)

    _build_offsets.hydrant_restore = True  # type: ignore[attr-defined]
    Recovery._build_offsets = _build_offsets  # type: ignore[method-assign]
