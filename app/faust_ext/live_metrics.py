"""Metrics read from the running Faust worker at scrape time (faust-streaming 0.15.3): consumer lag
per input partition, table recovery progress, RocksDB memory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


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
