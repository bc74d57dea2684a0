"""tables/read.py: window bounds, empty windows, merged results (stddev, distinct) and the retention
check, on states built by tables/apply.py (docs/product.md "Window semantics")."""

from __future__ import annotations

import random
import statistics

import pandas as pd
import pytest

from tables.read import outside_retention
from tests.support.ground_truth import GroundTruth, accepted_events, expected_features
from tests.support.window_state import (
    BASE,
    HOUR,
    MINUTE,
    SPEND,
    Worker,
    assert_same,
    frame,
    group,
    op_of,
    s1,
    s2,
)


def test_reference_and_implementation_agree_with_a_hand_computed_example() -> None:
    plan, spec = group(
        "10m",
        SPEND,
        "{name: failed, stream: s1, ops: [count], windows: [1h], where: \"status == 'failed'\"}",
        "{name: clicks, stream: s2, ops: [count], windows: [10m]}",
    )
    t = BASE
    events = [
        s1("u", t + 1_000, 10.0),
        s1("u", t + 11 * MINUTE, 20.0, status="failed"),
        s2("u", t + 12 * MINUTE),
        s1("u", t + 15 * MINUTE, 30.0),
        s1("u", t + 5 * MINUTE, None, status="failed"),  # out of order, null value
    ]
    worker = Worker(plan)
    assert worker.run(events) == ["applied"] * 5
    at = t + 19 * MINUTE  # bucket 1 of the hour: 10m covers [t+10m, t+20m), 1h covers [t-40m, t+20m)
    want = {
        "spend_count_10m": 2,
        "spend_count_1h": 3,
        "spend_sum_10m": 50.0,
        "spend_sum_1h": 60.0,
        "spend_avg_10m": 25.0,
        "spend_avg_1h": 20.0,
        "spend_min_10m": 20.0,
        "spend_min_1h": 10.0,
        "spend_max_10m": 30.0,
        "spend_max_1h": 30.0,
        "spend_stddev_10m": statistics.stdev([20.0, 30.0]),
        "spend_stddev_1h": 10.0,
        "spend_first_10m": 20.0,
        "spend_first_1h": 10.0,
        "spend_last_10m": 30.0,
        "spend_last_1h": 30.0,
        "spend_distinct_10m": 2,
        "spend_distinct_1h": 3,
        "failed_count_1h": 2,
        "clicks_count_10m": 1,
    }
    ops = op_of(spec)
    assert_same(worker.read("u", at), want, ops, "implementation")
    assert_same(GroundTruth(spec, frame(events)).features("u", at), want, ops, "reference")
    accepted = accepted_events(frame(events), plan.period_ms, plan.retention)
    assert_same(expected_features(spec, accepted, "u", at), want, ops, "expected_features")


def test_window_bounds_follow_buckets() -> None:
    """W at T covers event times [(b(T) - W/P + 1)·P, (b(T) + 1)·P), even later than T in b(T)."""
    plan, _ = group("10m", "{name: c, stream: s1, ops: [count], windows: [30m]}")
    at = BASE + 30 * MINUTE + 1  # bucket b(BASE) + 3: the window is buckets +1..+3
    worker = Worker(plan)
    worker.run(
        [
            s1("u", BASE + 10 * MINUTE - 1),  # bucket +0: out
            s1("u", BASE + 10 * MINUTE),  # bucket +1: in
            s1("u", BASE + 40 * MINUTE - 1),  # bucket +3, after `at`: in
        ]
    )
    assert worker.read("u", at) == {"c_count_30m": 2}
    assert worker.read("u", BASE + 40 * MINUTE) == {"c_count_30m": 1}
    assert worker.read("u", BASE + 60 * MINUTE) == {"c_count_30m": 0}


