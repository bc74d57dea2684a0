"""Compare feature answers with the pandas ground truth."""

from __future__ import annotations

import io
import math
import time
from collections.abc import Mapping
from typing import Any

import httpx
import pandas as pd

from tests.support.ground_truth import GroundTruth
from tests.support.shop import Event, at_values


def same(actual: Any, expected: Any, rel: float = 1e-9) -> bool:
    if actual is None or expected is None:
        return actual is None and expected is None
    if isinstance(expected, float) or isinstance(actual, float):
        return math.isclose(float(actual), float(expected), rel_tol=rel, abs_tol=1e-9)
    return bool(actual == expected)


def mismatches(actual: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    problems = [
        f"{name}: got {actual.get(name)!r}, want {want!r}"
        for name, want in expected.items()
        if not same(actual.get(name), want)
    ]
    extra = set(actual) - set(expected)
    return [*problems, f"unexpected features {sorted(extra)}"] if extra else problems


def check_keys_over_http(
    base_urls: list[str], group: str, truth: GroundTruth, keys: list[str], ats: Mapping[str, list[int]]
) -> list[str]:
    """Ask every worker for every key at every ``at``; return the mismatches (empty when all agree)."""
    problems: list[str] = []
    sizes = {
        f"{agg.name}_{part}_{label}": size
        for agg, windows in zip(truth.aggregations, truth.windows, strict=True)
        for _, part in agg.op_labels()
        for label, size in windows
    }
    with httpx.Client(timeout=10) as client:
        for key in keys:
            for at in ats[key]:
                # Only the windows that retention still fully holds at this `at` (docs/product.md).
                want = {
                    name: value
                    for name, value in truth.features(key, at).items()
                    if truth.window_in_retention(key, at, sizes[name])
                }
                if not want:
                    continue
                params = {"at": at, "features": ",".join(want)}
                for base in base_urls:
                    response = client.get(f"{base}/features/{group}/{key}", params=params)
                    if response.status_code != 200:
                        problems.append(
                            f"{base} {key}@{at}: HTTP {response.status_code} {response.text[:200]}"
                        )
                        continue
                    for problem in mismatches(response.json()["features"], want):
                        problems.append(f"{base} {key}@{at}: {problem}")
    return problems


def scan(client: httpx.Client, url: str, table: str, fmt: str = "json", **params: object) -> pd.DataFrame:
    answer = client.get(f"{url}/tables/{table}", params={"format": fmt, **params})
    assert answer.status_code == 200, answer.text
    if fmt == "json":
        body = answer.json()
        return pd.DataFrame(body["rows"], columns=body["columns"])
    if fmt == "csv":
        assert answer.headers["content-type"].startswith("text/csv")
        return pd.read_csv(io.StringIO(answer.text), keep_default_na=True)
    assert answer.headers["content-type"] == "application/vnd.apache.parquet"
    return pd.read_parquet(io.BytesIO(answer.content))


def expected_scan(truth: GroundTruth, keys: list[str], at: int) -> pd.DataFrame:
    """The shop's `user` scan at ``at``: ``key``, its key field ``user_id`` (the same), the features."""
    rows = [{"key": key, "user_id": key, **truth.features(key, at)} for key in sorted(keys)]
    return pd.DataFrame(rows)


#: A feature group's scan columns after its features (tests/unit/tables/test_freshness.py and
#: test_services.py check their values): left out of the comparisons with the ground truth.
FRESHNESS = ("newest_event", "stale")


def scan_problems(actual: pd.DataFrame, expected: pd.DataFrame) -> list[str]:
    actual = actual.drop(columns=[c for c in FRESHNESS if c in actual.columns and c not in expected.columns])
    if list(actual["key"]) != list(expected["key"]):
        return [f"keys differ: {len(actual)} rows, want {len(expected)}"]

    def plain(row: dict[str, object]) -> dict[str, object]:  # pandas turns None into NaN
        return {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items() if k != "key"}

    problems = []
    for got, want in zip(actual.to_dict("records"), expected.to_dict("records"), strict=True):
        problems += [f"{got['key']}: {p}" for p in mismatches(plain(got), plain(want))]
    return problems


def wait_until_scan_matches(
    client: httpx.Client, url: str, table: str, expected: pd.DataFrame, at: int, timeout: float = 180
) -> None:
    """Poll a feature group's scan at ``at`` until it equals ``expected`` (the workers caught up);
    on timeout, fail with the first differences."""
    from tests.support.worker import wait_for

    problems = ["not scanned"]

    def caught_up() -> bool:
        problems[:] = scan_problems(scan(client, url, table, at=at), expected)
        return not problems

    try:
        wait_for(caught_up, "every event applied", timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last scan: {len(problems)} problems: {problems[:5]}") from None


def settle_and_check(
    urls: list[str], truth: GroundTruth, events: list[Event], timeout: float = 180, group: str = "user"
) -> None:
    """Poll until every key of every worker matches the ground truth (the workers catch up), then
    assert it; on timeout, report the first mismatches."""
    ats = at_values(events)
    keys = sorted(ats)
    deadline = time.monotonic() + timeout
    problems: list[str] = ["not checked"]
    while time.monotonic() < deadline:
        # A cheap probe first: the last keys to finish are usually behind on all of them.
        problems = check_keys_over_http(urls[:1], group, truth, keys[:25], ats)
        if not problems:
            problems = check_keys_over_http(urls, group, truth, keys, ats)
            if not problems:
                return
        time.sleep(2)
    raise AssertionError(f"{len(problems)} mismatches, first: " + "\n".join(problems[:10]))
