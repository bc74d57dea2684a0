"""Feature services on the real broker, two workers, the payments example's `fraud` service (issue 22):
500 requests of 1 to 200 rows, alternating between the workers, each row checked against the pandas
reference (request field, card.*, merchant.sales_avg_24h, the card_merchant pair features, the
merchants row, the computed column; `missing` and `outside_retention`) or against its expected
error, in request order (must-show 1); schemathesis over the new endpoints: no 5xx, every answer as
documented (must-show 4)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest

from app.config.spec import load_pipeline
from app.records.keys import key_string
from app.tools.frames import read_table
from app.tools.offline import compute
from tables.plans import group_plans
from tests.conftest import payments_pipeline_text
from tests.integration.test_entities import merchant_row, truths
from tests.support.broker import BrokerUnderTest
from tests.support.checks import mismatches
from tests.support.ground_truth import GroundTruth
from tests.support.kafka import consume, create_pipeline_topics_for, produce
from tests.support.openapi_fuzz import run_schemathesis
from tests.support.worker import WorkerProcess, wait_for

CARDS, MERCHANTS, PAYMENTS = 400, 100, 5_000
NUMERIC_CARDS = 10  # cards named "9000".."9009": a request may send them as the integer 9000
# Event time between two payments: 5,000 span 50 min, less than any group's retention (device: 1 h),
# so that no payment is late anywhere even though the backlog reaches the later stages in any order.
STEP_MS = 600
MINUTE, HOUR = 60_000, 3_600_000
REQUESTS = 500
#: merchants with a lookup row: m000..m089 (m090..m099 are paid but have none) and m100..m109 (never paid)
LOOKUP_MERCHANTS = [f"m{i:03d}" for i in range(90)] + [f"m{i:03d}" for i in range(100, 110)]
UNKNOWN_CARDS: list[Any] = ["c-none", "zz", "a|b", "back\\slash", "ü-card", 7, 8.0, -12, "9999"]
UNKNOWN_MERCHANTS: list[Any] = ["m-none", "m100", "m105", "x|y", 42, "m\\"]
GROUPS = ("card", "merchant", "card_merchant")  # the groups `fraud` reads, in its spec's order


def card_names() -> list[str]:
    return [f"c{i:03d}" for i in range(CARDS - NUMERIC_CARDS)] + [str(9000 + i) for i in range(NUMERIC_CARDS)]


def payments(t0: int, seed: int = 22) -> list[dict[str, Any]]:
    """Random cards; each card pays mostly at its three favourite merchants, so (card, merchant)
    pairs repeat; 5 % without a device, 8 % declined; one payment every STEP_MS."""
    rng = random.Random(seed)
    cards = card_names()
    merchants = [f"m{i:03d}" for i in range(MERCHANTS)]
    favourites = {card: rng.sample(merchants, 3) for card in cards}
    out = []
    for i in range(PAYMENTS):
        card = rng.choice(cards)
        merchant = rng.choice(favourites[card]) if rng.random() < 0.7 else rng.choice(merchants)
        device = None if rng.random() < 0.05 else f"d-{card}"
        status = "declined" if rng.random() < 0.08 else "ok"
        amount = round(rng.uniform(1, 900), 2)
        out.append(
            {"card_id": card, "merchant_id": merchant, "device_id": device, "amount": amount,
             "status": status, "ts": t0 + i * STEP_MS}
        )  # fmt: skip
    return out


@dataclass
class Cluster:
    one: WorkerProcess
    two: WorkerProcess
    pipeline: Path
    events: list[dict[str, Any]]

    @property
    def last(self) -> int:
        return int(self.events[-1]["ts"])


@pytest.fixture(scope="module")
def cluster(broker: BrokerUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two workers of the payments example, every merchant row and every payment applied."""
    uid = uuid.uuid4().hex[:10]
    tmp = tmp_path_factory.mktemp("services")
    pipeline = tmp / "payments.yaml"
    pipeline.write_text(payments_pipeline_text(uid))
    create_pipeline_topics_for(broker.url, pipeline, uid)
    workers = [
        WorkerProcess(
            broker, pipeline, tmp / f"data-{name}", app_id=f"hydrant-test-{uid}", log_path=tmp / f"{name}.log"
        ).start()
        for name in ("w1", "w2")
    ]
    try:
        for worker in workers:
            worker.wait_ready(timeout=180)
        wait_for(lambda: all(w.ready() for w in workers), "both workers ready after the rebalance", 120)
        rows = [(m.encode(), orjson.dumps(merchant_row(m))) for m in LOOKUP_MERCHANTS]
        asyncio.run(produce(broker.bootstrap, f"merchants-{uid}", rows))

        def merchants_everywhere() -> bool:
            for worker in workers:
                answer = httpx.post(
                    f"{worker.url}/tables/merchants", json={"keys": LOOKUP_MERCHANTS}, timeout=10
                )
                if answer.status_code != 200 or not all(r["found"] for r in answer.json()["results"]):
                    return False
            return True

        wait_for(merchants_everywhere, "every merchant row on both workers", 120)
        events = payments(int(time.time() * 1000) - PAYMENTS * STEP_MS)
        records = [(e["card_id"].encode(), orjson.dumps(e)) for e in events]
        asyncio.run(produce(broker.bootstrap, f"payments-{uid}", records))
        # An output is sent once the payment went through every stage: all of them out = all applied.
        outputs = asyncio.run(consume(broker.bootstrap, f"payments-enriched-{uid}", PAYMENTS, timeout=180))
        if {r.json()["ts"] for r in outputs} != {e["ts"] for e in events}:
            dead = asyncio.run(consume(broker.bootstrap, f"payments-{uid}.dlq", 1, timeout=5))
            reasons = sorted({r.headers.get("hydrant-reason", b"").decode() for r in dead})
            raise AssertionError(f"{len(outputs)} outputs of {PAYMENTS}; {len(dead)} dead letters {reasons}")
        wait_for(lambda: all(w.ready() for w in workers), "both workers ready", 60)
        yield Cluster(workers[0], workers[1], pipeline, events)
    finally:
        for worker in workers:
            worker.stop(timeout=15)


