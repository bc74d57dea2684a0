"""Replaying history into new and changed aggregations (tables/replay.py): with the live path going on,
a crash of the old worker before its last commit, and crashes of the replay, every feature equals what
a worker running the new spec from the start computes; unchanged aggregations never change."""

from __future__ import annotations

import random

import orjson
import pytest

from tables.apply import choose
from tables.plans import GroupPlan
from tables.replay import ReplayJob, incomplete_features, replay_event
from tests.support.window_state import BASE, MINUTE, Worker, assert_same, group, op_of, s1, s2

V1 = (
    "{name: spend, stream: s1, field: x, ops: [count, sum, max], windows: [10m, 30m]}",
    "{name: big, stream: s1, field: x, ops: [count], where: 'x > 5', windows: [30m]}",
    "{name: pages, stream: s2, field: page, ops: [count, distinct], windows: [10m]}",
)
V2 = (
    "{name: spend, stream: s1, field: x, ops: [count, sum, max], windows: [10m, 30m]}",  # unchanged
    "{name: big, stream: s1, field: x, ops: [count], where: 'x > 7', windows: [30m]}",  # where changed
    "{name: pages, stream: s2, field: page, ops: [count, distinct], windows: [10m, 30m]}",  # window added
    "{name: day, stream: s1, field: x, ops: [count, min, last], windows: [30m, lifetime]}",  # new
)


def replaying(before: GroupPlan, after: GroupPlan) -> GroupPlan:
    """``after`` as a worker that found ``before`` stored runs it (app/kafka/definitions.py)."""
    old = {agg.ident for agg in before.aggregations}
    _, spec = group("1m", *V2)
    changed = frozenset(agg.ident for agg in after.aggregations if agg.ident not in old)
    return GroupPlan.from_spec("g", spec, changed)


def events(seed: int, count: int) -> list:
    rng = random.Random(seed)
    out, t = [], BASE
    for _ in range(count):
        t += rng.randrange(0, 20_000)
        at = t - rng.randrange(0, 3 * MINUTE)  # disorder within the retention
        key = rng.choice("abcd")
        if rng.random() < 0.6:
            out.append(s1(key, at, float(rng.randrange(10))))
        else:
            out.append(s2(key, at, page=rng.choice(["home", "cart", "pay", None])))
    return out


def replay_one(worker: Worker, history: list, offset: int, change: int) -> None:
    """Replay ``history[offset]`` (source offsets = positions; ``change``: the committed offset when
    the replay began)."""
    event = history[offset]
    plan = worker.plan
    chosen = [a for a in choose(plan, event.stream, event.fields) if a.replaying]
    state = worker.state(event.key)
    replay_event(plan, state, chosen, event.fields, event.time, f"{event.stream}:0", offset, offset < change)


@pytest.mark.parametrize("seed", range(12))
def test_replayed_history_gives_what_the_new_spec_computes_from_the_start(seed: int) -> None:
    rng = random.Random(seed)
    stream = events(seed, 900)
    before, _ = group("1m", *V1)
    after, spec = group("1m", *V2)
    plan = replaying(before, after)
    assert {a.name for a in plan.aggregations if a.replaying} == {"big", "pages", "day"}

    # The old worker: applied up to 500 with flushes, committed only up to 430, then stopped.
    old = Worker(before)
    for offset in range(500):
        old.apply(stream[offset], offset)
        if offset % 37 == 0:
            old.flush()
    old.flush()

    # The new worker resumes from the commit (430..499 are duplicates there) and goes on live.
    new = Worker(plan, table=dict(old.table))
    live = 430 + rng.randrange(0, 150)
    for offset in range(430, live):
        new.apply(stream[offset], offset)
    new.flush()
    # The replay begins: the group has committed `live`, the topic ends at `end`; it runs interleaved
    # with live batches, crashes once and restarts from its last progress record.
    change, end = live, max(500, live) + rng.randrange(0, 200)  # the old worker read up to 499
    progress, crash_at = 0, rng.randrange(50, end)
    while progress < end:
        upto = min(end, progress + rng.randrange(20, 120))
        if progress < crash_at <= upto:  # crash: unflushed replay work lost, the record says `progress`
            for offset in range(progress, crash_at):
                replay_one(new, stream, offset, change)
            if rng.random() < 0.5:
                new.flush()  # written, but the progress record not: read again, recognised
            new.crash()
            crash_at = -1
            continue
        flush_every = rng.randrange(5, 60)
        for offset in range(progress, upto):
            replay_one(new, stream, offset, change)
            if (offset + 1) % flush_every == 0:
                new.flush()
        new.flush()
        progress = upto
        for offset in range(live, min(len(stream), live + rng.randrange(0, 60))):  # a live batch
            new.apply(stream[offset], offset)
            live = offset + 1
        new.flush()
    for offset in range(live, len(stream)):
        new.apply(stream[offset], offset)
    new.flush()

    truth = Worker(GroupPlan.from_spec("g", spec))
    truth.run(stream)
    truth.flush()
    ops = op_of(spec)
    for key in "abcd":
        for at in (stream[-1].time, stream[-1].time - 7 * MINUTE, stream[-1].time - 20 * MINUTE):
            assert_same(new.read(key, at), truth.read(key, at), ops, f"seed {seed} key {key} at {at}")
    # The unchanged aggregation holds what the old spec run from the start holds: the upgrade and the
    # replay left it alone.
    v1 = Worker(before)
    v1.run(stream)
    v1.flush()
    for key in "abcd":
        for at in (stream[-1].time, stream[-1].time - 20 * MINUTE):
            got, want = new.read(key, at), v1.read(key, at)
            assert {n: v for n, v in got.items() if n.startswith("spend_")} == {
                n: v for n, v in want.items() if n.startswith("spend_")
            }


