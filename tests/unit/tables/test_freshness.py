"""Freshness of an answer (tables/read.py ``key_answer``, docs/features.md "Freshness"): the newest
event time among the events the answer's windows count, kept per bucket (tables/state_format.py
``NEWEST``) and in the lifetime roll-up, checked against the events themselves; ``stale`` by
``max_age``; records written before buckets kept it."""

from __future__ import annotations

import dataclasses
import random

import orjson
import pytest

from tables.plans import LIFETIME, GroupPlan
from tables.read import is_stale, key_answer, read_answer
from tables.state_format import NEWEST, bucket_key
from tests.support.window_state import BASE, HOUR, MINUTE, Event, Worker, group, s1, s2

TWO = (
    "{name: spend, stream: s1, field: x, ops: [count, sum, last], windows: [10m, 1h]}",
    "{name: clicks, stream: s2, ops: [count], windows: [30m], where: \"page == 'buy'\"}",
)


def counted(plan: GroupPlan, events: list[Event], outcomes: list[str], at: int) -> int | None:
    """The newest event time the answer at ``at`` counts, from the events: those applied that added a
    value (spend: x not null; clicks: every s2 event whose page is 'buy'), in the buckets the widest
    window reads (every bucket up to b(at) with a lifetime window)."""
    end = at // plan.period_ms
    lifetime = any(size == LIFETIME for _, size, _ in plan.reads)
    lo = -(2**62) if lifetime else end - plan.widest + 1
    times = [
        e.time
        for e, outcome in zip(events, outcomes, strict=True)
        if outcome == "applied"
        and lo <= e.time // plan.period_ms <= end
        and (e.fields.get("x") is not None if e.stream == "s1" else e.fields.get("page") == "buy")
    ]
    return max(times, default=None)


def random_events(rng: random.Random, span: int, count: int) -> list[Event]:
    events = []
    for _ in range(count):
        time = BASE + rng.randrange(span)
        key = rng.choice("uvw")
        if rng.random() < 0.6:
            events.append(s1(key, time, None if rng.random() < 0.2 else rng.uniform(0, 9)))
        else:
            events.append(s2(key, time, page=rng.choice(["buy", "home"])))
    # arrival order: a little disorder, and a tenth up to 2 h behind (late past the 1 h retention)
    events.sort(key=lambda e: e.time + (2 * HOUR if rng.random() < 0.1 else rng.randrange(20 * MINUTE)))
    return events


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("lifetime", [False, True])
def test_newest_event_is_that_of_the_newest_event_the_windows_count(seed: int, lifetime: bool) -> None:
    windows = "[10m, 1h, lifetime]" if lifetime else "[10m, 1h]"
    plan, _ = group(
        "10m",
        f"{{name: spend, stream: s1, field: x, ops: [count, sum, last], windows: {windows}}}",
        TWO[1],
    )
    rng = random.Random(seed)
    events = random_events(rng, 6 * HOUR, 300)
    worker = Worker(plan)
    outcomes: list[str] = []
    for start in range(0, len(events), 23):  # batches, each written and read back
        outcomes += worker.run(events[start : start + 23], start=start)
        worker.flush()
    assert "late" in outcomes and "applied" in outcomes  # both cases are exercised
    newest_time = max(e.time for e in events)
    for at in (newest_time, newest_time + 7 * MINUTE, newest_time + 50 * MINUTE, newest_time + 3 * HOUR):
        for key in "uvw":
            state = worker.scanned(key)
            answer = key_answer(plan, key, state, at)
            mine = [(e, o) for e, o in zip(events, outcomes, strict=True) if e.key == key]
            want = counted(plan, [e for e, _ in mine], [o for _, o in mine], at)
            assert answer["newest_event"] == want, (key, at)
            assert answer["features"] == worker.read(key, at)


def test_a_selection_counts_the_buckets_of_its_own_windows() -> None:
    plan, _ = group("10m", *TWO)
    worker = Worker(plan)
    worker.run(
        [s1("u", BASE + 5 * MINUTE, 1.0), s1("u", BASE + 55 * MINUTE, 2.0), s2("u", BASE + 59 * MINUTE)]
    )
    worker.flush()
    at = BASE + 70 * MINUTE  # b(at) = 7: the 10m window reads bucket 7, 1h buckets 2..7
    state = worker.scanned("u")
    assert read_answer(plan, state, at)[1] == BASE + 55 * MINUTE  # the click's page is not 'buy'
    assert read_answer(plan, state, at, {"spend_count_10m"}) == ({"spend_count_10m": 0}, None)
    assert read_answer(plan, state, at, {"spend_count_1h"})[1] == BASE + 55 * MINUTE


def test_a_key_with_no_event_in_its_windows_has_no_newest_event_and_is_stale() -> None:
    plan, _ = group("10m", *TWO)
    fresh = dataclasses.replace(plan, max_age=15 * MINUTE)
    worker = Worker(plan)
    worker.run([s1("u", BASE, 3.0), s1("u", BASE + 20 * MINUTE, 4.0)])
    worker.flush()
    state = worker.scanned("u")
    cases = {  # at: (newest_event, stale)
        BASE + 20 * MINUTE: (BASE + 20 * MINUTE, False),
        BASE + 35 * MINUTE: (BASE + 20 * MINUTE, False),  # exactly at - max_age: not older
        BASE + 35 * MINUTE + 1: (BASE + 20 * MINUTE, True),
        BASE + 3 * HOUR: (None, True),  # found, but no event in any window
    }
    for at, (newest, stale) in cases.items():
        answer = key_answer(fresh, "u", state, at)
        assert (answer["newest_event"], answer["stale"]) == (newest, stale), at
        assert is_stale(fresh, newest, at) == stale
        assert "stale" not in key_answer(plan, "u", state, at)  # no max_age: no flag
    assert key_answer(fresh, "nobody", worker.scanned("nobody"), BASE) == {"key": "nobody", "found": False}


def test_buckets_written_before_they_kept_it_give_their_newest_last_time_or_their_last_millisecond() -> None:
    with_last, _ = group("10m", TWO[0])
    counts_only, _ = group("10m", "{name: spend, stream: s1, field: x, ops: [count], windows: [1h]}")
    for plan, want in ((with_last, BASE + 7 * MINUTE), (counts_only, BASE + 10 * MINUTE - 1)):
        worker = Worker(plan)
        worker.run([s1("u", BASE + 7 * MINUTE, 1.0), s1("u", BASE + 2 * MINUTE, 2.0)])
        worker.flush()
        record_key = bucket_key(b"u", BASE // plan.period_ms)
        record = orjson.loads(worker.table[record_key])
        assert record[NEWEST] == BASE + 7 * MINUTE
        worker.table[record_key] = orjson.dumps(record[:NEWEST])  # as written before
        assert read_answer(plan, worker.scanned("u"), BASE + 9 * MINUTE)[1] == want
        worker.run([s1("u", BASE + 3 * MINUTE, 5.0)], start=2)  # rewritten with the field
        worker.flush()
        assert orjson.loads(worker.table[record_key])[NEWEST] == want
