"""The lifetime window (tables/rollup.py): buckets merged into the key's roll-up as they expire, each
once, through flushes, crashes and redelivery; answers exact where docs/features.md says so and within
the stated bounds of the pandas reference otherwise; the retention rule for lifetime reads."""

from __future__ import annotations

import bisect
import math
import random

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.config.spec import quantile_label
from tables.plans import DISTINCT
from tables.read import outside_retention, read_features
from tables.state_format import rollup_key, sketch_of
from tests.support.ground_truth import GroundTruth
from tests.support.window_state import BASE, MINUTE, Worker, frame, group, s1

LIFETIME = (
    "{name: a, stream: s1, field: x, ops: [count, sum, avg, stddev, min, max, first, last, last_n], n: 4,"
    " windows: [2m, lifetime]}",
    "{name: w, stream: s1, field: word, ops: [distinct, top_k], k: 3, windows: [2m, lifetime]}",
    "{name: p, stream: s1, field: x, ops: [percentile], quantiles: [0.1, 0.5, 0.95], windows: [lifetime],"
    " where: \"status != 'failed'\"}",
)
EXACT = ("count", "min", "max", "first", "last", "last4")
MINUTES = 30


def _events(seed: int, count: int) -> list:
    """``count`` events of key u over 30 one-minute buckets, mostly in order, some a bucket back (so
    some late), half of them words with a skew, half uniform over 3,000, values with a large offset
    (for stddev)."""
    rng = random.Random(seed)
    events = []
    for i in range(count):
        minute = max(0, i * MINUTES // count - rng.choice([0, 0, 0, 0, 1, 2]))
        word = int(rng.paretovariate(0.7)) % 2_000 if rng.random() < 0.5 else rng.randrange(3_000)
        fields = {"word": f"w{word}", "status": rng.choice(["ok", "ok", "failed"])}
        events.append(
            s1("u", BASE + minute * MINUTE + rng.randrange(MINUTE), 1e6 + rng.expovariate(0.1), **fields)
        )
    return events


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    flushes=st.lists(st.integers(1, 5_999), min_size=1, max_size=12, unique=True),
    crash=st.integers(1, 5_999),
    committed=st.integers(0, 20),
)
def test_lifetime_survives_crashes_mid_flush_exactly_and_within_the_stated_bounds(
    seed: int, flushes: list[int], crash: int, committed: int
) -> None:
    """6,000 events over 30 buckets with a 2-minute retention: 28 buckets expire into the roll-up,
    which turns to sketches (over 128 distinct, 1,000 distinct words, 100 values). Flushed at random
    points and crashed with redelivery from an earlier flush, the answers equal an uninterrupted run's
    exactly; against pandas, the exact ops are exact, the sums within float rounding, distinct within
    3 %, percentile ranks within 1 %, top_k counts within 3.5/1024 of the events."""
    plan, spec = group("1m", *LIFETIME)
    assert plan.retention == 2
    events = _events(seed, 6_000)
    straight = Worker(plan)
    straight.run(events)
    straight.flush()
    assert rollup_key(b"u") in straight.table

    crashed = Worker(plan)
    crashed.run_crashing(events, flushes, crash, committed)  # redelivery from a committed flush

    at = BASE + (MINUTES - 1) * MINUTE + 59_999
    got = straight.read("u", at)
    assert crashed.read("u", at) == got
    # The same buckets (a head may lag in its processed offsets: it is rewritten when a bucket opens
    # or expires) and roll-up, whose HLL sketch may list the same coupons in another order.
    rollup = rollup_key(b"u")
    assert {k: v for k, v in crashed.table.items() if k not in (rollup, b"u\x00")} == {
        k: v for k, v in straight.table.items() if k not in (rollup, b"u\x00")
    }
    ours, theirs = orjson.loads(crashed.table[rollup]), orjson.loads(straight.table[rollup])
    distinct = plan.aggregations[1].at[DISTINCT]
    assert (
        sketch_of(ours[0][1].pop(distinct)).get_estimate()
        == sketch_of(theirs[0][1].pop(distinct)).get_estimate()
    )
    assert ours == theirs

    truth = GroundTruth(spec, frame(events))
    want = truth.features("u", at)
    accepted = truth.accepted
    for name in EXACT:
        assert got[f"a_{name}_lifetime"] == want[f"a_{name}_lifetime"], name
    assert got["a_count_lifetime"] > 4_000  # some late (a bucket or two back), most not
    for name in ("sum", "avg", "stddev"):  # pandas adds in another order
        assert math.isclose(got[f"a_{name}_lifetime"], want[f"a_{name}_lifetime"], rel_tol=1e-9), name
    distinct = want["w_distinct_lifetime"]
    assert distinct > 1_000 and abs(got["w_distinct_lifetime"] - distinct) <= 0.03 * distinct
    counts = dict(map(tuple, want["w_top3_lifetime"]))
    bound = 3.5 / 1024 * len(accepted)
    assert [v for v, _ in got["w_top3_lifetime"]] == list(counts)  # the skew leaves no doubt
    assert all(abs(c - counts[v]) <= bound for v, c in got["w_top3_lifetime"])
    values = sorted(accepted.loc[accepted["status"] != "failed", "x"].astype(float))
    for q in (0.1, 0.5, 0.95):
        estimate = got[f"p_{quantile_label(q)}_lifetime"]
        low, high = bisect.bisect_left(values, estimate), bisect.bisect_right(values, estimate)
        assert low / len(values) - 0.01 <= q <= high / len(values) + 0.01, (q, estimate)
    # The 2-minute windows are untouched by the roll-up.
    for name in EXACT:
        assert got[f"a_{name}_2m"] == want[f"a_{name}_2m"], name


