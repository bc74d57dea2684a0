"""What the fetch wait (HYDRANT_FETCH_MAX_WAIT_MS) costs an idle worker: one worker of an example
pipeline on the bundled broker, ready, no events; the CPU its processes and the broker use over a
while, for each wait, in the same run (the bundled broker answers a fetch when its wait is over,
so a short wait means more fetches of nothing).

Figures, not pass/fail.

    .venv/bin/python -m bench.idle [--waits 50,1500] [--seconds 30] [--example shop|payments]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

from app.kafka.broker import EmbeddedBroker
from bench.pipeline import create_hydrant_topics
from bench.procs import process_cpu, process_tree
from tests.conftest import payments_pipeline_text, shop_pipeline_text
from tests.support.broker import BrokerUnderTest
from tests.support.worker import WorkerProcess


def idle_cpu(broker: BrokerUnderTest, broker_pid: int, example: str, wait_ms: int, seconds: float) -> str:
    """One line: the CPU share of the worker's processes and of the broker while the worker idles."""
    uid = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        pipeline = tmp / "pipeline.yaml"
        text = shop_pipeline_text(uid) if example == "shop" else payments_pipeline_text(uid)
        pipeline.write_text(text)
        app_id = f"idle-{uid}"
        create_hydrant_topics(broker.url, pipeline, app_id)
        worker = WorkerProcess(
            broker,
            pipeline,
            tmp / "data",
            app_id,
            tmp / "worker.log",
            {"HYDRANT_FETCH_MAX_WAIT_MS": str(wait_ms)},
        ).start()
        try:
            worker.wait_ready(timeout=120)
            time.sleep(5)  # standbys, the first commits
            assert worker.proc is not None
            pids = {**process_tree(worker.proc.pid), broker_pid: "broker"}
            before = {pid: process_cpu(pid) for pid in pids}
            began = time.monotonic()
            time.sleep(seconds)
            spent = time.monotonic() - began
            used: dict[str, float] = {}
            for pid, kind in pids.items():
                used[kind] = used.get(kind, 0.0) + process_cpu(pid) - before[pid]
        finally:
            worker.stop()
    parts = ", ".join(f"{kind} {100 * value / spent:.1f} %" for kind, value in sorted(used.items()))
    return f"fetch wait {wait_ms:>5} ms: {100 * sum(used.values()) / spent:5.1f} % of a core in all ({parts})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--waits", default="50,1500", help="fetch waits in ms, comma-separated")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--example", choices=["shop", "payments"], default="shop")
    args = parser.parse_args()
    with EmbeddedBroker() as embedded:
        broker = BrokerUnderTest(embedded.url, "tansu", "tansu")
        pid = embedded.pid
        assert pid is not None
        print(f"idle worker, {args.example} example, {args.seconds:.0f} s each, bundled broker")
        for wait in (int(w) for w in args.waits.split(",")):
            print(idle_cpu(broker, pid, args.example, wait, args.seconds), flush=True)


if __name__ == "__main__":
    main()
