"""`GET /pipeline`: the normalized spec and what it derives (topics, tables, partitions, features)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import orjson
from aiohttp import web

from app.api.context import ApiContext
from app.api.http import JSON
from app.api.services import service_info
from app.api.tables import table_columns
from app.config.routing import topic_plans


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
    }


async def pipeline_answer(request: web.Request, ctx: ApiContext) -> web.Response:
    """The pipeline this worker runs."""
    return web.Response(body=orjson.dumps(describe(ctx)), content_type=JSON)
