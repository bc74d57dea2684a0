"""Issue 23 on the real broker: a spec that adds an aggregation (24 h window, `where`), adds a window to
another, removes one and changes a `where`, rolled out over two workers (one with its data dir wiped)
while events keep coming. Answers list exactly the new and changed features as incomplete while the
history is replayed; after it every feature of every key equals pandas over all events with the new
definitions, and the unchanged aggregation's values did not move."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pandas as pd

from tests.support.broker import BrokerUnderTest
from tests.support.checks import settle_and_check
from tests.support.kafka import create_pipeline_topics_for
from tests.support.shop import HOUR, T0, make_events, newest_times, publish, truth_of
from tests.support.worker import WorkerProcess, wait_for

FIRST, MORE = 20_000, 5_000
FAILED_V1 = (
    "      - {name: failed, stream: orders, field: amount, ops: [count], windows: [1h], "
    "where: \"status == 'failed'\"}\n"
)
FAILED_V2 = (
    "      - {name: failed, stream: orders, field: amount, ops: [count], windows: [1h], "
    "where: \"status == 'failed' and amount > 50\"}\n"
)
PRODUCTS = "      - {name: products, stream: orders, field: product, ops: [distinct], windows: [24h]}\n"
CLICKS_V1 = "      - {name: clicks, stream: clicks, ops: [count], windows: [10m, 1h]}\n"
CLICKS_V2 = "      - {name: clicks, stream: clicks, ops: [count], windows: [10m, 1h, 6h]}\n"
BIG = (
    "      - {name: big, stream: orders, field: amount, ops: [count, sum, max], windows: [24h], "
    'where: "amount > 200"}\n'
)
#: What v2 changes, as `incomplete` lists it while replaying (new: big; changed: failed, clicks).
REPLAYED = {
    "big_count_24h",
    "big_sum_24h",
    "big_max_24h",
    "failed_count_1h",
    "clicks_count_10m",
    "clicks_count_1h",
    "clicks_count_6h",
}
#: The unchanged aggregation's features whose window retention still holds at the keys' old `at`.
UNCHANGED = ("spend_count_1h", "spend_sum_1h", "spend_max_1h", "spend_stddev_1h")


def v2_text(v1: str) -> str:
    for old, new in ((FAILED_V1, FAILED_V2), (PRODUCTS, ""), (CLICKS_V1, CLICKS_V2 + BIG)):
        assert old in v1
        v1 = v1.replace(old, new)
    return v1


def replay_states(urls: list[str], kind: str = "replay") -> list[dict]:
    """Every partition's replay (or backfill), as the workers' /pipeline shows them."""
    states = []
    for url in urls:
        for entry in httpx.get(f"{url}/pipeline", timeout=10).json()[kind].get("user", {}).values():
            states.extend(entry.values())
    return states


def all_done(urls: list[str], kind: str = "replay", timeout: float = 180) -> list[dict]:
    """Wait until the 4 partitions' replays (or backfills) are done; their states."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = replay_states(urls, kind)
        if len(states) == 4 and all(s["done"] for s in states):
            return states
        time.sleep(0.5)
    raise AssertionError(f"{kind} not done after {timeout:.0f} s: {replay_states(urls, kind)}")


