"""Issue 6 on the real broker: Debian's real Prometheus scrapes a worker during ingest and its HTTP
API returns the event counters and a non-zero lag; promtool accepts /metrics; every metric the
Grafana dashboard queries is one the worker exports."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.kafka.broker import free_port, wait_for_port
from tests.support.broker import BrokerUnderTest
from tests.support.kafka import create_pipeline_topics_for
from tests.support.shop import make_events, publish
from tests.support.tools import tool
from tests.support.worker import REPO, WorkerProcess, wait_for

EVENTS = 60_000  # a backlog of ~3 s at the shop pipeline's rate: several scrapes see the lag


class Prometheus:
    """A real Prometheus server on loopback, scraping ``targets`` every 250 ms."""

    def __init__(self, tmp: Path, targets: list[str]) -> None:
        self.port = free_port()
        config = tmp / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 250ms, scrape_timeout: 250ms, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: hydrant\n    static_configs:\n      - targets: {json.dumps(targets)}\n"
        )
        self.log = (tmp / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for_port("127.0.0.1", self.port, timeout=30)

    def query(self, expr: str) -> list[dict[str, object]]:
        answer = httpx.get(f"http://127.0.0.1:{self.port}/api/v1/query", params={"query": expr}, timeout=5)
        body = answer.json()
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def value(self, expr: str) -> float:
        """The single value of ``expr`` (0 when it has no result yet)."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else 0.0  # type: ignore[index]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Callable[[list[str]], Prometheus]]:
    started: list[Prometheus] = []

    def start(targets: list[str]) -> Prometheus:
        started.append(Prometheus(tmp_path, targets))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def exported_names(metrics_text: str) -> set[str]:
    """Every sample name /metrics exports (histogram series included: _bucket, _count, _sum)."""
    return {s.name for family in text_string_to_metric_families(metrics_text) for s in family.samples}


def test_prometheus_scrapes_counters_and_lag_and_the_dashboard_queries_real_metrics(
    broker: BrokerUnderTest,
    shop_pipeline: Path,
    uid: str,
    workers: Callable[..., WorkerProcess],
    prometheus_for: Callable[[list[str]], Prometheus],
    tmp_path: Path,
) -> None:
    create_pipeline_topics_for(broker.url, shop_pipeline, uid)
    publish(
        broker, uid, make_events(seed=4, keys=1_000, count=EVENTS, every_key=True)
    )  # a backlog: the worker starts behind
    worker = workers(shop_pipeline)
    prometheus = prometheus_for([f"127.0.0.1:{worker.port}"])
    worker.wait_ready(timeout=180)

    wait_for(
        lambda: prometheus.value("sum(hydrant_events_consumed_total)") >= EVENTS, "all events scraped", 240
    )
    assert prometheus.value('sum(hydrant_events_consumed_total{stream="orders"})') > 0
    assert prometheus.value('sum(hydrant_events_produced_total{output="orders_enriched"})') > 0
    assert prometheus.value("max(max_over_time(hydrant_consumer_lag[10m]))") > 0  # seen while behind
    lag_series = prometheus.query("hydrant_consumer_lag")
    assert {s["metric"]["topic"] for s in lag_series} >= {f"orders-{uid}", f"clicks-{uid}"}  # type: ignore[index]
    wait_for(lambda: prometheus.value("sum(hydrant_consumer_lag)") == 0, "lag back to 0 once caught up", 120)
    assert prometheus.value("sum(hydrant_ready)") == 1
    assert prometheus.value('count(hydrant_worker_info{pipeline="shop-' + uid + '"})') == 1

    # the census timer has run within its 30 s interval: state gauges are there and counted (the
    # labelled gauges the dashboard queries appear with their first census)
    wait_for(lambda: worker.metric("hydrant_state_keys", group="user") == 1_000, "state census", 60)
    metrics_text = worker.get("/metrics").text
    (tmp_path / "metrics.txt").write_text(metrics_text)
    check = subprocess.run(
        [tool("promtool"), "check", "metrics"], input=metrics_text, capture_output=True, text=True
    )
    assert check.returncode == 0 and not check.stdout.strip(), check.stdout + check.stderr

    exported = exported_names(metrics_text)
    dashboard = json.loads((REPO / "deploy" / "grafana" / "dashboards" / "hydrant.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bhydrant_[a-z_]+", target["expr"])
    }
    assert queried and not queried - exported, (
        f"dashboard queries metrics the worker lacks: {queried - exported}"
    )
    assert worker.metric("hydrant_state_buckets", group="user") >= 1_000
