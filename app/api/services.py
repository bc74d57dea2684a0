"""`GET /services` and `POST /services/{name}`: a model's feature vector per request row, from
several groups and lookups keyed by different fields (each read here or asked of its owners, one
request per owner and group, in parallel), plus request fields and computed columns."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from app.api.context import ApiContext
from app.api.features import BadRequest, group_results, key_value, parse_at, request_body
from app.api.http import JSON, HttpError, error_response
from app.api.models import ServiceRequest
from app.api.tables import lookup_rows
from app.config.services import ServicePlan
from app.records.keys import key_string


class RowError(Exception):
    """Why one request row cannot be answered: its ``code`` and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def service_info(plan: ServicePlan) -> dict[str, Any]:
    """A service as ``GET /services`` and ``GET /pipeline`` list it: its fields and typed columns."""
    return {
        "name": plan.name,
        "entities": list(plan.entities),
        "request": plan.request,
        "columns": [{"name": name, "type": kind} for name, kind in plan.columns],
    }


async def list_services(request: web.Request, ctx: ApiContext) -> web.Response:
    """Every service with its entity fields, request fields and answered columns with their types."""
    services = [service_info(plan) for plan in ctx.services.values()]
    return web.Response(body=orjson.dumps({"services": services}), content_type=JSON)


async def service_answer(request: web.Request, ctx: ApiContext, name: str) -> web.Response:
    """The service's columns per row, in request order: 200 (rows that cannot be answered carry an
    error), 400, 404 (service), 413, 503."""
    plan = ctx.services.get(name)
    if plan is None:
        known = ", ".join(ctx.services) or "none"
        return error_response(404, "unknown_service", f"no service {name!r} (services: {known})")
    try:
        body = await request_body(request, ServiceRequest, lambda b: len(b.rows), "rows")
        at = parse_at(body.at)
        rows = await answer_rows(request, ctx, plan, body.rows, at)
    except HttpError as exc:
        return exc.response()
    return web.Response(body=orjson.dumps({"service": name, "at": at, "rows": rows}), content_type=JSON)


async def answer_rows(
    request: web.Request, ctx: ApiContext, plan: ServicePlan, rows: list[Any], at: int
) -> list[dict[str, Any]]:
    """Each row's answer: its columns, the groups without state (``missing``) or outside retention,
    or its ``error``. HttpError when a group or lookup cannot be read (rebalancing, owner's error)."""
    checked: list[dict[str, Any] | RowError] = []
    for index, row in enumerate(rows):
        try:
            checked.append(checked_row(plan, index, row))
        except RowError as exc:
            checked.append(exc)
    # Per valid row, its key of each group then of each join, in string form.
    keyed = [
        [key_string([row[f] for f in g.key]) for g in plan.groups]
        + [key_string([row[j.on]]) for j in plan.joins]
        for row in checked
        if isinstance(row, dict)
    ]
    # One batch per group and lookup over the distinct keys of the valid rows, all in parallel.
    distinct = [list(dict.fromkeys(keys)) for keys in zip(*keyed, strict=True)] if keyed else []
    reads = [
        group_results(request, ctx, g.group, keys, _names(ctx, g.group, g.features), at)
        for g, keys in zip(plan.groups, distinct, strict=False)
    ]
    reads += [
        lookup_rows(request, ctx, j.lookup, keys)
        for j, keys in zip(plan.joins, distinct[len(plan.groups) :], strict=False)
    ]
    answers = await asyncio.gather(*reads)
    by_key = [dict(zip(keys, answer, strict=True)) for keys, answer in zip(distinct, answers, strict=True)]
    out = []
    rows_keys = iter(keyed)
    for row in checked:
        try:
            if isinstance(row, RowError):
                raise row
            out.append(
                _columns(plan, row, [found[key] for found, key in zip(by_key, next(rows_keys), strict=True)])
            )
        except RowError as exc:
            out.append({"error": {"code": exc.code, "message": str(exc)}})
    return out


def checked_row(plan: ServicePlan, index: int, row: Any) -> dict[str, Any]:
    """The entity and request fields of request row ``index``, typed; RowError naming what is wrong."""
    if not isinstance(row, dict):
        raise RowError("bad_row", f"rows[{index}]: expected an object with {', '.join(plan.entities)}")
    values: dict[str, Any] = {}
    for field in plan.entities:
        if row.get(field) is None or row[field] == "":  # as for events: no key
            raise RowError("missing_field", f"rows[{index}]: no value for the entity field {field!r}")
        try:
            values[field] = key_value(f"rows[{index}].{field}", row[field])
        except BadRequest as exc:
            raise RowError("bad_type", str(exc)) from None
    for field, kind in plan.request.items():
        if row.get(field) is None:
            raise RowError("missing_field", f"rows[{index}]: no value for the request field {field!r}")
        values[field] = _typed(f"rows[{index}].{field}", row[field], kind)
    return values


def _typed(where: str, value: Any, kind: str) -> Any:
    """``value`` as a request field of type ``kind`` (an int is a float too); RowError otherwise."""
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "float" and is_number:
        return float(value)
    if kind == "int" and is_number and float(value).is_integer():
        return int(value)
    if (kind == "str" and isinstance(value, str)) or (kind == "bool" and isinstance(value, bool)):
        return value
    raise RowError("bad_type", f"{where}: {value!r} is not a {kind}")


def _columns(
    plan: ServicePlan,
    row: dict[str, Any],
    answers: list[Any],
) -> dict[str, Any]:
    """One valid row's answer from its groups' results then its lookup rows (``answers``)."""
    columns = {field: row[field] for field in plan.request}
    missing, outside, incomplete, stale = [], [], [], []
    newest: dict[str, int | None] = {}
    for group, result in zip(plan.groups, answers, strict=False):
        values = result.get("features") or {}
        if not result["found"]:
            missing.append(group.group)
        elif "error" in result:
            outside.append(group.group)
        else:
            newest[group.group] = result["newest_event"]
            if result.get("stale"):
                stale.append(group.group)
        replaying = result.get("incomplete", ())
        for feature, column in group.features:
            columns[column] = values.get(feature)
            if feature in replaying:
                incomplete.append(column)
    for join, found in zip(plan.joins, answers[len(plan.groups) :], strict=True):
        lookup_row = found or {}
        for field, column in join.columns:
            columns[column] = lookup_row.get(field)
    scope = {**row, **columns}
    for column, expression in plan.computed:
        try:
            columns[column] = scope[column] = expression.evaluate(scope)
        except Exception as exc:  # any failure of user code: this row's error
            raise RowError(
                "expression",
                f"computed column {column!r} = {expression.source!r}: {type(exc).__name__}: {exc}",
            ) from None
    answer = {
        "features": columns,
        "missing": missing,
        "outside_retention": outside,
        "newest_event": newest,
        "stale": stale,
    }
    if incomplete:  # a replay still completes these columns (docs/operations.md)
        answer["incomplete"] = incomplete
    return answer


def _names(ctx: ApiContext, group: str, features: tuple[tuple[str, str], ...]) -> list[str] | None:
    """The feature names to ask of a group: None when the service reads all of them."""
    names = [feature for feature, _ in features]
    return None if len(names) == len(ctx.tables.plans[group].names) else names
