"""Issue 31, must-show 2: the payments example on three worker processes through a storm of membership
changes while payments arrive at the wall clock, with the short fetch wait. Afterwards every input
offset has an output (at least once, by its ``hydrant-source-*`` headers), every key of every group
equals ``hydrant compute`` over the same payments, and the dead-letter topic holds exactly the records
spoiled on purpose.

Short form by default (CI); ``HYDRANT_STORM=long`` for 40,000 payments and 20 changes over ~90 s
(``make storm``); ``HYDRANT_STORM_REPEAT=N`` runs each standby setting N times;
``HYDRANT_STORM_CHANGES=0`` is a sanity run with no change at all (it must always pass).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.config.routing import stream_stages
from app.config.spec import load_pipeline
from tests.conftest import payments_pipeline_text
from tests.reliability.storm import (
    Cluster,
    Coverage,
    DeadLetters,
    Features,
    Item,
    Producer,
    consumer_lag,
    coverage,
    dead_letters,
    feature_problems,
    form_from_env,
    group_view,
    hop_gaps,
    log_lines,
    make_items,
    merchant_rows,
    plan_changes,
    read_topic,
    readiness,
    reference,
    where_missing,
)
from tests.support.broker import BrokerUnderTest
from tests.support.kafka import create_pipeline_topics_for, produce
from tests.support.worker import WorkerProcess, wait_for

FORM = form_from_env()
REPEAT = int(os.environ.get("HYDRANT_STORM_REPEAT", "1"))
SEED = int(os.environ.get("HYDRANT_STORM_SEED", "31000"))
PARTITIONS = 4  # HYDRANT_PARTITIONS' default: the topics create_pipeline_topics_for makes

pytestmark = [pytest.mark.integration, pytest.mark.reliability, pytest.mark.timeout(FORM.time_limit_s)]


@pytest.mark.parametrize("run", range(1, REPEAT + 1), ids=lambda r: f"run{r}")
@pytest.mark.parametrize("standby", [0, 1], ids=lambda s: f"standby{s}")
def test_rebalance_storm(
    broker: BrokerUnderTest,
    workers: Callable[..., WorkerProcess],
    uid: str,
    tmp_path: Path,
    standby: int,
    run: int,
) -> None:
    """One storm run: the plan of ``run``'s seed against workers with ``standby`` standby replicas."""
    started = time.monotonic()
    pipeline = tmp_path / "payments.yaml"
    pipeline.write_text(payments_pipeline_text(uid))
    create_pipeline_topics_for(broker.url, pipeline, uid)
    spec = load_pipeline(pipeline)
    topic, out_topic, dlq = f"payments-{uid}", f"payments-enriched-{uid}", f"payments-{uid}.dlq"
    hops = {stage.topic: stage.key for stage in stream_stages(spec, "payments", f"hydrant-test-{uid}")[1:]}
    seed = SEED + run
    items = make_items(FORM, seed)
    plan = plan_changes(seed, FORM.changes, FORM.seconds)
    say = _say(f"[storm {FORM.name} standby={standby} run {run}/{REPEAT}]")
    say(f"seed {seed}; {len(items)} records over {FORM.seconds:.0f}s; plan: " + ", ".join(
        f"{c.at:.1f}s {c.kind} {c.slot}" for c in plan
    ))  # fmt: skip

    asyncio.run(produce(broker.bootstrap, f"merchants-{uid}", merchant_rows(FORM)))
    env = {"HYDRANT_STANDBY_REPLICAS": str(standby), "HYDRANT_FETCH_MAX_WAIT_MS": "50"}
    cluster = Cluster(workers, pipeline, tmp_path, env, say)
    try:
        for slot in cluster.slots:
            cluster.join(slot)
        for worker in cluster.running():
            worker.wait_ready(180)
        last_merchant = f"m{FORM.merchants - 1:02d}"
        wait_for(
            lambda: all(
                w.get(f"/tables/merchants/{last_merchant}").status_code == 200 for w in cluster.running()
            ),
            "the merchants on every worker",
        )
        say(f"3 workers ready after {time.monotonic() - started:.0f}s; storm starts")

        producer = Producer(broker.bootstrap, topic, items, FORM.seconds)
        t0 = time.monotonic()
        producer.start()
        cluster.run_plan(plan, t0)
        producer.join(FORM.seconds * 3 + 60)
        assert not producer.is_alive(), f"producer stuck at {producer.sent}/{len(items)}"
        assert producer.error is None, f"producer failed: {producer.error!r}"
        say(
            f"produced {len(items)} records in {time.monotonic() - t0:.0f}s; {len(cluster.done)} changes done"
        )
        cluster.fill()

        good = {(i.partition, i.offset): i for i in items if i.event is not None}
        bad = {(i.partition, i.offset): i for i in items if i.event is None}
        _check_offsets(items)
        payments = [i.event for i in items if i.event is not None]
        at = max(p["ts"] for p in payments)
        truth = reference(pipeline, payments, at, tmp_path)
        settled = time.monotonic()
        covered, dead, features, waited = _settle(
            cluster, broker, topic, out_topic, dlq, {*hops, topic}, good, bad, truth, at, say
        )
        final_ready = readiness(cluster.running())
        final_logs = {path: False for path in cluster.log_paths} | {
            w.log_path: True for w in cluster.running()
        }
    finally:
        cluster.release()
    mismatched = features.differing if features is not None else -1
    counts, lines = log_lines(cluster.log_paths)
    summary = (
        f"storm run {run}/{REPEAT} form={FORM.name} standby={standby} seed={seed}: "
        f"changes {len(cluster.done)}/{len(plan)}, payments {len(good)} (+{len(bad)} spoiled), "
        f"outputs {covered.outputs}, duplicates {covered.duplicates}, missing {len(covered.missing)}, "
        f"mismatches {mismatched}, dead letters {dead.records} {dict(dead.by_reason)} "
        f"(duplicates {dead.duplicates}, unexpected {len(dead.unexpected)}, missing {len(dead.missing)}), "
        f"settled in {time.monotonic() - settled:.0f}s ({waited}), total {time.monotonic() - started:.0f}s; "
        f"workers that exited by themselves {cluster.exits}; log lines {dict(counts)}"
    )
    print(summary)
    print(f"worker logs in {tmp_path}; noteworthy lines:\n  " + "\n  ".join(lines[:15]))
    report = _report(summary, covered, dead, features, lines, tmp_path)
    if waited != "clean":
        report += (
            f"\npayments without a record on each hop topic: {hop_gaps(broker.bootstrap, hops, topic, good)}"
        )
        if covered.missing:
            report += "\n" + where_missing(
                broker.bootstrap, f"hydrant-test-{uid}", hops, topic, covered.missing
            )
        report += "\n" + group_view(broker.bootstrap, f"hydrant-test-{uid}", final_logs)
        report += "\nreadiness: " + "; ".join(final_ready)
    (tmp_path / "storm-report.txt").write_text(report + "\n")
    assert not covered.unexpected and not covered.wrong, report
    assert not covered.missing, report
    assert mismatched == 0, report
    assert not dead.unexpected and not dead.missing, report
    assert waited == "clean", report


