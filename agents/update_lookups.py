"""`update_<lookup>`: each lookup topic's records into its table, a batch at a time; and
`replicate_<lookup>`: a global lookup's whole topic into this worker's replica."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from app.engine.lookups import LookupUpdater
from app.engine.replicas import ReplicaUpdater
from app.faust_ext.intake import Intake
from app.kafka.clients import consumer_options
from app.kafka.replica_feed import follow_topic
from app.runtime import app, lookup_sources, lookup_updaters, replica_updaters, settings, worker_io


def _task(updater: LookupUpdater, source: Intake) -> Callable[[], Coroutine[Any, Any, None]]:
    async def update_lookup() -> None:
        await updater.run(worker_io, source)

    update_lookup.__name__ = update_lookup.__qualname__ = f"update_{updater.name}"
    return update_lookup


for _name, _updater in lookup_updaters.items():
    app.task(_task(_updater, lookup_sources[_name]))


def _replica_task(updater: ReplicaUpdater) -> Callable[[], Coroutine[Any, Any, None]]:
    async def replicate_lookup() -> None:
        positions = updater.replica.positions()
        never = asyncio.Event()  # the task ends when the worker cancels it
        await follow_topic(
            consumer_options(settings), updater.spec.topic, positions, updater.apply, updater.caught_up, never
        )

    replicate_lookup.__name__ = replicate_lookup.__qualname__ = f"replicate_{updater.name}"
    return replicate_lookup


for _replica in replica_updaters.values():
    app.task(_replica_task(_replica))