def test_a_spec_change_replays_history_into_new_and_changed_aggregations(
    broker: BrokerUnderTest,
    uid: str,
    shop_pipeline: Path,
    workers: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    create_pipeline_topics_for(broker.url, shop_pipeline, uid)
    events = make_events(seed=23, count=FIRST + MORE, hours=20)
    first, more = events[:FIRST], events[FIRST:]
    publish(broker, uid, first)

    # v1 on two workers, all of the first 20,000 events in.
    one = workers(shop_pipeline, name="v1-a", data_dir=tmp_path / "a")
    two = workers(shop_pipeline, name="v1-b", data_dir=tmp_path / "b")
    one.wait_ready(180)
    two.wait_ready(180)
    settle_and_check([one.url, two.url], truth_of(shop_pipeline, first), first)
    # Before and after the upgrade, the same `at` per key: its newest event, but no later than 15 h in
    # (the last 5,000 events are 16 h in and later, give or take 30 min: none of them counts there).
    newest = {key: min(t, T0 + 15 * HOUR) for key, t in newest_times(first).items()}
    sample = sorted(newest)[::10]
    with httpx.Client(timeout=10) as client:
        before = {
            key: client.get(
                f"{one.url}/features/user/{key}", params={"at": newest[key], "features": ",".join(UNCHANGED)}
            ).json()["features"]
            for key in sample
        }
    one.stop()
    two.stop(sig=signal.SIGKILL)
    shutil.rmtree(tmp_path / "b")  # its state comes back from the changelogs

    # v2: while its workers start and replay, 5,000 more events arrive.
    v2 = tmp_path / "v2.yaml"
    v2.write_text(v2_text(shop_pipeline.read_text()))
    # Paced (HYDRANT_REPLAY_RECORDS_PER_S), so the test sees answers while it runs.
    paced = {"HYDRANT_REPLAY_RECORDS_PER_S": "1500"}
    one = workers(v2, name="v2-a", data_dir=tmp_path / "a", **paced)
    two = workers(v2, name="v2-b", data_dir=tmp_path / "b", **paced)
    publish(broker, uid, more[: MORE // 2])
    one.wait_ready(180)
    two.wait_ready(180)
    # The first to start records the change; the other finds it recorded, with the replay pending.
    logs = one.log() + two.log()
    assert "feature definitions changed" in logs
    assert "    big                  new:" in logs and "    products             removed:" in logs
    assert one.log().count("replaying history into: user: big, clicks, failed") == 1
    assert two.log().count("replaying history into: user: big, clicks, failed") == 1
    publish(broker, uid, more[MORE // 2 :])

    # While replaying: exactly the new and changed features are listed, on the answers of keys whose
    # partition is not done.
    seen_incomplete: set[frozenset[str]] = set()
    deadline = time.monotonic() + 240
    with httpx.Client(timeout=10) as client:
        while time.monotonic() < deadline:
            for key in sample[:20]:
                answer = client.get(f"{one.url}/features/user/{key}").json()
                if "incomplete" in answer:
                    seen_incomplete.add(frozenset(answer["incomplete"]))
            states = replay_states([one.url, two.url])
            if states and all(s["done"] for s in states):
                break
            time.sleep(0.2)
    assert states and all(s["done"] for s in states), states
    assert len(states) == 4  # every partition of the group, over both workers
    assert sum(s["replayed"] for s in states) > FIRST / 2  # the input history, read back
    assert seen_incomplete == {frozenset(REPLAYED)}, seen_incomplete
    assert all(s["incomplete"] == [] for s in states)  # the topics hold all history: complete now

    # After: every feature of every key (v2 definitions) equals pandas over all 25,000 events.
    truth = truth_of(v2, events)
    settle_and_check([one.url, two.url], truth, events)
    with httpx.Client(timeout=10) as client:
        answer = client.get(f"{two.url}/features/user/{sample[0]}").json()
        assert "incomplete" not in answer
        assert not any(name.startswith("products_") for name in answer["features"])  # removed
        gone = client.get(
            f"{two.url}/features/user/{sample[0]}", params={"features": "products_distinct_24h"}
        )
        assert gone.status_code == 400 and gone.json()["error"]["code"] == "unknown_feature"
        # The unchanged aggregation answers what it answered before the upgrade, at the same `at`.
        for key in sample:
            params = {"at": newest[key], "features": ",".join(UNCHANGED)}
            after = client.get(f"{one.url}/features/user/{key}", params=params).json()
            assert "features" in after, (key, newest[key], after)
            for name in UNCHANGED:
                assert after["features"][name] == before[key][name], (key, name)
    assert one.metric("hydrant_features_incomplete", group="user") == 0
    assert one.metric("hydrant_replayed_events_total", group="user") > 0


def replays_by_partition(urls: list[str], kind: str = "replay") -> dict[int, list[tuple[str, dict]]]:
    """Per partition of the group ``user``, the (worker URL, state) of every worker showing its replay
    (or backfill) in /pipeline (a worker shows the partitions it holds)."""
    out: dict[int, list[tuple[str, dict]]] = {}
    for url in urls:
        entry = httpx.get(f"{url}/pipeline", timeout=10).json()[kind].get("user", {})
        for partition, state in entry.get("partitions", {}).items():
            out.setdefault(int(partition), []).append((url, state))
    return out


def wait_partial(urls: list[str], on: str, timeout: float = 120) -> dict[int, list[tuple[str, dict]]]:
    """Wait until the worker ``on`` shows a replay under way (some read, more left, not done, running);
    every worker's states then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = replays_by_partition(urls)
        if any(
            url == on and state["running"] and 0 < state["replayed"] and state["left"] > 0
            for held in states.values()
            for url, state in held
        ):
            return states
        time.sleep(0.2)
    raise AssertionError(f"no replay under way on {on} after {timeout:.0f} s: {replays_by_partition(urls)}")


def test_a_replay_in_progress_survives_a_worker_joining_and_one_leaving(
    broker: BrokerUnderTest,
    uid: str,
    shop_pipeline: Path,
    workers: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    """Issue 31: rebalances land while the partitions replay (paced at 250 records/s): a worker joins
    (every partition revoked, some given back to the same worker, some to the new one), then the first
    leaves (the other takes its partitions over mid-replay). Every partition's replay resumes from its
    progress record and marks, is begun once, finishes, and every key equals pandas over all events."""
    create_pipeline_topics_for(broker.url, shop_pipeline, uid)
    events = make_events(seed=31, count=FIRST + MORE, hours=20)
    first, more = events[:FIRST], events[FIRST:]
    publish(broker, uid, first)
    fast = {"HYDRANT_FETCH_MAX_WAIT_MS": "50"}
    v1 = workers(shop_pipeline, name="v1", data_dir=tmp_path / "a", **fast)
    v1.wait_ready(180)
    settle_and_check([v1.url], truth_of(shop_pipeline, first), first)
    v1.stop()

    v2 = tmp_path / "v2.yaml"
    v2.write_text(v2_text(shop_pipeline.read_text()))
    slow = {**fast, "HYDRANT_REPLAY_RECORDS_PER_S": "250"}
    a = workers(v2, name="v2-a", data_dir=tmp_path / "a", **slow)
    a.wait_ready(180)
    # Alone, `a` begins the replay of every partition (all history: the first 20,000 events).
    wait_for(lambda: len(replays_by_partition([a.url])) == 4, "a holds the 4 partitions' replays")
    publish(broker, uid, more[: MORE // 2])  # live events meanwhile: not part of the replayed history

    # A worker joins while `a` is mid-replay: every partition is revoked, then shared out.
    before_join = wait_partial([a.url], on=a.url)
    b = workers(v2, name="v2-b", data_dir=tmp_path / "b", **slow)
    b.wait_ready(180)
    wait_for(
        lambda: (
            {url for held in replays_by_partition([a.url, b.url]).values() for url, _ in held}
            == {a.url, b.url}
        ),
        "both workers hold partitions",
    )
    after_join = replays_by_partition([a.url, b.url])
    assert not all(state["done"] for held in after_join.values() for _, state in held), after_join

    # The first one leaves while it is mid-replay: `b` takes its partitions over.
    before_leave = wait_partial([a.url, b.url], on=a.url)
    moved = [p for p, held in before_leave.items() for url, s in held if url == a.url and not s["done"]]
    a.stop()
    publish(broker, uid, more[MORE // 2 :])
    states = all_done([b.url], timeout=300)
    final = replays_by_partition([b.url])
    assert sorted(final) == [0, 1, 2, 3]
    assert not any(state["running"] for held in final.values() for _, state in held)  # all done
    for partition in moved:  # resumed there from where `a` left it, not begun again
        assert final[partition][0][1]["replayed"] >= max(s["replayed"] for _, s in before_leave[partition])
    # Each history record read once over all the moves: 20,000 events, none counted twice in the progress.
    assert sum(s["replayed"] for s in states) == FIRST, states
    # Begun once per partition (by `a`), resumed after each move, never begun again.
    begun = re.findall(r"replay of group 'user' partition (\d+): \d+ records", a.log() + b.log())
    assert sorted(begun) == ["0", "1", "2", "3"], begun
    assert "resumed" in b.log()
    assert any(url == a.url for held in before_join.values() for url, s in held if not s["done"])

    # Every feature of every key (v2 definitions) equals pandas over all 25,000 events: exactly once.
    settle_and_check([b.url], truth_of(v2, events), events)
    assert b.metric("hydrant_replay_records_left", group="user") == 0
    assert b.metric("hydrant_features_incomplete", group="user") == 0
    status = httpx.get(f"{b.url}/status", timeout=10).json()
    assert status["groups"]["user"]["replay_left"] == 0


def hydrant(worker: WorkerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with ``worker``'s settings (broker, consumer group, pipeline)."""
    return subprocess.run(
        [sys.executable, "-m", "app.tools.cli", *args],
        env=worker.env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_a_period_change_is_refused_and_a_state_reset_rebuilds_the_group(
    broker: BrokerUnderTest,
    uid: str,
    shop_pipeline: Path,
    workers: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    create_pipeline_topics_for(broker.url, shop_pipeline, uid)
    events = make_events(seed=7, count=6_000, hours=20)
    publish(broker, uid, events)
    v1 = workers(shop_pipeline, name="v1", data_dir=tmp_path / "data")
    v1.wait_ready(180)
    settle_and_check([v1.url], truth_of(shop_pipeline, events), events)
    v1.stop()

    period = tmp_path / "period.yaml"
    period.write_text(shop_pipeline.read_text().replace("period: 10m ", "period: 5m  "))
    refused = workers(period, name="refused", data_dir=tmp_path / "data")
    assert refused.proc is not None and refused.proc.wait(timeout=60) == 1
    assert "its period changed from 10m to 5m" in refused.log()
    assert "`hydrant state reset user --yes`" in refused.log()

    asked = hydrant(refused, "state", "reset", "user")
    assert asked.returncode == 1 and "Stop the workers, then run again with --yes" in asked.stdout
    done = hydrant(refused, "state", "reset", "user", "--yes")
    assert done.returncode == 0, done.stderr
    assert re.search(r"reset: [1-9]\d* record keys of \S+-features-user-changelog deleted", done.stdout)

    # The same data dir: its records are deleted as the changelog's tombstones are recovered.
    v2 = workers(period, name="v2", data_dir=tmp_path / "data")
    v2.wait_ready(180)
    assert "  group user: new" in v2.log()
    all_done([v2.url])
    settle_and_check([v2.url], truth_of(period, events), events)


def test_a_backfill_from_files_adds_the_history_the_topics_no_longer_hold(
    broker: BrokerUnderTest,
    uid: str,
    shop_pipeline: Path,
    workers: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    create_pipeline_topics_for(broker.url, shop_pipeline, uid)
    events = make_events(seed=9, count=8_000, hours=20)
    split = T0 + 10 * HOUR
    older = [e for e in events if int(e["ts"]) < split]  # type: ignore[call-overload]
    kept = [e for e in events if int(e["ts"]) >= split]  # type: ignore[call-overload]
    publish(broker, uid, kept)  # the topics hold the second half only
    data = tmp_path / "data"
    live = workers(shop_pipeline, name="live", data_dir=data)
    live.wait_ready(180)
    settle_and_check([live.url], truth_of(shop_pipeline, kept), kept)

    files = {}
    for stream in ("orders", "clicks"):
        rows = [{k: v for k, v in e.items() if k != "stream"} for e in older if e["stream"] == stream]
        files[stream] = tmp_path / f"{stream}.parquet"
        pd.DataFrame(rows).to_parquet(files[stream])
    inputs = [arg for stream, path in files.items() for arg in ("--input", f"{stream}={path}")]
    done = hydrant(live, "backfill", str(shop_pipeline), *inputs)
    assert done.returncode == 0, done.stderr
    orders = sum(e["stream"] == "orders" for e in older)
    assert f"stream orders: {orders} rows, 0 not events, {orders} taken (before " in done.stdout
    assert f"group user: {len(older)} events to backfill" in done.stdout

    live.stop()
    after = workers(shop_pipeline, name="after", data_dir=data)
    after.wait_ready(180)
    states = all_done([after.url], "backfill")
    assert sum(s["replayed"] for s in states) == len(older)
    settle_and_check([after.url], truth_of(shop_pipeline, events), events)  # both halves, once each

    again = hydrant(after, "backfill", str(shop_pipeline), *inputs)
    assert again.returncode == 1 and "was backfilled before" in again.stderr
