"""`update_<lookup>`: each lookup topic's records into its table, a batch at a time."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from app.engine.lookups import LookupUpdater
from app.faust_ext.intake import Intake
from app.runtime import app, lookup_sources, lookup_updaters, worker_io


def _task(updater: LookupUpdater, source: Intake) -> Callable[[], Coroutine[Any, Any, None]]:
    async def update_lookup() -> None:
        await updater.run(worker_io, source)

    update_lookup.__name__ = update_lookup.__qualname__ = f"update_{updater.name}"
    return update_lookup


for _name, _updater in lookup_updaters.items():
    app.task(_task(_updater, lookup_sources[_name]))
