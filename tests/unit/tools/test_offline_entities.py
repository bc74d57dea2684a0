"""`hydrant compute` for groups keyed by other fields than the stream key (the payments example): the
offline table equals the state a real StreamEngine run leaves (events driven through every stage,
hop topics included), and label rows look each group up by its own key fields."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from app.config.spec import parse_pipeline
from app.errors import InputFileError
from app.records.keys import key_string, split_key
from app.records.partitioning import partition_for
from app.tools.cli import cli
from app.tools.frames import read_table
from app.tools.offline import compute
from app.tools.offline.keys import EntityKeys, combine, field_parts
from tables.read import outside_retention, read_features
from tables.registry import entity_keys, stored_state
from tests.conftest import PAYMENTS
from tests.support.engine import PARTITIONS, T0, pipeline_engine
from tests.support.entities import (
    Driver,
    Reference,
    assert_features,
    preload_merchants,
    stream_record,
)
from tests.unit.tools.test_offline import plain

MIN = 60_000
HOUR = 3_600_000
GROUPS = ("card", "merchant", "device", "card_merchant")
SPEC = parse_pipeline(PAYMENTS.read_text())


def payments(n: int, seed: int, jitter: int = 20, late: bool = False) -> list[dict[str, Any]]:
    """``n`` payments of 15 cards at 9 merchants, one a minute +- ``jitter`` minutes; ~5 % without a
    device (null, a few empty). With ``late``: a few amounts null, some payments 3 h behind (late for
    the device's 1 h retention only) and some 30 h behind (late for card and merchant, not always for
    the (card, merchant) pair, whose own newest bucket may be older)."""
    rng = random.Random(seed)
    events = []
    for i in range(n):
        roll = rng.random()
        device = None if roll < 0.04 else "" if roll < 0.05 else f"d{rng.randrange(7)}"
        ts = T0 + i * MIN + rng.randrange(-jitter * MIN, jitter * MIN + 1)
        if late and i > 100 and rng.random() < 0.05:
            ts -= 3 * HOUR if rng.random() < 0.5 else 30 * HOUR
        events.append(
            {
                "card_id": f"c{rng.randrange(15)}",
                "merchant_id": f"m{rng.randrange(9)}",
                "device_id": device,
                "amount": None if late and rng.random() < 0.03 else rng.uniform(1, 500),  # full precision
                "status": "declined" if rng.random() < 0.15 else "ok",
                "ts": ts,
            }
        )
    return events


class Online:
    """A StreamEngine of a pipeline text fed events in ``batch``-record batches, each batch followed
    through all its hops before the next (batch 1: every stage processes in file order)."""

    def __init__(self, root: Path, text: str, events: list[dict[str, Any]], batch: int) -> None:
        path = root / "pipeline.yaml"
        path.write_text(text)
        # A stage is held back only by the upstream partitions read in its batch: one record at a time,
        # the event's own stream partition, the bound `hydrant compute` uses (docs/offline.md).
        self.engine = pipeline_engine(root / "online", path, idle_ms=0)
        preload_merchants(self.engine)
        self.driver = Driver(self.engine)
        self.driver.run([stream_record(i, e) for i, e in enumerate(events)], batch=batch)

    def features(self, group: str, at: int) -> dict[str, tuple[dict[str, Any], frozenset[str]]]:
        """Per key with state: (its features at ``at``, the names the worker answers 422 for)."""
        plan = self.engine.tables.plans[group]
        table = self.engine.tables.features[group]
        out = {}
        for partition in range(PARTITIONS):
            for raw in entity_keys(table, partition):
                assert partition_for(raw, PARTITIONS) == partition
                state = stored_state(plan, table.db(partition), raw)
                features = read_features(plan, state, at)
                gone = frozenset(n for n in features if outside_retention(plan, state, at, {n}))
                out[raw.decode()] = (features, gone)
        return out

    def dead_letters(self) -> dict[str, int]:
        """Dead letters per reason; `where` for failing `where` filters (reason `expression`)."""
        counts: dict[str, int] = {}
        for sent in self.driver.io.producer.sent:
            headers = dict(sent.headers)
            reason = headers["hydrant-reason"].decode()
            if headers["hydrant-error"].startswith(b"where filter"):
                reason = "where"
            counts[reason] = counts.get(reason, 0) + 1
        return counts


def write_events(tmp_path: Path, events: list[dict[str, Any]]) -> dict[str, Path]:
    path = tmp_path / "payments.parquet"  # floats exact (pandas' JSON writer rounds them)
    pd.DataFrame(events).to_parquet(path, index=False)
    return {"payments": path}


#: a `where` that fails (null amount) at the merchant stage: dead-lettered there, after the card stage
VARIANT = PAYMENTS.read_text().replace(
    "field: card_id, ops: [distinct], windows: [24h]}",
    "field: card_id, ops: [distinct], windows: [24h], where: 'amount > 100'}",
)


@pytest.mark.parametrize("text", [PAYMENTS.read_text(), VARIANT], ids=["payments", "where-fails-at-stage-2"])
def test_compute_equals_the_engine_stage_by_stage(tmp_path: Path, text: str) -> None:
    spec = parse_pipeline(text)
    events = payments(360, seed=4, late=True)
    inputs = write_events(tmp_path, events)
    online = Online(tmp_path, text, events, batch=1)
    try:
        newest = max(e["ts"] for e in events)
        ats = [newest + HOUR, newest, newest - 2 * HOUR - 7 * MIN, T0 + 3 * HOUR + 123]
        checked = 0
        for group in GROUPS:
            table, report = compute(spec, inputs, read_table, ats=ats, groups=[group])
            fields = spec.features[group].key_fields
            assert list(table.columns[: len(fields) + 2]) == ["key", *fields, "at"]
            for at in ats:
                answers = online.features(group, at)
                rows = table[table["at"] == at]
                assert sorted(rows["key"]) == sorted(answers)
                for row in rows.to_dict("records"):
                    assert [row[f] for f in fields] == split_key(row["key"], len(fields))
                    features, gone = answers[row["key"]]
                    for name, value in features.items():
                        if name in gone:
                            continue  # the worker answers 422 there; offline still has the buckets
                        mine = plain(row[name])
                        assert mine == value and type(mine) is type(value), (group, row["key"], at, name)
                        checked += 1
        assert checked > 1_500
        dead = online.dead_letters()  # also `expression`: the output's computed column on a null amount
        assert report.dropped["expression"] == dead.get("where", 0)
        if text == VARIANT:
            assert dead["where"] > 5
            assert report.late >= dead["late"] > 5  # late at one stage, then a `where` failed at another
        else:
            assert report.late == dead["late"] > 5
    finally:
        online.engine.close()


def test_batched_run_counts_equal(tmp_path: Path) -> None:
    """In batches the hop topics interleave the stream's partitions, so floats may differ in the last
    bits (docs/offline.md); counts and distinct counts are exact."""
    events = payments(600, seed=8, jitter=5)  # a batch's hops span < 1 h: nothing late for any group
    inputs = write_events(tmp_path, events)
    online = Online(tmp_path, PAYMENTS.read_text(), events, batch=25)
    try:
        assert online.dead_letters() == {}
        at = max(e["ts"] for e in events)
        for group in GROUPS:
            table, report = compute(SPEC, inputs, read_table, ats=[at], groups=[group])
            assert report.late == 0
            answers = online.features(group, at)
            assert sorted(table["key"]) == sorted(answers)
            integral = [
                n for n in SPEC.features[group].feature_names() if "_count_" in n or "_distinct_" in n
            ]
            assert integral
            for row in table.to_dict("records"):
                features, _ = answers[row["key"]]
                assert {n: row[n] for n in integral} == {n: features[n] for n in integral}
    finally:
        online.engine.close()


def test_labels_look_each_group_up_by_its_key_fields(tmp_path: Path) -> None:
    events = sorted(payments(500, seed=12), key=lambda e: e["ts"])  # `last` = the last in the file
    inputs = write_events(tmp_path, events)
    rng = np.random.default_rng(3)
    n = 40
    labels = pd.DataFrame(
        {
            "card_id": [f"c{i}" for i in rng.integers(0, 16, n)],  # c15: never seen
            "merchant_id": pd.array([f"m{i}" for i in rng.integers(0, 9, n)], dtype=object),
            "event_timestamp": T0 + rng.integers(0, 9 * HOUR, n),
            "fraud": rng.integers(0, 2, n),
        }
    )
    labels.loc[[3, 17], "merchant_id"] = None  # no merchant: null merchant and pair features
    groups = ["card", "merchant", "card_merchant"]
    table, _ = compute(SPEC, inputs, read_table, labels=labels, groups=groups)

    names = {g: SPEC.features[g].feature_names() for g in groups}
    freshness = [f"{g}.newest_event" for g in groups]
    stale = ["merchant.stale"]  # the one group with a max_age
    assert list(table.columns) == [
        *labels.columns, *(f for g in groups for f in names[g]), *freshness[:2], *stale, freshness[2]
    ]  # fmt: skip
    newest = table[freshness].max(axis=1)  # each at or before its row's time (point in time)
    assert (newest.dropna() <= table.loc[newest.notna(), "event_timestamp"]).all() and newest.notna().any()
    for i, row in enumerate(table.to_dict("records")):
        reference = Reference()
        reference.seen = [e for e in events if e["ts"] <= row["event_timestamp"]]
        for group in groups:
            got = {f: plain(row[f]) for f in names[group]}
            values = [row[f] for f in SPEC.features[group].key_fields]
            if any(pd.isna(v) for v in values):
                assert i in (3, 17) and got == dict.fromkeys(names[group])
                continue
            assert_features(got, reference.features(group, key_string(values), row["event_timestamp"]))
    assert table["sales_count_24h"].isna().sum() == 2 and table["spend_count_1h"].notna().all()
    assert (table.loc[table["card_id"] == "c15", "spend_count_24h"] == 0).all()

    # One key column with the key's string form still works for groups of one key.
    pairs = labels.assign(
        key=[
            key_string([c, m]) if isinstance(m, str) else None
            for c, m in zip(labels.card_id, labels.merchant_id, strict=True)
        ]
    )
    by_key, _ = compute(
        SPEC, inputs, read_table, labels=pairs[["key", "event_timestamp"]], groups=["card_merchant"]
    )
    pd.testing.assert_series_equal(by_key["pair_sum_24h"], table["pair_sum_24h"])
    with pytest.raises(InputFileError, match=r"different keys .*card: card_id, merchant: merchant_id"):
        compute(SPEC, inputs, read_table, labels=labels, groups=groups, label_key="card_id")
    with pytest.raises(InputFileError, match="no column 'merchant_id' for group 'merchant'"):
        compute(SPEC, inputs, read_table, labels=labels.drop(columns="merchant_id"), groups=groups)


def test_query_mode_needs_one_key_and_writes_the_key_fields(tmp_path: Path) -> None:
    events = payments(200, seed=5)
    inputs = write_events(tmp_path, events)
    with pytest.raises(InputFileError, match=r"card: card_id, merchant: merchant_id.*--group"):
        compute(SPEC, inputs, read_table, ats=[T0], groups=["card", "merchant"])
    with pytest.raises(InputFileError, match=r"card_merchant: card_id \+ merchant_id"):
        compute(SPEC, inputs, read_table, ats=[T0])

    spec_path = tmp_path / "pipeline.yaml"
    spec_path.write_text(PAYMENTS.read_text())
    out = tmp_path / "pairs.csv"
    at = T0 + 4 * HOUR
    first, second = [(e["card_id"], e["merchant_id"]) for e in events[:2]]
    assert first != second
    keys = [key_string(first), key_string(second)]
    result = CliRunner().invoke(
        cli,
        ["compute", str(spec_path), str(inputs["payments"]), "--group", "card_merchant",
         "--at", str(at), "--keys", f"{keys[0]},{keys[1]},nobody|m1", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert list(table.columns) == ["key", "card_id", "merchant_id", "at", "pair_count_24h", "pair_sum_24h",
                                   "pair_last_24h", "card_merchant.newest_event"]  # fmt: skip
    assert table[["key", "card_id", "merchant_id", "at"]].values.tolist() == [
        [keys[0], *first, at],
        [keys[1], *second, at],
    ]
    reference = Reference()
    reference.seen = events  # online, every event of the buckets counts once processed
    assert table["pair_count_24h"].tolist() == [
        reference.features("card_merchant", k, at)["pair_count_24h"] for k in keys
    ]


INT_KEYS = """
name: ints
streams:
  sales:
    topic: sales
    key: shop
    time: ts
    fields: {shop: str, store: int, till: str, amount: float, ts: int}