class Expected:
    """The reference answer of `fraud` rows: pandas (GroundTruth) per group, cached per (group, key,
    bucket of `at`) since a group's answer only depends on `at`'s bucket."""

    def __init__(self, cluster: Cluster) -> None:
        self.reference: dict[str, tuple[GroundTruth, np.ndarray]] = truths(cluster.pipeline, cluster.events)
        spec = load_pipeline(cluster.pipeline)
        self.names = {group: spec.features[group].feature_names() for group in GROUPS}
        self.cache: dict[tuple[str, str, int], tuple[str | None, dict[str, Any]]] = {}
        self.lookup = {m: merchant_row(m) for m in LOOKUP_MERCHANTS}

    def group(self, group: str, key: str, at: int) -> tuple[str | None, dict[str, Any]]:
        """("missing" | "outside" | None, the features (all null unless answered))."""
        truth, _ = self.reference[group]
        cached = (group, key, at // truth.period_ms)
        if cached not in self.cache:
            nulls = dict.fromkeys(self.names[group])
            if not truth.known(key):
                self.cache[cached] = ("missing", nulls)
            elif not truth.in_retention(key, at):
                self.cache[cached] = ("outside", nulls)
            else:
                self.cache[cached] = (None, truth.features(key, at))
        return self.cache[cached]

    def row(self, card: str | int, merchant: str | int, amount: float, at: int) -> dict[str, Any]:
        """Columns in the documented order: request field, card.*, sales_avg_24h, cm_*, m_*, computed."""
        card, merchant = plain(card), plain(merchant)
        keys = {
            "card": key_string([card]),
            "merchant": key_string([merchant]),
            "card_merchant": key_string([card, merchant]),
        }
        answers = {group: self.group(group, keys[group], at) for group in GROUPS}
        features: dict[str, Any] = {"amount": float(amount)}
        features.update(answers["card"][1])
        features["sales_avg_24h"] = sales = answers["merchant"][1]["sales_avg_24h"]
        features.update({f"cm_{name}": value for name, value in answers["card_merchant"][1].items()})
        looked_up = self.lookup.get(key_string([merchant]), {})
        features.update({"m_mcc": looked_up.get("mcc"), "m_country": looked_up.get("country")})
        features["amount_vs_merchant"] = amount / sales if sales else None
        return {
            "features": features,
            "missing": [g for g in GROUPS if answers[g][0] == "missing"],
            "outside_retention": [g for g in GROUPS if answers[g][0] == "outside"],
        }


def plain(value: str | int | float) -> str | int:
    """An entity value as the service reads it: 7.0 is the integer 7 (JSON has one number type)."""
    return int(value) if isinstance(value, float) else value


Row = tuple[Any, tuple[str, str] | None]  # a request row, and its (code, message) if it is an error


def bad_row(rng: random.Random, index: int, good: dict[str, Any]) -> Row:
    """A row with one defect and the error the service names for it."""
    entity = f"rows[{index}]: no value for the entity field"
    kinds: list[Row] = [
        ({k: v for k, v in good.items() if k != "card_id"}, ("missing_field", f"{entity} 'card_id'")),
        ({**good, "card_id": None}, ("missing_field", f"{entity} 'card_id'")),
        ({k: v for k, v in good.items() if k != "merchant_id"}, ("missing_field", f"{entity} 'merchant_id'")),
        (
            {k: v for k, v in good.items() if k != "amount"},
            ("missing_field", f"rows[{index}]: no value for the request field 'amount'"),
        ),
        (
            {**good, "amount": None},
            ("missing_field", f"rows[{index}]: no value for the request field 'amount'"),
        ),
        ({**good, "amount": "12.5"}, ("bad_type", f"rows[{index}].amount: '12.5' is not a float")),
        ({**good, "amount": True}, ("bad_type", f"rows[{index}].amount: True is not a float")),
        ({**good, "amount": [1.0]}, ("bad_type", f"rows[{index}].amount: [1.0] is not a float")),
        (
            {**good, "card_id": 1.5},
            ("bad_type", f"rows[{index}].card_id: 1.5 is neither a string nor an integer"),
        ),
        (
            {**good, "merchant_id": False},
            ("bad_type", f"rows[{index}].merchant_id: False is neither a string nor an integer"),
        ),
        (
            {**good, "card_id": ["c001"]},
            ("bad_type", f"rows[{index}].card_id: ['c001'] is neither a string nor an integer"),
        ),
        (
            {**good, "merchant_id": {"id": "m001"}},
            ("bad_type", f"rows[{index}].merchant_id: {{'id': 'm001'}} is neither a string nor an integer"),
        ),
        (
            {**good, "card_id": 2**60},
            (
                "bad_type",
                f"rows[{index}].card_id: {2**60} is beyond 2^53; send the key in its string form",
            ),
        ),
    ]
    bad_rows: list[Any] = [[good["card_id"], good["merchant_id"]], "c001", 17, None]
    message = f"rows[{index}]: expected an object with card_id, merchant_id"
    kinds += [(value, ("bad_row", message)) for value in bad_rows]
    return rng.choice(kinds)


def request_rows(rng: random.Random, events: list[dict[str, Any]], size: int) -> list[Row]:
    """Mostly (card, merchant) pairs that paid; some known card and merchant never paired, unknown
    cards or merchants (also ints, escapes); 3 % rows with a defect; amounts sometimes ints."""
    cards = card_names()
    rows: list[Row] = []
    for index in range(size):
        draw = rng.random()
        paid = rng.choice(events)
        card: Any = paid["card_id"]
        merchant: Any = paid["merchant_id"]
        if draw < 0.12:
            card, merchant = rng.choice(cards), f"m{rng.randrange(MERCHANTS):03d}"
        elif draw < 0.17:
            card = rng.choice(UNKNOWN_CARDS)
        elif draw < 0.22:
            merchant = rng.choice(UNKNOWN_MERCHANTS)
        elif draw < 0.24:
            card, merchant = rng.choice(UNKNOWN_CARDS), rng.choice(UNKNOWN_MERCHANTS)
        if isinstance(card, str) and card.isdecimal() and rng.random() < 0.5:
            card = int(card) if rng.random() < 0.5 else float(card)  # 9003 or 9003.0: the key "9003"
        amount: Any = rng.randrange(1, 500) if rng.random() < 0.1 else round(rng.uniform(0.5, 2_000), 2)
        good = {"card_id": card, "merchant_id": merchant, "amount": amount}
        if rng.random() < 0.05:
            good["note"] = "ignored"
        rows.append(bad_row(rng, index, good) if rng.random() < 0.03 else (good, None))
    return rows


def row_problems(where: str, got: dict[str, Any], want: dict[str, Any]) -> list[str]:
    if list(got.get("features") or {}) != list(want["features"]):
        return [f"{where}: columns {list(got.get('features') or {})}, want {list(want['features'])}"]
    problems = [f"{where}: {p}" for p in mismatches(got["features"], want["features"])]
    problems += [
        f"{where}: {name} is {type(value).__name__}, want {type(want['features'][name]).__name__}"
        for name, value in got["features"].items()
        if ("_count_" in name or "_distinct_" in name) and value is not None and type(value) is not int
    ]
    for field in ("missing", "outside_retention"):
        if got.get(field) != want[field]:
            problems.append(f"{where}: {field} {got.get(field)}, want {want[field]}")
    return problems


def test_500_requests_answer_the_pandas_reference_row_by_row(cluster: Cluster) -> None:
    """Must-show 1: each answer row equals the reference, in request order, whichever worker is
    asked; the rows with a defect carry their error and the others are unaffected."""
    owned = [w.get("/readyz").json()["partitions"] for w in (cluster.one, cluster.two)]
    assert all(owned), owned  # each worker owns keys: (almost) every request needs the other's
    expected = Expected(cluster)
    rng = random.Random(2022)
    # last - 20 min: the keys paid after it are outside retention there; + 30 min: partial 1 h windows.
    last = cluster.last
    ats: list[int | None] = [last, last + 30 * MINUTE, last + HOUR, last - 20 * MINUTE]
    problems: list[str] = []
    seen = {"rows": 0, "errors": 0, "missing": 0, "outside": 0, "lookup_null": 0, "found": 0}
    with httpx.Client(timeout=60) as client:
        for number in range(REQUESTS):
            worker = (cluster.one, cluster.two)[number % 2]
            rows = request_rows(rng, cluster.events, rng.randint(1, 200))
            at = None if rng.random() < 0.02 else rng.choice(ats)
            body: dict[str, Any] = {"rows": [row for row, _ in rows]}
            if at is not None:
                body["at"] = at
            before = int(time.time() * 1000)
            answer = client.post(f"{worker.url}/services/fraud", json=body)
            assert answer.status_code == 200, (number, answer.text[:2000])
            got = answer.json()
            assert (got["service"], len(got["rows"])) == ("fraud", len(rows)), number
            if at is None:  # now, on the worker
                assert before <= got["at"] <= int(time.time() * 1000), got["at"]
            else:
                assert got["at"] == at
            for index, ((row, error), answered) in enumerate(zip(rows, got["rows"], strict=True)):
                where = f"request {number} ({worker.url}, at={got['at']}) rows[{index}] {row!r}"
                seen["rows"] += 1
                if error is not None:
                    seen["errors"] += 1
                    want_error = {"error": {"code": error[0], "message": error[1]}}
                    if answered != want_error:
                        problems.append(f"{where}: got {answered}, want {want_error}")
                    continue
                want = expected.row(row["card_id"], row["merchant_id"], row["amount"], got["at"])
                seen["missing"] += bool(want["missing"])
                seen["outside"] += bool(want["outside_retention"])
                seen["lookup_null"] += want["features"]["m_mcc"] is None
                seen["found"] += not want["missing"] and not want["outside_retention"]
                problems += row_problems(where, answered, want)
    assert problems == [], f"{len(problems)} problems: {problems[:20]}"
    # The mix was what it was meant to be.
    assert seen["rows"] > 30_000 and 0.02 < seen["errors"] / seen["rows"] < 0.04, seen
    assert seen["missing"] > 1_000 and seen["outside"] > 1_000 and seen["lookup_null"] > 1_000, seen
    assert seen["found"] > seen["rows"] / 3, seen


def test_schemathesis_finds_no_5xx_on_services_and_lookup_batches(cluster: Cluster, tmp_path: Path) -> None:
    """Must-show 4: property-based requests from /openapi.json to GET /services, POST
    /services/fraud and POST /tables/merchants (fixed seed, bounded): none is a 5xx, every answer is
    documented and matches its schema."""
    run_schemathesis(
        cluster.one.url, tmp_path, "--include-name-regex",
        r"^(GET /services|POST /services/fraud|POST /tables/merchants)$",
        "--max-examples", "200", "--report-junit-path", str(tmp_path / "junit.xml"),
    )  # fmt: skip
    junit = ElementTree.parse(tmp_path / "junit.xml").getroot()
    tested = sorted(case.get("name", "") for case in junit.iter("testcase"))
    assert tested == ["GET /services", "POST /services/fraud", "POST /tables/merchants"], tested


# -- issue 33, must-show 3: every answer says how fresh it is (newest_event, max_age) ------------
# For every key of every group, on both workers, at four times, ``newest_event`` equals the newest
# payment time of the key in the buckets its windows read (pandas), the merchant group's ``max_age``
# (30 m) flags exactly the keys pandas says are stale, and ``hydrant compute`` gives the same.

FRESH_MINUTE = 60_000
FRESH_HOUR = 60 * FRESH_MINUTE


def batch_answers(url: str, group: str, keys: list[str], at: int) -> dict[str, Any]:
    """Per key, its batch result from the worker at ``url``."""
    out = {}
    for begin in range(0, len(keys), 1000):
        body = {"keys": keys[begin : begin + 1000], "at": at}
        response = httpx.post(f"{url}/features/{group}", json=body, timeout=30)
        assert response.status_code == 200, response.text
        out.update((r["key"], r) for r in response.json()["results"])
    return out


def test_every_answer_carries_the_newest_event_it_counts(cluster: Cluster, tmp_path: Path) -> None:
    spec = load_pipeline(cluster.pipeline)
    plans = group_plans(spec)
    assert plans["merchant"].max_age == 30 * FRESH_MINUTE
    events = pd.DataFrame(cluster.events)
    path = tmp_path / "payments.parquet"
    events.to_parquet(path, index=False)
    ats = [
        cluster.last,
        cluster.last + 40 * FRESH_MINUTE,
        cluster.last + 3 * FRESH_HOUR,
        cluster.last + 25 * FRESH_HOUR,
    ]
    checked = stale = 0
    for group, plan in plans.items():
        keyed = events.dropna(subset=list(plan.key)).copy()  # every payment adds an amount: all count
        keyed["key"] = [key_string([row[f] for f in plan.key]) for _, row in keyed.iterrows()]
        keys = sorted(set(keyed["key"]))
        offline, _ = compute(spec, {"payments": path}, read_table, ats=ats, groups=[group])
        offline = offline.set_index(["key", "at"])
        for at in ats:
            end = at // plan.period_ms
            inside = keyed[(keyed["ts"] // plan.period_ms).between(end - plan.widest + 1, end)]
            truth = inside.groupby("key")["ts"].max()
            for url in (cluster.one.url, cluster.two.url):
                got = batch_answers(url, group, keys, at)
                for key in keys:
                    want = int(truth[key]) if key in truth.index else None
                    result = got[key]
                    assert result["found"] and result["newest_event"] == want, (group, key, at, url, result)
                    row = offline.loc[(key, at)]
                    assert (
                        None if pd.isna(row[f"{group}.newest_event"]) else int(row[f"{group}.newest_event"])
                    ) == want
                    if plan.max_age is not None:
                        flag = want is None or want < at - plan.max_age
                        assert result["stale"] is flag and bool(row[f"{group}.stale"]) is flag, (key, at)
                        stale += flag
                    else:
                        assert "stale" not in result
                    checked += 1
    assert checked > 4_000 and stale > 10
    fresh = batch_answers(cluster.one.url, "merchant", ["m000"], cluster.last)["m000"]
    assert fresh["stale"] is False  # at the last payment, the busiest merchant is fresh
