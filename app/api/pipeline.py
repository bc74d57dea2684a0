"""`GET /pipeline`: the normalized spec and what it derives (topics, tables, partitions, features)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import orjson
from aiohttp import web
from faust.web import View

from app.api.http import JSON
from app.api.tables import table_columns
from app.runtime import app, pipeline, settings
from tables.features import FEATURE_TABLES, GROUPS
from tables.lookups import LOOKUP_TABLES


def describe() -> dict[str, Any]:
    group = settings.group_id(pipeline.name)
    tables = [
        {
            "name": name,
            "kind": kind,
            "changelog_topic": table.changelog_topic.get_topic_name(),
            "partitions": settings.partitions,
            "columns": table_columns(name),
        }
        for kind, registry in (("lookup", LOOKUP_TABLES), ("features", FEATURE_TABLES))
        for name, table in registry.items()
    ]
    return {
        "name": pipeline.name,
        "consumer_group": group,
        "partitions": settings.partitions,
        "spec": pipeline.model_dump(mode="json", by_alias=True),
        "topics": [asdict(plan) for plan in pipeline.topics(settings.partitions, group)],
        "tables": tables,
        "features": {name: plan.feature_names() for name, plan in GROUPS.items()},
    }


@app.page("/pipeline")
class PipelineView(View):
    """The pipeline this worker runs."""

    async def get(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(describe()), content_type=JSON)
