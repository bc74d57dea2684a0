"""Prometheus metrics: one registry for the whole process, bounded labels (never a per-key label)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily, Metric
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
UNKEYED_EVENTS = Counter(
    "hydrant_events_unkeyed_total",
    "Events that did not feed a feature group because a field of the group's key was missing or null.",
    ["group", "stream"],
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
REPLAYED_EVENTS = Counter(
    "hydrant_replayed_events_total",
    "Input records read by the replay of new or changed aggregations (docs/operations.md).",
    ["group"],
    registry=REGISTRY,
)
REPLAY_LEFT = Gauge(
    "hydrant_replay_records_left",
    "Input records the replays of this worker's partitions still have to read.",
    ["group"],
    registry=REGISTRY,
)
INGEST_EVENTS = Counter(
    "hydrant_ingest_events_total",
    "Events sent to POST /ingest/{stream}, by outcome (accepted: produced to the stream's topic; rejected).",
    ["stream", "outcome"],
    registry=REGISTRY,
)
INGEST_REFUSED = Counter(
    "hydrant_ingest_refused_total",
    "POST /ingest/{stream} requests refused for their number of events (413 too_many_rows); a body above "
    "the limit is counted in hydrant_http_requests_total{route='/ingest/{stream}',status='413'}.",
    ["stream", "reason"],
    registry=REGISTRY,
)
FEATURES_INCOMPLETE = Gauge(
    "hydrant_features_incomplete",
    "Features of a group that some partition served here cannot answer in full yet (replay running, "
    "or the topics no longer hold the history their window needs).",
    ["group"],
    registry=REGISTRY,
)
OFFSET_GAPS = Counter(
    "hydrant_offset_gaps_total",
    "Fetches of an input, hop or rekey topic whose offsets skipped past records not yet read: never "
    "committed past; the partition is read again from the first missing offset.",
    ["topic"],
    registry=REGISTRY,
)
RECOVERY_FAILURES = Counter(
    "hydrant_recovery_failures_total",
    "Table recoveries that could not finish (a step timed out or failed); each is retried, and the worker "
    "exits after several in a row so that its supervisor restarts it.",
    registry=REGISTRY,
)
STALE_CHANGELOG_RECORDS = Counter(
    "hydrant_stale_changelog_records_total",
    "Changelog records skipped while restoring or replicating a feature table because they do not hold "
    "every event of the stored version: written late by a worker that had lost the partition "
    "(docs/reliability.md).",
    ["table"],
    registry=REGISTRY,
)
KEYS_EXPIRED = Counter(
    "hydrant_keys_expired_total",
    "Entity keys deleted by the TTL sweep (no event for the group's ttl), with their records and tombstones.",
    ["group"],
    registry=REGISTRY,
)
FEATURE_AGE = Histogram(
    "hydrant_feature_age_seconds",
    "Age of the answers given: the reference time minus the newest event time of the key's answer (keys "
    "answered with features and at least one event in their windows).",
    ["group"],
    buckets=(1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0, 7 * 86400.0, 30 * 86400.0),
    registry=REGISTRY,
)


class BatchHistogram(Collector):
    """A histogram with one label, observed a batch of values at a time (numpy: no Python call per
    value), exported as prometheus_client exports its histograms."""

    def __init__(
        self,
        name: str,
        documentation: str,
        label: str,
        buckets: tuple[float, ...],
        registry: CollectorRegistry,
    ) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self._bounds = np.asarray(buckets, dtype=np.float64)
        self._counts: dict[str, np.ndarray] = {}  # per label value: per bucket (then +Inf), not cumulative
        self._sums: dict[str, float] = {}
        registry.register(self)

    def observe_many(self, value: str, observed: np.ndarray) -> None:
        """Count each of ``observed`` (a float array) under label value ``value``."""
        if not len(observed):
            return
        counts = np.bincount(np.searchsorted(self._bounds, observed), minlength=len(self._bounds) + 1)
        if value in self._counts:
            self._counts[value] += counts
            self._sums[value] += float(observed.sum())
        else:
            self._counts[value] = counts
            self._sums[value] = float(observed.sum())

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, counts in self._counts.items():
            cumulative = np.cumsum(counts)
            buckets = [(repr(float(b)), float(c)) for b, c in zip(self._bounds, cumulative[:-1], strict=True)]
            family.add_metric([value], [*buckets, ("+Inf", float(cumulative[-1]))], self._sums[value])
        yield family

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=[self.label])


def observe_many(child: Any, values: Iterable[float]) -> None:
    """``child.observe(v)`` for each of ``values`` (a labelled Histogram child), with one increment per
    bucket touched instead of one per value (in a serving process each is a write to its metrics file).
    Relies on prometheus_client's Histogram keeping per-bucket values and a sum (0.20 through 0.26, and
    tests/unit/test_metrics.py checks it against ``observe``)."""
    bounds = child._upper_bounds
    counts = [0] * len(bounds)
    total = 0.0
    for value in values:
        counts[bisect_left(bounds, value)] += 1
        total += value
    if not any(counts):
        return
    child._sum.inc(total)
    for bucket, count in zip(child._buckets, counts, strict=True):
        if count:
            bucket.inc(count)


PROCESSING_DELAY = BatchHistogram(
    "hydrant_processing_delay_seconds",
    "Wall clock minus event time when an event is applied (its batch's state written and acknowledged), at "
    "every stage: how far behind event time the features are (producers, the topics' lag, hops, a backlog).",
    "stream",
    (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 86400.0),
    REGISTRY,
)
READY = Gauge(
    "hydrant_ready", "1 when every table finished recovery and the worker serves reads.", registry=REGISTRY
)
WORKER = Info("hydrant_worker", "Version and pipeline of this worker.", registry=REGISTRY)


#: aiohttp wants the charset apart from the content type; Prometheus text is UTF-8 either way.
CONTENT_TYPE = CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4"


def render() -> tuple[bytes, str]:
    """The registry in Prometheus text format, with its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE
