"""`GET /tables/{lookup}/{key}` (one lookup row) and `GET /tables/{name}` (a whole table across
every worker, as JSON, CSV or Parquet; each partition answered exactly once, rows in key order; a
feature group's rows carry its key fields' values beside the key's string form)."""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any

import orjson
import pandas as pd
from aiohttp import web
from pydantic import ValidationError

from app.api.context import ApiContext
from app.api.features import (
    BadRequest,
    parse_at,
    request_body,
    split_names,
    validation_message,
)
from app.api.forwarding import answer_elsewhere, ask, is_forwarded, partitions_by_owner, route_keys
from app.api.http import JSON, HttpError, error_response
from app.api.models import LookupBatchRequest, ScanQuery
from app.api.placement import Unavailable
from app.records.cells import csv_text, parquet_ready
from app.records.keys import split_key
from app.records.partitioning import partition_for
from tables.expiry import read_clock
from tables.plans import GroupPlan
from tables.read import key_answer, selection
from tables.registry import entity_keys, stored_state
from tables.replay import incomplete_selected
from tables.store import local_keys, prefix_scan

PARQUET = "application/vnd.apache.parquet"
YIELD_EVERY = 500  # rows scanned between giving the event loop back to other requests


def table_columns(ctx: ApiContext, name: str) -> list[str]:
    """``key`` then the lookup's fields, or ``key``, the group's key fields and its features, in
    spec order."""
    if name in ctx.tables.lookups:
        return ["key", *ctx.pipeline.lookups[name].fields]
    plan = ctx.tables.plans[name]
    answered = [*plan.feature_names(), *freshness_columns(plan)]
    return ["key", *key_columns(plan.key, answered), *answered]


def freshness_columns(plan: GroupPlan) -> list[str]:
    """The columns after a group's features: ``newest_event``, and ``stale`` when it has a ``max_age``."""
    return ["newest_event"] if plan.max_age is None else ["newest_event", "stale"]


def key_columns(fields: tuple[str, ...], features: list[str]) -> list[str]:
    """The key field columns of a group keyed by ``fields``: each field but one named like another
    column (``key`` or a feature), which would be that column twice."""
    return [f for f in fields if f != "key" and f not in features]


def key_values(fields: tuple[str, ...], key: str) -> dict[str, str | None]:
    """A stored key's value per key field, as strings (all None for a key that does not split into
    them, which the engine never stores)."""
    try:
        return dict(zip(fields, split_key(key, len(fields)), strict=True))
    except ValueError:
        return dict.fromkeys(fields)


def unknown_table(ctx: ApiContext, name: str) -> web.Response:
    """404 ``unknown_table``, naming the tables there are."""
    known = ", ".join(ctx.tables.all())
    return error_response(404, "unknown_table", f"no table {name!r} (lookups and feature groups: {known})")


def unknown_lookup(ctx: ApiContext, lookup: str) -> web.Response:
    """404 ``unknown_table`` naming the lookups (and the feature-group path, for a group's name)."""
    hint = (
        f"; {lookup!r} is a feature group: use /features/{lookup}/<key>" if lookup in ctx.tables.plans else ""
    )
    return error_response(
        404, "unknown_table", f"no lookup table {lookup!r} (lookups: {', '.join(ctx.tables.lookups)}){hint}"
    )


async def lookup_row(request: web.Request, ctx: ApiContext, lookup: str, key: str) -> web.Response:
    """One lookup row: 200, 404 (table, key), 503."""
    lookups = ctx.tables.lookups
    if lookup not in lookups:
        return unknown_lookup(ctx, lookup)
    table = lookups[lookup]
    raw_key = key.encode("utf-8")
    try:
        relayed = await answer_elsewhere(request, table, raw_key, ctx.partitions, ctx.placement)
    except HttpError as exc:
        return exc.response()
    if relayed is not None:
        return relayed
    raw = ctx.placement.database(table, partition_for(raw_key, ctx.partitions)).get(raw_key)
    if raw is None:
        return error_response(404, "key_not_found", f"key {key!r} is not in lookup {lookup!r}")
    body = b'{"table":%b,"key":%b,"value":%b}' % (orjson.dumps(lookup), orjson.dumps(key), raw)
    return web.Response(body=body, content_type=JSON)


