"""`hydrant compute` (app/tools/offline) against the worker's own code, without a broker.

The reference runs what the worker runs for every event: the record `hydrant produce` would send
(app.tools.produce.encode_rows), decoded by app.records.decode.decode_event, then tables.apply's choose /
is_late / apply_event as app/engine/shards.py BatchWork._apply calls them, and read_features. The
offline table must equal it exactly (==, floats included) wherever the worker can answer.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from click.testing import CliRunner

from app.config.spec import Pipeline, parse_pipeline
from app.records.decode import BadRecord, decode_event
from app.tools.cli import cli
from app.tools.frames import encode_rows, read_table
from app.tools.offline import compute
from tables.apply import apply_event, choose, is_late
from tables.key_state import KeyState
from tables.plans import group_plans
from tables.read import outside_retention, read_answer, read_features

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MIN = 60_000
HOUR = 3_600_000

PIPELINE = """
name: parity
streams:
  orders:
    topic: orders
    key: user_id
    time: ts
    fields: {user_id: str, product: str, amount: float, qty: int, status: str, ts: int}
  clicks:
    topic: clicks
    key: user_id
    time: ts
    fields: {user_id: str, page: str, ts: int}
features:
  user:
    key: user_id
    period: 10m
    aggregations:
      - name: spend
        stream: orders
        field: amount
        ops: [count, sum, avg, min, max, stddev, first, last]
        windows: [1h, 24h, lifetime]
      - {name: big, stream: orders, field: amount, ops: [count, sum], windows: [1h], where: "amount > 250"}
      - {name: failed, stream: orders, ops: [count], windows: [1h], where: "status == 'failed'"}
      - name: products
        stream: orders
        field: product
        ops: [distinct, min, max, first, last]
        windows: [1h, lifetime, 24h]
      - name: qty
        stream: orders
        field: qty
        ops: [sum, min, max, distinct, stddev, last_n]
        n: 4
        windows: [24h]
      - {name: clicks, stream: clicks, ops: [count], windows: [10m, 1h]}
      - {name: recent, stream: orders, field: amount, ops: [last_n], n: 5, windows: [1h, 24h]}
      - {name: seen, stream: orders, field: product, ops: [last_n, top_k], n: 3, k: 4,
         windows: [1h, 24h, lifetime]}
      - {name: sizes, stream: orders, field: qty, ops: [top_k, percentile], k: 3, quantiles: [0.5],
         windows: [24h]}
      - {name: amt, stream: orders, field: amount, ops: [percentile], quantiles: [0.5, 0.9, 0.99],
         windows: [1h, 24h, lifetime]}
  pages:
    key: user_id
    period: 5m
    aggregations:
      - {name: pages, stream: clicks, field: page, ops: [count, distinct, last], windows: [30m, lifetime]}