def test_incomplete_features_while_and_after_the_replay() -> None:
    before, _ = group("1m", *V1)
    after, _ = group("1m", *V2)
    plan = replaying(before, after)
    ids = {a.ident: a.name for a in plan.aggregations if a.replaying}
    running = ReplayJob(ids, {"s1:0": 0}, {"s1:0": 100}, since=BASE)
    assert incomplete_features(plan, running, BASE + 60 * MINUTE) == [
        "big_count_30m",
        "pages_count_10m",
        "pages_distinct_10m",
        "pages_count_30m",
        "pages_distinct_30m",
        "day_count_30m",
        "day_min_30m",
        "day_last_30m",
        "day_count_lifetime",
        "day_min_lifetime",
        "day_last_lifetime",
    ]
    done = ReplayJob(ids, {"s1:0": 0}, {"s1:0": 100}, since=BASE, done=True)
    assert incomplete_features(plan, done, BASE) == []  # the topic held everything from offset 0
    truncated = ReplayJob(ids, {"s1:0": 40}, {"s1:0": 100}, since=BASE, done=True)
    assert incomplete_features(plan, truncated, BASE + 15 * MINUTE) == [
        "big_count_30m",
        "pages_count_30m",
        "pages_distinct_30m",
        "day_count_30m",
        "day_min_30m",
        "day_last_30m",
        "day_count_lifetime",
        "day_min_lifetime",
        "day_last_lifetime",
    ]
    assert incomplete_features(plan, truncated, BASE + 30 * MINUTE) == [
        "day_count_lifetime",
        "day_min_lifetime",
        "day_last_lifetime",
    ]
    assert ReplayJob.decode(running.encode()) == running


def test_a_job_over_a_hop_topic_never_holds_the_whole_history() -> None:
    """A hop topic to a later stage begins when a spec first uses its key: from offset 0 it still
    lacks the events before. A job recorded before jobs listed their hop inputs is told by the names."""
    before, _ = group("1m", *V1)
    after, _ = group("1m", *V2)
    plan = replaying(before, after)
    ids = {a.ident: a.name for a in plan.aggregations if a.replaying}
    hop = "hydrant-shop-stream-s1-by-device-repartition:2"
    lifetime = ["day_count_lifetime", "day_min_lifetime", "day_last_lifetime"]
    job = ReplayJob(ids, {hop: 0}, {hop: 100}, since=BASE, done=True, hops=[hop])
    assert not job.whole_history
    assert incomplete_features(plan, job, BASE + 30 * MINUTE - 1)[-3:] == lifetime
    assert len(incomplete_features(plan, job, BASE + 30 * MINUTE - 1)) > 3
    assert incomplete_features(plan, job, BASE + 30 * MINUTE) == lifetime
    assert ReplayJob.decode(job.encode()) == job
    old = orjson.loads(job.encode())
    del old["hops"]
    assert not ReplayJob.decode(orjson.dumps(old)).whole_history
    stream = {"s1:2": 0, "hydrant-shop-stream-s1-repartition:2": 0}
    assert ReplayJob(ids, stream, {n: 100 for n in stream}, since=BASE, done=True).whole_history
    assert ReplayJob(ids, stream, {n: 100 for n in stream}, since=BASE, done=True, hops=[]).whole_history
