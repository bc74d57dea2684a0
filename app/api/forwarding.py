"""Forwarding: any worker answers any key, asking its owner once (``X-Hydrant-Forwarded``) when
it is not itself; 503 with Retry-After while the owner is unknown (docs/api.md, routing)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from app.api.http import JSON, HttpError
from app.api.placement import RETRY, Placement, Unavailable
from app.records.partitioning import partition_for

logger = logging.getLogger(__name__)

FORWARDED = "X-Hydrant-Forwarded"
FORWARD_TIMEOUT = aiohttp.ClientTimeout(total=10)


def is_forwarded(request: web.Request) -> bool:
    """Whether another worker forwarded ``request`` (it must then be answered here or 503)."""
    return FORWARDED in request.headers


async def answer_elsewhere(
    request: web.Request, table: Any, key: bytes, partitions: int, placement: Placement
) -> web.Response | None:
    """For a one-key request: None when this worker answers ``key`` itself (ready, partition
    active here); else the owner's answer, relayed. Raises Unavailable while that cannot be known."""
    placement.ensure_ready()
    partition = partition_for(key, partitions)
    if placement.holds(table, partition):
        return None
    owner = placement.owner_of(table, partition)
    if is_forwarded(request) or owner is None:
        raise Unavailable("rebalancing", f"partition {partition} is moving between workers")
    return await relay(request, owner, placement)


def route_keys(
    table: Any, keys: list[bytes], forwarded: bool, partitions: int, placement: Placement
) -> tuple[dict[int, list[int]], dict[str, list[int]]]:
    """Split key positions into those this worker answers, per partition, and those per owner URL.
    Raises Unavailable when an owner is unknown, or (for a forwarded request) when a key is not ours."""
    local: dict[int, list[int]] = {}
    remote: dict[str, list[int]] = {}
    me = placement.own_url()
    for index, key in enumerate(keys):
        partition = partition_for(key, partitions)
        if placement.holds(table, partition):
            local.setdefault(partition, []).append(index)
            continue
        owner = placement.owner_of(table, partition)
        if forwarded or owner is None or owner == me:
            raise Unavailable(
                "rebalancing", f"partition {partition} is moving between workers; its owner is not known yet"
            )
        remote.setdefault(owner, []).append(index)
    return local, remote


def partitions_by_owner(table: Any, partitions: int, placement: Placement) -> dict[str, list[int]]:
    """Every partition of ``table`` by the URL of the worker holding it; Unavailable if any is
    unassigned."""
    owners: dict[str, list[int]] = {}
    me = placement.own_url()
    for partition in range(partitions):
        owner = me if placement.holds(table, partition) else placement.owner_of(table, partition)
        if owner is None:
            raise Unavailable("rebalancing", f"partition {partition} has no owner yet")
        owners.setdefault(owner, []).append(partition)
    return owners


def _forward_headers(request: web.Request) -> dict[str, str]:
    headers = {FORWARDED: "1"}
    if "Authorization" in request.headers:
        headers["Authorization"] = request.headers["Authorization"]
    return headers


async def relay(request: web.Request, owner: str, placement: Placement) -> web.Response:
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
    *,
    placement: Placement,
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


class Relayed(HttpError):
    """Another worker's error answer, returned to the client as it was."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__("relayed", f"the owner answered {status}")
        self.status = status
        self.body = body

    def response(self) -> web.Response:
        headers = RETRY if self.status == 503 else None
        return web.Response(body=self.body, status=self.status, content_type=JSON, headers=headers)
