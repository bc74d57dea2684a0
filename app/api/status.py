"""``GET /status``: one worker's summary for the console (docs/console.md): events in and out per topic
(counters: the page turns them into rates), consumer lag per topic, dead letters by reason and the
last ones, state sizes, recovery and replay progress, ingest counts, the group's workers and the
table partitions each holds. Read from this process's metrics registry at request time."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import orjson
from aiohttp import web

from app.api.context import ApiContext
from app.api.http import JSON
from app.kafka.dead_letters import RECENT
from app.metrics import REGISTRY

STARTED = time.time()


def samples(families: Iterable[Any]) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Per sample name, its (labels, value) pairs."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in families:
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def ranges(numbers: list[int]) -> str:
    """``0-3,7,9-10`` for [0, 1, 2, 3, 7, 9, 10]."""
    parts: list[str] = []
    start = previous = None
    for n in numbers:
        if previous is not None and n == previous + 1:
            previous = n
            continue
        if start is not None:
            parts.append(f"{start}-{previous}" if previous != start else str(start))
        start = previous = n
    if start is not None:
        parts.append(f"{start}-{previous}" if previous != start else str(start))
    return ",".join(parts)


def summary(ctx: ApiContext, found: dict[str, list[tuple[dict[str, str], float]]]) -> dict[str, Any]:
    """The ``/status`` answer from metric samples ``found``."""

    def by(name: str, label: str) -> dict[str, float]:
        totals: dict[str, float] = {}
        for labels, value in found.get(name, ()):
            totals[labels.get(label, "")] = totals.get(labels.get(label, ""), 0.0) + value
        return totals

    topics: dict[str, dict[str, Any]] = {}

    def topic(name: str, role: str, owner: str) -> dict[str, Any]:
        return topics.setdefault(
            name, {"topic": name, "role": role, "owner": owner, "in": 0, "out": 0, "lag": 0, "lag_max": 0}
        )

    pipeline = ctx.pipeline
    for name, spec in pipeline.streams.items():
        topic(spec.topic, "stream", name)
        topic(spec.dlq_topic, "dead-letter", name)
    for name, lookup in pipeline.lookups.items():
        topic(lookup.topic, "lookup", name)
    for name, output in pipeline.outputs.items():
        topic(output.topic, "output", name)
    for labels, value in found.get("hydrant_events_consumed_total", ()):
        topic(labels["topic"], "stream", labels["stream"])["in"] += value
    for labels, value in found.get("hydrant_lookup_updates_total", ()):
        if labels["lookup"] in pipeline.lookups:
            topic(pipeline.lookups[labels["lookup"]].topic, "lookup", labels["lookup"])["in"] += value
    for labels, value in found.get("hydrant_events_produced_total", ()):
        topic(labels["topic"], "output", labels["output"])["out"] += value
    for labels, value in found.get("hydrant_consumer_lag", ()):
        if labels["topic"] in topics:  # the input topics (hop topics are internal)
            entry = topics[labels["topic"]]
            entry["lag"] += value
            entry["lag_max"] = max(entry["lag_max"], value)
    ingest = {stream: {"accepted": 0.0, "rejected": 0.0} for stream in pipeline.streams}
    for labels, value in found.get("hydrant_ingest_events_total", ()):
        ingest.setdefault(labels["stream"], {"accepted": 0.0, "rejected": 0.0})[labels["outcome"]] += value
    per_lookup = {
        "rows": by("hydrant_lookup_rows", "lookup"),
        "updates": by("hydrant_lookup_updates_total", "lookup"),
    }
    per_group = {  # each metric summed by group once
        "keys": by("hydrant_state_keys", "group"),
        "buckets": by("hydrant_state_buckets", "group"),
        "late": by("hydrant_late_events_total", "group"),
        "replay_left": by("hydrant_replay_records_left", "group"),
        "incomplete": by("hydrant_features_incomplete", "group"),
    }
    owners = ctx.placement.owners()
    me = _own_url(ctx)
    ready, reason = ctx.placement.readiness()
    return {
        "pipeline": pipeline.name,
        "group": ctx.group_id,
        "time": int(time.time() * 1000),
        "uptime_s": round(time.time() - STARTED, 1),
        "ready": ready,
        "not_ready": None if ready else reason,
        "topics": list(topics.values()),
        "dead_letters": {"by_reason": by("hydrant_dead_letters_total", "reason"), "last": list(RECENT)[::-1]},
        "lookups": {
            name: {field: per_lookup[field].get(name, 0) for field in per_lookup} for name in pipeline.lookups
        },
        "groups": {
            name: {field: per_group[field].get(name, 0) for field in per_group} for name in pipeline.features
        },
        "recovery": by("hydrant_recovery_remaining_records", "kind"),
        "ingest": ingest,
        "workers": [
            {"url": url, "me": url == me, "partitions": len(held), "ranges": ranges(held)}
            for url, held in owners.items()
        ],
        "partitions": ctx.partitions,
    }


def _own_url(ctx: ApiContext) -> str | None:
    try:
        return ctx.placement.own_url()
    except NotImplementedError:
        return None


async def status_answer(request: web.Request, ctx: ApiContext) -> web.Response:
    """This worker's summary (see the module docstring): 200."""
    return web.Response(body=orjson.dumps(summary(ctx, samples(REGISTRY.collect()))), content_type=JSON)