features:
  till:
    key: [store, till]
    period: 10m
    aggregations:
      - {name: sold, stream: sales, field: amount, ops: [count, sum], windows: [1h]}
"""


def test_integer_and_escaped_key_fields(tmp_path: Path) -> None:
    spec = parse_pipeline(INT_KEYS)
    sales = pd.DataFrame(
        {
            "shop": ["s", "s", "s", "s", "s"],
            "store": pd.array([7, 7, None, 12, 7], dtype="Int64"),
            "till": ["a|b", "a|b", "x", "a\\", ""],
            "amount": [1.0, 2.0, 4.0, 8.0, 16.0],
            "ts": T0 + np.arange(5) * MIN,
        }
    )
    path = tmp_path / "sales.parquet"
    sales.to_parquet(path)
    table, _ = compute(spec, {"sales": path}, read_table, ats=[T0 + 30 * MIN])
    assert table[["key", "store", "till", "sold_count_1h"]].values.tolist() == [
        [key_string([12, "a\\"]), 12, "a\\", 1],
        [key_string([7, "a|b"]), 7, "a|b", 2],
    ]
    assert table["store"].dtype == np.int64
    labels = pd.DataFrame(
        {"store": [7.0, 12.0, np.nan], "till": ["a|b", "a\\", "x"], "at": [T0 + 30 * MIN] * 3}
    )
    train, _ = compute(spec, {"sales": path}, read_table, labels=labels)  # CSV-style float ids match
    assert [plain(v) for v in train["sold_count_1h"]] == [2, 1, None]


def test_key_parts_match_the_workers_string_form() -> None:
    values = ["a|b", "c\\|", "", None, "plain", "a|b"]
    numbers = pd.Series([1, -20, None, 3, 1, 40], dtype="Int64")
    text_parts = field_parts(pd.Series(values, dtype=object))
    pairs = combine([text_parts, field_parts(numbers)])
    for i, (v, n) in enumerate(zip(values, numbers, strict=True)):
        if v in (None, "") or n is pd.NA:
            assert pairs.codes[i] == -1
        else:
            code = pairs.codes[i]
            assert pairs.texts[code] == key_string([v, int(n)])
            assert [pairs.values[0][code], pairs.values[1][code]] == [v, str(n)]
    assert field_parts(pd.Series([5, "5", 5.0, None], dtype=object))[0].tolist() == [0, 0, 0, -1]

    one = combine([text_parts])
    keys = EntityKeys.number(("a",), {"s": one, "t": combine([field_parts(pd.Series(["plain", "new"]))])})
    assert keys.names.tolist() == ["a|b", "c\\|", "plain", "new"] == keys.values[0].tolist()
    assert keys.codes["t"].tolist() == [2, 3] and keys.codes["s"].tolist() == [0, 1, -1, -1, 2, 0]
    found, missing = keys.lookup(combine([field_parts(pd.Series(["new", None, "zz"], dtype=object))]))
    assert found.tolist() == [3, 4, 4] and missing.tolist() == [False, True, False]
    assert keys.names[keys.sorted_codes(np.arange(4))].tolist() == sorted(keys.names.tolist())

    both = EntityKeys.number(("s", "n"), {"x": combine([field_parts(pd.Series(["x|y", "p"])), field_parts(
        pd.Series([5, 7], dtype="Int64"))])})  # fmt: skip
    columns = both.columns(np.array([1, 0, 1]), [False, True])
    assert columns["s"].tolist() == ["p", "x|y", "p"] and columns["n"].tolist() == [7, 5, 7]
    assert both.names.tolist() == [key_string(["x|y", 5]), "p|7"]
