"""The API's routes on Faust's web server: each view calls its handler with the worker's
:class:`ApiContext` (the runtime calls :func:`register`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from faust.web import View

from app.api.context import ApiContext
from app.api.features import lookup_batch, lookup_one
from app.api.health import healthz, metrics, readyz
from app.api.openapi import openapi_answer
from app.api.pipeline import pipeline_answer
from app.api.tables import lookup_row, scan_table

Handler = Callable[..., Awaitable[web.Response]]

#: (method, path, handler): a handler takes the request, the context, then the path's parameters
ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("get", "/healthz", healthz),
    ("get", "/readyz", readyz),
    ("get", "/metrics", metrics),
    ("get", "/features/{group}/{key}", lookup_one),
    ("post", "/features/{group}", lookup_batch),
    ("get", "/tables/{lookup}/{key}", lookup_row),
    ("get", "/tables/{name}", scan_table),
    ("get", "/pipeline", pipeline_answer),
    ("get", "/openapi.json", openapi_answer),
)


def register(app: Any, ctx: ApiContext) -> None:
    """Add every route of :data:`ROUTES` to ``app`` (a faust.App), answering from ``ctx``."""
    for method, path, handler in ROUTES:
        app.page(path)(_view(method, handler, ctx))


def _view(method: str, handler: Handler, ctx: ApiContext) -> type[View]:
    async def answer(self: View, request: web.Request, **params: str) -> web.Response:
        return await handler(request, ctx, **params)

    return type(f"{handler.__name__}_view", (View,), {method: answer, "__doc__": handler.__doc__})
