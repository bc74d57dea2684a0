"""tables/replica.py and app/engine/replicas.py: a global lookup's replica holds the rows of every
partition of its topic and the next offset of each, written together; it reopens where it was."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson

from app.config.spec import load_pipeline
from app.engine.replicas import ReplicaUpdater
from tables.replica import LookupReplica
from tests.conftest import PAYMENTS


@dataclass(frozen=True)
class Fetched:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def test_a_replica_applies_upserts_deletes_and_positions_and_reopens_with_them(tmp_path: Path) -> None:
    spec = load_pipeline(PAYMENTS).lookups["merchants"]
    replica = LookupReplica(tmp_path / "merchants")
    updater = ReplicaUpdater("merchants", spec, replica)
    assert replica.positions() == {} and not updater.readiness()[0]
    row = {"mcc": "5411", "country": "FR"}
    updater.apply(
        [
            Fetched(0, 0, b"m1", orjson.dumps({"merchant_id": "m1", **row})),
            Fetched(3, 7, b"m2", orjson.dumps(row)),  # the key from the Kafka key
            Fetched(3, 8, b"m3", b"not json"),  # skipped (the group's updater dead-letters it)
            Fetched(0, 1, b"m9", orjson.dumps(row)),
            Fetched(0, 2, b"m9", None),  # deleted
        ]
    )
    assert replica.db.get(b"m1") == orjson.dumps(row) and replica.db.get(b"m2") == orjson.dumps(row)
    assert replica.db.get(b"m9") is None and replica.db.get(b"m3") is None
    assert replica.positions() == {0: 3, 3: 9}
    replica.close()
    again = LookupReplica(tmp_path / "merchants")
    try:
        assert again.positions() == {0: 3, 3: 9} and again.db.get(b"m1") == orjson.dumps(row)
    finally:
        again.close()
