"""Where table partitions live and how to reach the other workers (:class:`Placement`), and the
503 answer given while that is not known (:class:`Unavailable`)."""

from __future__ import annotations

from typing import Any

import aiohttp

from app.api.http import HttpError

RETRY = {"Retry-After": "1"}


class Unavailable(HttpError):
    """The answer cannot be given right now (503 with Retry-After): retry after a second."""

    status = 503
    headers = RETRY


class Placement:
    """Readiness, ownership of table partitions and their state, as one process sees them: the
    worker's (app/faust_ext/placement.py) or a serving process's (app/serving/process.py)."""

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason): whether this process may answer from state now, and why not."""
        raise NotImplementedError

    def ensure_ready(self) -> None:
        """Unavailable unless this process may answer from state now."""
        ready, reason = self.readiness()
        if not ready:
            raise Unavailable("not_ready", reason)

    def served_partitions(self) -> list[int]:
        """The table partitions this worker holds active."""
        raise NotImplementedError

    def holds(self, table: Any, partition: int) -> bool:
        """This process answers ``partition`` of ``table`` from RocksDB."""
        raise NotImplementedError

    def owner_of(self, table: Any, partition: int) -> str | None:
        """Base URL of the worker with ``partition`` of ``table`` active; None while unknown."""
        raise NotImplementedError

    def own_url(self) -> str:
        """Base URL other workers reach this one at."""
        raise NotImplementedError

    def database(self, table: Any, partition: int) -> Any:
        """The RocksDB database (rocksdict, raw mode) of ``partition`` of ``table``, one it holds."""
        raise NotImplementedError

    def owners(self) -> dict[str, list[int]]:
        """Per worker URL of the group, the table partitions it holds active (as last assigned)."""
        return {}

    @property
    def client(self) -> aiohttp.ClientSession:
        """The HTTP client requests to other workers go through."""
        raise NotImplementedError
