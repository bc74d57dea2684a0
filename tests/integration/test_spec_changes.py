"""A worker compares its spec with the definitions its feature state was built with (kept in Kafka,
topic <consumer group>-definitions): it logs what changed, and refuses to start when a group's
period or key changed, naming the group and the way out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.support.broker import BrokerUnderTest
from tests.support.kafka import create_pipeline_topics_for
from tests.support.worker import WorkerProcess

NEW = (
    '      - {name: big, stream: orders, field: amount, ops: [count], windows: [1h], where: "amount > 100"}\n'
)


def test_the_worker_logs_spec_changes_and_refuses_a_period_change(
    broker: BrokerUnderTest,
    uid: str,
    shop_pipeline: Path,
    workers: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    create_pipeline_topics_for(broker.url, shop_pipeline, uid)
    v1 = shop_pipeline.read_text()
    first = workers(shop_pipeline, name="v1")
    first.wait_ready()
    assert "feature definitions changed" in first.log()  # the first start: every group is new
    assert "    spend                new:" in first.log()
    first.stop()

    period = tmp_path / "period.yaml"
    period.write_text(v1.replace("period: 10m ", "period: 5m  "))
    refused = workers(period, name="period")
    assert refused.proc is not None and refused.proc.wait(timeout=60) == 1
    assert (
        "error: feature group 'user': its period changed from 10m to 5m, so its stored state cannot be "
        "reused. Rename the group (it starts with new, empty state), or stop the workers and run "
        "`hydrant state reset user --yes`"
    ) in refused.log()

    v2 = tmp_path / "v2.yaml"
    v2.write_text(v1.replace("windows: [10m, 1h]}\n", "windows: [10m, 1h]}\n" + NEW, 1))
    second = workers(v2, name="v2")
    second.wait_ready()
    log = second.log()
    assert "feature definitions changed" in log and "  group user: changed" in log
    assert "    big                  new: applied from now on; the history" in log
    assert "    spend                unchanged: keeps its state and values" in log
    second.stop()

    again = workers(v2, name="v2-again")
    again.wait_ready()
    assert "feature definitions unchanged" in again.log()