"""


def shop_frames(
    seed: int = 5, n_orders: int = 6000, n_clicks: int = 3000, keys: int = 60
) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    span = 40 * HOUR

    def times(n: int) -> np.ndarray:
        return T0 + np.arange(n, dtype=np.int64) * span // n + rng.integers(-HOUR // 2, HOUR // 2, n)

    orders = pd.DataFrame(
        {
            "user_id": [f"u{i:02d}" for i in rng.integers(0, keys, n_orders)],
            "product": [f"p{i}" for i in rng.integers(0, 150, n_orders)],
            "amount": rng.uniform(1, 300, n_orders),  # full precision: sums must match bit for bit
            "qty": rng.integers(1, 9, n_orders),
            "status": rng.choice(["paid", "failed", "paid"], n_orders),
            "ts": times(n_orders),
        }
    )
    orders["qty"] = orders["qty"].astype("Int64")
    orders.loc[rng.random(n_orders) < 0.03, "amount"] = np.nan  # `amount > 250` fails: dead letter
    orders.loc[rng.random(n_orders) < 0.02, "product"] = None
    orders.loc[rng.random(n_orders) < 0.01, "user_id"] = None  # missing key: dead letter
    # One key with 1,200 distinct products in one bucket: that bucket keeps a HyperLogLog sketch for
    # distinct and a frequent-items sketch for top_k (a few products seen more often).
    products = [f"h{i}" for i in range(1200)] + [f"h{i % 7}" for i in range(100)]
    heavy = pd.DataFrame(
        {
            "user_id": "heavy",
            "product": products,
            "amount": rng.uniform(1, 300, len(products)),
            "qty": pd.array(rng.integers(1, 9, len(products)), dtype="Int64"),
            "status": "paid",
            "ts": T0 + 20 * HOUR + np.arange(len(products)) * 200,
        }
    )
    late = orders.dropna(subset=["user_id"]).sample(40, random_state=seed).copy()
    late["ts"] -= 30 * HOUR  # after newer events of their key in file order: late, dropped
    orders = pd.concat([orders.iloc[:3000], heavy, orders.iloc[3000:], late], ignore_index=True)
    clicks = pd.DataFrame(
        {
            "user_id": [f"u{i:02d}" for i in rng.integers(0, keys, n_clicks)],
            "page": rng.choice(list("abcdefg"), n_clicks),
            "ts": times(n_clicks),
        }
    )
    # clicks 2 h behind their neighbours: late for `pages` (30 min retention), not for `user` (24 h).
    clicks.loc[clicks.sample(30, random_state=seed).index, "ts"] -= 2 * HOUR
    return {"orders": orders, "clicks": clicks}


def offline_order(frames: dict[str, pd.DataFrame], spec: Pipeline) -> list[tuple[str, int]]:
    """docs/offline.md: each file in row order, streams interleaved by their running max event time."""
    parts = []
    for i, (name, frame) in enumerate((n, frames[n]) for n in spec.streams if n in frames):
        ts = pd.to_numeric(frame["ts"]).to_numpy()
        parts.append(
            pd.DataFrame(
                {"pmax": np.maximum.accumulate(ts), "s": i, "row": np.arange(len(frame)), "name": name}
            )
        )
    allrows = pd.concat(parts).sort_values(["pmax", "s", "row"], kind="stable")
    return list(zip(allrows["name"], allrows["row"], strict=True))


def worker_reference(spec: Pipeline, frames: dict[str, pd.DataFrame]) -> dict[str, dict[str, KeyState]]:
    """Every event through the worker's code, in the offline processing order."""
    plans = group_plans(spec)
    encoded = {name: encode_rows(frame, None)[1] for name, frame in frames.items()}
    store: dict[bytes, bytes] = {}
    states: dict[str, dict[str, KeyState]] = {g: {} for g in plans}
    for stream, row in offline_order(frames, spec):
        try:
            key, ts, fields = decode_event(encoded[stream][row], spec.streams[stream], 0)
        except BadRecord:
            continue
        groups = [g for g, p in plans.items() if stream in p.by_stream]
        try:
            chosen = {g: choose(plans[g], stream, fields) for g in groups}
        except Exception:
            continue  # `where` failed: dead-lettered, applied to no group
        mine = {
            g: states[g].setdefault(key, KeyState(f"{g}/{key}".encode(), store.get, plans[g].retention))
            for g in groups
        }
        if any(is_late(plans[g], mine[g], ts) for g in groups):
            continue
        for g in groups:
            assert apply_event(plans[g], mine[g], chosen[g], fields, ts, f"{stream}:0", row) == "applied"
    return states


def plain(value: Any) -> Any:
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def write_inputs(tmp_path: Path, frames: dict[str, pd.DataFrame]) -> dict[str, Path]:
    orders = tmp_path / "orders.parquet"
    frames["orders"].to_parquet(orders, index=False)
    clicks = tmp_path / "clicks.csv"
    frames["clicks"].to_csv(clicks, index=False)
    return {"orders": orders, "clicks": clicks}


