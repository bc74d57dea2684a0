"""The worker's :class:`Placement` (faust-streaming 0.15.3): readiness from Faust's recovery, table
partitions from its assignment, other workers' URLs from its assignor."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp
from faust.types import TP

from app.api.placement import Placement, Unavailable


class WorkerPlacement(Placement):
    """Where partitions live as the worker's Faust app sees them."""

    def __init__(self, app: Any, conditions: Sequence[Callable[[], tuple[bool, str]]] = ()) -> None:
        self.app = app
        self.conditions = tuple(conditions)  # more (ready, reason) checks, e.g. global lookups read

    def readiness(self) -> tuple[bool, str]:
        """Ready once table recovery completed, no new recovery or rebalance is running and every
        condition holds."""
        for condition in self.conditions:
            ready, reason = condition()
            if not ready:
                return ready, reason
        app = self.app
        if getattr(app, "recovery_failure", None):
            return False, app.recovery_failure
        if not app.tables.recovery.completed.is_set():
            return False, "tables are recovering from their changelogs (first assignment not finished)"
        if app.in_recovery:
            return False, "tables are recovering after a rebalance"
        if app.rebalancing:  # partitions are moving; their recovery has not started yet
            return False, "partitions are being reassigned between workers"
        return True, "ready"

    def ensure_ready(self) -> None:
        super().ensure_ready()
        if self.app.rebalancing:
            raise Unavailable("rebalancing", "partitions are being reassigned between workers")

    def served_partitions(self) -> list[int]:
        changelogs = {t.changelog_topic.get_topic_name() for t in self.app.tables.values()}
        actives = self.app.assignor.assigned_actives()
        return sorted({tp.partition for tp in actives if tp.topic in changelogs})

    def holds(self, table: Any, partition: int) -> bool:
        return bool(table.serves(partition))

    def owner_of(self, table: Any, partition: int) -> str | None:
        urls: Mapping[TP, str] = self.app.assignor._tps_url  # Faust keeps the URLs private
        url = urls.get(TP(table.changelog, partition))
        return str(url).rstrip("/") if url else None

    def owners(self) -> dict[str, list[int]]:
        urls: Mapping[TP, str] = self.app.assignor._tps_url  # Faust keeps the URLs private
        out: dict[str, set[int]] = {}
        for tp, url in urls.items():
            if tp.topic.endswith("-changelog"):
                out.setdefault(str(url).rstrip("/"), set()).add(tp.partition)
        return {url: sorted(partitions) for url, partitions in sorted(out.items())}

    def own_url(self) -> str:
        return str(self.app.conf.canonical_url).rstrip("/")

    def database(self, table: Any, partition: int) -> Any:
        return table.db(partition)

    @property
    def client(self) -> aiohttp.ClientSession:
        return self.app.http_client
