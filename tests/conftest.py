"""Shared fixtures: pipeline files written per test with unique topic names; for the tests that
need them (integration, reliability), one real broker per session and worker processes."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.broker import BrokerUnderTest, session_broker
from tests.support.worker import WorkerProcess

SHOP = Path(__file__).resolve().parents[1] / "examples" / "shop" / "pipeline.yaml"
PAYMENTS = Path(__file__).resolve().parents[1] / "examples" / "payments" / "pipeline.yaml"


def shop_pipeline_text(uid: str) -> str:
    """The shop example with every topic suffixed by ``uid`` (tests share one broker)."""
    text = SHOP.read_text()
    for topic in ("orders-enriched", "orders", "clicks", "users"):
        text = text.replace(f"topic: {topic}\n", f"topic: {topic}-{uid}\n")
    return text.replace("name: shop", f"name: shop-{uid}")


SHOP_PRODUCTS = "      - {name: products, stream: orders, field: product, ops: [distinct], windows: [24h]}\n"
#: The shop's products aggregation with last_n and top_k, and percentiles of the amount (issue 24).
SHOP_NEW_OPS = """\
      - {name: products, stream: orders, field: product, ops: [distinct, last_n, top_k], n: 5, k: 3,
         windows: [1h, 24h]}
      - {name: amt, stream: orders, field: amount, ops: [percentile], quantiles: [0.1, 0.5, 0.99],
         windows: [1h, 24h]}
"""


def shop_new_ops_text(uid: str) -> str:
    """The shop example (topics suffixed by ``uid``) with the ops last_n, top_k and percentile."""
    text = shop_pipeline_text(uid)
    assert SHOP_PRODUCTS in text
    return text.replace(SHOP_PRODUCTS, SHOP_NEW_OPS)


#: A group of the orders with lifetime windows, a 2 h retention (no event of make_events is late for it:
#: they are shuffled by +-30 min) and 20 h of events: most buckets of a key end in its roll-up.
SHOP_LIFETIME = """\
  life:
    key: user_id
    period: 10m
    aggregations:
      - {name: spend, stream: orders, field: amount, ops: [count, sum, avg, stddev, min, max, first, last,
         last_n, percentile], n: 3, quantiles: [0.5, 0.9], windows: [2h, lifetime]}
      - {name: products, stream: orders, field: product, ops: [distinct, top_k], k: 3, windows: [lifetime]}
      - {name: failed, stream: orders, ops: [count], windows: [lifetime], where: "status == 'failed'"}
"""


def shop_lifetime_text(uid: str) -> str:
    """:func:`shop_new_ops_text` with the group ``life`` of lifetime windows."""
    text = shop_new_ops_text(uid)
    assert "\noutputs:" in text
    return text.replace("\noutputs:", "\n" + SHOP_LIFETIME + "outputs:", 1)


def payments_pipeline_text(uid: str) -> str:
    """The payments example with every topic suffixed by ``uid``."""
    text = PAYMENTS.read_text()
    for topic in ("payments-enriched", "payments", "merchants"):
        text = text.replace(f"topic: {topic}\n", f"topic: {topic}-{uid}\n")
    return text.replace("name: payments", f"name: payments-{uid}")


@pytest.fixture
def uid() -> str:
    """Unique per test: topic names, consumer group, pipeline name."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def shop_pipeline(tmp_path: Path, uid: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(shop_pipeline_text(uid))
    return path


@pytest.fixture(scope="session")
def broker() -> Iterator[BrokerUnderTest]:
    with session_broker() as b:
        yield b


@pytest.fixture
def workers(broker: BrokerUnderTest, tmp_path: Path, uid: str) -> Iterator[Callable[..., WorkerProcess]]:
    """Start workers (real processes); every one still running at the end is killed."""
    started: list[WorkerProcess] = []

    def start(pipeline: Path, name: str = "w1", data_dir: Path | None = None, **env: str) -> WorkerProcess:
        worker = WorkerProcess(
            broker,
            pipeline,
            data_dir or tmp_path / f"data-{name}",
            app_id=f"hydrant-test-{uid}",
            log_path=tmp_path / f"{name}.log",
            extra_env=env,
        ).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop(timeout=15)
