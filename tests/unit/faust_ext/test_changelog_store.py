"""app/faust_ext/tables.py ChangelogStore: Faust's recovery and standby replicas apply a feature
table's changelog through it, so a zombie's late, older records are skipped there too (tables/restore.py).
The app is Hydrant's real one with its real RocksDB store (``hydrant://``), never started."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from app.faust_ext.app import HydrantApp
from app.faust_ext.tables import ChangelogStore, raw_table
from app.metrics import STALE_CHANGELOG_RECORDS
from tables.store import UNCONFIRMED_KEY


def event(topic: str, partition: int, offset: int, key: bytes, value: bytes | None) -> Any:
    tp = TP(topic, partition)
    return SimpleNamespace(
        message=SimpleNamespace(tp=tp, partition=partition, offset=offset, key=key, value=value)
    )


def make_app(datadir: Path) -> HydrantApp:
    """Hydrant's app with its store, on the running loop (never started: no broker)."""
    return HydrantApp(
        "test-store",
        broker="kafka://127.0.0.1:1",
        store="hydrant://",
        datadir=str(datadir),
        autodiscover=False,
        loop=asyncio.get_running_loop(),
    )


async def test_faust_applies_changelog_records_through_the_version_check(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    features = raw_table(app, "features-g", 2, "window state", 16)
    lookups = raw_table(app, "lookup-users", 2, "a lookup", 16)
    assert isinstance(features.faust.data, ChangelogStore)
    topic = features.changelog
    bucket, head = b"k\x0028", b"k\x00"
    newer = b'[[[4]],"=abcd",{"s:0":9}]'
    zombie = b'[[[2]],"=abcd",{"s:0":5}]'
    stale_before = STALE_CHANGELOG_RECORDS.labels("features-g")._value.get()

    features.faust.data.apply_changelog_batch(
        [
            event(topic, 1, 10, bucket, newer),
            event(topic, 1, 11, head, b'{"n":28,"m":"1","o":{"s:0":9}}'),
            event(topic, 1, 12, bucket, zombie),
        ],
        None,
        None,
    )
    assert features.db(1).get(bucket) == newer
    assert STALE_CHANGELOG_RECORDS.labels("features-g")._value.get() == stale_before + 1
    assert features.faust.data.persisted_offset(TP(topic, 1)) == 12

    lookup_topic = lookups.changelog
    lookups.faust.data.apply_changelog_batch(
        [
            event(lookup_topic, 0, 3, b"u1", b'{"tier":"gold"}'),
            event(lookup_topic, 0, 4, b"u1", b'{"tier":"free"}'),
        ],
        None,
        None,
    )
    assert lookups.db(0).get(b"u1") == b'{"tier":"free"}'


async def test_a_partition_with_unconfirmed_local_writes_is_rebuilt_from_its_changelog(
    tmp_path: Path, caplog: Any
) -> None:
    """A worker killed after writing a batch locally, before its changelog records were acked (or one
    that wrote after losing the partition), must not recover on top of those writes."""
    app = make_app(tmp_path)
    features = raw_table(app, "features-g", 2, "window state", 16)
    tp = TP(features.changelog, 0)
    db = features.db(0)
    db[b"k\x00"] = b'{"n":28,"m":"1","o":{"s:0":9}}'
    features.persist(0, 41)
    assert features.faust.data.persisted_offset(tp) == 41  # all confirmed: recovery starts after 41

    db[UNCONFIRMED_KEY] = b"3"
    assert features.persisted(0) == 41  # what the writer compares with: never clears anything
    assert db.get(b"k\x00") is not None
    assert features.faust.data.persisted_offset(tp) == -1  # what Faust's recovery asks: from the start
    assert list(db.keys()) == []
    assert "rebuilt from the changelog" in caplog.text
