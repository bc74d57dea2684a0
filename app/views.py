"""HTTP endpoints on Faust's web server: health, readiness, metrics.

Views read state through the App (its table registry and recovery service) and are found by
autodiscovery; nothing imports this module.
"""

from __future__ import annotations

from typing import Any

from faust.web import Request, Response, View

from app.main import app
from app.metrics import READY, render


def readiness(faust_app: Any) -> tuple[bool, str]:
    """(ready, reason): ready once table recovery completed and no new recovery is running."""
    recovery = faust_app.tables.recovery
    if not recovery.completed.is_set():
        return False, "tables are recovering from their changelogs (first assignment not finished)"
    if faust_app.in_recovery:
        return False, "tables are recovering after a rebalance"
    return True, "ready"


def error(web: Any, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """The one JSON error shape of the API."""
    return web.json({"error": {"code": code, "message": message}}, status=status, headers=headers)


@app.page("/healthz")
class Healthz(View):
    """200 while the process serves HTTP."""

    async def get(self, request: Request) -> Response:
        return self.json({"status": "ok"})


@app.page("/readyz")
class Readyz(View):
    """200 only after every table finished recovery; 503 with the reason before."""

    async def get(self, request: Request) -> Response:
        ready, reason = readiness(self.app)
        READY.set(1 if ready else 0)
        if ready:
            return self.json({"status": "ready"})
        return error(self, 503, "not_ready", reason, headers={"Retry-After": "1"})


@app.page("/metrics")
class Metrics(View):
    """Prometheus text format."""

    async def get(self, request: Request) -> Response:
        ready, _ = readiness(self.app)
        READY.set(1 if ready else 0)
        body, content_type = render()
        return self.bytes(body, content_type=content_type)
