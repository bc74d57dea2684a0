"""Feature tables: one changelog-backed RocksDB table per feature group, one record per entity key.

The record is the key's whole window state (tables/windows.py), applied offsets included, so a
key is restored from one changelog record and never double-counts after a restore.
"""

from __future__ import annotations

from typing import Any

from app.main import app, pipeline, settings
from tables.store import raw_table
from tables.windows import GroupPlan, State, decode_state, group_plans, read_features

GROUPS: dict[str, GroupPlan] = group_plans(pipeline)
FEATURE_TABLES: dict[str, Any] = {
    name: raw_table(app, f"features-{name}", settings.partitions, f"Window state of feature group {name!r}")
    for name in GROUPS
}


def load_state(group: str, key: bytes) -> State:
    """The stored state of ``key`` (a fresh one if none), read in the current event's partition."""
    return decode_state(FEATURE_TABLES[group].get(key))


def store_state(group: str, key: bytes, encoded: bytes) -> None:
    """Write one key's state: one RocksDB put and one changelog record."""
    FEATURE_TABLES[group][key] = encoded


class UnknownFeature(ValueError):
    """A requested feature name that the group does not define."""


def stored_state(group: str, key: bytes) -> State | None:
    """A key's state as this worker stores it (outside any event: searched in every local
    partition), or None when the key was never seen here."""
    raw = FEATURE_TABLES[group].get(key)
    return decode_state(raw) if raw is not None else None


def select_features(group: str, names: list[str] | None) -> frozenset[str] | None:
    """Validate a requested subset of feature names; UnknownFeature naming the first bad one."""
    if names is None:
        return None
    known = set(GROUPS[group].feature_names())
    for name in names:
        if name not in known:
            raise UnknownFeature(name)
    return frozenset(names)


def features_for(group: str, state: State, at_ms: int, names: frozenset[str] | None = None) -> dict[str, Any]:
    """The read path of the data API: features of one key's state at ``at_ms``."""
    return read_features(GROUPS[group], state, at_ms, names)
