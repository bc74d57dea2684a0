"""`state_census`: every 30 s, count the state this worker serves (keys and buckets per feature
group, rows per lookup) for /metrics, then give freed memory back to the system (app/system/memory.py).
The scan gives the event loop back every 500 records."""

from __future__ import annotations

import asyncio
from typing import Any

from app.metrics import LOOKUP_ROWS, STATE_BUCKETS, STATE_KEYS
from app.runtime import app, settings
from app.system.memory import release_free_memory
from tables.features import FEATURE_TABLES
from tables.lookups import LOOKUP_TABLES
from tables.store import local_record_keys, serves

CENSUS_INTERVAL_S = 30.0
YIELD_EVERY = 500


async def count_records(table: Any) -> tuple[int, int]:
    """(records whose key ends with NUL, other records) over the partitions this worker serves."""
    heads = others = 0
    for partition in range(settings.partitions):
        if not serves(table, partition):
            continue
        for n, key in enumerate(local_record_keys(table, partition), 1):
            if key.endswith(b"\0"):
                heads += 1
            else:
                others += 1
            if n % YIELD_EVERY == 0:
                await asyncio.sleep(0)
    return heads, others


@app.timer(CENSUS_INTERVAL_S, on_leader=False)
async def state_census() -> None:
    for group, table in FEATURE_TABLES.items():
        keys, buckets = await count_records(table)
        STATE_KEYS.labels(group).set(keys)
        STATE_BUCKETS.labels(group).set(buckets)
    for name, table in LOOKUP_TABLES.items():
        heads, others = await count_records(table)
        LOOKUP_ROWS.labels(name).set(heads + others)
    await release_free_memory()
