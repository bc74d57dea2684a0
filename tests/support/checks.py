"""Compare feature answers with the pandas ground truth."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import httpx

from tests.support.ground_truth import GroundTruth


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
        f"{agg.name}_{op}_{label}": size
        for agg, windows in zip(truth.aggregations, truth.windows, strict=True)
        for op in agg.ops
        for label, size in windows
    }
    with httpx.Client(timeout=10) as client:
        for key in keys:
            for at in ats[key]:
                # Only the windows that retention still fully holds at this `at` (PRODUCT.md).
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
