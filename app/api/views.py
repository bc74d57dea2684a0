"""The API's routes on Faust's web server: each view calls its handler with the worker's
:class:`ApiContext` (the runtime calls :func:`register`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from faust.web import View

from app.api.console import ui_asset, ui_page
from app.api.context import ApiContext
from app.api.features import lookup_batch, lookup_one
from app.api.health import healthz, metrics, readyz
from app.api.ingest import applied, ingest
from app.api.openapi import openapi_answer
from app.api.pipeline import pipeline_answer
from app.api.services import list_services, service_answer
from app.api.status import status_answer
from app.api.tables import lookup_row, lookup_rows_batch, scan_table

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
    ("get", "/services", list_services),
    ("post", "/services/{name}", service_answer),
    ("get", "/pipeline", pipeline_answer),
    ("post", "/ingest/{stream}", ingest),
    ("post", "/applied/{group}", applied),
    ("get", "/status", status_answer),
    ("get", "/ui", ui_page),
    ("get", "/ui/{asset}", ui_asset),
    ("get", "/openapi.json", openapi_answer),
)


def routes(ctx: ApiContext) -> list[tuple[str, str, Handler]]:
    """:data:`ROUTES` and ``POST /tables/{lookup}`` for each lookup of ``ctx``: on those paths only,
    so that a feature group's table allows GET alone (the Allow header follows the routes)."""
    batches = [("post", f"/tables/{name}", lookup_batch_of(name)) for name in ctx.tables.lookups]
    return [*ROUTES, *batches]


def lookup_batch_of(name: str) -> Handler:
    """``POST /tables/{name}`` of lookup ``name`` (a path without parameters)."""

    async def lookup_rows(request: web.Request, ctx: ApiContext) -> web.Response:
        return await lookup_rows_batch(request, ctx, name)

    lookup_rows.__doc__ = lookup_rows_batch.__doc__
    return lookup_rows


def register(app: Any, ctx: ApiContext) -> None:
    """Add every route of :func:`routes` to ``app`` (a faust.App), answering from ``ctx``: one view
    per path, with a method per handler of that path."""
    paths: dict[str, dict[str, Handler]] = {}
    for method, path, handler in routes(ctx):
        paths.setdefault(path, {})[method] = handler
    for path, handlers in paths.items():
        app.page(path)(_view(handlers, ctx))


def _view(handlers: dict[str, Handler], ctx: ApiContext) -> type[View]:
    def answer(handler: Handler) -> Callable[..., Awaitable[web.Response]]:
        async def method(self: View, request: web.Request, **params: str) -> web.Response:
            return await handler(request, ctx, **params)

        return method

    name = "_".join(h.__name__ for h in handlers.values())
    docs = " ".join(h.__doc__ or "" for h in handlers.values())
    methods = {method: answer(handler) for method, handler in handlers.items()}
    return type(f"{name}_view", (View,), {**methods, "__doc__": docs})
