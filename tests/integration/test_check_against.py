"""`hydrant check PIPELINE --against URL` against a running worker: the change plan per group and
aggregation, exit 1 when a group's state could not be reused."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.support.broker import BrokerUnderTest
from tests.support.kafka import create_pipeline_topics_for
from tests.support.worker import WorkerProcess


def check_against(pipeline: Path, url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYDRANT_")}
    return subprocess.run(
        [sys.executable, "-m", "app.tools.cli", "check", str(pipeline), "--against", url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_against_a_running_worker_prints_the_change_plan(
    broker: BrokerUnderTest,
    uid: str,
    shop_pipeline: Path,
    workers: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    create_pipeline_topics_for(broker.url, shop_pipeline, uid)
    worker = workers(shop_pipeline)
    worker.wait_ready()
    text = shop_pipeline.read_text()

    same = check_against(shop_pipeline, worker.url)
    assert same.returncode == 0, same.stderr
    assert f"changes against {worker.url} (pipeline 'shop-{uid}'; docs/operations.md):" in same.stdout
    assert "  group user: unchanged" in same.stdout

    v2 = tmp_path / "v2.yaml"
    v2.write_text(text.replace("windows: [10m, 1h]}", "windows: [10m, 1h, 24h]}"))
    changed = check_against(v2, worker.url)
    assert changed.returncode == 0, changed.stderr
    assert "    clicks               changed (windows [10m, 1h] -> [10m, 1h, 24h]): " in changed.stdout
    assert "    spend                unchanged: keeps its state and values" in changed.stdout

    v3 = tmp_path / "v3.yaml"
    v3.write_text(text.replace("period: 10m ", "period: 5m  "))
    refused = check_against(v3, worker.url)
    assert refused.returncode == 1
    assert "  group user: REFUSED: feature group 'user': its period changed from 10m to 5m" in refused.stdout

    nobody = check_against(v2, "http://127.0.0.1:9")
    assert nobody.returncode == 1 and "error: cannot reach http://127.0.0.1:9" in nobody.stderr