def _say(prefix: str) -> Callable[[str], None]:
    """A progress printer: ``prefix``, seconds since the run began, the text."""
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"{prefix} {time.monotonic() - started:6.1f}s {text}", flush=True)

    return say


def _check_offsets(items: list[Item]) -> None:
    """The test's own bookkeeping: every record produced once, offsets 0..end-1 on each partition."""
    by_partition: dict[int, list[int]] = {}
    for item in items:
        assert item.partition >= 0, "a record without its offset"
        by_partition.setdefault(item.partition, []).append(item.offset)
    for partition, offsets in by_partition.items():
        assert sorted(offsets) == list(range(len(offsets))), f"partition {partition}: offsets not 0..end-1"


def _settle(
    cluster: Cluster,
    broker: BrokerUnderTest,
    topic: str,
    out_topic: str,
    dlq: str,
    lag_topics: set[str],
    good: dict[tuple[int, int], Item],
    bad: dict[tuple[int, int], Item],
    truth: dict[str, dict[str, dict[str, Any]]],
    at: int,
    say: Callable[[str], None],
) -> tuple[Coverage, DeadLetters, Features | None, str]:
    """Poll until every worker is ready, the lag is 0 and every check is clean; give up after the
    form's settle time, or after 45 s with everyone ready, lag 0 and the outputs no longer moving.
    Returns the last (coverage, dead letters, features compared or None, how it ended)."""
    deadline = time.monotonic() + FORM.settle_s
    moved, last = time.monotonic(), (-1, -1.0)
    features: Features | None = None
    while True:
        cluster.supervise()
        running = cluster.running()
        ready = len(running) == len(cluster.slots) and all(w.ready() for w in running)
        try:
            lag, assigned = consumer_lag(running, lag_topics) if ready else (-1.0, set())
        except Exception as exc:  # a worker going away mid-scrape: try again
            lag, assigned = -1.0, set()
            say(f"lag unreadable: {exc!r}")
        expected = {(t, p) for t in lag_topics for p in range(PARTITIONS)}
        caught_up = ready and lag == 0 and assigned >= expected
        covered = coverage(asyncio.run(read_topic(broker.bootstrap, out_topic)), topic, good)
        dead = dead_letters(asyncio.run(read_topic(broker.bootstrap, dlq)), topic, bad)
        if (covered.outputs, lag) != last:
            moved, last = time.monotonic(), (covered.outputs, lag)
        say(
            f"{len(running)} running, ready {ready}, lag {lag:.0f} on {len(assigned)}/{len(expected)} "
            f"partitions, outputs {covered.outputs}, missing {len(covered.missing)}, "
            f"dead letters {dead.records}"
        )
        if caught_up and not covered.missing:
            features = feature_problems([w.url for w in running], truth, at)
            say(f"features: {features.differing} answers differ")
            if not features.differing:
                return covered, dead, features, "clean"
        if caught_up and time.monotonic() - moved > 45:
            features = features or feature_problems([w.url for w in running], truth, at)
            return covered, dead, features, "stable but not clean"
        if time.monotonic() > deadline:
            if features is None and running:
                features = feature_problems([w.url for w in running], truth, at)
            return covered, dead, features, f"not caught up (ready {ready}, lag {lag:.0f})"
        cluster.wait(3)


