"""Feature tables: one changelog-backed RocksDB table per feature group, one record per entity key.

The record is the key's whole window state (tables/windows.py), applied offsets included, so a
key is restored from one changelog record and never double-counts after a restore.
"""

from __future__ import annotations

from typing import Any

from app.main import app, pipeline, settings
from app.metrics import LATE_EVENTS
from tables.store import raw_table
from tables.windows import GroupPlan, State, decode_state, group_plans, read_features

GROUPS: dict[str, GroupPlan] = group_plans(pipeline)
FEATURE_TABLES: dict[str, Any] = {
    name: raw_table(app, f"features-{name}", settings.partitions, f"Window state of feature group {name!r}")
    for name in GROUPS
}
LATE = {name: LATE_EVENTS.labels(name) for name in GROUPS}


def load_state(group: str, key: bytes) -> State:
    """The stored state of ``key`` (a fresh one if none), read in the current event's partition."""
    return decode_state(FEATURE_TABLES[group].get(key))


def store_state(group: str, key: bytes, encoded: bytes) -> None:
    """Write one key's state: one RocksDB put and one changelog record."""
    FEATURE_TABLES[group][key] = encoded


def features_at(group: str, state: State, at_ms: int) -> dict[str, Any]:
    return read_features(GROUPS[group], state, at_ms)
