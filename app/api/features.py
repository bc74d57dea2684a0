"""`GET /features/{group}/{key}` and `POST /features/{group}`: feature values of one key or of up to
1,000 keys, answered from this process's state or its owners' (batches split per owner). A key is its
string form (app/records/keys.py), taken as given: one that is no key of the group has no state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from app.api.context import ApiContext
from app.api.forwarding import answer_elsewhere, ask, is_forwarded, route_keys
from app.api.http import HttpError, error_response
from app.api.models import AT_LIMIT, KEY_INT_LIMIT, MAX_BATCH_KEYS, BatchRequest, FeatureQuery
from app.metrics import FEATURE_AGE, observe_many
from app.records.keys import key_string, split_key
from app.records.partitioning import partition_for
from tables.expiry import read_clock
from tables.key_state import Scanner
from tables.read import Selection, key_answer, selection
from tables.registry import UnknownFeature, select_features, stored_state
from tables.replay import incomplete_selected
from tables.store import prefix_scan

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class BadRequest(HttpError):
    """A 400 answer: ``code`` and a message naming what is wrong in the request."""

    status = 400


class TooLarge(HttpError):
    """A 413 answer: more items in a request than it takes."""

    status = 413


Body = TypeVar("Body", bound=BaseModel)


async def request_body(
    request: web.Request, model: type[Body], count: Callable[[Body], int], what: str
) -> Body:
    """The request's JSON body as ``model``: BadRequest (``bad_json``, ``bad_request``), or TooLarge
    (``too_many_<what>``) when ``count`` of it is above 1000."""
    try:
        body = model.model_validate(orjson.loads(await request.read()))
    except orjson.JSONDecodeError as exc:
        raise BadRequest("bad_json", f"the body is not JSON: {exc}") from None
    except ValidationError as exc:
        raise BadRequest("bad_request", validation_message(exc)) from None
    if count(body) > MAX_BATCH_KEYS:
        raise TooLarge(f"too_many_{what}", f"{count(body)} {what}; a request takes at most {MAX_BATCH_KEYS}")
    return body


def parse_at(value: int | str | None) -> int:
    """Epoch milliseconds from ``at`` (epoch ms or ISO-8601; None: now); BadRequest otherwise."""
    if value is None:
        return int(time.time() * 1000)
    try:
        if isinstance(value, int):
            at = value
        elif value.strip().lstrip("-").isdecimal():
            at = int(value)
        else:
            text = value.strip()
            if text[-1:] in ("Z", "z"):
                text = text[:-1] + "+00:00"
            parsed = datetime.fromisoformat(text)
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            at = (parsed - EPOCH) // timedelta(milliseconds=1)  # exact: no float rounding
    except (ValueError, OverflowError):
        raise BadRequest("bad_at", f"at={value!r} is neither epoch milliseconds nor ISO-8601") from None
    if not -AT_LIMIT <= at <= AT_LIMIT:
        raise BadRequest("bad_at", f"at={value!r} is out of range (|at| <= {AT_LIMIT} ms)")
    return at


def feature_names(ctx: ApiContext, group: str, names: list[str] | None) -> frozenset[str] | None:
    """The requested features of ``group`` (None: all); BadRequest ``unknown_feature``."""
    try:
        return select_features(ctx.tables.plans[group], names)
    except UnknownFeature as exc:
        raise BadRequest("unknown_feature", f"group {group!r} has no feature {exc.args[0]!r}") from None


def split_names(text: str | None) -> list[str] | None:
    """A comma-separated list of names (None when empty)."""
    return [name.strip() for name in text.split(",") if name.strip()] if text else None


def unknown_group(ctx: ApiContext, group: str) -> web.Response:
    """404 ``unknown_group``, naming the groups there are."""
    groups = ", ".join(ctx.tables.plans)
    return error_response(404, "unknown_group", f"no feature group {group!r} (groups: {groups})")


def validation_message(exc: ValidationError) -> str:
    """``field[index]: message`` of the first error (without pydantic's union member tags)."""
    first = exc.errors()[0]
    loc = first["loc"]
    indices = "".join(f"[{part}]" for part in loc[1:] if isinstance(part, int))
    where = (str(loc[0]) if loc else "body") + indices
    return f"{where}: {first['msg']}"


def key_strings(ctx: ApiContext, group: str, keys: list[str | dict[str, Any]]) -> list[str]:
    """The string form of each requested key (an object: of the group's key fields, in key order);
    BadRequest naming the first object that does not have exactly the group's key fields, or a bad
    value (:func:`key_value`)."""
    fields = ctx.tables.plans[group].key
    forms = []
    for index, key in enumerate(keys):
        if isinstance(key, str):
            forms.append(key)
            continue
        wrong = [f"missing key field {f!r}" for f in fields if f not in key]
        wrong += [f"{f!r} is not a key field" for f in key if f not in fields]
        if wrong:
            keyed = f"group {group!r} is keyed by {', '.join(fields)}"
            raise BadRequest("bad_request", f"keys[{index}]: {'; '.join(wrong)} ({keyed})")
        forms.append(key_string([key_value(f"keys[{index}].{name}", key[name]) for name in fields]))
    return forms


def key_value(where: str, value: Any) -> str | int:
    """A key field's value in an object key: a string, or an integer (JSON's: 7.0 is 7) below 2^53
    in magnitude, which a JSON parser reads exactly; BadRequest naming ``where`` otherwise."""
    if isinstance(value, str):
        return value
    whole = isinstance(value, int) and not isinstance(value, bool)
    if not whole and not (isinstance(value, float) and value.is_integer()):
        raise BadRequest("bad_request", f"{where}: {value!r} is neither a string nor an integer")
    if not -KEY_INT_LIMIT < value < KEY_INT_LIMIT:
        raise BadRequest("bad_request", f"{where}: {value!r} is beyond 2^53; send the key in its string form")
    return int(value)


def not_found(ctx: ApiContext, group: str, key: str) -> web.Response:
    """404 ``key_not_found``; for a composite group, also why ``key`` is no key of it, if it is not."""
    fields = ctx.tables.plans[group].key
    message = f"key {key!r} has no state in group {group!r}"
    try:
        split_key(key, len(fields))
    except ValueError as exc:
        form = "|".join(fields)
        message += f": {exc} ({form}, a '|' or '\\' inside a value escaped with '\\')"
    return error_response(404, "key_not_found", message)


def answer_locally(
    ctx: ApiContext,
    group: str,
    key: str,
    at: int,
    names: frozenset[str] | Selection | None,
    read: tuple[Any, Scanner] | None = None,
    missing: list[str] | None = None,
) -> dict[str, Any]:
    """One key's batch result from this process's state (the caller checked that it holds the key),
    read from ``read`` (its partition's database and a range reader of it) and with ``missing`` (the
    partition's :func:`~tables.replay.incomplete_selected`) when the caller has them."""
    raw_key = key.encode("utf-8")
    plan = ctx.tables.plans[group]
    if read is None:
        db = ctx.placement.database(ctx.tables.features[group], partition_for(raw_key, ctx.partitions))
        read = (db, prefix_scan(db))
    state = stored_state(plan, read[0], raw_key, read[1])
    if missing is None and state.exists:
        missing = incomplete_selected(plan, read[0], names, int(time.time() * 1000))
    clock = read_clock(read[0].get) if plan.ttl is not None else None
    return key_answer(plan, key, state, at, names, missing, clock)


def observe_ages(group: str, results: list[dict[str, Any]], at: int) -> None:
    """``hydrant_feature_age_seconds``: ``at - newest_event`` of each answer with one."""
    ages = [max(0, at - r["newest_event"]) / 1000 for r in results if r.get("newest_event") is not None]
    if ages:
        observe_many(FEATURE_AGE.labels(group), ages)


async def lookup_one(request: web.Request, ctx: ApiContext, group: str, key: str) -> web.Response:
    """Features of one key: 200, 400 (feature name, at), 404 (group, key), 422 (retention), 503."""
    if group not in ctx.tables.plans:
        return unknown_group(ctx, group)
    try:
        if request.query_string:
            query = FeatureQuery.model_validate(dict(request.query))
            names, at = feature_names(ctx, group, split_names(query.features)), parse_at(query.at)
        else:  # the common case, without pydantic
            names, at = None, parse_at(None)
        table = ctx.tables.features[group]
        relayed = await answer_elsewhere(request, table, key.encode("utf-8"), ctx.partitions, ctx.placement)
        if relayed is not None:
            return relayed
    except ValidationError as exc:
        return error_response(400, "bad_request", validation_message(exc))
    except HttpError as exc:
        return exc.response()
    result = answer_locally(ctx, group, key, at, names)
    observe_ages(group, [result], at)
    if not result["found"]:
        return not_found(ctx, group, key)
    if "error" in result:
        return error_response(422, **result["error"])
    del result["key"], result["found"]
    answer = {"group": group, "key": key, "at": at, **result}
    return web.Response(body=orjson.dumps(answer), content_type="application/json")


async def lookup_batch(request: web.Request, ctx: ApiContext, group: str) -> web.Response:
    """Features of up to 1000 keys, in request order: 200, 400, 404 (group), 413, 503."""
    if group not in ctx.tables.plans:
        return unknown_group(ctx, group)
    try:
        batch = await request_body(request, BatchRequest, lambda b: len(b.keys), "keys")
        keys = key_strings(ctx, group, batch.keys)
        at = parse_at(batch.at)
        results = await group_results(request, ctx, group, keys, batch.features, at)
    except HttpError as exc:
        return exc.response()
    return web.Response(
        body=orjson.dumps({"group": group, "at": at, "results": results}), content_type="application/json"
    )


async def group_results(
    request: web.Request, ctx: ApiContext, group: str, keys: list[str], features: list[str] | None, at: int
) -> list[dict[str, Any]]:
    """Per key (string form) its batch result (found, features or error), read here or asked of
    its owner, one request per owner, in parallel. HttpError: unknown feature, rebalancing, owner's error."""
    names = selection(ctx.tables.plans[group], feature_names(ctx, group, features))  # once, not per key
    placement = ctx.placement
    placement.ensure_ready()
    table = ctx.tables.features[group]
    local, remote = route_keys(
        table, [k.encode("utf-8") for k in keys], is_forwarded(request), ctx.partitions, placement
    )
    results: list[Any] = [None] * len(keys)
    asked = [
        ask(
            request,
            owner,
            "POST",
            f"/features/{group}",
            {"keys": [keys[i] for i in positions], "features": features, "at": at},
            placement=placement,
        )
        for owner, positions in remote.items()
    ]
    for partition, positions in local.items():
        db = placement.database(table, partition)  # caught up now: one range reader sees it as is
        read = (db, prefix_scan(db))
        missing = incomplete_selected(ctx.tables.plans[group], db, names, int(time.time() * 1000))
        for index in positions:
            results[index] = answer_locally(ctx, group, keys[index], at, names, read, missing)
        observe_ages(group, [results[index] for index in positions], at)
    answers = await asyncio.gather(*asked)
    for positions, answer in zip(remote.values(), answers, strict=True):
        for index, result in zip(positions, answer["results"], strict=True):
            results[index] = result
    return results