def test_lifetime_is_exact_while_small_and_answers_after_the_horizon_only() -> None:
    """Few values: every lifetime feature equals pandas exactly, read from the live state, the stored
    one and a range read; a lifetime read at or before n - R is outside retention (the roll-up may
    hold later buckets), after it answerable, while the 2m window needs b(T) >= n."""
    plan, spec = group("1m", *LIFETIME)
    events = _events(7, 120)
    worker = Worker(plan)
    worker.run(events[:70])
    worker.flush()
    worker.run(events[70:], start=70)
    live = worker.state("u")
    n = live.newest
    assert n is not None
    truth = GroundTruth(spec, frame(events))
    lifetime = {name for name in plan.names if name.endswith("_lifetime")}
    for bucket in range(n - 4, n + 3):
        at = bucket * MINUTE + 30_000
        outside = bucket <= n - plan.retention
        assert outside_retention(plan, live, at, lifetime) == outside, bucket
        assert outside_retention(plan, live, at, {"a_count_2m"}) == (bucket < n)
        if not outside:
            want = {name: value for name, value in truth.features("u", at).items() if name in lifetime}
            got = read_features(plan, live, at, lifetime)
            assert got == want or _close(got, want), bucket
    worker.flush()
    at = n * MINUTE
    assert read_features(plan, worker.state("u"), at) == read_features(plan, worker.scanned("u"), at)
    assert read_features(plan, worker.state("u"), at) == read_features(plan, live, at)


def _close(got: dict, want: dict) -> bool:
    """Equal, floats within 1e-9 relative (pandas sums in another order)."""
    for name, value in want.items():
        other = got[name]
        if isinstance(value, float) and isinstance(other, float):
            if abs(other - value) > 1e-9 * max(1.0, abs(value)):
                return False
        elif other != value:
            return False
    return True


def test_a_lifetime_only_group_keeps_one_bucket() -> None:
    """With no other window, the retention is one period: each bucket rolls up when the next opens."""
    plan, _ = group("1m", "{name: c, stream: s1, ops: [count], windows: [lifetime]}")
    assert plan.retention == 1
    worker = Worker(plan)
    times = [BASE + m * MINUTE for m in (0, 0, 1, 3, 3, 3)]
    assert worker.run([s1("u", t) for t in times]) == ["applied"] * 6
    worker.flush()
    assert worker.stored_buckets("u") == 1
    assert worker.read("u", BASE + 3 * MINUTE)["c_count_lifetime"] == 6
    assert worker.run([s1("u", BASE + MINUTE)], start=6) == ["late"]
