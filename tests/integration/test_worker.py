"""A worker on the real broker: enriches, serves health/readiness/metrics, resumes from committed offsets."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.support.broker import BrokerUnderTest
from tests.support.kafka import consume, create_pipeline_topics_for, produce
from tests.support.worker import WorkerProcess


def orders(start: int, count: int) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(start, start + count):
        user = f"u{i % 50:03d}"
        value = {
            "user_id": user,
            "order_id": f"o-{i}",
            "product": f"p{i % 7}",
            "amount": i / 10,
            "status": "paid",
            "ts": 1_700_000_000_000 + i,
        }
        out.append((user.encode(), orjson.dumps(value)))
    return out


def test_restart_resumes_from_committed_offsets(
    broker: BrokerUnderTest, shop_pipeline: Path, uid: str, workers: Callable[..., WorkerProcess]
) -> None:
    create_pipeline_topics_for(broker.url, shop_pipeline, uid)
    orders_topic, out_topic = f"orders-{uid}", f"orders-enriched-{uid}"
    asyncio.run(produce(broker.bootstrap, orders_topic, orders(0, 500)))

    first = workers(shop_pipeline, name="first")
    first.wait_ready()
    assert len(asyncio.run(consume(broker.bootstrap, out_topic, 500, timeout=60))) >= 500
    assert first.stop() == 0  # graceful: commits offsets

    asyncio.run(produce(broker.bootstrap, orders_topic, orders(500, 300)))
    second = workers(shop_pipeline, name="second", data_dir=first.env["HYDRANT_DATA_DIR"])
    second.wait_ready()
    records = asyncio.run(consume(broker.bootstrap, out_topic, 800, timeout=60, settle=3))

    ids = Counter(r.json()["order_id"] for r in records)
    assert len(ids) == 800, "lost events"
    assert max(ids.values()) == 1, f"reprocessed: {[k for k, n in ids.items() if n > 1][:5]}"
    assert second.metric("hydrant_events_consumed_total", stream="orders") == 300


def test_a_worker_on_the_bundled_broker_without_its_profile_restarts_on_its_own_data_dir(
    broker: BrokerUnderTest, shop_pipeline: Path, uid: str, workers: Callable[..., WorkerProcess]
) -> None:
    # HYDRANT_BROKER_PROFILE=kafka on Tansu: its ListOffsets answer is short of the changelogs' end, so
    # a restart used to die at every start with Faust's ConsistencyError ("persisted offset ... is
    # higher than the last offset"); the end offsets are now probed on any broker.
    create_pipeline_topics_for(broker.url, shop_pipeline, uid)
    orders_topic, out_topic = f"orders-{uid}", f"orders-enriched-{uid}"
    first = workers(shop_pipeline, name="first")  # with the profile: it only writes the changelogs
    first.wait_ready()
    for start in (0, 250):  # two batches of changelog records at least: the last starts past 0
        asyncio.run(produce(broker.bootstrap, orders_topic, orders(start, 250)))
        assert len(asyncio.run(consume(broker.bootstrap, out_topic, start + 250, timeout=60))) >= start + 250
    assert first.stop() == 0

    again = workers(
        shop_pipeline, name="again", data_dir=first.env["HYDRANT_DATA_DIR"], HYDRANT_BROKER_PROFILE="kafka"
    )
    again.wait_ready(timeout=180)  # Faust's own group timeouts: Tansu holds a join ~30 s
    assert "ConsistencyError" not in again.log()
    answer = again.get("/features/user/u001?features=spend_count_24h&at=1700000000499").json()
    spend = answer["features"]["spend_count_24h"]
    assert spend == 10  # u001's 10 orders, from the state the first worker left (nothing replayed)
    assert again.metric("hydrant_events_consumed_total", stream="orders") == 0


def test_metrics_endpoint_parses_and_follows_conventions(
    broker: BrokerUnderTest, shop_pipeline: Path, uid: str, workers: Callable[..., WorkerProcess]
) -> None:
    create_pipeline_topics_for(broker.url, shop_pipeline, uid)
    asyncio.run(produce(broker.bootstrap, f"orders-{uid}", orders(0, 100)))
    worker = workers(shop_pipeline)
    not_ready = worker.wait_ready()
    # The web server answers while the worker joins its group and recovers tables: 503 + reason.
    assert not_ready, "readyz was never 503 before the first recovery finished"
    assert {r.status_code for r in not_ready} == {503}
    assert not_ready[0].json()["error"]["code"] == "not_ready"
    assert "recover" in not_ready[0].json()["error"]["message"]
    assert not_ready[0].headers["Retry-After"] == "1"
    assert worker.get("/readyz").json() == {"status": "ready", "partitions": [0, 1, 2, 3]}
    assert worker.get("/healthz").status_code == 200
    asyncio.run(consume(broker.bootstrap, f"orders-enriched-{uid}", 100, timeout=60))

    response = worker.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {fam.name: fam for fam in text_string_to_metric_families(response.text)}
    ours = {name: fam for name, fam in families.items() if name.startswith("hydrant_")}
    for name, fam in ours.items():
        assert re.fullmatch(r"hydrant_[a-z][a-z0-9_]*", name), name
        assert fam.documentation, f"{name} has no help text"
        if fam.type == "counter":
            assert all(s.name.endswith("_total") for s in fam.samples), name
        if fam.type == "histogram":
            assert name.endswith("_seconds"), f"{name}: histograms here measure time in seconds"
    assert {"hydrant_events_consumed", "hydrant_events_produced", "hydrant_processing_seconds"} <= set(ours)
    assert worker.metric("hydrant_events_consumed_total", stream="orders", topic=f"orders-{uid}") == 100
    assert worker.metric("hydrant_events_produced_total", topic=f"orders-enriched-{uid}") == 100
    assert worker.metric("hydrant_processing_seconds_count", stream="orders") > 0
    assert worker.metric("hydrant_ready") == 1
