"""`GET /pipeline`: the normalized spec and what it derives (topics, tables, partitions, features)."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import orjson
from aiohttp import web

from app.api.context import ApiContext
from app.api.http import JSON
from app.api.services import service_info
from app.api.tables import table_columns
from app.config.routing import topic_plans
from tables.replay import BACKFILL_KEY, JOB_KEY, ReplayJob, incomplete_features


def describe(ctx: ApiContext) -> dict[str, Any]:
    """The answer of ``GET /pipeline``."""
    pipeline, partitions = ctx.pipeline, ctx.partitions
    tables = [
        {
            "name": name,
            "kind": kind,
            "changelog_topic": table.changelog,
            "partitions": partitions,
            "columns": table_columns(ctx, name),
        }
        for kind, registry in (("lookup", ctx.tables.lookups), ("features", ctx.tables.features))
        for name, table in registry.items()
    ]
    return {
        "name": pipeline.name,
        "consumer_group": ctx.group_id,
        "partitions": partitions,
        "spec": pipeline.model_dump(mode="json", by_alias=True),
        "topics": [asdict(plan) for plan in topic_plans(pipeline, partitions, ctx.group_id)],
        "tables": tables,
        "features": {name: plan.feature_names() for name, plan in ctx.tables.plans.items()},
        "services": [service_info(plan) for plan in ctx.services.values()],
        "replay": replay_progress(ctx),
        "backfill": replay_progress(ctx, BACKFILL_KEY),
    }


def replay_progress(ctx: ApiContext, record_key: bytes = JOB_KEY) -> dict[str, Any]:
    """Per feature group with a replay (or with ``record_key`` BACKFILL_KEY, a backfill; docs/
    operations.md), per partition held here: the aggregations, whether it is done, whether this
    worker runs it now, records read and left, whether the topics held all history, the features
    incomplete there."""
    out: dict[str, Any] = {}
    now = int(time.time() * 1000)
    running = set(ctx.replays_running()) if ctx.replays_running is not None else set()
    for group, table in ctx.tables.features.items():
        plan = ctx.tables.plans[group]
        for partition in range(ctx.partitions):
            try:
                if not ctx.placement.holds(table, partition):
                    continue
                raw = ctx.placement.database(table, partition).get(record_key)
            except Exception:  # noqa: S112 (recovering or moving: nothing to say of it now)
                continue
            if raw is None:
                continue
            job = ReplayJob.decode(raw)
            entry = out.setdefault(group, {"partitions": {}})
            entry["partitions"][str(partition)] = {
                "aggregations": sorted(job.aggregations.values()),
                "done": job.done,
                # Not done and not running: nothing runs it now (a rebalance, a recovery, a stopped loop).
                "running": not job.done and (group, partition, record_key) in running,
                "replayed": job.replayed,
                "left": job.left(),
                "whole_history": job.whole_history,
                "incomplete": incomplete_features(plan, job, now),
            }
    return out


async def pipeline_answer(request: web.Request, ctx: ApiContext) -> web.Response:
    """The pipeline this worker runs."""
    return web.Response(body=orjson.dumps(describe(ctx)), content_type=JSON)
