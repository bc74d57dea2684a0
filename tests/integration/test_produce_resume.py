"""`hydrant produce --resume`: a backfill killed mid-run and restarted delivers every row exactly once;
`--order-by` sends rows in event-time order; `--rate` paces the run."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from tests.support.broker import BrokerUnderTest
from tests.support.kafka import consume, create_topics

REPO = Path(__file__).resolve().parents[2]
ROWS = 3000


def env(broker: BrokerUnderTest) -> dict[str, str]:
    return {**os.environ, "HYDRANT_BROKER": broker.url}


def rows_file(tmp_path: Path, rows: int = ROWS) -> Path:
    rng = np.random.default_rng(4)
    frame = pd.DataFrame(
        {
            "user_id": [f"u{i:03d}" for i in rng.integers(0, 300, rows)],
            "row_id": np.arange(rows),
            "amount": rng.uniform(1, 300, rows),
            "ts": 1_767_225_600_000 + rng.permutation(rows) * 1000,  # shuffled event times
        }
    )
    path = tmp_path / "backfill.parquet"
    frame.to_parquet(path, index=False)
    return path


def produce(broker: BrokerUnderTest, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "app.tools.cli", "produce", *args],
        env=env(broker),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    return result


def test_killed_backfill_resumed_delivers_every_row_exactly_once(
    broker: BrokerUnderTest, tmp_path: Path, uid: str
) -> None:
    topic = f"backfill-{uid}"
    asyncio.run(create_topics(broker.bootstrap, [topic]))
    path = rows_file(tmp_path)
    checkpoint = tmp_path / "backfill.checkpoint.json"
    args = [
        topic,
        str(path),
        "--key",
        "user_id",
        "--order-by",
        "ts",
        "--resume",
        "--checkpoint",
        str(checkpoint),
    ]

    first = subprocess.Popen(
        [sys.executable, "-m", "app.tools.cli", "produce", *args, "--rate", "600"],
        env=env(broker),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        acked = 0
        while time.monotonic() < deadline and first.poll() is None:
            if checkpoint.exists():
                acked = orjson.loads(checkpoint.read_bytes())["acked"]
                if acked >= 900:
                    break
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()[1]
        os.kill(first.pid, signal.SIGKILL)  # mid-run: rows in flight, acknowledgements not recorded
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    state = orjson.loads(checkpoint.read_bytes())
    assert 900 <= state["acked"] < ROWS and not state["done"]

    second = produce(broker, *args)
    assert "already delivered by an earlier run" in second.stdout
    records = asyncio.run(consume(broker.bootstrap, topic, ROWS, timeout=60))
    counts = Counter(r.json()["row_id"] for r in records)
    assert len(records) == ROWS and set(counts) == set(range(ROWS)) and max(counts.values()) == 1
    assert orjson.loads(checkpoint.read_bytes())["done"] is True
    # Every record carries the run and its row number (in --order-by order): the resume bookkeeping.
    runs = {r.headers["hydrant-produce-run"] for r in records}
    assert runs == {state["run"].encode()}
    by_row = {int(r.headers["hydrant-produce-row"]): r.json()["ts"] for r in records}
    assert [by_row[i] for i in range(ROWS)] == sorted(by_row.values())

    third = produce(broker, *args)  # nothing left to send
    assert third.stdout.startswith(f"sent 0 records to {topic}")
    assert len(asyncio.run(consume(broker.bootstrap, topic, ROWS, timeout=10))) == ROWS


def test_resume_skips_rows_delivered_after_the_last_checkpoint(
    broker: BrokerUnderTest, tmp_path: Path, uid: str
) -> None:
    """The window a kill leaves open: rows the broker stored but the checkpoint does not record (the
    acknowledgement or the file write was lost). The resumed run finds them in the topic."""
    topic = f"backfill-{uid}"
    asyncio.run(create_topics(broker.bootstrap, [topic]))
    path = rows_file(tmp_path, rows=1000)
    checkpoint = tmp_path / "ck.json"
    args = [topic, str(path), "--key", "user_id", "--resume", "--checkpoint", str(checkpoint)]
    produce(broker, *args)
    state = orjson.loads(checkpoint.read_bytes())
    assert state["acked"] == 1000 and state["done"]
    # Roll the checkpoint back as if only 300 acknowledgements had been written.
    records = asyncio.run(consume(broker.bootstrap, topic, 1000, timeout=60))
    below = [r for r in records if int(r.headers["hydrant-produce-row"]) < 300]
    offsets: dict[str, int] = {}
    for r in below:
        offsets[str(r.partition)] = max(offsets.get(str(r.partition), -1), r.offset)
    checkpoint.write_bytes(orjson.dumps({**state, "acked": 300, "offsets": offsets, "done": False}))

    again = produce(broker, *args)
    assert again.stdout.startswith(f"sent 0 records to {topic}"), again.stdout
    assert "1,000 already delivered" in again.stdout
    assert len(asyncio.run(consume(broker.bootstrap, topic, 1000, timeout=10))) == 1000


def test_order_by_and_rate(broker: BrokerUnderTest, tmp_path: Path, uid: str) -> None:
    topic = f"ordered-{uid}"
    asyncio.run(create_topics(broker.bootstrap, [topic], partitions=1))
    frame = pd.DataFrame(
        {
            "id": range(400),
            "when": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(np.arange(400)[::-1], "s"),
        }
    )
    path = tmp_path / "shuffled.parquet"
    frame.sample(frac=1, random_state=1).to_parquet(path, index=False)
    summary = produce(broker, topic, str(path), "--order-by", "when", "--rate", "400").stdout
    seconds = float(re.search(r" in ([0-9.]+)s ", summary).group(1))  # type: ignore[union-attr]
    assert 0.95 <= seconds < 10, summary  # 400 rows at 400/s: the last one leaves after ~1 s
    records = asyncio.run(consume(broker.bootstrap, topic, 400, timeout=60))
    whens = [r.json()["when"] for r in sorted(records, key=lambda r: r.offset)]
    assert len(whens) == 400 and whens == sorted(whens)
    assert [r.json()["id"] for r in sorted(records, key=lambda r: r.offset)] == list(range(399, -1, -1))


def test_resume_sends_only_the_rows_missing_in_the_topic(
    broker: BrokerUnderTest, tmp_path: Path, uid: str
) -> None:
    """A kill can leave gaps: row 500 lost in flight while later rows arrived. The resumed run sends
    row 500 only, and remembers the rows above the gap it found: a later scan that starts past them
    (another interruption after more acknowledgements) still does not send them again."""
    from aiokafka import AIOKafkaProducer

    from app.config.settings import load_settings
    from app.tools.produce import Checkpoint

    topic = f"backfill-{uid}"
    asyncio.run(create_topics(broker.bootstrap, [topic]))
    path = rows_file(tmp_path, rows=1000)
    frame = pd.read_parquet(path)
    checkpoint = tmp_path / "ck.json"
    run = "feedc0de" * 4
    checkpoint.write_bytes(
        orjson.dumps(
            {"topic": topic, "source": str(path), "rows": 1000, "key": "user_id", "order_by": None,
             "run": run, "acked": 0, "offsets": {}, "start": {str(p): 0 for p in range(4)}, "done": False}
        )
    )  # fmt: skip

    async def first_run_without_row_500() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            for row in frame.to_dict("records"):
                if row["row_id"] != 500:
                    headers = [
                        ("hydrant-produce-run", run.encode()),
                        ("hydrant-produce-row", b"%d" % row["row_id"]),
                    ]
                    key = row["user_id"].encode()
                    await producer.send_and_wait(topic, orjson.dumps(row), key=key, headers=headers)
        finally:
            await producer.stop()

    asyncio.run(first_run_without_row_500())
    settings = load_settings(broker=broker.url)
    state = Checkpoint.open(checkpoint, topic, path, 1000, "user_id", None)
    assert asyncio.run(state.pending(settings)) == [500]
    saved = orjson.loads(checkpoint.read_bytes())
    assert saved["acked"] == 500 and saved["found"] == list(range(501, 1000))
    # As if later acknowledgements had moved the scan's start past every record of the topic:
    checkpoint.write_bytes(orjson.dumps({**saved, "offsets": {str(p): 10**9 for p in range(4)}}))
    state = Checkpoint.open(checkpoint, topic, path, 1000, "user_id", None)
    assert asyncio.run(state.pending(settings)) == [500]

    args = [topic, str(path), "--key", "user_id", "--resume", "--checkpoint", str(checkpoint)]
    result = produce(broker, *args)
    assert result.stdout.startswith(f"sent 1 records to {topic}"), result.stdout
    assert "999 already delivered" in result.stdout
    saved = orjson.loads(checkpoint.read_bytes())
    assert saved["acked"] == 1000 and saved["found"] == [] and saved["done"]
    records = asyncio.run(consume(broker.bootstrap, topic, 1000, timeout=60))
    assert sorted(r.json()["row_id"] for r in records) == list(range(1000))
