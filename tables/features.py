"""Feature tables: one changelog-backed RocksDB table per feature group; per entity key a head
record and one record per bucket (docs/state-format.md describes the layout and why)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from app.runtime import app, pipeline, settings
from tables.key_state import KeyState
from tables.plans import GroupPlan, group_plans
from tables.read import read_features
from tables.store import local_db, local_keys, prefix_scan, raw_table

GROUPS: dict[str, GroupPlan] = group_plans(pipeline)
FEATURE_TABLES: dict[str, Any] = {
    name: raw_table(
        app,
        f"features-{name}",
        settings.partitions,
        f"Window state of feature group {name!r}",
        settings.rocksdb_memory_mb,
    )
    for name in GROUPS
}


class UnknownFeature(ValueError):
    """A requested feature name that the group does not define."""


def local_state(group: str, partition: int, key: bytes, scan: bool = False) -> KeyState:
    """A key's state read from its home ``partition`` on this worker; ``scan`` when its features
    will be read (all records in one range read, see KeyState)."""
    return stored_state(group, local_db(FEATURE_TABLES[group], partition), key, scan)


def stored_state(group: str, db: Any, key: bytes, scan: bool = True) -> KeyState:
    """A key's state in ``db``, a RocksDB partition of the group's table (the worker's own or a
    secondary instance of it)."""
    return KeyState(key, db.get, GROUPS[group].retention, prefix_scan(db) if scan else None)


def local_entity_keys(group: str, partition: int) -> Iterator[bytes]:
    """Every entity key with state in ``partition`` here, in key order (one head record each)."""
    for record_key, _ in local_keys(FEATURE_TABLES[group], partition):
        if record_key.endswith(b"\0"):
            yield record_key[:-1]


def select_features(group: str, names: list[str] | None) -> frozenset[str] | None:
    """Validate a requested subset of feature names; UnknownFeature naming the first bad one."""
    if names is None:
        return None
    known = set(GROUPS[group].feature_names())
    for name in names:
        if name not in known:
            raise UnknownFeature(name)
    return frozenset(names)


def features_for(
    group: str, state: KeyState, at_ms: int, names: frozenset[str] | None = None
) -> dict[str, Any]:
    """The read path of the data API: features of one key's state at ``at_ms``."""
    return read_features(GROUPS[group], state, at_ms, names)
