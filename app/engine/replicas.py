"""Global lookups: a replica of the whole lookup on every worker, fed by every partition of its
topic (app/kafka/replica_feed.py); joins read it on any field, without a hop (docs/pipeline.md)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from app.config.spec import LookupSpec
from app.records.decode import BadRecord, decode_lookup
from tables.replica import LookupReplica


class ReplicaUpdater:
    """Applies fetched records of a global lookup's topic to this worker's replica, as the lookup's
    table applies them (bad records are skipped here: the group's updater dead-letters them)."""

    def __init__(self, name: str, spec: LookupSpec, replica: LookupReplica) -> None:
        self.name = name
        self.spec = spec
        self.replica = replica
        self.caught_up = asyncio.Event()  # set once the replica has read its topic to the end

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason) for the worker's readiness: the replica caught up with its topic."""
        if self.caught_up.is_set():
            return True, "ready"
        return False, f"global lookup {self.name!r} is being read from its topic"

    def apply(self, records: list[Any]) -> None:
        """Write one fetch (aiokafka records, any partitions, each in offset order) and its positions."""
        rows: list[tuple[bytes, bytes | None]] = []
        positions: dict[int, int] = {}
        for record in records:
            positions[record.partition] = record.offset + 1
            try:
                key, fields = decode_lookup(record.key, record.value, self.spec)
            except BadRecord:
                continue
            rows.append((key.encode("utf-8"), None if fields is None else orjson.dumps(fields)))
        self.replica.apply(rows, positions)