def test_empty_windows() -> None:
    plan, spec = group(
        "5m",
        SPEND,
        "{name: words, stream: s1, field: word, ops: [count, distinct, min, max, first, last], "
        "windows: [5m]}",
        "{name: c, stream: s2, ops: [count], windows: [15m]}",
    )
    empty = {
        "count": 0,
        "sum": 0,
        "distinct": 0,
        "avg": None,
        "min": None,
        "max": None,
        "stddev": None,
        "first": None,
        "last": None,
    }
    ops = op_of(spec)
    want = {name: empty[op] for name, op in ops.items()}
    worker = Worker(plan)
    assert not worker.state("nobody").exists
    assert_same(worker.read("nobody", BASE), want, ops, "unknown key")
    worker.run([s1("u", BASE, 4.0, word="w"), s2("u", BASE), s1("v", BASE, None)])
    worker.flush()
    later = BASE + 2 * HOUR
    assert not outside_retention(plan, worker.state("u"), later)
    assert_same(worker.read("u", later), want, ops, "long after")
    truth = GroundTruth(spec, frame([s1("u", BASE, 4.0, word="w")]))
    assert_same(truth.features("u", later), want, ops, "reference")
    # a null value leaves the aggregation empty, but the key exists
    assert worker.state("v").exists
    assert_same(worker.read("v", BASE), want, ops, "null value")


def test_stddev_needs_two_values() -> None:
    plan, _ = group("1m", "{name: x, stream: s1, field: x, ops: [stddev, count], windows: [1m]}")
    worker = Worker(plan)
    assert worker.read("u", BASE)["x_stddev_1m"] is None
    worker.apply(s1("u", BASE, 5.0), 0)
    assert worker.read("u", BASE) == {"x_stddev_1m": None, "x_count_1m": 1}
    worker.apply(s1("u", BASE, None), 1)
    assert worker.read("u", BASE) == {"x_stddev_1m": None, "x_count_1m": 1}
    worker.apply(s1("u", BASE + 1, 8.0), 2)
    stddev = worker.read("u", BASE)["x_stddev_1m"]
    assert stddev == pytest.approx(pd.Series([5.0, 8.0]).std(), rel=1e-12)


def test_stddev_is_stable_for_moderate_offsets() -> None:
    plan, _ = group("1m", "{name: x, stream: s1, field: x, ops: [stddev, avg], windows: [30m]}")
    rng = random.Random(3)
    values = [1e6 + rng.uniform(0, 1) for _ in range(300)]
    worker = Worker(plan)
    worker.run([s1("u", BASE + rng.randrange(30 * MINUTE), v) for v in values])
    got = worker.read("u", BASE + 29 * MINUTE)
    assert got["x_stddev_30m"] == pytest.approx(statistics.stdev(values), rel=1e-9)
    assert got["x_avg_30m"] == pytest.approx(statistics.fmean(values), rel=1e-12)


def test_stddev_relative_error_for_large_offsets() -> None:
    """docs/product.md: stddev relative error <= 1e-9. Values 1e9 + U(0, 1) (e.g. a timestamp-like field):
    Welford's running mean loses the low digits; pandas / statistics (two-pass) are exact."""
    plan, _ = group("1m", "{name: x, stream: s1, field: x, ops: [stddev], windows: [30m]}")
    rng = random.Random(3)
    values = [1e9 + rng.uniform(0, 1) for _ in range(300)]
    worker = Worker(plan)
    worker.run([s1("u", BASE + rng.randrange(30 * MINUTE), v) for v in values])
    # got 0.2843620225476861, expected 0.28436202184872483 (relative error 2.5e-9)
    assert worker.read("u", BASE + 29 * MINUTE)["x_stddev_30m"] == pytest.approx(
        statistics.stdev(values), rel=1e-9
    )


def test_outside_retention_formula() -> None:
    plan, _ = group("10m", "{name: c, stream: s1, ops: [count], windows: [10m, 1h]}")
    worker = Worker(plan)
    assert not outside_retention(plan, worker.state("u"), BASE)  # no state: nothing was deleted
    worker.apply(s1("u", BASE + 2 * HOUR), 0)
    state = worker.state("u")
    n = state.newest
    assert n is not None
    for b in range(n - 8, n + 8):
        for at in (b * plan.period_ms, (b + 1) * plan.period_ms - 1):
            assert outside_retention(plan, state, at) == (b - 6 + 1 <= n - 6)


def test_distinct_counts_zero_once() -> None:
    """0.0 == -0.0 (Python, JSON numbers, pandas nunique() == 1), but value_hash hashes orjson's text."""
    plan, _ = group("1m", "{name: d, stream: s1, field: x, ops: [distinct], windows: [1m]}")
    worker = Worker(plan)
    worker.run([s1("u", BASE, 0.0), s1("u", BASE, -0.0)])
    assert pd.Series([0.0, -0.0]).nunique() == 1
    assert worker.read("u", BASE) == {"d_distinct_1m": 1}  # got 2