async def lookup_rows_batch(request: web.Request, ctx: ApiContext, name: str) -> web.Response:
    """Rows of up to 1000 keys of lookup ``name``, in request order: 200, 400, 404 (table), 413, 503
    (routed for lookups only: a feature group's table answers POST with 405)."""
    lookup = name
    if lookup not in ctx.tables.lookups:
        return unknown_lookup(ctx, lookup)
    try:
        batch = await request_body(request, LookupBatchRequest, lambda b: len(b.keys), "keys")
        rows = await lookup_rows(request, ctx, lookup, batch.keys)
    except HttpError as exc:
        return exc.response()
    results = [
        {"key": key, "found": row is not None, **({"value": row} if row is not None else {})}
        for key, row in zip(batch.keys, rows, strict=True)
    ]
    return web.Response(body=orjson.dumps({"table": lookup, "results": results}), content_type=JSON)


async def lookup_rows(request: web.Request, ctx: ApiContext, lookup: str, keys: list[str]) -> list[Any]:
    """Per key its lookup row (a dict) or None, read here or asked of its owner, one request per
    owner, in parallel. HttpError: rebalancing, owner's error."""
    placement = ctx.placement
    placement.ensure_ready()
    table = ctx.tables.lookups[lookup]
    raw_keys = [k.encode("utf-8") for k in keys]
    local, remote = route_keys(table, raw_keys, is_forwarded(request), ctx.partitions, placement)
    asked = [
        ask(request, owner, "POST", f"/tables/{lookup}", {"keys": [keys[i] for i in at]}, placement=placement)
        for owner, at in remote.items()
    ]
    rows: list[Any] = [None] * len(keys)
    for partition, positions in local.items():
        get = placement.database(table, partition).get
        for index in positions:
            raw = get(raw_keys[index])
            rows[index] = None if raw is None else orjson.loads(raw)
    for positions, answer in zip(remote.values(), await asyncio.gather(*asked), strict=True):
        for index, result in zip(positions, answer["results"], strict=True):
            rows[index] = result.get("value")
    return rows


async def scan_partitions(
    ctx: ApiContext, name: str, partitions: list[int], columns: list[str], at: int | None, limit: int
) -> tuple[list[dict[str, Any]], int, bool]:
    """(rows in key order, keys skipped as outside retention, truncated) of this worker's
    ``partitions`` of table ``name``; at most ``limit`` rows."""
    rows: list[dict[str, Any]] = []
    skipped = 0
    seen = 0
    wanted = frozenset(columns[1:])
    plan = ctx.tables.plans.get(name)
    answered = [*plan.feature_names(), *freshness_columns(plan)] if plan else []
    fields = [f for f in key_columns(plan.key, answered) if f in wanted] if plan else []
    for partition in partitions:
        if name in ctx.tables.lookups:
            for raw_key, raw in local_keys(ctx.tables.lookups[name], partition):
                fields = orjson.loads(raw)
                rows.append({"key": raw_key.decode("utf-8"), **{c: fields.get(c) for c in columns[1:]}})
                seen += 1
                if seen % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
        else:
            assert at is not None and plan is not None
            table = ctx.tables.features[name]
            db = table.db(partition)
            scan = prefix_scan(db)  # one range reader for the partition's keys, in key order
            features = wanted & set(plan.names)
            chosen = selection(plan, features or None)  # none asked: newest_event over every window
            # the partition's features a replay still completes
            missing = incomplete_selected(plan, db, chosen, int(time.time() * 1000))
            freshness = [c for c in freshness_columns(plan) if c in wanted]
            clock = read_clock(db.get) if plan.ttl is not None else None
            for raw_key in entity_keys(table, partition):
                state = stored_state(plan, db, raw_key, scan)
                answer = key_answer(plan, raw_key.decode("utf-8"), state, at, chosen, missing, clock)
                if not answer["found"]:  # a late event's mark only (KeyState.mark_processed), or expired
                    continue
                if "error" in answer:
                    skipped += 1
                else:
                    row: dict[str, Any] = {"key": answer["key"]}
                    if fields:
                        values = key_values(plan.key, row["key"])
                        row.update((f, values[f]) for f in fields)
                    if features:
                        row.update(answer["features"])
                    row.update((c, answer[c]) for c in freshness)
                    if missing:
                        row["incomplete"] = missing
                    rows.append(row)
                seen += 1
                if seen % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
    rows.sort(key=lambda row: row["key"])
    return rows[:limit], skipped, len(rows) > limit


