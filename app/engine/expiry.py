"""The TTL sweep: the records of keys whose ``ttl`` expired (tables/expiry.py) deleted from the
partitions this worker serves, locally and in the changelog (tombstones), a bounded slice at a time
between two batches (the stream engine gives it its turn, as it does the replay)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from app.metrics import KEYS_EXPIRED
from tables.expiry import expired_keys
from tables.registry import StateTables
from tables.store import StateWriter, prefix_scan

logger = logging.getLogger(__name__)

SLICE_KEYS = 1_000  # heads looked at per step (a few ms of RocksDB reads)
EVERY_S = 1.0  # one step at most this often


class Sweeper:
    """Walks every (group with a ttl, partition served here) in turn, ``slice_keys`` heads a step,
    and deletes the records of the expired keys it finds (``clock(group, partition)``: the
    partition's clock as the stream engine keeps it)."""

    def __init__(
        self,
        tables: StateTables,
        partitions: int,
        clock: Callable[[str, int], int | None],
        on_write: Callable[[str, int], None] | None = None,
        slice_keys: int = SLICE_KEYS,
        every_s: float = EVERY_S,
    ) -> None:
        self.tables = tables
        self.partitions = partitions
        self.clock = clock
        self.on_write = on_write
        self.slice_keys = slice_keys
        self.every_s = every_s
        self.groups = [g for g, plan in tables.plans.items() if plan.ttl is not None]
        self._turn = 0  # which (group, partition) of the rotation is next
        self._cursor: bytes | None = None  # where the current one continues (None: its start)
        self._last = 0.0

    def due(self) -> bool:
        """Whether a step is due (a group has a ttl and the last step was ``every_s`` ago)."""
        return bool(self.groups) and time.monotonic() - self._last >= self.every_s

    def wait(self) -> float:
        """Seconds until the next step is due (at least a few milliseconds)."""
        return max(0.01, self.every_s - (time.monotonic() - self._last))

    async def step(self, producer: Any) -> int:
        """One slice of the next (group, partition) served here: delete its expired keys' records
        (written locally, then to the changelog through ``producer``, acked before it returns).
        Returns how many keys it deleted."""
        self._last = time.monotonic()
        slots = [
            (g, p) for g in self.groups for p in range(self.partitions) if self.tables.features[g].serves(p)
        ]
        if not slots:
            return 0
        group, partition = slots[self._turn % len(slots)]
        table = self.tables.features[group]
        db = table.db(partition)
        records: Any = db.items() if self._cursor is None else db.items(from_key=self._cursor)  # raw: bytes
        keys, self._cursor = expired_keys(
            self.tables.plans[group], records, self.clock(group, partition), self.slice_keys
        )
        if self._cursor is None:  # this one is done: the next one from its start
            self._turn += 1
        if not keys:
            return 0
        scan = prefix_scan(db)
        writer = StateWriter(producer, on_write=self.on_write)
        for key in keys:
            writer.write_many(table, partition, [(record_key, None) for record_key, _ in scan(key + b"\x00")])
        await writer.send()
        await writer.acked()
        KEYS_EXPIRED.labels(group).inc(len(keys))
        logger.debug("ttl sweep: %d keys of %s/%d expired", len(keys), group, partition)
        return len(keys)
