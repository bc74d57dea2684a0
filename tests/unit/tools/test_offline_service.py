"""`hydrant compute --service` (issue 22, must-show 2): label rows at 1,000 times give exactly what the
service answered online at those times. Online: a real StreamEngine fed the payments one at a time,
the service asked between them (its handlers' code, this worker holding every partition); offline:
the same payments and merchants from files."""

from __future__ import annotations

import asyncio
import math
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner

from app.api.context import ApiContext
from app.api.services import answer_rows
from app.config.spec import load_pipeline
from app.errors import InputFileError
from app.tools.cli import cli
from app.tools.frames import read_table
from app.tools.offline.service import compute_service
from tests.conftest import PAYMENTS
from tests.support.engine import GROUP_ID, PARTITIONS, pipeline_engine
from tests.support.entities import Driver, merchant_row, payments, preload_merchants, stream_record
from tests.unit.api.test_entity_keys import Here

SPEC = load_pipeline(PAYMENTS)
EVENTS = payments(1_000, seed=5)  # one a minute, in time order: 12 cards, 5 merchants


def label_rows(rng: random.Random) -> list[dict[str, Any]]:
    """One row 30 s after each payment: mostly a card and merchant seen so far, some never seen."""
    rows = []
    for event in EVENTS:
        card = rng.choice(["c0", "c5", "c11", "c77", event["card_id"]])
        merchant = rng.choice(["m1", "m4", "m9", event["merchant_id"]])
        amount = rng.choice([rng.uniform(1, 900), 0.0, 12])
        rows.append({"card_id": card, "merchant_id": merchant, "amount": amount, "at": event["ts"] + 30_000})
    return rows


def online_answers(tmp_path: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row asked of the service right after its payment was processed (and before the next)."""
    engine = pipeline_engine(tmp_path / "online", PAYMENTS)
    try:
        preload_merchants(engine)
        driver = Driver(engine)
        ctx = ApiContext(SPEC, GROUP_ID, PARTITIONS, engine.tables, Here())
        plan = ctx.services["fraud"]
        request: Any = SimpleNamespace(headers={})  # not forwarded: this worker holds every partition
        answers = []
        for i, (event, row) in enumerate(zip(EVENTS, rows, strict=True)):
            driver.run([stream_record(i, event)], batch=1)
            asked = {k: row[k] for k in ("card_id", "merchant_id", "amount")}
            (answer,) = asyncio.run(answer_rows(request, ctx, plan, [asked], row["at"]))
            answers.append(answer)
        return answers
    finally:
        engine.close()


def write_inputs(tmp_path: Path) -> dict[str, Path]:
    payments_file = tmp_path / "payments.parquet"  # floats exact
    pd.DataFrame(EVENTS).to_parquet(payments_file, index=False)
    merchants_file = tmp_path / "merchants.csv"
    pd.DataFrame([{"merchant_id": f"m{m}", **merchant_row(f"m{m}")} for m in range(5)]).to_csv(
        merchants_file, index=False
    )
    return {"payments": payments_file, "merchants": merchants_file}


def same(offline: Any, online: Any) -> bool:
    """``==``, every missing value (None, NaN, pd.NA) offline equal to None online."""
    if offline is None or offline is pd.NA or (isinstance(offline, float) and math.isnan(offline)):
        return online is None
    return online is not None and bool(offline == online)


def test_labels_at_a_thousand_times_equal_the_online_answers(tmp_path: Path) -> None:
    rows = label_rows(random.Random(3))
    online = online_answers(tmp_path, rows)
    labels = pd.DataFrame(rows)
    table, report = compute_service(SPEC, "fraud", write_inputs(tmp_path), read_table, labels)
    columns = [c for c, _ in online[0]["features"].items()]
    assert list(table.columns) == ["card_id", "merchant_id", "amount", "at", *columns[1:]]
    assert len(table) == 1_000 and report.rows == 1_000
    checked = unknown = 0
    for i, answer in enumerate(online):
        assert "error" not in answer, answer
        for column, value in answer["features"].items():
            got = table[column].iloc[i]
            assert same(got, value), (i, column, got, value)
            checked += 1
        unknown += bool(answer["missing"])
        assert answer["outside_retention"] == []  # as of its own time, no key is
    assert checked == 1_000 * len(columns) and 100 < unknown < 900  # both kinds of rows occur


def test_the_cli_writes_the_service_columns(tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path)
    labels = tmp_path / "labels.csv"
    pd.DataFrame(
        [{"card_id": "c1", "merchant_id": "m2", "amount": 10, "at": EVENTS[-1]["ts"] + 1, "label": 1}]
    ).to_csv(labels, index=False)
    out = tmp_path / "training.parquet"
    args = ["compute", str(PAYMENTS), "--input", f"payments={inputs['payments']}"]
    args += ["--input", f"merchants={inputs['merchants']}", "--service", "fraud", "--labels", str(labels)]
    result = CliRunner().invoke(cli, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(out)
    assert list(table.columns[:5]) == ["card_id", "merchant_id", "amount", "at", "label"]
    assert table["m_mcc"].iloc[0] == "5002" and table["amount_vs_merchant"].iloc[0] == pytest.approx(
        10 / table["sales_avg_24h"].iloc[0]
    )
    without_lookup = [*args[:4], "--service", "fraud", "--labels", str(labels), "--out", str(out)]
    missing = CliRunner().invoke(cli, without_lookup)
    assert missing.exit_code == 1 and "no input for lookup 'merchants'" in missing.output
    no_labels = CliRunner().invoke(cli, [*args[:6], "--service", "fraud", "--out", str(out)])
    assert no_labels.exit_code == 1 and "--service needs --labels" in no_labels.output


def test_a_label_file_without_a_service_field_is_named() -> None:
    labels = pd.DataFrame([{"card_id": "c1", "at": 1}])
    with pytest.raises(InputFileError, match="labels: no column 'merchant_id'"):
        compute_service(SPEC, "fraud", {}, read_table, labels)
