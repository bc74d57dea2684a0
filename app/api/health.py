"""`/healthz`, `/readyz` and `/metrics` of the worker's web server."""

from __future__ import annotations

import orjson
from aiohttp import web

from app.api.context import ApiContext
from app.api.http import JSON, error_response
from app.metrics import READY, render


async def healthz(request: web.Request, ctx: ApiContext) -> web.Response:
    """200 while the process serves HTTP."""
    return web.Response(body=orjson.dumps({"status": "ok"}), content_type=JSON)


async def readyz(request: web.Request, ctx: ApiContext) -> web.Response:
    """200 with the table partitions served here once every table finished recovery; 503 with the
    reason before."""
    ready, reason = ctx.placement.readiness()
    READY.set(1 if ready else 0)
    if ready:
        body = {"status": "ready", "partitions": ctx.placement.served_partitions()}
        return web.Response(body=orjson.dumps(body), content_type=JSON)
    return error_response(503, "not_ready", reason, {"Retry-After": "1"})


async def metrics(request: web.Request, ctx: ApiContext) -> web.Response:
    """Prometheus text format."""
    ready, _ = ctx.placement.readiness()
    READY.set(1 if ready else 0)
    body, content_type = render()
    return web.Response(body=body, headers={"Content-Type": content_type})
