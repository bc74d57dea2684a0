"""Recovery of a fresh worker from a feature-table changelog: records/s until /readyz answers 200.

Builds the changelog of feature group ``user`` (shop pipeline) directly: N records, i.e. N / (B + 1)
keys, each with B bucket records and its head, written to ``<app id>-features-user-changelog`` on the
partition the worker would use (murmur2 of the key). The records are the worker's own: per
partition, one key's state is built by tables/apply.py from real order and click events (2 orders
and 2 clicks per 10-minute bucket, the newest bucket now), and every other key of that partition gets
the same records under its own key (``<key>\\0`` head, ``<key>\\0<bucket>`` buckets). Running the
pipeline over enough events to write 1,000,000 records would take far longer and yield the same kind
of state.

Then a worker (a real process, empty data dir) starts, and /readyz is polled every 0.1 s from process
start until 200 (503s counted: it must answer 503 while recovering). Prints records/s over the whole
start (target >= 50,000), over the bulk restore (app/kafka/changelog.py logs its records and seconds),
and over Faust's own recovery span (log lines "Restoring state from changelog topics" -> "Done
reading from changelog topics"; only what the bulk restore left, if anything). The bulk figures
leave out imports and the group join (~5 s on Tansu). Then proves the state is real: a few keys'
features over HTTP equal the same code's answer on the generated records (the 24 h windows cover
every bucket), and a /tables scan counts every key. Figures, not pass/fail.

    .venv/bin/python -m bench.recovery [--records 1000000] [--buckets-per-key 99]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import orjson
from aiokafka import AIOKafkaProducer

from app.config.spec import load_pipeline
from app.kafka.broker import EmbeddedBroker
from app.records.partitioning import partition_for
from bench.pipeline import create_hydrant_topics
from bench.procs import process_cpu
from tables.apply import apply_event, choose
from tables.key_state import KeyState
from tables.plans import GroupPlan, group_plans
from tables.read import read_features
from tests.conftest import shop_pipeline_text
from tests.support.broker import BrokerUnderTest
from tests.support.kafka import create_topics
from tests.support.worker import WorkerProcess

PARTITIONS = 4
GROUP = "user"
LOG_TIME = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")


def template_state(
    plan: GroupPlan, uid: str, partition: int, buckets: int, newest: int
) -> list[tuple[bytes, bytes]]:
    """The changelog records of one key (``T``) holding ``buckets`` buckets up to bucket ``newest``,
    built by the worker's state code from 2 orders and 2 clicks per bucket: buckets, then the head."""
    rng = random.Random(partition)
    store: dict[bytes, bytes] = {}
    state = KeyState(b"T", store.get, plan.retention)
    offsets = {"orders": 0, "clicks": 0}
    for number in range(newest - buckets + 1, newest + 1):
        for k in range(4):
            ts = number * plan.period_ms + 1000 * (k + 1)
            stream = "orders" if k % 2 == 0 else "clicks"
            if stream == "orders":
                fields = {
                    "user_id": "T",
                    "order_id": f"o{number}-{k}",
                    "product": f"p{rng.randrange(50)}",
                    "amount": round(rng.uniform(1, 100), 2),
                    "status": "paid",
                    "ts": ts,
                }
            else:
                fields = {"user_id": "T", "page": "/", "ts": ts}
            source = f"{stream}-{uid}:{partition}"
            outcome = apply_event(
                plan, state, choose(plan, stream, fields), fields, ts, source, offsets[stream]
            )
            assert outcome == "applied", outcome
            offsets[stream] += 1
    records = [(key, value) for key, value in state.changes() if value is not None]
    assert len(records) == buckets + 1, len(records)
    return records


def changelog_records(
    templates: dict[int, list[tuple[bytes, bytes]]], keys: int, limit: int
) -> Iterator[tuple[int, bytes, bytes]]:
    """(partition, key, value) of every key's records (the template's, renamed), ``limit`` in all."""
    produced = 0
    for i in range(keys):
        key = f"u{i:06d}".encode()
        partition = partition_for(key, PARTITIONS)
        for record_key, value in templates[partition]:
            if produced == limit:
                return
            yield partition, key + record_key[1:], value
            produced += 1


async def write_changelog(bootstrap: str, topic: str, records: Iterator[tuple[int, bytes, bytes]]) -> int:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=256 * 1024, max_request_size=4 * 1024 * 1024
    )
    await producer.start()
    try:
        count = 0
        pending = []
        for partition, key, value in records:
            pending.append(await producer.send(topic, value, key=key, partition=partition))
            count += 1
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        return count
    finally:
        await producer.stop()


