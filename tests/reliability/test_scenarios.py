"""Hydrant's promises as standing scenarios (issue 7), each ending with the checker: every key from
every worker equals the pandas ground truth — 0 mismatches, 0 lost, 0 double-counted — while
lookups run against a surviving worker and get nothing but 200, 404 (key not there yet) or 503.

Bounded sizes in CI; ``HYDRANT_RELIABILITY=long`` runs five times more events (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from app.kafka.broker import wait_for_port
from tests.reliability.harness import SCALE, TIME_LIMIT_S, Workload, make_workload, publish_slice, settle
from tests.support.broker import BrokerUnderTest
from tests.support.kafka import consume, create_pipeline_topics_for
from tests.support.load import Load
from tests.support.worker import WorkerProcess, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.reliability, pytest.mark.timeout(TIME_LIMIT_S)]

KEYS = 300 * SCALE
EVENTS = 6_000 * SCALE


def consumed(*workers: WorkerProcess) -> float:
    return sum(w.metric("hydrant_events_consumed_total") for w in workers if w.ready())


def assert_clean(report: object, load: Load | None = None) -> None:
    assert report.clean, str(report)
    if load is not None:
        print("lookups by phase and status:", dict(load.statuses))
        bad = {s for s in load.statuses_seen() if s >= 500 and s != 503}
        assert not bad, dict(load.statuses)
        assert load.statuses_seen() <= {200, 404, 503}, dict(load.statuses)
        assert not load.failures, load.failures[:5]


def lookups(worker: WorkerProcess, workload: Workload) -> Load:
    """Status-only lookups (values move during ingest) against a worker that stays up."""
    return Load(worker.url, {key: {} for key in workload.keys}, workload.end, check=False)


def test_a_sigkill_mid_ingest_and_a_lost_data_dir(
    broker: BrokerUnderTest,
    shop_pipeline: Path,
    uid: str,
    workers: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    create_pipeline_topics_for(broker.url, shop_pipeline, uid)
    workload = make_workload(shop_pipeline, seed=11, keys=KEYS, count=EVENTS, malformed_share=0.1)
    publish_slice(broker, uid, workload, 0, 0.5)
    one = workers(shop_pipeline, name="w1")
    lost_dir = tmp_path / "w2-data"
    two = workers(shop_pipeline, name="w2", data_dir=lost_dir)
    one.wait_ready(180)
    two.wait_ready(180)
    load = lookups(one, workload)
    thread = load.start()
    try:
        wait_for(lambda: two.metric("hydrant_events_consumed_total") >= EVENTS / 10, "w2 mid-ingest", 120)
        load.phase = "w2 killed"
        two.stop(sig=signal.SIGKILL)  # uncommitted offsets, unflushed sends
        shutil.rmtree(lost_dir)  # and its disk is gone: state comes back from the changelog
        publish_slice(broker, uid, workload, 0.5, 1)
        time.sleep(5)
        load.phase = "w2 restarted"
        two = workers(shop_pipeline, name="w2-again", data_dir=lost_dir)
        two.wait_ready(180)
        load.phase = "settling"
        report = settle([one.url, two.url], workload)
    finally:
        load.stop.set()
        thread.join(30)
    assert_clean(report, load)


def test_b_second_and_third_workers_join_and_leave_during_ingest(
    broker: BrokerUnderTest, shop_pipeline: Path, uid: str, workers: Callable[..., WorkerProcess]
) -> None:
    create_pipeline_topics_for(broker.url, shop_pipeline, uid)
    workload = make_workload(shop_pipeline, seed=12, keys=KEYS, count=EVENTS, malformed_share=0.1)
    one = workers(shop_pipeline, name="w1")
    one.wait_ready(180)
    load = lookups(one, workload)
    thread = load.start()
    try:
        publish_slice(broker, uid, workload, 0, 0.3)
        load.phase = "w2 joins"
        two = workers(shop_pipeline, name="w2")
        publish_slice(broker, uid, workload, 0.3, 0.6)
        two.wait_ready(180)
        load.phase = "w3 joins"
        three = workers(shop_pipeline, name="w3")
        publish_slice(broker, uid, workload, 0.6, 1)
        three.wait_ready(180)
        load.phase = "w3 leaves"
        three.stop()
        wait_for(lambda: two.ready() and one.ready(), "w1, w2 ready after w3 left", 120)
        load.phase = "w2 leaves"
        two.stop()
        wait_for(one.ready, "w1 ready alone", 120)
        load.phase = "settling"
        report = settle([one.url], workload)
    finally:
        load.stop.set()
        thread.join(30)
    assert_clean(report, load)


def test_c_a_worker_stopped_longer_than_the_session_timeout_does_not_double_apply(
    broker: BrokerUnderTest, shop_pipeline: Path, uid: str, workers: Callable[..., WorkerProcess]
) -> None:
    create_pipeline_topics_for(broker.url, shop_pipeline, uid)
    workload = make_workload(shop_pipeline, seed=13, keys=KEYS, count=EVENTS)
    publish_slice(broker, uid, workload, 0, 0.5)
    one = workers(shop_pipeline, name="w1")
    two = workers(shop_pipeline, name="w2")
    one.wait_ready(180)
    two.wait_ready(180)
    wait_for(lambda: two.metric("hydrant_events_consumed_total") >= EVENTS / 10, "w2 mid-ingest", 120)
    assert two.proc is not None
    two.proc.send_signal(signal.SIGSTOP)  # frozen mid-batch: a zombie member once the session expires
    try:
        publish_slice(broker, uid, workload, 0.5, 1)
        time.sleep(15)  # > the 10 s session timeout: w1 takes w2's partitions over
        wait_for(one.ready, "w1 serving after the session timeout", 120)
    finally:
        two.proc.send_signal(signal.SIGCONT)  # the zombie wakes up with its in-flight batch
    wait_for(lambda: one.ready() and two.ready(), "both ready after the zombie rejoined", 180)
    report = settle([one.url, two.url], workload)
    assert_clean(report)


def test_d_ten_percent_malformed_input_is_dead_lettered_and_nothing_else_changes(
    broker: BrokerUnderTest, shop_pipeline: Path, uid: str, workers: Callable[..., WorkerProcess]
) -> None:
    create_pipeline_topics_for(broker.url, shop_pipeline, uid)
    workload = make_workload(shop_pipeline, seed=14, keys=KEYS, count=EVENTS, malformed_share=0.1)
    publish_slice(broker, uid, workload, 0, 1)
    worker = workers(shop_pipeline)
    worker.wait_ready(180)
    assert_clean(settle([worker.url], workload))
    dead = asyncio.run(consume(broker.bootstrap, f"orders-{uid}.dlq", len(workload.malformed), timeout=60))
    assert len(dead) == len(workload.malformed) == EVENTS // 10
    assert {(r.key, r.value) for r in dead} == {(k, v) for _, k, v in workload.malformed}
    assert worker.metric("hydrant_dead_letters_total") == len(workload.malformed)
    assert worker.proc is not None and worker.proc.poll() is None  # never stopped for bad data


def test_e_broker_restart(
    broker: BrokerUnderTest, shop_pipeline: Path, uid: str, workers: Callable[..., WorkerProcess]
) -> None:
    if broker.restart is None:
        pytest.skip(
            f"the broker here ({broker.kind}) cannot be restarted by the test: the bundled Tansu keeps "
            "topics in memory only (a restart loses them, docs/broker.md); a testcontainers Kafka can"
        )
    create_pipeline_topics_for(broker.url, shop_pipeline, uid)
    workload = make_workload(shop_pipeline, seed=15, keys=KEYS, count=EVENTS, malformed_share=0.1)
    publish_slice(broker, uid, workload, 0, 0.5)
    worker = workers(shop_pipeline)
    worker.wait_ready(180)
    wait_for(lambda: worker.metric("hydrant_events_consumed_total") >= EVENTS / 10, "mid-ingest", 120)
    broker.restart()  # the worker loses its connections, groups and in-flight sends
    host, port = broker.bootstrap.rsplit(":", 1)
    wait_for_port(host, int(port), timeout=120)
    publish_slice(broker, uid, workload, 0.5, 1)
    assert_clean(settle([worker.url], workload, timeout=300))
