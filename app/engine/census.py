"""The state census: keys and buckets per feature group and rows per lookup that this worker
serves, for /metrics; then freed memory goes back to the system."""

from __future__ import annotations

import asyncio

from app.metrics import LOOKUP_ROWS, STATE_BUCKETS, STATE_KEYS
from app.system.memory import release_free_memory
from tables.registry import StateTables
from tables.store import StateTable, local_record_keys

YIELD_EVERY = 500  # records counted between two turns of the event loop


async def count_records(table: StateTable, partitions: int) -> tuple[int, int]:
    """(records whose key ends with NUL, other records but roll-ups) over the partitions served here."""
    heads = others = 0
    for partition in range(partitions):
        if not table.serves(partition):
            continue
        for n, key in enumerate(local_record_keys(table, partition), 1):
            if key.endswith(b"\0"):
                heads += 1
            elif key.endswith(b"\0L") or key.startswith(b"\0"):  # a roll-up; a replay's, a clock: no key's
                pass
            else:
                others += 1
            if n % YIELD_EVERY == 0:
                await asyncio.sleep(0)
    return heads, others


async def take_census(tables: StateTables, partitions: int) -> None:
    """Count the state of every table into the gauges, then release free memory."""
    for group, table in tables.features.items():
        keys, buckets = await count_records(table, partitions)
        STATE_KEYS.labels(group).set(keys)
        STATE_BUCKETS.labels(group).set(buckets)
    for name, table in tables.lookups.items():
        heads, others = await count_records(table, partitions)
        LOOKUP_ROWS.labels(name).set(heads + others)
    await release_free_memory()
