"""Issue 24 on the real broker: last_n, top_k, percentile and lifetime windows exact after SIGKILL + a
lost data dir (every key against the pandas ground truth over HTTP; lifetime roll-ups come back from
the changelog), and `hydrant compute` over the same events answering what the worker answers."""

from __future__ import annotations

import re
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pandas as pd

from app.config.spec import load_pipeline
from app.tools.frames import read_table
from app.tools.offline import compute
from tests.conftest import shop_lifetime_text
from tests.support.broker import BrokerUnderTest
from tests.support.checks import settle_and_check
from tests.support.kafka import create_pipeline_topics_for
from tests.support.shop import HOUR, make_events, newest_times, publish, truth_of
from tests.support.worker import WorkerProcess, wait_for

EVENTS = 20_000


def test_new_ops_exact_after_sigkill_and_lost_data_dir_and_equal_offline(
    broker: BrokerUnderTest,
    uid: str,
    workers: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(shop_lifetime_text(uid))
    create_pipeline_topics_for(broker.url, pipeline, uid)
    events = make_events(seed=24)
    truth = truth_of(pipeline, events)
    lifetime = truth_of(pipeline, events, "life")
    assert not lifetime.late_seqs()
    publish(broker, uid, events[: EVENTS // 2])

    data_dir = tmp_path / "data"
    first = workers(pipeline, name="first", data_dir=data_dir)
    first.wait_ready()
    wait_for(lambda: first.metric("hydrant_events_consumed_total") >= EVENTS // 4, "a quarter ingested", 120)
    first.stop(sig=signal.SIGKILL)  # mid-ingest: uncommitted offsets, unflushed state
    shutil.rmtree(data_dir)  # the state (lists, counts, digests) must come back from the changelog

    publish(broker, uid, events[EVENTS // 2 :])
    second = workers(pipeline, name="second", data_dir=data_dir)
    second.wait_ready(timeout=180)
    assert re.search(r"bulk restore: [1-9]\d* changelog records", second.log()), second.log()[-3000:]
    settle_and_check([second.url], truth, events)  # every feature of every key at 4 `at` values
    settle_and_check([second.url], lifetime, events, group="life")
    assert "spend_p90_lifetime" in second.get("/pipeline").json()["features"]["life"]

    # hydrant compute over the same events, from files: the new features equal the worker's answers.
    frame = pd.DataFrame(events)
    inputs = {}
    for stream in ("orders", "clicks"):
        inputs[stream] = tmp_path / f"{stream}.parquet"
        rows = frame[frame["stream"] == stream].drop(columns=["stream"]).dropna(axis=1, how="all")
        rows.to_parquet(inputs[stream], index=False)
    end = max(newest_times(events).values())
    ats = [end, end - HOUR // 2 - 17]
    table, _ = compute(load_pipeline(pipeline), inputs, read_table, ats=ats, groups=["user"])
    new = [c for c in table.columns if "_last5_" in c or "_top3_" in c or c.startswith("amt_")]
    assert len(new) == 10
    checked, outside = same_online(second.url, "user", table.sample(150, random_state=1), new)
    assert checked >= 1_000

    # The lifetime features: roll-ups of ~18 h of buckets per key, online as offline.
    table, _ = compute(load_pipeline(pipeline), inputs, read_table, ats=ats, groups=["life"])
    new = [c for c in table.columns if c.endswith("_lifetime")]
    assert len(new) == 14
    checked, outside = same_online(second.url, "life", table.sample(150, random_state=2), new)
    assert (checked, outside) == (150 * 14, 0)  # lifetime: answerable at any `at` after n - R


def same_online(url: str, group: str, rows: pd.DataFrame, names: list[str]) -> tuple[int, int]:
    """Assert that the worker answers each row's ``names`` (key, at) as ``hydrant compute`` did; (values
    compared, rows outside the worker's retention: offline still has those buckets)."""
    checked = outside = 0
    with httpx.Client(timeout=10) as client:
        for row in rows.to_dict("records"):
            answer = client.get(
                f"{url}/features/{group}/{row['key']}", params={"at": row["at"], "features": ",".join(names)}
            )
            if answer.status_code == 422:
                assert answer.json()["error"]["code"] == "outside_retention"
                outside += 1
                continue
            assert answer.status_code == 200, answer.text
            online = answer.json()["features"]
            for name in names:
                offline = None if row[name] is pd.NA else row[name]  # an empty window's percentile
                assert online[name] == offline, (row["key"], row["at"], name, online[name], offline)
                checked += 1
    return checked, outside
