"""`serving_process`: keeps the worker's serving processes running and their status current."""

from __future__ import annotations

from app.runtime import app, serving


@app.task
async def serving_process() -> None:
    await serving.watch()