def log_span(log: str, start: str, end: str) -> float | None:
    """Seconds between the first log line containing ``start`` and the next containing ``end``."""
    began = None
    for line in log.splitlines():
        stamp = LOG_TIME.search(line)
        if stamp is None:
            continue
        if began is None and start in line:
            began = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f")
        elif began is not None and end in line:
            return (datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f") - began).total_seconds()
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="changelog records (buckets + heads)")
    parser.add_argument("--buckets-per-key", type=int, default=99, help="at most the retention (144)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for /readyz 200")
    parser.add_argument("--log", type=Path, help="keep a copy of the worker's log here")
    args = parser.parse_args()
    uid = uuid.uuid4().hex[:8]
    app_id = f"hydrant-bench-{uid}"
    with tempfile.TemporaryDirectory() as tmp_name, EmbeddedBroker() as embedded:
        tmp = Path(tmp_name)
        broker = BrokerUnderTest(embedded.url, "tansu", "tansu")
        pipeline = tmp / "pipeline.yaml"
        pipeline.write_text(shop_pipeline_text(uid))
        plan = group_plans(load_pipeline(pipeline))[GROUP]
        buckets = args.buckets_per_key
        if not 1 <= buckets <= plan.retention:
            parser.error(f"--buckets-per-key must be in 1..{plan.retention}")
        keys = max(1, args.records // (buckets + 1))  # whole keys: N rounded down to a multiple of B + 1
        now = int(time.time() * 1000)
        newest = plan.bucket(now)
        at = (newest + 1) * plan.period_ms - 1  # inside the newest bucket: its 24 h windows hold them all
        templates = {p: template_state(plan, uid, p, buckets, newest) for p in range(PARTITIONS)}

        changelog = f"{app_id}-features-{GROUP}-changelog"
        create_hydrant_topics(broker.url, pipeline, app_id)
        asyncio.run(create_topics(broker.bootstrap, [changelog], PARTITIONS))
        started = time.monotonic()
        written = asyncio.run(
            write_changelog(
                broker.bootstrap, changelog, changelog_records(templates, keys, keys * (buckets + 1))
            )
        )
        print(
            f"changelog {changelog}: {written:,} records ({keys:,} keys x {buckets} buckets + head, "
            f"~{len(templates[0][0][1])} bytes a bucket) written in {time.monotonic() - started:.1f}s",
            flush=True,
        )

        worker = WorkerProcess(broker, pipeline, tmp / "data", app_id, tmp / "worker.log")
        not_ready = refused = 0
        first_answer: float | None = None
        started = time.monotonic()
        worker.start()
        try:
            with httpx.Client(timeout=2) as client:
                while True:
                    elapsed = time.monotonic() - started
                    if elapsed > args.timeout:
                        raise SystemExit(f"not ready after {args.timeout:.0f}s:\n{worker.log()[-3000:]}")
                    assert worker.proc is not None
                    if worker.proc.poll() is not None:
                        raise SystemExit(
                            f"worker exited with {worker.proc.returncode}:\n{worker.log()[-3000:]}"
                        )
                    try:
                        status = client.get(f"{worker.url}/readyz").status_code
                    except httpx.HTTPError:
                        refused += 1
                    else:
                        if first_answer is None:
                            first_answer = elapsed
                        if status == 200:
                            break
                        not_ready += status == 503
                    time.sleep(0.1)
            ready_after = time.monotonic() - started
            cpu = process_cpu(worker.proc.pid)
            checks = verify(worker, plan, templates, keys, at)
            log = worker.log()
        finally:
            worker.stop()
    if args.log:
        args.log.write_text(log)
    restore = log_span(log, "Restoring state from changelog topics", "Done reading from changelog topics")
    print()
    print(f"{'figure':<52}{'seconds':>9}{'records/s':>12}  target")
    print(
        f"{'process start -> /readyz 200':<52}{ready_after:>9.1f}{written / ready_after:>12,.0f}  >= 50,000"
    )
    if first_answer is not None:
        span = ready_after - first_answer
        print(f"{'first HTTP answer -> /readyz 200':<52}{span:>9.1f}{written / max(span, 1e-9):>12,.0f}")
    bulk = re.search(r"bulk restore: (\d+) changelog records into \d+ partitions in ([\d.]+)s", log)
    if bulk is not None:
        name = "bulk restore (app/kafka/changelog.py, log)"
        seconds = float(bulk.group(2))
        print(f"{name:<52}{seconds:>9.1f}{int(bulk.group(1)) / max(seconds, 1e-9):>12,.0f}  >= 50,000")
    if restore is not None:
        name = "faust: restoring -> done reading changelogs (log)"
        print(f"{name:<52}{restore:>9.1f}{written / restore:>12,.0f}")
    print(
        f"/readyz polled every 0.1 s: {not_ready} answers 503 while recovering, {refused} refused "
        f"before the HTTP server was up (first answer after {first_answer or 0:.1f}s)"
    )
    print(f"worker CPU from start to ready: {cpu:.1f}s ({cpu / ready_after:.0%} of one core)")
    print(checks)


def verify(
    worker: WorkerProcess,
    plan: GroupPlan,
    templates: dict[int, list[tuple[bytes, bytes]]],
    keys: int,
    at: int,
) -> str:
    """Features of the first, middle and last keys equal the expected ones; a scan counts all keys."""
    sample = sorted({0, keys // 2, keys - 1})
    for i in sample:
        key = f"u{i:06d}"
        template = dict(templates[partition_for(key.encode(), PARTITIONS)])
        expected = read_features(plan, KeyState(b"T", template.get, plan.retention), at)
        answer = worker.get(f"/features/{GROUP}/{key}?at={at}")
        if answer.status_code != 200 or answer.json()["features"] != orjson.loads(orjson.dumps(expected)):
            raise SystemExit(f"{key}: expected {expected}, got {answer.status_code} {answer.text[:500]}")
    scan = httpx.get(
        f"{worker.url}/tables/{GROUP}?columns=clicks_count_10m&limit=1000000&at={at}", timeout=300
    ).json()
    found = scan["count"] + scan["skipped"]
    verdict = "all there" if found == keys else f"MISSING {keys - found:,}"
    spend = orjson.loads(orjson.dumps(expected))
    return (
        f"state check: features of keys {', '.join(f'u{i:06d}' for i in sample)} at {at} equal the "
        f"expected ones (e.g. spend_count_24h={spend['spend_count_24h']}, "
        f"spend_sum_24h={spend['spend_sum_24h']:.2f}); /tables scan: {found:,} of {keys:,} keys ({verdict})"
    )


if __name__ == "__main__":
    main()
