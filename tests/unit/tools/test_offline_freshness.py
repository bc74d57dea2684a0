"""`hydrant compute` gives the worker's freshness (docs/features.md, "Freshness"): per row its group's
``newest_event`` and, with a ``max_age``, ``stale``, equal to the worker's answers (the state built by
tables/apply.py, read by tables/read.py ``key_answer``) and to the events themselves (pandas)."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd

from app.config.spec import parse_pipeline
from app.tools.frames import read_table
from app.tools.offline import compute
from tables.plans import GroupPlan
from tables.read import key_answer
from tests.support.window_state import BASE, HOUR, MINUTE, Worker, pipeline_text, s1

MAX_AGE = 40 * MINUTE
AGGREGATIONS = ("{name: spend, stream: s1, field: x, ops: [count, sum], windows: [30m, 2h]}",)


def test_offline_newest_event_and_stale_equal_the_worker_and_the_events(tmp_path: Path) -> None:
    text = pipeline_text("10m", AGGREGATIONS).replace(
        "    period: 10m\n", f"    period: 10m\n    max_age: {MAX_AGE}ms\n"
    )
    spec = parse_pipeline(text)
    plan = GroupPlan.from_spec("g", spec.features["g"])
    assert plan.max_age == MAX_AGE
    rng = random.Random(5)
    events = []
    for i in range(400):  # 12 keys; some stop early, some values null (they count for nothing)
        key = f"k{rng.randrange(12)}"
        stop = 12 * HOUR if int(key[1:]) % 2 else int(key[1:]) * HOUR  # the even keys stop early
        time = BASE + rng.randrange(max(stop, HOUR))
        events.append(s1(key, time, None if i % 9 == 0 else rng.uniform(0, 5)))
    events.sort(key=lambda e: e.time + rng.randrange(10 * MINUTE))  # arrival: a little disorder
    worker = Worker(plan)
    outcomes = worker.run(events)
    worker.flush()
    path = tmp_path / "s1.csv"
    pd.DataFrame([e.fields for e in events]).to_csv(path, index=False)
    end = max(e.time for e in events)
    ats = [end, end - 30 * MINUTE, end - 3 * HOUR, end + HOUR]
    table, _ = compute(spec, {"s1": path}, read_table, ats=ats)
    applied = pd.DataFrame(
        [
            (e.key, e.time)
            for e, o in zip(events, outcomes, strict=True)
            if o == "applied" and e.fields["x"] is not None
        ],
        columns=["key", "time"],
    )
    stale_seen = fresh_seen = 0
    for row in table.to_dict("records"):
        key, at = row["key"], row["at"]
        answer = key_answer(plan, key, worker.scanned(key), at)
        if "error" in answer:  # outside retention at that time: no answer online
            continue
        lo = (at // plan.period_ms - plan.widest + 1) * plan.period_ms
        mine = applied[
            (applied["key"] == key)
            & (applied["time"] >= lo)
            & (applied["time"] // plan.period_ms <= at // plan.period_ms)
        ]
        truth = None if mine.empty else int(mine["time"].max())
        got = None if pd.isna(row["g.newest_event"]) else int(row["g.newest_event"])
        assert got == answer["newest_event"] == truth, (key, at)
        stale = truth is None or truth < at - MAX_AGE
        assert bool(row["g.stale"]) == answer["stale"] == stale, (key, at)
        stale_seen += stale
        fresh_seen += not stale
    assert stale_seen > 5 and fresh_seen > 5