def _report(
    summary: str,
    covered: Coverage,
    dead: DeadLetters,
    features: Features | None,
    lines: list[str],
    where: Path,
) -> str:
    """The failure message: the summary, the first of each kind of problem, the noteworthy log lines."""
    missing_by_partition: dict[int, list[int]] = {}
    for partition, offset in covered.missing:
        missing_by_partition.setdefault(partition, []).append(offset)
    parts = [
        summary,
        f"missing outputs by partition: { {p: _ranges(o) for p, o in missing_by_partition.items()} }",
        f"outputs of no good input: {covered.unexpected[:5]}; rows not their source's: {covered.wrong[:5]}",
        f"dead letters unexpected: {dead.unexpected[:5]}; spoiled without one: {dead.missing[:5]}",
        f"answers that differ by group, by table partition [keys, online - offline of its first count]: "
        f"{features.by_partition if features else None}",
        f"feature problems ({len(features.problems) if features else 'not compared'}): "
        + "\n  ".join(features.problems[:15] if features else []),
        f"worker logs in {where}:\n  " + "\n  ".join(lines),
    ]
    return "\n".join(parts)


def _ranges(numbers: list[int]) -> str:
    """``3-7,9`` for [3, 4, 5, 6, 7, 9]."""
    out: list[str] = []
    for n in sorted(numbers):
        if out and out[-1].split("-")[-1] == str(n - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ",".join(out)