def test_compute_equals_the_worker_bit_for_bit(tmp_path: Path) -> None:
    spec = parse_pipeline(PIPELINE)
    frames = shop_frames()
    inputs = write_inputs(tmp_path, frames)
    ats = [T0 + 41 * HOUR, T0 + 40 * HOUR + 7 * MIN + 123, T0 + 39 * HOUR, T0 + 20 * HOUR + 5 * MIN]
    got = {}
    for group in ("user", "pages"):
        table, report = compute(spec, inputs, read_table, ats=ats, groups=[group])
        got[group] = table
    states = worker_reference(spec, {n: read_table(p) for n, p in inputs.items()})
    plans = group_plans(spec)

    assert report.dropped["expression"] > 0 and report.dropped["missing_key"] > 0
    checked = rolled_up = fresh = 0
    for group, table in got.items():
        assert sorted(set(table["key"])) == sorted(states[group])
        assert list(table.columns[:3]) == ["key", "user_id", "at"]  # the key field beside the key
        assert table["user_id"].equals(table["key"])
        for row in table.to_dict("records"):
            state = states[group][row["key"]]
            want, newest = read_answer(plans[group], state, row["at"])
            assert [*want, f"{group}.newest_event"] == list(table.columns[3:])
            if not outside_retention(plans[group], state, row["at"]):
                assert plain(row[f"{group}.newest_event"]) == newest, (group, row["key"], row["at"])
                fresh += 1
            for name, value in want.items():
                if outside_retention(plans[group], state, row["at"], {name}):
                    continue  # the worker answers 422 there; offline still has the buckets
                assert plain(row[name]) == value, (group, row["key"], row["at"], name)
                assert type(plain(row[name])) is type(value), (name, row[name], value)
                checked += 1
                rolled_up += name.endswith("_lifetime")
    assert checked > 5_000
    assert fresh > 100
    assert rolled_up > 1_000  # lifetime: roll-ups of 16 h of buckets (a sketch for products_distinct)
    heavy = got["user"].set_index(["key", "at"]).loc[("heavy", T0 + 20 * HOUR + 5 * MIN)]
    assert 1164 <= heavy["products_distinct_1h"] <= 1236  # the sketch's estimate, same bits as online
    assert [v for v, _ in heavy["seen_top4_1h"]] == ["h0", "h1", "h2", "h3"]  # seen 15 times each
    assert report.late > 30  # late clicks of `pages`, dropped from `user` too, and the 40 late orders


def test_where_failures_and_late_events_count_as_the_worker_counts(tmp_path: Path) -> None:
    spec = parse_pipeline(PIPELINE)
    frames = shop_frames(seed=9, n_orders=800, n_clicks=400, keys=10)
    inputs = write_inputs(tmp_path, frames)
    _, report = compute(spec, inputs, read_table, ats=[T0])
    orders, clicks = frames["orders"], frames["clicks"]
    keyed = orders["user_id"].notna()
    assert report.dropped["missing_key"] == int((~keyed).sum())
    assert report.dropped["expression"] == int((keyed & orders["amount"].isna()).sum())
    assert report.late >= 40  # the 40 orders moved 30 h back, and clicks late for `pages`
    assert report.events == len(orders) + len(clicks)


LABEL_PIPELINE = """
name: pit
streams:
  orders:
    topic: orders
    key: user_id
    time: ts
    fields: {user_id: str, amount: float, product: str, ts: str}
features:
  user:
    key: user_id
    period: 10m
    aggregations:
      - {name: spend, stream: orders, field: amount, ops: [count, sum, max, last], windows: [1h]}
      - {name: products, stream: orders, field: product, ops: [distinct], windows: [1h]}
"""


