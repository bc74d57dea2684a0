"""Prometheus metrics: one registry for the whole process, bounded labels (never a per-key label)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

# `_created` series double the output and nobody graphs them.
disable_created_metrics()
REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS_CONSUMED = Counter(
    "hydrant_events_consumed_total",
    "Events read from an input stream topic.",
    ["stream", "topic"],
    registry=REGISTRY,
)
EVENTS_PRODUCED = Counter(
    "hydrant_events_produced_total",
    "Enriched events written to an output topic.",
    ["output", "topic"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "hydrant_dead_letters_total",
    "Records sent to a dead-letter topic, by reason (decode, missing_key, type, expression, late).",
    ["reason"],
    registry=REGISTRY,
)
for _reason in ("decode", "missing_key", "type", "expression", "late"):
    DEAD_LETTERS.labels(_reason)  # every reason is exported from the start, at 0

LATE_EVENTS = Counter(
    "hydrant_late_events_total",
    "Events older than their feature group's retention: dropped and dead-lettered with reason late.",
    ["group"],
    registry=REGISTRY,
)
DUPLICATE_EVENTS = Counter(
    "hydrant_duplicate_events_total",
    "Redelivered events recognised by their source offset and not applied again.",
    ["group"],
    registry=REGISTRY,
)
LOOKUP_UPDATES = Counter(
    "hydrant_lookup_updates_total",
    "Lookup table writes from their topics (op: upsert or delete).",
    ["lookup", "op"],
    registry=REGISTRY,
)
PROCESSING_SECONDS = Histogram(
    "hydrant_processing_seconds",
    "Wall time to process one event, measured per fetched batch (batch time / batch size).",
    ["stream"],
    buckets=(0.00001, 0.00003, 0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0),
    registry=REGISTRY,
)
BATCH_SECONDS = Histogram(
    "hydrant_batch_seconds",
    "Wall time to process one fetched batch, including waiting for its output to be acknowledged.",
    ["stream"],
    buckets=(0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0),
    registry=REGISTRY,
)
HTTP_REQUESTS = Counter(
    "hydrant_http_requests_total",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_REQUEST_SECONDS = Histogram(
    "hydrant_http_request_duration_seconds",
    "Time to answer an HTTP request (including forwarding to the key's owner), by method and route.",
    ["method", "route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
STATE_KEYS = Gauge(
    "hydrant_state_keys",
    "Entity keys with window state in the partitions this worker serves (counted every 30 s).",
    ["group"],
    registry=REGISTRY,
)
STATE_BUCKETS = Gauge(
    "hydrant_state_buckets",
    "Stored window buckets in the partitions this worker serves (counted every 30 s).",
    ["group"],
    registry=REGISTRY,
)
LOOKUP_ROWS = Gauge(
    "hydrant_lookup_rows",
    "Rows of a lookup table in the partitions this worker serves (counted every 30 s).",
    ["lookup"],
    registry=REGISTRY,
)
READY = Gauge(
    "hydrant_ready", "1 when every table finished recovery and the worker serves reads.", registry=REGISTRY
)
WORKER = Info("hydrant_worker", "Version and pipeline of this worker.", registry=REGISTRY)


class LiveCollector(Collector):
    """Values read from the running Faust app at scrape time: consumer lag per input partition,
    table recovery progress, RocksDB memory."""

    def __init__(self, faust_app: Any) -> None:
        self.app = faust_app

    def describe(self) -> list[Any]:
        """Nothing, so that registration does not call :meth:`collect` (known at scrape time only)."""
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Consumer lag, recovery progress and RocksDB memory, read now."""
        lag = GaugeMetricFamily(
            "hydrant_consumer_lag",
            "Records in an assigned input partition not yet processed (high watermark - next offset).",
            labels=["topic", "partition"],
        )
        recovery = GaugeMetricFamily(
            "hydrant_recovery_remaining_records",
            "Changelog records still to read before the tables are recovered (active or standby).",
            labels=["kind"],
        )
        consumer = self.app.consumer
        try:
            assigned = sorted(consumer.assignment())
        except Exception:
            assigned = []
        for tp in assigned:
            if tp.topic.endswith("-changelog") or "__assignor" in tp.topic:
                continue  # changelogs: see hydrant_recovery_remaining_records; Faust's own topic
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            read = processed_offset(self.app, tp)
            position = read + 1 if read is not None else consumer._committed_offset.get(tp) or 0
            lag.add_metric([tp.topic, str(tp.partition)], max(0, highwater - position))
        yield lag
        tables = self.app.tables
        recovery.add_metric(["active"], tables.recovery.active_remaining_total() if tables else 0)
        recovery.add_metric(["standby"], tables.recovery.standby_remaining_total() if tables else 0)
        yield recovery
        memory = GaugeMetricFamily(
            "hydrant_rocksdb_memory_bytes",
            "RocksDB memory of this worker's open table partitions: block cache, memtables, table readers.",
            labels=["kind"],
        )
        for kind, value in rocksdb_memory(self.app).items():
            memory.add_metric([kind], value)
        yield memory


def processed_offset(faust_app: Any, tp: Any) -> int | None:
    """The last offset of ``tp`` processed: delivered by the agent for a stream topic
    (app/faust_ext/intake.py), read by Faust's consumer for the others."""
    for intake in getattr(faust_app, "intakes", ()):
        if tp.topic in intake.topics:
            return intake.done.get(tp)
    return faust_app.consumer._read_offset.get(tp)


def rocksdb_memory(faust_app: Any) -> dict[str, int]:
    """RocksDB bytes of this worker: its block cache (shared by every table partition, memtables
    charged to it), and within it the memtables and table readers summed over the open databases."""
    totals = {"block_cache": 0, "memtables": 0, "table_readers": 0}
    caches = {}
    for table in (faust_app.tables or {}).values():
        options = getattr(table.data, "rocksdb_options", None)
        cache = getattr(options, "cache", None)
        if cache is not None:
            caches[id(cache)] = cache
        for db in getattr(table.data, "_dbs", {}).values():
            totals["memtables"] += db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0
            totals["table_readers"] += db.property_int_value("rocksdb.estimate-table-readers-mem") or 0
    totals["block_cache"] = sum(cache.get_usage() for cache in caches.values())
    return totals


#: aiohttp wants the charset apart from the content type; Prometheus text is UTF-8 either way.
CONTENT_TYPE = CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4"


def render() -> tuple[bytes, str]:
    """The registry in Prometheus text format, with its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE
