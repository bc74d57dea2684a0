"""HTTP endpoints on Faust's web server: health, readiness, metrics.

Views read state through the App (its table registry and recovery service) and are found by
autodiscovery; the data API (app/api/) uses :func:`readiness` too.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from faust.web import View

from app.api.http import JSON, error_response
from app.metrics import READY, render
from app.runtime import app


def readiness(faust_app: Any) -> tuple[bool, str]:
    """(ready, reason): ready once table recovery completed and no new recovery is running."""
    recovery = faust_app.tables.recovery
    if not recovery.completed.is_set():
        return False, "tables are recovering from their changelogs (first assignment not finished)"
    if faust_app.in_recovery:
        return False, "tables are recovering after a rebalance"
    if faust_app.rebalancing:  # partitions are moving; their recovery has not started yet
        return False, "partitions are being reassigned between workers"
    return True, "ready"


@app.page("/healthz")
class Healthz(View):
    """200 while the process serves HTTP."""

    async def get(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps({"status": "ok"}), content_type=JSON)


@app.page("/readyz")
class Readyz(View):
    """200 only after every table finished recovery; 503 with the reason before."""

    async def get(self, request: web.Request) -> web.Response:
        ready, reason = readiness(self.app)
        READY.set(1 if ready else 0)
        if ready:
            # Which table partitions this worker serves: what an operator (or a test) checks routing by.
            changelogs = {t.changelog_topic.get_topic_name() for t in self.app.tables.values()}
            actives = self.app.assignor.assigned_actives()
            partitions = sorted({tp.partition for tp in actives if tp.topic in changelogs})
            body = {"status": "ready", "partitions": partitions}
            return web.Response(body=orjson.dumps(body), content_type=JSON)
        return error_response(503, "not_ready", reason, {"Retry-After": "1"})


@app.page("/metrics")
class Metrics(View):
    """Prometheus text format."""

    async def get(self, request: web.Request) -> web.Response:
        ready, _ = readiness(self.app)
        READY.set(1 if ready else 0)
        body, content_type = render()
        return web.Response(body=body, headers={"Content-Type": content_type})
