"""What the API answers from (:class:`ApiContext`): built by the runtime for the worker and by the
serving process for itself, so every handler runs on plain objects."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from app.api.placement import Placement
from app.config.services import ServicePlan, service_plan
from app.config.spec import Pipeline
from tables.registry import StateTables


@dataclass(frozen=True)
class ApiContext:
    """The pipeline, its tables and partition count, and where the partitions live."""

    pipeline: Pipeline
    group_id: str
    partitions: int
    tables: StateTables
    placement: Placement
    protected: bool = False  # an API token is required (the OpenAPI document says so)
    producer: Callable[[], Any] | None = None  # the worker's started AIOKafkaProducer (HTTP ingest)
    #: the (group, partition, job record key) of each replay or backfill the worker runs now
    #: (app/engine/replay.py ``Replayer.running``); None: this process runs none
    replays_running: Callable[[], Collection[tuple[str, int, bytes]]] | None = None

    @cached_property
    def services(self) -> dict[str, ServicePlan]:
        """Each feature service's plan (its columns, groups, joins, compiled expressions)."""
        return {name: service_plan(self.pipeline, name) for name in self.pipeline.services}
