"""tables/restore.py on real RocksDB databases: restoring a feature table's changelog keeps each key's
newest state when a worker that had lost the partition (a zombie) wrote older versions last.

The changelog is built as workers write it: the old owner's records, then the new owner's (restored
from them, then every event since the last commit), then the zombie's late batch, which holds only
some of those events. Before the fix, the restore applied the zombie's records last and the key came
back short."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import rocksdict

from app.config.spec import parse_pipeline
from tables.apply import apply_event, choose
from tables.key_state import KeyState
from tables.plans import GroupPlan, group_plans
from tables.read import read_features
from tables.restore import newest_versions, supersedes, write_fetch
from tests.support.tables import RdictTable

PIPELINE = """\
name: t
streams:
  s:
    topic: s
    key: k
    time: ts
    fields: {k: str, ts: int, x: float}
features:
  g:
    key: k
    period: 10m
    aggregations:
      - {name: x, stream: s, field: x, ops: [count, sum], windows: [1h, lifetime]}
"""
BASE = 1_700_000_400_000  # a multiple of 10 minutes
MINUTE = 60_000


def plan() -> GroupPlan:
    return group_plans(parse_pipeline(PIPELINE))["g"]


class Worker:
    """One worker's view of partition 0: a RocksDB database, written as the engine writes it, each
    batch's records appended to the shared changelog."""

    def __init__(self, path: Path, changelog: list[tuple[bytes, bytes | None]]) -> None:
        self.db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))
        self.changelog = changelog

    def restore(self, records: list[tuple[bytes, bytes | None]]) -> None:
        for key, value in records:
            if value is None:
                self.db.delete(key)
            else:
                self.db[key] = value

    def batch(self, keys: list[bytes], offsets: range, out: list[tuple[bytes, bytes | None]]) -> None:
        """Events ``offsets`` of source s:0 (key by offset, 2 minutes apart), applied and written to
        the local database and to ``out``."""
        p = plan()
        states: dict[bytes, KeyState] = {}
        for offset in offsets:
            key = keys[offset % len(keys)]
            state = states.get(key) or states.setdefault(key, KeyState(key, self.db.get, p.retention))
            fields = {"k": key.decode(), "ts": BASE + offset * 2 * MINUTE, "x": float(offset)}
            apply_event(p, state, choose(p, "s", fields), fields, fields["ts"], "s:0", offset)
        for state in states.values():
            for record_key, value in state.changes():
                out.append((record_key, value))
                if value is None:
                    self.db.delete(record_key)
                else:
                    self.db[record_key] = value

    def features(self, key: bytes, at: int) -> dict[str, Any]:
        p = plan()
        return dict(read_features(p, KeyState(key, self.db.get, p.retention), at))


def records_of(rows: list[tuple[bytes, bytes | None]]) -> list[Any]:
    return [SimpleNamespace(key=k, value=v, offset=i) for i, (k, v) in enumerate(rows)]


def test_a_zombies_late_records_do_not_roll_a_restored_key_back(tmp_path: Path) -> None:
    keys = [b"a", b"b", b"c"]
    changelog: list[tuple[bytes, bytes | None]] = []
    old = Worker(tmp_path / "old", changelog)
    old.batch(keys, range(0, 60), changelog)  # committed through offset 59
    # The old owner freezes mid-batch (events 60..89 applied, nothing sent yet) and loses the partition.
    zombie_records: list[tuple[bytes, bytes | None]] = []
    old.batch(keys, range(60, 90), zombie_records)
    new = Worker(tmp_path / "new", changelog)
    new.restore(changelog)
    new.batch(keys, range(60, 120), changelog)  # every event since the last commit, and more
    changelog.extend(zombie_records)  # the zombie wakes up and its batch reaches the broker last
    at = BASE + 240 * MINUTE

    table = RdictTable(tmp_path / "restored", "features-g")
    skipped = write_fetch(table, 0, records_of(changelog))
    naive = Worker(tmp_path / "naive", [])  # every record applied in order, as before the fix
    naive.restore(changelog)

    # Skipped: the zombie's versions of records the new owner rewrote. Its buckets that have expired
    # since come back as records no head lists (reads never see them), and the buckets it completed
    # are equal to the new owner's.
    assert 0 < skipped < len(zombie_records)
    for key in keys:
        restored = dict(read_features(plan(), KeyState(key, table.db(0).get, plan().retention), at))
        assert restored == new.features(key, at)
        assert restored["x_count_lifetime"] == 40  # 120 events over 3 keys
        assert naive.features(key, at)["x_count_lifetime"] < 40
    assert table.persisted(0) == len(changelog) - 1