def test_point_in_time_labels_ignore_later_events(tmp_path: Path) -> None:
    spec = parse_pipeline(LABEL_PIPELINE)
    orders = pd.DataFrame(
        [
            ("a", 10.0, "x", "2026-01-05T09:05:00Z"),
            ("a", 20.0, "y", "2026-01-05T09:58:00Z"),
            ("a", 40.0, "y", "2026-01-05T10:02:00Z"),  # bucket 10:00
            ("a", 80.0, "z", "2026-01-05T10:05:00Z"),  # == the label's time: counts
            ("a", 160.0, "w", "2026-01-05T10:07:00Z"),  # same bucket, after the label: must not leak
            ("a", 320.0, "v", "2026-01-05T10:31:00Z"),  # later bucket: must not leak
            ("b", 5.0, "x", "2026-01-05T10:01:00Z"),
        ],
        columns=["user_id", "amount", "product", "ts"],
    )
    path = tmp_path / "orders.jsonl"
    orders.to_json(path, orient="records", lines=True)
    labels = pd.DataFrame(
        {
            "user_id": ["a", "a", "b", "nobody", "a"],
            "event_timestamp": pd.to_datetime(
                [
                    "2026-01-05T10:05:00Z",
                    "2026-01-05T09:59:59.999Z",
                    "2026-01-05T10:00:59Z",  # before b's only event
                    "2026-01-05T10:05:00Z",
                    "2026-01-05T11:00:00Z",  # 1h window = 10:10-11:10: only the 10:31 event
                ],
                format="ISO8601",
            ),
            "label": [1, 0, 0, 1, 1],
        }
    )
    table, _ = compute(spec, {"orders": path}, read_table, labels=labels)

    assert list(table.columns) == [
        "user_id", "event_timestamp", "label", "spend_count_1h", "spend_sum_1h", "spend_max_1h",
        "spend_last_1h", "products_distinct_1h", "user.newest_event",
    ]  # fmt: skip
    # the newest event each answer counts: a's at 10:05 itself, its 09:58 event, none of b's yet
    newest = [
        pd.Timestamp(t).value // 1_000_000 if t else None
        for t in ("2026-01-05T10:05Z", "2026-01-05T09:58Z", None, None, "2026-01-05T10:31Z")
    ]
    assert [plain(v) for v in table.pop("user.newest_event")] == newest
    rows = [
        {k: plain(v) for k, v in r.items()} for r in table.drop(columns="event_timestamp").to_dict("records")
    ]
    assert rows == [
        # 1h at 10:05 = buckets 09:10-10:10, events <= 10:05: 20, 40, 80 (not 10:05's 09:05, not 160, 320)
        {"user_id": "a", "label": 1, "spend_count_1h": 3, "spend_sum_1h": 140.0, "spend_max_1h": 80.0,
         "spend_last_1h": 80.0, "products_distinct_1h": 2},
        # at 09:59:59.999 = buckets 09:00-09:50: 10 and 20 only
        {"user_id": "a", "label": 0, "spend_count_1h": 2, "spend_sum_1h": 30.0, "spend_max_1h": 20.0,
         "spend_last_1h": 20.0, "products_distinct_1h": 2},
        {"user_id": "b", "label": 0, "spend_count_1h": 0, "spend_sum_1h": 0.0, "spend_max_1h": None,
         "spend_last_1h": None, "products_distinct_1h": 0},
        {"user_id": "nobody", "label": 1, "spend_count_1h": 0, "spend_sum_1h": 0.0, "spend_max_1h": None,
         "spend_last_1h": None, "products_distinct_1h": 0},
        {"user_id": "a", "label": 1, "spend_count_1h": 1, "spend_sum_1h": 320.0, "spend_max_1h": 320.0,
         "spend_last_1h": 320.0, "products_distinct_1h": 1},
    ]  # fmt: skip

    # `--at` answers as the worker does after processing everything: the whole 10:00 bucket counts.
    at = pd.Timestamp("2026-01-05T10:05:00Z").value // 1_000_000
    online, _ = compute(spec, {"orders": path}, read_table, ats=[at], keys=["a"])
    assert online["spend_count_1h"].tolist() == [4] and online["spend_sum_1h"].tolist() == [300.0]


def test_point_in_time_matches_the_worker_fed_only_the_past(tmp_path: Path) -> None:
    """A label at T equals the worker's answer at T after it processed the events with time <= T."""
    spec = parse_pipeline(PIPELINE)
    frames = shop_frames(seed=3, n_orders=1500, n_clicks=700, keys=12)
    frames["orders"] = frames["orders"].iloc[:-40]  # without the late events (late by the whole order)
    frames["clicks"] = frames["clicks"].iloc[:0]
    inputs = write_inputs(tmp_path, frames)
    rng = np.random.default_rng(0)
    keys = [f"u{i:02d}" for i in range(12)]
    labels = pd.DataFrame({"user_id": rng.choice(keys, 25), "at": T0 + rng.integers(2 * HOUR, 38 * HOUR, 25)})
    table, _ = compute(spec, inputs, read_table, labels=labels, groups=["user"])
    plan = group_plans(spec)["user"]
    for row in table.to_dict("records"):
        past = {n: read_table(p) for n, p in inputs.items()}
        past["orders"] = past["orders"][past["orders"]["ts"] <= row["at"]]
        state = worker_reference(spec, past)["user"].get(row["user_id"])
        assert state is not None
        want = read_features(plan, state, row["at"])
        for name, value in want.items():
            got = plain(row[name])
            assert got == value, (row["user_id"], row["at"], name)


