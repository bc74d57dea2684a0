"""The pipeline's state tables: a feature table per group, a lookup table per lookup, made by a
factory the runtime passes in; and the reads the API and the census make of them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.config.spec import Pipeline
from tables.key_state import KeyState, Scanner
from tables.plans import GroupPlan, group_plans
from tables.replica import LookupReplica
from tables.store import StateTable, StateWriter, local_keys, prefix_scan

#: make_table(name, description) -> a StateTable (app/faust_ext/tables.py makes Faust tables)
TableFactory = Callable[[str, str], StateTable]


def feature_table_name(group: str) -> str:
    """The table name of feature group ``group``."""
    return f"features-{group}"


def lookup_table_name(lookup: str) -> str:
    """The table name of lookup ``lookup``."""
    return f"lookup-{lookup}"


@dataclass(frozen=True)
class StateTables:
    """Every table of a pipeline, by feature group and by lookup name, with the groups' plans."""

    plans: dict[str, GroupPlan]
    features: dict[str, StateTable]
    lookups: dict[str, StateTable]
    #: global lookups' replicas on this worker (tables/replica.py), which their joins read
    replicas: dict[str, LookupReplica] = field(default_factory=dict)

    @classmethod
    def build(
        cls, pipeline: Pipeline, make_table: TableFactory, replicas: dict[str, LookupReplica] | None = None
    ) -> StateTables:
        """Every table of ``pipeline``, each made by ``make_table``; ``replicas`` of global lookups."""
        plans = group_plans(pipeline)
        features = {
            group: make_table(feature_table_name(group), f"Window state of feature group {group!r}")
            for group in plans
        }
        lookups = {
            name: make_table(lookup_table_name(name), f"Lookup {name!r} fed by topic {spec.topic!r}")
            for name, spec in pipeline.lookups.items()
        }
        return cls(plans, features, lookups, replicas or {})

    def all(self) -> dict[str, StateTable]:
        """Lookup tables and feature tables by their pipeline name."""
        return {**self.lookups, **self.features}


class UnknownFeature(ValueError):
    """A requested feature name that the group does not define."""


def stored_state(plan: GroupPlan, db: Any, key: bytes, scan: Scanner | None = None) -> KeyState:
    """A key's state in ``db``, a RocksDB partition of the group's table (the worker's own or a
    secondary instance of it), all its records from one range read: of ``scan`` (a
    :func:`prefix_scan` of ``db``, reused for several keys), or of a new one."""
    return KeyState(key, db.get, plan.retention, scan or prefix_scan(db))


def entity_keys(table: StateTable, partition: int) -> Iterator[bytes]:
    """Every entity key with state in ``partition`` here, in key order (one head record each)."""
    for record_key, _ in local_keys(table, partition):
        if record_key.endswith(b"\0"):
            yield record_key[:-1]


def select_features(plan: GroupPlan, names: list[str] | None) -> frozenset[str] | None:
    """Validate a requested subset of feature names; UnknownFeature naming the first bad one."""
    if names is None:
        return None
    known = set(plan.feature_names())
    for name in names:
        if name not in known:
            raise UnknownFeature(name)
    return frozenset(names)


def apply_lookup(
    writer: StateWriter, table: StateTable, partition: int, key: bytes, fields: dict[str, Any] | None
) -> str:
    """Upsert (fields) or delete (None) one lookup row on its home ``partition``; the op, for the
    metric label."""
    value = orjson.dumps(fields) if fields is not None else None
    writer.write(table, partition, key, value)
    return "upsert" if fields is not None else "delete"
