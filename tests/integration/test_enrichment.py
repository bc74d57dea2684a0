"""Issue 3 on the real broker: lookup joins, computed columns, two workers, dead letters."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from tests.support.broker import BrokerUnderTest
from tests.support.kafka import Record, consume, create_pipeline_topics_for, produce
from tests.support.worker import WorkerProcess, wait_for

PIPELINE = """
name: store-{uid}
streams:
  orders:
    topic: orders-{uid}
    key: user_id
    fields: {{user_id: str, order_id: str, amount: float, status: str}}
lookups:
  users:
    topic: users-{uid}
    key: user_id
    fields: {{country: str, segment: str}}
outputs:
  enriched:
    topic: enriched-{uid}
    from: orders
    join: [users]
    computed:
      amount_cents: "round(amount * 100)"
      label: "country + '/' + segment if segment else 'unknown'"
      per_unit: "100 / amount"
"""


@pytest.fixture
def store_pipeline(tmp_path: Path, uid: str, broker: BrokerUnderTest) -> Path:
    path = tmp_path / "store.yaml"
    path.write_text(PIPELINE.format(uid=uid))
    create_pipeline_topics_for(broker.url, path, uid)
    return path


def user(i: int, segment: str = "regular") -> dict[str, str]:
    return {"user_id": f"u{i:03d}", "country": ["DE", "FR", "US"][i % 3], "segment": segment}


def order(n: int, user_id: str) -> dict[str, object]:
    return {"user_id": user_id, "order_id": f"o-{n}", "amount": 1 + (n % 97) / 4, "status": "paid"}


def publish(broker: BrokerUnderTest, topic: str, records: list[tuple[bytes | None, object]]) -> None:
    payload = [(k, None if v is None else orjson.dumps(v)) for k, v in records]
    asyncio.run(produce(broker.bootstrap, topic, payload))


def lookups_applied(workers: list[WorkerProcess]) -> tuple[float, float]:
    upserts = sum(w.metric("hydrant_lookup_updates_total", op="upsert") for w in workers)
    deletes = sum(w.metric("hydrant_lookup_updates_total", op="delete") for w in workers)
    return upserts, deletes


def check_row(record: Record, expected_user: dict[str, str] | None) -> None:
    row = record.json()
    assert record.key == row["user_id"].encode()
    assert record.headers["hydrant-source-topic"].decode().startswith("orders-")
    int(record.headers["hydrant-source-offset"])
    assert list(row)[:4] == ["user_id", "order_id", "amount", "status"]  # stream fields first
    assert row["amount_cents"] == round(row["amount"] * 100)
    assert row["per_unit"] == pytest.approx(100 / row["amount"])
    if expected_user is None:
        assert row["country"] is None and row["segment"] is None and row["label"] == "unknown"
    else:
        assert row["country"] == expected_user["country"] and row["segment"] == expected_user["segment"]
        assert row["label"] == f"{expected_user['country']}/{expected_user['segment']}"


def test_join_uses_lookup_values_current_at_processing(
    broker: BrokerUnderTest, store_pipeline: Path, uid: str, workers: Callable[..., WorkerProcess]
) -> None:
    users = {f"u{i:03d}": user(i) for i in range(100)}
    publish(broker, f"users-{uid}", [(k.encode(), v) for k, v in users.items()])
    worker = workers(store_pipeline)
    worker.wait_ready()
    wait_for(lambda: lookups_applied([worker]) == (100, 0), "100 users in the lookup table")

    rng = random.Random(3)
    first = [order(n, f"u{rng.randrange(100):03d}") for n in range(500)]
    publish(broker, f"orders-{uid}", [(o["user_id"].encode(), o) for o in first])  # type: ignore[union-attr]
    out = asyncio.run(consume(broker.bootstrap, f"enriched-{uid}", 500, timeout=60))
    assert len(out) == 500
    for record in out:
        check_row(record, users[record.json()["user_id"]])

    # Mid-stream: 20 users change segment, 10 are deleted (tombstones), 5 new users appear.
    changed = {f"u{i:03d}": user(i, "vip") for i in range(20)}
    deleted = [f"u{i:03d}" for i in range(20, 30)]
    added = {f"u{i:03d}": user(i, "new") for i in range(100, 105)}
    publish(
        broker,
        f"users-{uid}",
        [(k.encode(), v) for k, v in {**changed, **added}.items()] + [(k.encode(), None) for k in deleted],
    )
    wait_for(lambda: lookups_applied([worker]) == (125, 10), "updates and deletes applied")
    current: dict[str, dict[str, str] | None] = {**users, **changed, **added}
    for k in deleted:
        current[k] = None

    second = [order(n, f"u{rng.randrange(105):03d}") for n in range(500, 1000)]
    publish(broker, f"orders-{uid}", [(o["user_id"].encode(), o) for o in second])  # type: ignore[union-attr]
    out = asyncio.run(consume(broker.bootstrap, f"enriched-{uid}", 1000, timeout=60))
    assert len(out) == 1000
    later = [r for r in out if int(r.json()["order_id"][2:]) >= 500]
    assert len(later) == 500
    for record in later:
        check_row(record, current[record.json()["user_id"]])
    assert any(current[r.json()["user_id"]] is None for r in later), "no order of a deleted user was checked"


def test_two_workers_enrich_every_event_exactly_once(
    broker: BrokerUnderTest, store_pipeline: Path, uid: str, workers: Callable[..., WorkerProcess]
) -> None:
    users = {f"u{i:03d}": user(i, ["new", "vip"][i % 2]) for i in range(100)}
    publish(broker, f"users-{uid}", [(k.encode(), v) for k, v in users.items()])
    one, two = workers(store_pipeline, name="w1"), workers(store_pipeline, name="w2")
    one.wait_ready()
    two.wait_ready()
    wait_for(lambda: lookups_applied([one, two])[0] >= 100, "users applied across both workers")
    wait_for(lambda: one.ready() and two.ready(), "both workers ready after the rebalance")

    rng = random.Random(5)
    orders = [order(n, f"u{rng.randrange(100):03d}") for n in range(1000)]
    # Half keyed by the order id (not the entity key): they take the repartition hop.
    payload = [((o["order_id"] if n % 2 else o["user_id"]).encode(), o) for n, o in enumerate(orders)]  # type: ignore[union-attr]
    publish(broker, f"orders-{uid}", payload)
    out = asyncio.run(consume(broker.bootstrap, f"enriched-{uid}", 1000, timeout=90, settle=3))

    counts = Counter(r.json()["order_id"] for r in out)
    assert len(counts) == 1000, "lost events"
    assert max(counts.values()) == 1, "duplicated events"
    for record in out:
        check_row(record, users[record.json()["user_id"]])
        # The original record, not the repartition topic, is named as the source.
        assert record.headers["hydrant-source-topic"] == f"orders-{uid}".encode()
    consumed = [w.metric("hydrant_events_consumed_total") for w in (one, two)]
    assert sum(consumed) == 1000 and min(consumed) > 0, f"work not shared: {consumed}"


def test_malformed_events_go_to_the_dead_letter_topic(
    broker: BrokerUnderTest, store_pipeline: Path, uid: str, workers: Callable[..., WorkerProcess]
) -> None:
    publish(broker, f"users-{uid}", [(f"u{i:03d}".encode(), user(i)) for i in range(10)])
    rng = random.Random(11)
    good = [order(n, f"u{rng.randrange(10):03d}") for n in range(10_000)]
    bad: list[tuple[bytes | None, bytes, str]] = []
    for n in range(1000):
        kind = n % 5
        if kind == 0:
            bad.append((b"u001", b'{"user_id": "u001", "amount": 3', "decode"))
        elif kind == 1:
            bad.append((b"x", orjson.dumps({"order_id": f"b-{n}", "amount": 1.0}), "missing_key"))
        elif kind == 2:
            bad.append((b"u002", orjson.dumps({**order(n, "u002"), "amount": "lots"}), "type"))
        elif kind == 3:
            bad.append((b"u003", orjson.dumps({**order(n, "u003"), "amount": 0.0}), "expression"))  # 100 / 0
        elif n % 50 == 4:
            bad.append((b"junk", bytes(rng.getrandbits(8) for _ in range(1_000_000)), "decode"))  # 1 MB junk
        else:
            bad.append((None, b"\x00\x01 not json", "decode"))
    mixed: list[tuple[bytes | None, bytes, str | None]] = [
        (o["user_id"].encode(), orjson.dumps(o), None)
        for o in good  # type: ignore[union-attr]
    ]
    for item in bad:
        mixed.insert(rng.randrange(len(mixed) + 1), item)
    asyncio.run(produce(broker.bootstrap, f"orders-{uid}", [(k, v) for k, v, _ in mixed]))

    worker = workers(store_pipeline)
    worker.wait_ready()
    out = asyncio.run(consume(broker.bootstrap, f"enriched-{uid}", 10_000, timeout=120))
    dlq = asyncio.run(consume(broker.bootstrap, f"orders-{uid}.dlq", 1000, timeout=60))

    assert len(out) + len(dlq) == len(mixed), "lost or duplicated records"
    assert sorted(r.json()["order_id"] for r in out) == sorted(o["order_id"] for o in good)  # type: ignore[type-var]
    assert worker.proc is not None and worker.proc.poll() is None, "the worker stopped on bad data"

    expected = Counter(reason for _, _, reason in bad)
    assert Counter(r.headers["hydrant-reason"].decode() for r in dlq) == expected
    originals = Counter((k, v) for k, v, reason in mixed if reason)
    assert Counter((r.key, r.value) for r in dlq) == originals, "dead letters must be the original bytes"
    for record in dlq:
        assert record.headers["hydrant-source-topic"] == f"orders-{uid}".encode()
        assert record.headers["hydrant-error"]
        int(record.headers["hydrant-source-partition"]), int(record.headers["hydrant-source-offset"])
    assert sum(worker.metric("hydrant_dead_letters_total", reason=r) for r in expected) == 1000
    assert worker.metric("hydrant_dead_letters_total", reason="expression") == expected["expression"]


def test_lookup_rows_keyed_otherwise_are_rekeyed_and_bad_rows_dead_lettered(
    broker: BrokerUnderTest, store_pipeline: Path, uid: str, workers: Callable[..., WorkerProcess]
) -> None:
    # Kafka keys that are not the lookup key: the rows take the lookup's repartition hop (most land
    # on another partition than their key's) and must still be found by the join.
    users = {f"u{i:03d}": user(i, "vip") for i in range(60)}
    rows: list[tuple[bytes | None, bytes | None]] = [
        (f"row-{i}".encode(), orjson.dumps(v)) for i, v in enumerate(users.values())
    ]
    bad = [
        (b"u900", b'{"user_id": "u900", "country": ', "decode"),
        (b"", None, "missing_key"),  # a tombstone with an empty key names no row
        (b"u901", orjson.dumps({"user_id": "u901", "country": 7, "segment": "x"}), "type"),
    ]
    rows[10:10] = [(k, v) for k, v, _ in bad]
    asyncio.run(produce(broker.bootstrap, f"users-{uid}", rows))
    worker = workers(store_pipeline)
    worker.wait_ready()
    wait_for(lambda: lookups_applied([worker]) == (60, 0), "60 rekeyed users in the lookup table")
    dlq = asyncio.run(consume(broker.bootstrap, f"users-{uid}.dlq", 3, timeout=60))
    assert sorted(r.headers["hydrant-reason"].decode() for r in dlq) == sorted(reason for *_, reason in bad)
    assert {(r.key, r.value) for r in dlq} == {(k, v) for k, v, _ in bad}
    for record in dlq:
        assert record.headers["hydrant-source-topic"] == f"users-{uid}".encode()

    orders = [order(n, f"u{n % 60:03d}") for n in range(120)]
    publish(broker, f"orders-{uid}", [(o["user_id"].encode(), o) for o in orders])  # type: ignore[union-attr]
    out = asyncio.run(consume(broker.bootstrap, f"enriched-{uid}", 120, timeout=60))
    assert len(out) == 120
    for record in out:
        check_row(record, users[record.json()["user_id"]])
