"""app/metrics.py: a batch of observations (observe_many) exports what one observe each would, in this
process and through prometheus_client's multiprocess files (the serving processes'); and the
numpy-batched histogram (BatchHistogram) exports Prometheus histogram samples."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

from app.metrics import BatchHistogram, observe_many

BUCKETS = (1.0, 10.0, 60.0, 3600.0)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def compare(multiprocess_dir: str | None) -> None:
    """Observe the same values one by one and in one batch; assert the exported samples agree (with
    ``multiprocess_dir``: through prometheus_client's multiprocess files, in this process)."""
    values = [random.Random(4).uniform(0, 5000) for _ in range(300)] + [1.0, 10.0, 0.0, 1e9]
    one, many = CollectorRegistry(), CollectorRegistry()
    each = Histogram("age_a", "each", ["g"], buckets=BUCKETS, registry=None if multiprocess_dir else one)
    batch = Histogram("age_b", "batch", ["g"], buckets=BUCKETS, registry=None if multiprocess_dir else many)
    for value in values:
        each.labels("x").observe(value)
    observe_many(batch.labels("x"), values)
    observe_many(batch.labels("x"), [])  # nothing
    if multiprocess_dir:
        MultiProcessCollector(one, multiprocess_dir)
        many = one
    a = {
        (n.replace("age_a", "age"), labels): v
        for (n, labels), v in samples(one).items()
        if n.startswith("age_a")
    }
    b = {
        (n.replace("age_b", "age"), labels): v
        for (n, labels), v in samples(many).items()
        if n.startswith("age_b")
    }
    assert a == pytest.approx(b) and len(a) == len(BUCKETS) + 3, (a, b)  # the buckets, +Inf, count, sum


def test_observe_many_exports_what_observing_each_would() -> None:
    compare(None)


def test_observe_many_through_multiprocess_files(tmp_path: Path) -> None:
    # prometheus_client picks its value class (mmap files) at import: a process of its own
    code = f"from tests.unit.test_metrics import compare; compare({str(tmp_path)!r})"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert list(tmp_path.glob("histogram_*.db"))  # it went through the files


def test_a_batch_histogram_exports_cumulative_buckets_count_and_sum() -> None:
    registry = CollectorRegistry()
    histogram = BatchHistogram("delay_seconds", "delay", "stream", (1.0, 10.0), registry)
    histogram.observe_many("s", np.array([0.5, 1.0, 3.0, 50.0]))
    histogram.observe_many("s", np.array([], dtype=np.float64))
    got = samples(registry)
    assert got[("delay_seconds_bucket", (("le", "1.0"), ("stream", "s")))] == 2
    assert got[("delay_seconds_bucket", (("le", "10.0"), ("stream", "s")))] == 3
    assert got[("delay_seconds_bucket", (("le", "+Inf"), ("stream", "s")))] == 4
    assert got[("delay_seconds_count", (("stream", "s"),))] == 4
    assert got[("delay_seconds_sum", (("stream", "s"),))] == 54.5
