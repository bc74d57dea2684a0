"""What every HTTP request goes through: metrics, bearer auth, JSON errors (aiohttp middlewares that wrap
every route, aiohttp's own 404/405/413 answers included; app/faust_ext/app.py installs them)."""

from __future__ import annotations

import functools
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from app.errors import ApiError
from app.metrics import HTTP_REQUEST_SECONDS, HTTP_REQUESTS

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_BODY_BYTES = 1024 * 1024  # room for a full batch (1,000 keys of 256 characters)
PROTECTED_PREFIXES = ("/features", "/tables", "/pipeline", "/services", "/ingest", "/applied", "/status")
JSON = "application/json"


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """The one JSON error shape of the API: ``{"error": {"code", "message"}}``."""
    body = orjson.dumps({"error": {"code": code, "message": message}})
    return web.Response(body=body, status=status, content_type=JSON, headers=headers)


class HttpError(ApiError):
    """An error answer of the API (the handlers' one ``except``): ``status``, ``code``, message."""

    headers: dict[str, str] | None = None

    def response(self) -> web.Response:
        return error_response(self.status, self.code, str(self), self.headers)


def route_label(request: web.Request) -> str:
    """The route template (``/features/{group}/{key}``; ``unmatched``), never the raw path: bounded labels."""
    route = request.match_info.route
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else "unmatched"


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own errors (no route, wrong method, body too large) and anything a view raises
    become the JSON error shape; an unexpected exception is logged and answered 500."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        message = exc.reason if exc.status != 404 else f"no route for {request.method} {request.path}"
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, code, message, headers)
    except HttpError as exc:  # raised outside a handler's own ``except``
        return exc.response()
    except Exception:
        logger.exception("unhandled error answering %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error; see the worker log")


def bearer_auth(token: str | None) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """With a token, the data endpoints need ``Authorization: Bearer <token>`` (401 otherwise);
    health, readiness, metrics and the OpenAPI document stay open."""
    expected = f"Bearer {token}".encode() if token else None

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (
            expected is not None
            and request.path.startswith(PROTECTED_PREFIXES)
            and not request.get("passed_on")  # the worker checks it (app/serving/process.py)
        ):
            given = request.headers.get("Authorization", "").encode("utf-8", errors="replace")
            if not hmac.compare_digest(given, expected):
                return error_response(
                    401,
                    "unauthorized",
                    "this endpoint needs 'Authorization: Bearer <HYDRANT_API_TOKEN>'",
                    {"WWW-Authenticate": 'Bearer realm="hydrant"'},
                )
        return await handler(request)

    return auth


@web.middleware
async def http_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    """hydrant_http_requests_total and hydrant_http_request_duration_seconds by route and status."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        if not request.get("passed_on"):  # the serving process hands it to the worker, which counts it
            counted, timed = _series(request.method, route_label(request), status)
            counted.inc()
            timed.observe(time.perf_counter() - started)


@functools.lru_cache(maxsize=4096)  # bounded labels: methods x route templates x statuses
def _series(method: str, route: str, status: int) -> tuple[Any, Any]:
    """The labelled children of the HTTP metrics (``labels()`` costs more than the count itself)."""
    return HTTP_REQUESTS.labels(method, route, str(status)), HTTP_REQUEST_SECONDS.labels(method, route)


def application_options(api_token: str | None) -> dict[str, Any]:
    """aiohttp Application options: body limit and the middlewares, outermost first."""
    return {
        "client_max_size": MAX_BODY_BYTES,
        "middlewares": [http_metrics, json_errors, bearer_auth(api_token)],
    }
