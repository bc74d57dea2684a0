"""`hydrant produce`: every row of a CSV / Parquet / JSONL file arrives once, keyed by the column."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.support.broker import BrokerUnderTest
from tests.support.kafka import consume, create_topics

ROWS = 10_000


def run_hydrant(broker: BrokerUnderTest, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HYDRANT_BROKER": broker.url}
    return subprocess.run(
        [sys.executable, "-m", "app.tools.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def orders_frame() -> pd.DataFrame:
    rng = np.random.default_rng(42)
    return pd.DataFrame(
        {
            "user_id": [f"u{i % 997:04d}" for i in range(ROWS)],
            "order_id": [f"o-{i}" for i in range(ROWS)],
            "amount": rng.integers(100, 100_000, ROWS) / 100,
            "status": rng.choice(["paid", "failed"], ROWS),
            "ts": 1_700_000_000_000 + np.arange(ROWS) * 1000,
        }
    )


def write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_produce_delivers_every_row_once_with_its_key(
    broker: BrokerUnderTest, orders_frame: pd.DataFrame, tmp_path: Path, uid: str, suffix: str
) -> None:
    topic = f"produce-{uid}"
    asyncio.run(create_topics(broker.bootstrap, [topic]))
    path = write(orders_frame, tmp_path / f"orders{suffix}")

    result = run_hydrant(broker, "produce", topic, str(path), "--key", "user_id")

    assert result.returncode == 0, result.stderr
    assert f"sent {ROWS:,} records to {topic}" in result.stdout
    records = asyncio.run(consume(broker.bootstrap, topic, ROWS, timeout=60))
    assert len(records) == ROWS
    got = {r.json()["order_id"]: r for r in records}
    assert len(got) == ROWS  # no duplicates
    expected = orders_frame.set_index("order_id")
    for order_id, record in got.items():
        row = expected.loc[order_id]
        value = record.json()
        assert record.key == row["user_id"].encode()
        assert value["user_id"] == row["user_id"]
        assert value["amount"] == pytest.approx(row["amount"])
        assert value["ts"] == row["ts"]
        assert value["status"] == row["status"]


def test_produce_missing_key_column_fails_with_one_line(
    broker: BrokerUnderTest, orders_frame: pd.DataFrame, tmp_path: Path, uid: str
) -> None:
    path = write(orders_frame.head(10), tmp_path / "orders.csv")
    result = run_hydrant(broker, "produce", f"produce-{uid}", str(path), "--key", "customer")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "key column 'customer' not found" in lines[0]
    assert "user_id" in lines[0]  # lists the columns there are


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("missing.csv", None, "no such file"),
        ("junk.parquet", b"this is not parquet at all", "cannot read as parquet"),
        ("broken.jsonl", b'{"a": 1}\n{not json\n', "cannot read as jsonl"),
        ("orders.xlsx", b"PK\x03\x04", "cannot tell the format"),
    ],
)
def test_produce_unreadable_file_fails_with_one_line(
    broker: BrokerUnderTest, tmp_path: Path, uid: str, name: str, content: bytes | None, expected: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    result = run_hydrant(broker, "produce", f"produce-{uid}", str(path))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and expected in lines[0]
