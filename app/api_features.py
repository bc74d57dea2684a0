"""`GET /features/{group}/{key}`: one key's features, answered by any worker.

The worker that owns the key's partition answers from its RocksDB state; any other worker forwards
the request to the owner (found through Faust's partition assignment) and relays the answer.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
from faust.web import Request, Response, View

from app.main import app
from app.views import error, readiness
from tables.features import GROUPS, UnknownFeature, features_for, select_features, stored_state
from tables.windows import outside_retention

logger = logging.getLogger(__name__)
FORWARDED = "X-Hydrant-Forwarded"


def parse_at(text: str | None) -> int:
    """Epoch milliseconds from ``at`` (epoch ms or ISO-8601; default now); ValueError otherwise."""
    if text is None or text == "":
        return int(time.time() * 1000)
    if text.lstrip("-").isdigit():
        return int(text)
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def owner_url(table_name: str, key: bytes) -> str | None:
    """Base URL of the worker that owns ``key`` of ``table_name``; None while unknown (rebalancing)."""
    try:
        return str(app.router.key_store(table_name, key)).rstrip("/")
    except (KeyError, IndexError):
        return None


async def relay(request: Request, owner: str, web: Any) -> Response:
    """Forward the request to its owner and return the owner's answer unchanged."""
    url = owner + request.url.path_qs
    headers = {FORWARDED: "1"}
    if "Authorization" in request.headers:
        headers["Authorization"] = request.headers["Authorization"]
    try:
        async with app.http_client.get(
            url, headers=headers, timeout=aiohttp.ClientTimeout(total=5)
        ) as answer:
            body = await answer.read()
            return web.bytes(body, status=answer.status, content_type="application/json")
    except (aiohttp.ClientError, TimeoutError) as exc:
        logger.warning("forwarding %s to %s failed: %r", request.url.path_qs, owner, exc)
        return error(
            web,
            503,
            "owner_unavailable",
            f"the worker owning this key did not answer: {exc!r}",
            headers={"Retry-After": "1"},
        )


@app.page("/features/{group}/{key}")
class FeatureLookup(View):
    """Features of one key: 200, 400 (feature name, at), 404 (group, key), 422 (retention), 503."""

    async def get(self, request: Request, group: str, key: str) -> Response:
        if group not in GROUPS:
            return error(
                self, 404, "unknown_group", f"no feature group {group!r} (groups: {', '.join(GROUPS)})"
            )
        wanted = request.query.get("features")
        try:
            names = select_features(
                group, [n.strip() for n in wanted.split(",") if n.strip()] if wanted else None
            )
        except UnknownFeature as exc:
            return error(self, 400, "unknown_feature", f"group {group!r} has no feature {exc.args[0]!r}")
        try:
            at = parse_at(request.query.get("at"))
        except ValueError:
            return error(
                self, 400, "bad_at", f"at={request.query.get('at')!r} is neither epoch ms nor ISO-8601"
            )
        ready, reason = readiness(self.app)
        if not ready:
            return error(self, 503, "not_ready", reason, headers={"Retry-After": "1"})
        raw_key = key.encode("utf-8")
        owner = owner_url(f"features-{group}", raw_key)
        if owner is None:
            return error(
                self,
                503,
                "rebalancing",
                "partition owners are being reassigned",
                headers={"Retry-After": "1"},
            )
        if owner != str(self.app.conf.canonical_url).rstrip("/") and FORWARDED not in request.headers:
            return await relay(request, owner, self)
        state = stored_state(group, raw_key)
        if state is None:
            return error(self, 404, "key_not_found", f"key {key!r} has no state in group {group!r}")
        if outside_retention(GROUPS[group], state, at, names):
            return error(
                self,
                422,
                "outside_retention",
                f"at={at} needs buckets older than the retention of group {group!r}",
            )
        return self.json(
            {"group": group, "key": key, "at": at, "features": features_for(group, state, at, names)}
        )
