"""`hydrant dev`: one command brings up broker + worker + demo data; Ctrl-C leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from app.kafka.broker import free_port
from tests.support.worker import REPO


def metric_values(text: str, name: str) -> list[float]:
    return [s.value for fam in text_string_to_metric_families(text) for s in fam.samples if s.name == name]


def test_dev_runs_demo_then_sigint_stops_everything(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYDRANT_")}
    env.update({"HYDRANT_WEB_PORT": str(port), "HYDRANT_LOG_LEVEL": "INFO"})
    out = (tmp_path / "dev.out").open("w")
    dev = subprocess.Popen(
        [sys.executable, "-m", "app.tools.cli", "dev", "--rate", "200"],
        cwd=tmp_path,  # `.hydrant/dev` lands here
        env={**env, "PYTHONPATH": str(REPO)},
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a SIGINT to this process alone, as a terminal's Ctrl-C would deliver
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        consumed = produced = 0.0
        ready = False
        while time.monotonic() < deadline and not (ready and consumed > 0 and produced > 0):
            assert dev.poll() is None, (tmp_path / "dev.out").read_text()
            try:
                ready = httpx.get(f"{base}/readyz", timeout=2).status_code == 200
                text = httpx.get(f"{base}/metrics", timeout=2).text
                consumed = sum(metric_values(text, "hydrant_events_consumed_total"))
                produced = sum(metric_values(text, "hydrant_events_produced_total"))
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert ready, "readyz never answered 200"
        assert consumed > 0 and produced > 0, f"counters stayed at zero: {consumed=} {produced=}"
        assert httpx.get(f"{base}/healthz", timeout=2).json() == {"status": "ok"}

        children = psutil.Process(dev.pid).children(recursive=True)
        names = " ".join(" ".join(c.cmdline()) for c in children)
        assert "tansu" in names and "worker" in names, names

        os.kill(dev.pid, signal.SIGINT)
        code = dev.wait(timeout=60)
    finally:
        if dev.poll() is None:
            dev.kill()
        out.close()
    log = (tmp_path / "dev.out").read_text()
    assert code in (0, 130), log
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left running after Ctrl-C: {[p.pid for p in alive]}\n{log}"
    assert "worker   stopped (exit 0)" in log
    assert "broker   stopped" in log
