"""Issue 4 on the real broker: window features exact after SIGKILL + lost disk, and with a second
worker joining mid-ingest (every key compared with the pandas ground truth over HTTP)."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import orjson

from tests.support.broker import BrokerUnderTest
from tests.support.checks import settle_and_check
from tests.support.kafka import consume, create_pipeline_topics_for, produce
from tests.support.shop import HOUR, T0, make_events, publish, truth_of
from tests.support.worker import WorkerProcess, wait_for

EVENTS = 20_000


def test_features_exact_after_sigkill_and_lost_data_dir(
    broker: BrokerUnderTest,
    shop_pipeline: Path,
    uid: str,
    workers: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    create_pipeline_topics_for(broker.url, shop_pipeline, uid)
    events = make_events()
    truth = truth_of(shop_pipeline, events)
    publish(broker, uid, events[: EVENTS // 2])

    data_dir = tmp_path / "data"
    first = workers(shop_pipeline, name="first", data_dir=data_dir)
    first.wait_ready()
    wait_for(lambda: first.metric("hydrant_events_consumed_total") >= EVENTS // 4, "a quarter ingested", 120)
    first.stop(sig=signal.SIGKILL)  # mid-ingest: uncommitted offsets, unflushed state
    shutil.rmtree(data_dir)  # the disk is gone: state must come back from the changelog

    publish(broker, uid, events[EVENTS // 2 :])
    second = workers(shop_pipeline, name="second", data_dir=data_dir)
    second.wait_ready(timeout=180)
    # The state came back through the bulk restore (app/kafka/changelog.py), not record by record.
    restored = re.search(r"bulk restore: (\d+) changelog records", second.log())
    assert restored is not None and int(restored.group(1)) > 0, second.log()[-3000:]
    settle_and_check([second.url], truth, events)
    assert second.metric("hydrant_late_events_total") == 0  # ±30 min of disorder is far within 24 h


def test_features_exact_when_a_second_worker_joins_mid_ingest(
    broker: BrokerUnderTest, shop_pipeline: Path, uid: str, workers: Callable[..., WorkerProcess]
) -> None:
    create_pipeline_topics_for(broker.url, shop_pipeline, uid)
    events = make_events(seed=2)
    truth = truth_of(shop_pipeline, events)
    publish(broker, uid, events[: EVENTS // 2])
    one = workers(shop_pipeline, name="w1")
    one.wait_ready()
    wait_for(lambda: one.metric("hydrant_events_consumed_total") >= EVENTS // 4, "a quarter ingested", 120)

    two = workers(shop_pipeline, name="w2")
    publish(broker, uid, events[EVENTS // 2 :])
    two.wait_ready(timeout=180)
    wait_for(lambda: one.ready() and two.ready(), "both ready after the rebalance", 120)
    # Both workers answer every key: the owner from its state, the other by forwarding to the owner.
    settle_and_check([one.url, two.url], truth, events)


def test_late_events_are_dead_lettered_and_out_of_order_ones_applied(
    broker: BrokerUnderTest, shop_pipeline: Path, uid: str, workers: Callable[..., WorkerProcess]
) -> None:
    create_pipeline_topics_for(broker.url, shop_pipeline, uid)
    base = {"user_id": "late-user", "product": "p", "status": "paid"}
    orders = [
        {**base, "order_id": "a", "amount": 10.0, "ts": T0 + 30 * HOUR},
        {**base, "order_id": "b", "amount": 20.0, "ts": T0 + 30 * HOUR - 23 * HOUR},  # out of order, kept
        {**base, "order_id": "c", "amount": 40.0, "ts": T0 + 30 * HOUR - 25 * HOUR},  # > 24 h behind: late
        {**base, "order_id": "d", "amount": 80.0, "ts": T0 + 30 * HOUR - 5 * 60_000},
    ]
    asyncio.run(produce(broker.bootstrap, f"orders-{uid}", [(b"late-user", orjson.dumps(o)) for o in orders]))
    worker = workers(shop_pipeline)
    worker.wait_ready()
    dlq = asyncio.run(consume(broker.bootstrap, f"orders-{uid}.dlq", 1, timeout=60))
    out = asyncio.run(consume(broker.bootstrap, f"orders-enriched-{uid}", 3, timeout=60))

    assert [orjson.loads(r.value)["order_id"] for r in dlq] == ["c"]  # type: ignore[arg-type]
    assert dlq[0].headers["hydrant-reason"] == b"late"
    assert b"retention" in dlq[0].headers["hydrant-error"]
    assert sorted(r.json()["order_id"] for r in out) == ["a", "b", "d"]
    assert worker.metric("hydrant_late_events_total", group="user") == 1
    assert worker.metric("hydrant_dead_letters_total", reason="late") == 1
    answer = worker.get(f"/features/user/late-user?at={T0 + 30 * HOUR}").json()["features"]
    assert answer["spend_count_24h"] == 3 and answer["spend_sum_24h"] == 110.0  # a, b, d
    assert answer["spend_count_1h"] == 2 and answer["spend_sum_1h"] == 90.0  # a, d
    # `b` was enriched with the windows ending at its own time: itself only in the last 24 h it can see.
    b_row = next(r.json() for r in out if r.json()["order_id"] == "b")
    assert b_row["spend_count_1h"] == 1 and b_row["spend_sum_1h"] == 20.0