def test_cli_compute_writes_parquet_csv_and_labels(tmp_path: Path) -> None:
    spec_path = tmp_path / "pipeline.yaml"
    spec_path.write_text(LABEL_PIPELINE)
    orders = pd.DataFrame(
        {"user_id": ["a", "a", "b"], "amount": [1.5, 2.25, 4.0], "product": ["x", "y", "x"],
         "ts": ["2026-01-05T10:01:00Z", "2026-01-05T10:02:00Z", "2026-01-05T10:03:00Z"]}
    )  # fmt: skip
    orders.to_csv(tmp_path / "orders.csv", index=False)
    runner = CliRunner()
    out = tmp_path / "features.parquet"
    result = runner.invoke(
        cli,
        ["compute", str(spec_path), str(tmp_path / "orders.csv"), "--out", str(out),
         "--at", "2026-01-05T10:30:00Z", "--at", "1767607200000"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "computed 4 rows from 3 events" in result.output
    table = pd.read_parquet(out)
    assert table[["key", "at", "spend_count_1h", "spend_sum_1h"]].values.tolist() == [
        ["a", 1767609000000, 2, 3.75],
        ["b", 1767609000000, 1, 4.0],
        ["a", 1767607200000, 2, 3.75],
        ["b", 1767607200000, 1, 4.0],
    ]
    assert table["spend_max_1h"].isna().sum() == 0

    labels = tmp_path / "labels.csv"
    pd.DataFrame({"key": ["a"], "at": ["2026-01-05T10:01:30Z"]}).to_csv(labels, index=False)
    csv_out = tmp_path / "train.csv"
    result = runner.invoke(
        cli, ["compute", str(spec_path), "--input", f"orders={tmp_path / 'orders.csv'}",
              "--labels", str(labels), "--out", str(csv_out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert pd.read_csv(csv_out).to_dict("records") == [
        {"key": "a", "at": "2026-01-05T10:01:30Z", "spend_count_1h": 1, "spend_sum_1h": 1.5,
         "spend_max_1h": 1.5, "spend_last_1h": 1.5, "products_distinct_1h": 1,
         "user.newest_event": 1767607260000}  # its only event before 10:01:30, at 10:01
    ]  # fmt: skip

    bad = runner.invoke(cli, ["compute", str(spec_path), "--input", "nope=x.csv", "--out", str(csv_out)])
    assert bad.exit_code == 1 and "no stream 'nope'" in bad.output
    missing = runner.invoke(cli, ["compute", str(spec_path), "--out", str(csv_out)])
    assert missing.exit_code == 1 and "no input for stream(s) orders" in missing.output


def test_order_by_time_processes_files_as_produce_order_by_sends_them(tmp_path: Path) -> None:
    spec = parse_pipeline(PIPELINE)
    frames = shop_frames(seed=21, n_orders=1500, n_clicks=600, keys=15)
    shuffled = write_inputs(tmp_path, frames)
    ordered_dir = tmp_path / "ordered"
    ordered_dir.mkdir()
    ordered = write_inputs(
        ordered_dir, {n: f.sort_values("ts", kind="stable").reset_index(drop=True) for n, f in frames.items()}
    )
    ats = [T0 + 41 * HOUR, T0 + 30 * HOUR]
    got, report = compute(spec, shuffled, read_table, ats=ats, order_by_time=True, groups=["user"])
    want, _ = compute(spec, ordered, read_table, ats=ats, groups=["user"])
    pd.testing.assert_frame_equal(got, want)
    assert report.late == 0  # in time order nothing is late; in file order the moved orders are
    assert compute(spec, shuffled, read_table, ats=ats, groups=["user"])[1].late > 0
