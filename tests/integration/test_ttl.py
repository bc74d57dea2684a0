"""Issue 33, must-show 4: a group with ``ttl: 2h`` over 12 h of events in which a third of the keys
stop after 3 h, on a real worker and broker. After the sweep exactly those keys answer ``found:
false``, every record of theirs is tombstoned in the changelog (read back from the topic), a worker
restored from the changelog alone has none of them, and ``hydrant compute`` agrees. The state bytes
before and after are printed (the changelog's live records)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import orjson
import pandas as pd
from aiokafka.admin import AIOKafkaAdminClient

from app.config.spec import load_pipeline
from app.tools.frames import read_table
from app.tools.offline import compute
from tests.conftest import shop_pipeline_text
from tests.support.broker import BrokerUnderTest
from tests.support.kafka import consume, create_pipeline_topics_for, produce
from tests.support.worker import WorkerProcess, wait_for

MINUTE = 60_000
HOUR = 60 * MINUTE
USERS = [f"u{i:03d}" for i in range(120)]
QUIET = [u for i, u in enumerate(USERS) if i % 3 == 0]  # no order after their first 3 hours


def orders(t0: int) -> list[dict[str, object]]:
    """One order per user every 15 minutes over 12 h (the quiet users' only over the first 3 h)."""
    out = []
    for step in range(48):
        for user in USERS:
            if user in QUIET and step >= 12:
                continue
            out.append(
                {"user_id": user, "order_id": f"o{step}-{user}", "product": "p", "amount": 2.0,
                 "status": "paid", "ts": t0 + step * 15 * MINUTE}
            )  # fmt: skip
    return out


async def changelog_topic(bootstrap: str, uid: str) -> str:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = await admin.list_topics()
    finally:
        await admin.close()
    (topic,) = [t for t in topics if uid in t and t.endswith("-features-user-changelog")]
    return topic


def live_records(records: list) -> dict[bytes, bytes]:
    """The changelog as compaction leaves it: each key's last value, tombstoned keys gone."""
    live: dict[bytes, bytes] = {}
    for r in records:
        if r.value is None:
            live.pop(r.key, None)
        else:
            live[r.key] = r.value
    return live


def test_quiet_keys_are_swept_tombstoned_gone_after_a_restore_and_null_offline(
    broker: BrokerUnderTest, uid: str, tmp_path: Path
) -> None:
    text = shop_pipeline_text(uid).replace("    period: 10m", "    ttl: 2h\n    period: 10m", 1)
    pipeline = tmp_path / "shop.yaml"
    pipeline.write_text(text)
    create_pipeline_topics_for(broker.url, pipeline, uid)
    events = orders(int(time.time() * 1000) - 13 * HOUR)
    first = WorkerProcess(broker, pipeline, tmp_path / "data-1", f"hydrant-test-{uid}", tmp_path / "w1.log")
    first.start()
    try:
        first.wait_ready(180)
        asyncio.run(
            produce(
                broker.bootstrap, f"orders-{uid}", [(e["user_id"].encode(), orjson.dumps(e)) for e in events]
            )
        )  # type: ignore[union-attr]
        last = int(events[-1]["ts"])  # type: ignore[arg-type]

        def applied() -> bool:
            answer = httpx.get(f"{first.url}/features/user/{USERS[-1]}", params={"at": last}, timeout=10)
            return answer.status_code == 200 and answer.json()["features"]["spend_count_24h"] == 48

        wait_for(applied, "every order applied", 120)
        wait_for(
            lambda: first.metric("hydrant_keys_expired_total", group="user") == len(QUIET), "the sweep", 60
        )
        answers = httpx.post(
            f"{first.url}/features/user", json={"keys": USERS, "at": last}, timeout=30
        ).json()
        found = {r["key"]: r["found"] for r in answers["results"]}
        assert found == {u: u not in QUIET for u in USERS}
        counts = {r["key"]: r["features"]["spend_count_24h"] for r in answers["results"] if r["found"]}
        assert set(counts.values()) == {48}
        assert httpx.get(f"{first.url}/features/user/{QUIET[0]}", timeout=10).status_code == 404
        scan = httpx.get(
            f"{first.url}/tables/user", params={"at": last, "columns": "spend_count_24h"}, timeout=30
        )
        assert [row["key"] for row in scan.json()["rows"]] == [u for u in USERS if u not in QUIET]
    finally:
        first.stop()

    topic = asyncio.run(changelog_topic(broker.bootstrap, uid))
    records = asyncio.run(consume(broker.bootstrap, topic, 1, timeout=60, settle=2.0))
    quiet = {u.encode() for u in QUIET}
    owner = lambda key: key.split(b"\x00", 1)[0]  # noqa: E731
    written = {r.key for r in records if r.value is not None and owner(r.key) in quiet}
    tombstoned = {r.key for r in records if r.value is None}
    assert written and written <= tombstoned  # every record a quiet key ever had
    live = live_records(records)
    assert not [k for k in live if owner(k) in quiet]
    # Before the sweep: the same without the quiet keys' tombstones (all the sweep's: three hours of
    # events never expire a bucket of a 24 h retention).
    swept = live_records([r for r in records if r.value is not None or owner(r.key) not in quiet])
    before = sum(len(k) + len(v) for k, v in swept.items())
    after = sum(len(k) + len(v) for k, v in live.items())
    print(
        f"user state in the changelog: {before:,} bytes before the sweep, {after:,} after "
        f"({len(QUIET)} of {len(USERS)} keys expired)"
    )
    assert after < before

    second = WorkerProcess(broker, pipeline, tmp_path / "data-2", f"hydrant-test-{uid}", tmp_path / "w2.log")
    second.start()
    try:
        second.wait_ready(180)
        restored = httpx.get(
            f"{second.url}/tables/user", params={"at": last, "columns": "spend_count_24h"}, timeout=30
        )
        assert [row["key"] for row in restored.json()["rows"]] == [u for u in USERS if u not in QUIET]
        wait_for(lambda: second.metric("hydrant_state_keys", group="user") > 0, "the state census", 60)
        assert second.metric("hydrant_state_keys", group="user") == len(USERS) - len(QUIET)
    finally:
        second.stop()

    path = tmp_path / "orders.csv"
    pd.DataFrame(events).to_csv(path, index=False)
    clicks = tmp_path / "clicks.csv"
    pd.DataFrame(columns=["user_id", "page", "ts"]).to_csv(clicks, index=False)
    table, _ = compute(
        load_pipeline(pipeline), {"orders": path, "clicks": clicks}, read_table, ats=[last], groups=["user"]
    )
    offline = {row["key"]: row["spend_count_24h"] for row in table.to_dict("records")}
    assert {k for k, v in offline.items() if pd.isna(v)} == set(QUIET)
    assert {int(v) for k, v in offline.items() if k not in QUIET} == {48}