def encode(fmt: str, answer: dict[str, Any]) -> tuple[bytes, str]:
    """The answer's body and content type; CSV and Parquet hold the rows only (columns in order)."""
    if fmt == "json":
        return orjson.dumps(answer), JSON
    frame = pd.DataFrame(answer["rows"], columns=answer["columns"])
    if fmt == "csv":
        return csv_text(frame).encode("utf-8"), "text/csv"
    buffer = io.BytesIO()
    parquet_ready(frame).to_parquet(buffer, index=False)
    return buffer.getvalue(), PARQUET


async def scan_table(request: web.Request, ctx: ApiContext, name: str) -> web.Response:
    """A whole lookup table or feature group, across every worker: 200, 400, 404 (table), 503."""
    tables = ctx.tables.all()
    if name not in tables:
        return unknown_table(ctx, name)
    table, placement = tables[name], ctx.placement
    try:
        query = ScanQuery.model_validate(dict(request.query))
        columns = select_columns(ctx, name, split_names(query.columns))
        at = parse_at(query.at) if name in ctx.tables.plans else None
        placement.ensure_ready()
        if is_forwarded(request):
            mine = [p for p in range(ctx.partitions) if placement.holds(table, p)]
            rows, skipped, truncated = await scan_partitions(ctx, name, mine, columns, at, query.limit)
            answer = {"partitions": mine, "rows": rows, "skipped": skipped, "truncated": truncated}
            return web.Response(body=orjson.dumps(answer), content_type=JSON)
        owners = partitions_by_owner(table, ctx.partitions, placement)
        me = placement.own_url()
        params = {"limit": str(query.limit), "format": "json"}
        if query.columns:
            params["columns"] = query.columns
        if at is not None:
            params["at"] = str(at)
        remote = [owner for owner in owners if owner != me]
        answers = await asyncio.gather(
            *(
                ask(request, owner, "GET", request.path, params=params, placement=placement)
                for owner in remote
            )
        )
        rows, skipped, truncated = await scan_partitions(
            ctx, name, owners.get(me, []), columns, at, query.limit
        )
    except ValidationError as exc:
        return error_response(400, "bad_request", validation_message(exc))
    except HttpError as exc:
        return exc.response()
    for owner, answer in zip(remote, answers, strict=True):
        if sorted(answer["partitions"]) != owners[owner]:
            return Unavailable(
                "rebalancing", f"worker {owner} no longer holds the partitions it was asked for"
            ).response()
        rows.extend(answer["rows"])
        skipped += answer["skipped"]
        truncated = truncated or answer["truncated"]
    rows.sort(key=lambda row: row["key"])
    truncated = truncated or len(rows) > query.limit
    if any("incomplete" in row for row in rows):  # a replay runs (docs/operations.md): say which
        columns = [*columns, "incomplete"]
        for row in rows:
            row.setdefault("incomplete", [])
    answer = {
        "table": name,
        "columns": columns,
        "rows": rows[: query.limit],
        "count": min(len(rows), query.limit),
        "truncated": truncated,
        "skipped": skipped,
        "at": at,
    }
    body, content_type = await asyncio.to_thread(encode, query.format, answer)
    return web.Response(body=body, content_type=content_type)


def select_columns(ctx: ApiContext, name: str, wanted: list[str] | None) -> list[str]:
    """``key`` then the wanted columns in the order asked (all when None); BadRequest for an
    unknown one."""
    known = table_columns(ctx, name)
    if wanted is None:
        return known
    for column in wanted:
        if column not in known:
            raise BadRequest("unknown_column", f"table {name!r} has no column {column!r} (columns: {known})")
    return ["key", *[c for c in dict.fromkeys(wanted) if c != "key"]]
