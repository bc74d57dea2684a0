"""Soak run: steady ingest and lookups against one worker on the bundled broker for N minutes,
sampling the worker's RSS; at the end, every key is checked against the ground truth and the RSS
series must plateau.

    .venv/bin/python -m tests.reliability.soak --minutes 10

Prints an RSS table (MiB, every 30 s) and a verdict; exit 1 on a mismatch or on memory growth.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

from app.kafka.broker import EmbeddedBroker
from tests.conftest import shop_pipeline_text
from tests.reliability.harness import check, make_workload, publish_slice
from tests.support.broker import BrokerUnderTest
from tests.support.kafka import create_pipeline_topics_for
from tests.support.load import Load
from tests.support.worker import WorkerProcess

RATE = 400  # events per second, in one-second slices
#: Event time spans three times the 24 h retention, so the state reaches its steady size (buckets
#: expire as fast as new ones open) in the first third and the memory verdict compares steady thirds.
#: Events are published in time order, so the topics stay minutes, not a day, of event time apart.
HOURS = 72
GROWTH_LIMIT = 0.10  # the last third's median RSS may exceed the middle third's by at most 10 %
#: A RocksDB budget the state outgrows in the first third, so the block cache is full by the middle
#: third: growth after that is a leak, not a cache filling up to its bound (docs/reliability.md).
ROCKSDB_MEMORY_MB = 32


def rss_mib(worker: WorkerProcess) -> float:
    assert worker.proc is not None
    return psutil.Process(worker.proc.pid).memory_info().rss / 2**20


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--keys", type=int, default=5_000)
    args = parser.parse_args()

    seconds = int(args.minutes * 60)
    tmp = Path(tempfile.mkdtemp(prefix="hydrant-soak-"))
    uid = uuid.uuid4().hex[:10]
    pipeline = tmp / "pipeline.yaml"
    pipeline.write_text(shop_pipeline_text(uid))
    workload = make_workload(
        pipeline, seed=21, keys=args.keys, count=RATE * seconds, malformed_share=0.01, hours=HOURS
    )
    with EmbeddedBroker() as embedded:
        broker = BrokerUnderTest(embedded.url, "tansu", "tansu")
        create_pipeline_topics_for(broker.url, pipeline, uid)
        worker = WorkerProcess(
            broker,
            pipeline,
            tmp / "data",
            f"hydrant-test-{uid}",
            tmp / "worker.log",
            extra_env={"HYDRANT_ROCKSDB_MEMORY_MB": str(ROCKSDB_MEMORY_MB)},
        ).start()
        try:
            worker.wait_ready(180)
            load = Load(worker.url, {k: {} for k in workload.keys}, workload.end, check=False)
            thread = load.start()
            samples: list[tuple[int, float]] = []
            started = time.monotonic()
            for second in range(seconds):
                publish_slice(broker, uid, workload, second / seconds, (second + 1) / seconds)
                if second % 30 == 0:
                    samples.append((second, rss_mib(worker)))
                    buckets = worker.metric("hydrant_state_buckets")  # the state's size (30 s census)
                    cache, memtables = (
                        worker.metric("hydrant_rocksdb_memory_bytes", kind=kind) / 2**20
                        for kind in ("block_cache", "memtables")
                    )
                    print(
                        f"{second:>5} s  RSS {samples[-1][1]:7.1f} MiB  buckets {buckets:>9,.0f}  "
                        f"RocksDB cache {cache:5.1f} MiB memtables {memtables:5.1f} MiB  "
                        f"lookups {sum(load.statuses.values())}"
                    )
                time.sleep(max(0.0, started + second + 1 - time.monotonic()))
            deadline = time.monotonic() + 300
            report = check([worker.url], workload)
            while not report.clean and time.monotonic() < deadline:
                time.sleep(5)
                report = check([worker.url], workload)
            load.stop.set()
            thread.join(30)
            samples.append((seconds, rss_mib(worker)))
        finally:
            worker.stop()

    third = max(1, len(samples) // 3)
    middle = median([rss for _, rss in samples[third : 2 * third]])
    last = median([rss for _, rss in samples[-third:]])
    growth = (last - middle) / middle
    statuses = dict(load.statuses)
    print(f"events {len(workload.events)} (+{len(workload.malformed)} malformed), keys {len(workload.keys)}")
    print(f"lookups {sum(statuses.values())}: {statuses}")
    peak = max(r for _, r in samples)
    print(f"RSS MiB: max {peak:.1f}, middle third median {middle:.1f}, last third {last:.1f}")
    print(f"growth last/middle {growth:+.1%} (limit {GROWTH_LIMIT:.0%}); check: {report}")
    bad_status = any(s >= 500 and s != 503 for _, s in statuses)
    return 0 if report.clean and growth <= GROWTH_LIMIT and not bad_status else 1


if __name__ == "__main__":
    sys.exit(main())