def test_without_versions_the_last_record_wins(tmp_path: Path) -> None:
    """A lookup table's rows carry no offsets: the changelog's order decides, as before."""
    table = RdictTable(tmp_path / "lookup", "lookup-users")
    rows = [(b"u1", b'{"tier":"gold"}'), (b"u2", b'{"tier":"free"}'), (b"u1", b'{"tier":"free"}')]
    assert write_fetch(table, 0, records_of([*rows, (b"u2", None)])) == 0
    assert table.db(0).get(b"u1") == b'{"tier":"free"}'
    assert table.db(0).get(b"u2") is None


def test_superseding_equal_and_deleted_versions_are_applied_and_others_skipped(tmp_path: Path) -> None:
    db = rocksdict.Rdict(str(tmp_path / "db"), options=rocksdict.Options(raw_mode=True))
    bucket = b"k\x0028"
    db[bucket] = b'[[[3]],"=abcd",{"s:0":7}]'
    newer = b'[[[4]],"=abcd",{"s:0":9}]'
    converted = b'[[[4],null],"=abcdefgh",{"s:0":9}]'  # a new layout, the same events
    older = b'[[[2]],"=abcd",{"s:0":5}]'
    changes, skipped = newest_versions(db, [(bucket, newer), (bucket, older), (bucket, converted)])
    assert (changes, skipped) == ({bucket: converted}, 1)
    # Events of a source the stored version lacks, but not those it holds: written late by a worker
    # that had lost the partition (every writer starts from the version before and only adds).
    other_source = b'[[[1]],"=abcd",{"s:1":2}]'
    assert newest_versions(db, [(bucket, other_source)]) == ({}, 1)
    both = b'[[[5]],"=abcd",{"s:0":7,"s:1":2}]'
    assert newest_versions(db, [(bucket, both)]) == ({bucket: both}, 0)
    changes, skipped = newest_versions(db, [(bucket, None), (bucket, older)])
    assert (changes, skipped) == ({bucket: older}, 0)  # after a delete, nothing to compare with
    head = b"k\x00"
    db[head] = b'{"n":30,"m":"7","o":{"s:0":9,"s:1":4}}'
    changes, skipped = newest_versions(db, [(head, b'{"n":29,"m":"3","o":{"s:0":9}}')])
    assert (changes, skipped) == ({}, 1)
    job = b"\x00replay"
    changes, skipped = newest_versions(db, [(job, b'{"x":1}')])
    assert (changes, skipped) == ({job: b'{"x":1}'}, 0)


def test_supersedes_needs_every_stored_offset_at_least_as_high() -> None:
    assert not supersedes({"s:0": 5}, {"s:0": 7})
    assert not supersedes({"s:0": 7}, {"s:0": 7, "s:1": 1})
    assert supersedes({"s:0": 7}, {"s:0": 7})
    assert not supersedes({"s:0": 8}, {"s:0": 7, "s:1": 9})  # neither holds the other's events
    assert supersedes({"s:0": 8, "s:1": 9, "s:2": 0}, {"s:0": 7, "s:1": 9})
    assert not supersedes(3, 5)  # roll-ups: the newest bucket merged
    assert supersedes(5, 5)
    assert supersedes(None, {"s:0": 1}) and supersedes({"s:0": 1}, None)
