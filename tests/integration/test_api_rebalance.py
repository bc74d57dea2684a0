"""Issue 5, must-show 5: while a second worker joins and then leaves, lookups against the first one
never get a 5xx other than 503 and never a wrong value."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.support.broker import BrokerUnderTest
from tests.support.checks import expected_scan, wait_until_scan_matches
from tests.support.kafka import create_pipeline_topics_for
from tests.support.load import Load
from tests.support.shop import make_events, newest_times, publish, truth_of
from tests.support.worker import WorkerProcess, wait_for

KEYS = 400


def served(worker: WorkerProcess) -> list[int]:
    """The table partitions a worker serves; empty while it is not ready."""
    answer = worker.get("/readyz")
    return list(answer.json()["partitions"]) if answer.status_code == 200 else []


def test_lookups_while_a_worker_joins_and_leaves_get_200_or_503_and_never_a_wrong_value(
    broker: BrokerUnderTest, shop_pipeline: Path, uid: str, workers: Callable[..., WorkerProcess]
) -> None:
    create_pipeline_topics_for(broker.url, shop_pipeline, uid)
    events = make_events(seed=9, keys=KEYS, count=5_000, every_key=True)
    truth = truth_of(shop_pipeline, events)
    publish(broker, uid, events)
    end = max(newest_times(events).values())
    one = workers(shop_pipeline, name="w1")
    one.wait_ready(timeout=180)
    keys = sorted(newest_times(events))
    with httpx.Client(timeout=30) as client:
        wait_until_scan_matches(client, one.url, "user", expected_scan(truth, keys, end), end)

    load = Load(one.url, {key: truth.features(key, end) for key in keys}, end)
    thread = load.start()
    try:
        time.sleep(2)
        load.phase = "second worker joining"
        two = workers(shop_pipeline, name="w2")
        two.wait_ready(timeout=180)
        wait_for(lambda: one.ready() and two.ready(), "both ready after the join", 120)
        load.phase = "two workers"
        wait_for(lambda: 0 < len(served(one)) < 4, "w1 handed partitions to w2", 60)
        time.sleep(3)
        load.phase = "second worker leaving"
        two.stop()  # graceful leave: its partitions move back to w1
        wait_for(lambda: served(one) == [0, 1, 2, 3], "w1 serves every partition again", 120)
        load.phase = "one worker again"
        time.sleep(2)
    finally:
        load.stop.set()
        thread.join(30)

    summary = dict(load.statuses)
    print("answers by phase and status:", summary)
    assert not load.wrong, f"{len(load.wrong)} wrong answers, first: {load.wrong[:10]}"
    assert {status for _, status in summary} <= {200, 503}, summary
    assert not load.failures, load.failures[:5]  # w1 stayed up: every request got an HTTP answer
    for phase in ("one worker", "two workers", "one worker again"):
        assert summary.get((phase, 200), 0) > 0, (phase, summary)
