"""Issue 9 on the real broker: `hydrant compute` over the files equals what a worker answers over HTTP
after `hydrant produce` sent the same files — for every key and several `at`, exactly (==), floats,
stddev and HyperLogLog-backed distinct counts included."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from tests.support.broker import BrokerUnderTest
from tests.support.kafka import create_pipeline_topics_for
from tests.support.worker import WorkerProcess, wait_for

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
HOUR = 3_600_000
REPO = Path(__file__).resolve().parents[2]


def shop_files(
    tmp_path: Path, seed: int = 11, orders: int = 4000, clicks: int = 2500, keys: int = 150
) -> tuple[Path, Path]:
    """Orders (Parquet) and clicks (CSV) over 20 h with +-30 min of disorder (so the worker's
    interleaving of the two topics cannot make an event late), full-precision amounts, nulls, one key
    with 300 distinct products in one bucket (a HyperLogLog bucket), and 25 orders moved 30 h back
    after newer orders of their key (late, in every processing order)."""
    rng = np.random.default_rng(seed)
    span = 20 * HOUR

    def times(n: int) -> np.ndarray:
        return T0 + np.arange(n, dtype=np.int64) * span // n + rng.integers(-HOUR // 2, HOUR // 2, n)

    o = pd.DataFrame(
        {
            "user_id": [f"u{i:03d}" for i in rng.integers(0, keys, orders)],
            "order_id": [f"o-{i}" for i in range(orders)],
            "product": [f"p{i}" for i in rng.integers(0, 60, orders)],
            "amount": rng.uniform(1, 300, orders),
            "status": rng.choice(["paid", "failed", "paid"], orders),
            "ts": times(orders),
        }
    )
    o.loc[rng.random(orders) < 0.03, "amount"] = np.nan
    o.loc[rng.random(orders) < 0.02, "product"] = None
    heavy = pd.DataFrame(
        {
            "user_id": "heavy",
            "order_id": [f"h-{i}" for i in range(300)],
            "product": [f"h{i}" for i in range(300)],
            "amount": rng.uniform(1, 300, 300),
            "status": "paid",
            "ts": T0 + 10 * HOUR + np.arange(300) * 1000,
        }
    )
    late = o.iloc[-25:].copy()
    late["order_id"] = [f"late-{i}" for i in range(25)]
    late["ts"] = late["user_id"].map(o.groupby("user_id")["ts"].max()) - 30 * HOUR
    o = pd.concat([o.iloc[: orders // 2], heavy, o.iloc[orders // 2 :], late], ignore_index=True)
    c = pd.DataFrame(
        {
            "user_id": [f"u{i:03d}" for i in rng.integers(0, keys, clicks)],
            "page": rng.choice(list("abcdef"), clicks),
            "ts": times(clicks),
        }
    )
    orders_path, clicks_path = tmp_path / "orders.parquet", tmp_path / "clicks.csv"
    o.to_parquet(orders_path, index=False)
    c.to_csv(clicks_path, index=False)
    return orders_path, clicks_path


def hydrant(broker: BrokerUnderTest, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HYDRANT_BROKER": broker.url}
    result = subprocess.run(
        [sys.executable, "-m", "app.tools.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"hydrant {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def plain(value: Any) -> Any:
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


SHORT = ["spend_count_1h", "spend_sum_1h", "spend_avg_1h", "spend_min_1h", "spend_max_1h", "spend_stddev_1h",
         "failed_count_1h", "clicks_count_10m", "clicks_count_1h"]  # fmt: skip


def online(client: httpx.Client, url: str, keys: list[str], at: int) -> dict[str, dict[str, Any] | None]:
    """Every key's features at ``at`` over POST /features/user (batches of 1000); for a key outside
    retention for the 24 h windows, its 1 h / 10 m windows only. None: not found."""
    out: dict[str, dict[str, Any] | None] = {}
    for begin in range(0, len(keys), 1000):
        batch = keys[begin : begin + 1000]
        body = client.post(f"{url}/features/user", json={"keys": batch, "at": at})
        assert body.status_code == 200, body.text
        answer = body.json()
        assert answer["at"] == at and [r["key"] for r in answer["results"]] == batch
        retry = []
        for result in answer["results"]:
            if not result["found"]:
                out[result["key"]] = None
            elif "error" in result:
                assert result["error"]["code"] == "outside_retention", result
                retry.append(result["key"])
            else:
                out[result["key"]] = result["features"]
        if retry:
            body = client.post(f"{url}/features/user", json={"keys": retry, "at": at, "features": SHORT})
            assert body.status_code == 200, body.text
            for result in body.json()["results"]:
                assert result["found"] and "error" not in result, result
                out[result["key"]] = result["features"]
    return out


def differences(offline: pd.DataFrame, url: str, ats: list[int]) -> list[str]:
    problems: list[str] = []
    with httpx.Client(timeout=30) as client:
        for at in ats:
            rows = offline[offline["at"] == at]
            keys = rows["key"].tolist()
            answers = online(client, url, [*keys, "nobody"], at)
            if answers.pop("nobody") is not None:
                problems.append("key 'nobody' found")
            for row in rows.to_dict("records"):
                features = answers[row["key"]]
                if features is None:
                    problems.append(f"{row['key']}@{at}: not found online")
                    continue
                for name, value in features.items():
                    mine = plain(row[name])
                    if mine != value or type(mine) is not type(value):
                        problems.append(f"{row['key']}@{at} {name}: offline {mine!r}, online {value!r}")
    return problems


def test_compute_equals_the_worker_over_http(
    broker: BrokerUnderTest,
    shop_pipeline: Path,
    uid: str,
    workers: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    create_pipeline_topics_for(broker.url, shop_pipeline, uid)
    orders, clicks = shop_files(tmp_path)
    total = len(pd.read_parquet(orders)) + len(pd.read_csv(clicks))
    hydrant(broker, "produce", f"orders-{uid}", str(orders), "--key", "user_id")
    hydrant(broker, "produce", f"clicks-{uid}", str(clicks), "--key", "user_id")

    newest = int(max(pd.read_parquet(orders)["ts"].max(), pd.read_csv(clicks)["ts"].max()))
    ats = [newest + HOUR, newest, newest - HOUR, newest - 6 * HOUR - 1, T0 + 10 * HOUR + 123]
    out = tmp_path / "features.parquet"
    args = ["compute", str(shop_pipeline), "--input", f"orders={orders}", "--input", f"clicks={clicks}"]
    result = hydrant(broker, *args, *(f"--at={at}" for at in ats), "--out", str(out))
    assert "25 late" in result.stdout, result.stdout
    offline = pd.read_parquet(out)
    users = set(pd.read_parquet(orders)["user_id"]) | set(pd.read_csv(clicks)["user_id"])
    assert len(offline) == len(users) * len(ats) and "heavy" in users
    heavy = offline[(offline["key"] == "heavy") & (offline["at"] == newest)]
    assert 290 <= int(heavy["products_distinct_24h"].iloc[0]) <= 310  # a HyperLogLog estimate

    worker = workers(shop_pipeline)
    worker.wait_ready()
    wait_for(lambda: worker.metric("hydrant_events_consumed_total") >= total, "every event consumed", 180)
    problems: list[str] = ["not compared"]
    deadline = time.monotonic() + 120
    while problems and time.monotonic() < deadline:  # the last batch may still be in flight
        problems = differences(offline, worker.url, ats)
        if problems:
            time.sleep(2)
    assert not problems, f"{len(problems)} differences, first: " + "\n".join(problems[:10])
    assert worker.metric("hydrant_late_events_total", group="user") == 25
