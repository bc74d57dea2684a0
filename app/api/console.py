"""``GET /ui``: the operator console, one page per worker (docs/console.md). Its files are in
``app/api/static/`` (no build step, no CDN: it works offline); it reads ``/pipeline`` and
``/status`` (app/api/status.py) with the token the user enters. Open without a token itself."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from app.api.http import error_response

STATIC = Path(__file__).with_name("static")
ASSETS = {"ui.js": "application/javascript", "ui.css": "text/css"}  # what /ui/{asset} serves
_FILES = {name: (STATIC / name).read_bytes() for name in ("ui.html", *ASSETS)}  # read once: a few KB
NO_STORE = {"Cache-Control": "no-cache"}  # a new version is picked up on the next load


async def ui_page(request: web.Request, ctx: object) -> web.Response:
    """The console page: 200 HTML."""
    return web.Response(body=_FILES["ui.html"], content_type="text/html", charset="utf-8", headers=NO_STORE)


async def ui_asset(request: web.Request, ctx: object, asset: str) -> web.Response:
    """One of the console's files: 200, or 404 ``unknown_asset``."""
    if asset not in ASSETS:
        return error_response(404, "unknown_asset", f"no console file {asset!r}")
    return web.Response(body=_FILES[asset], content_type=ASSETS[asset], charset="utf-8", headers=NO_STORE)
