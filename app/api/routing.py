"""Who owns a key, and asking them: any worker answers any request.

A table's partition p lives on the worker that has changelog partition p active (Faust's assignment,
shared by every member through the group protocol). A worker answers from its RocksDB only for
partitions it holds active and only when no recovery is running; a request for another worker's
key is forwarded once (marked with ``X-Hydrant-Forwarded``, so it is never forwarded again). During
a rebalance, an owner that is unknown, gone, or no longer owns the partition gives 503 with
Retry-After — never an answer from state that may be stale.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from faust.types import TP

from app.api.health import readiness
from app.api.http import JSON, error_response
from app.records.partitioning import partition_for
from app.runtime import app, settings
from tables.store import local_db, serves

logger = logging.getLogger(__name__)

FORWARDED = "X-Hydrant-Forwarded"
FORWARD_TIMEOUT = aiohttp.ClientTimeout(total=10)
RETRY = {"Retry-After": "1"}


class Unavailable(Exception):
    """The answer cannot be given right now (503 with Retry-After): ``code`` and a message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def response(self) -> web.Response:
        return error_response(503, self.code, str(self), RETRY)


class Placement:
    """Where table partitions live and how to reach the other workers, as this process sees it.

    This is the worker process's view: Faust's assignment and recovery state. The serving process
    (app/serving/process.py) has its own, read from the worker's bulletin."""

    def ensure_ready(self) -> None:
        ready, reason = readiness(app)
        if not ready:
            raise Unavailable("not_ready", reason)
        if app.rebalancing:
            raise Unavailable("rebalancing", "partitions are being reassigned between workers")

    def holds(self, table: Any, partition: int) -> bool:
        """This worker answers ``partition`` of ``table`` from RocksDB: it holds it active."""
        return serves(table, partition)

    def owner_of(self, table: Any, partition: int) -> str | None:
        """Base URL of the worker with ``partition`` of ``table`` active; None while unknown."""
        urls: Mapping[TP, str] = app.assignor._tps_url  # type: ignore[attr-defined]  # Faust keeps it private
        url = urls.get(changelog_tp(table, partition))
        return str(url).rstrip("/") if url else None

    def own_url(self) -> str:
        return str(app.conf.canonical_url).rstrip("/")

    def database(self, table: Any, partition: int) -> Any:
        """The RocksDB database (rocksdict, raw mode) of ``partition`` of ``table``, one this worker
        holds."""
        return local_db(table, partition)

    @property
    def client(self) -> aiohttp.ClientSession:
        return app.http_client


WORKER = Placement()


def own_url() -> str:
    return WORKER.own_url()


def is_forwarded(request: web.Request) -> bool:
    return FORWARDED in request.headers


def ensure_ready() -> None:
    WORKER.ensure_ready()


def changelog_tp(table: Any, partition: int) -> TP:
    return TP(table.changelog_topic.get_topic_name(), partition)


def holds(table: Any, partition: int) -> bool:
    return WORKER.holds(table, partition)


def owner_of(table: Any, partition: int) -> str | None:
    return WORKER.owner_of(table, partition)


def home_partition(key: bytes) -> int:
    return partition_for(key, settings.partitions)


async def answer_elsewhere(
    request: web.Request, table: Any, key: bytes, placement: Placement = WORKER
) -> web.Response | None:
    """For a one-key request: None when this worker answers ``key`` itself (ready, partition
    active here); else the owner's answer, relayed. Raises Unavailable while that cannot be known."""
    placement.ensure_ready()
    partition = home_partition(key)
    if placement.holds(table, partition):
        return None
    owner = placement.owner_of(table, partition)
    if is_forwarded(request) or owner is None:
        raise Unavailable("rebalancing", f"partition {partition} is moving between workers")
    return await relay(request, owner, placement)


def route_keys(
    table: Any, keys: list[bytes], forwarded: bool, placement: Placement = WORKER
) -> tuple[list[int], dict[str, list[int]]]:
    """Split key positions into those this worker answers and those per owner URL. Raises
    Unavailable when an owner is unknown, or (for a forwarded request) when a key is not ours."""
    local: list[int] = []
    remote: dict[str, list[int]] = {}
    me = placement.own_url()
    for index, key in enumerate(keys):
        partition = home_partition(key)
        if placement.holds(table, partition):
            local.append(index)
            continue
        owner = placement.owner_of(table, partition)
        if forwarded or owner is None or owner == me:
            raise Unavailable(
                "rebalancing", f"partition {partition} is moving between workers; its owner is not known yet"
            )
        remote.setdefault(owner, []).append(index)
    return local, remote


def partitions_by_owner(table: Any) -> dict[str, list[int]]:
    """Every partition of ``table`` by the URL of the worker holding it; Unavailable if any is
    unassigned."""
    owners: dict[str, list[int]] = {}
    me = own_url()
    for partition in range(settings.partitions):
        owner = me if holds(table, partition) else owner_of(table, partition)
        if owner is None:
            raise Unavailable("rebalancing", f"partition {partition} has no owner yet")
        owners.setdefault(owner, []).append(partition)
    return owners


def _forward_headers(request: web.Request) -> dict[str, str]:
    headers = {FORWARDED: "1"}
    if "Authorization" in request.headers:
        headers["Authorization"] = request.headers["Authorization"]
    return headers


async def relay(request: web.Request, owner: str, placement: Placement = WORKER) -> web.Response:
    """Forward a GET to ``owner`` and return its answer unchanged (status, body, content type)."""
    url = owner + request.path_qs
    try:
        async with placement.client.get(
            url, headers=_forward_headers(request), timeout=FORWARD_TIMEOUT
        ) as answer:
            body = await answer.read()
            return web.Response(body=body, status=answer.status, content_type=answer.content_type)
    except (aiohttp.ClientError, TimeoutError) as exc:
        logger.warning("forwarding %s to %s failed: %r", request.path_qs, owner, exc)
        return Unavailable(
            "owner_unavailable", f"the worker owning this key did not answer: {exc!r}"
        ).response()


async def ask(
    request: web.Request,
    owner: str,
    method: str,
    path: str,
    body: Mapping[str, Any] | None = None,
    params: Mapping[str, str] | None = None,
    placement: Placement = WORKER,
) -> Any:
    """A forwarded JSON request to another worker; its 200 answer parsed. An error answer from the
    owner is passed on as :class:`Relayed`; no answer at all is Unavailable."""
    try:
        async with placement.client.request(
            method,
            owner + path,
            params=params,
            data=orjson.dumps(body) if body is not None else None,
            headers={**_forward_headers(request), "Content-Type": JSON},
            timeout=FORWARD_TIMEOUT,
        ) as answer:
            payload = await answer.read()
            if answer.status != 200:
                raise Relayed(answer.status, payload)
            return orjson.loads(payload)
    except (aiohttp.ClientError, TimeoutError) as exc:
        logger.warning("forwarding %s %s to %s failed: %r", method, path, owner, exc)
        raise Unavailable("owner_unavailable", f"worker {owner} did not answer: {exc!r}") from None


class Relayed(Exception):
    """Another worker's error answer, returned to the client as it was."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.body = body

    def response(self) -> web.Response:
        headers = RETRY if self.status == 503 else None
        return web.Response(body=self.body, status=self.status, content_type=JSON, headers=headers)
