"""HTTP ingest (docs/api.md, "Ingest"): ``POST /ingest/{stream}`` validates a batch of events as the
worker decodes them and produces the valid ones to the stream's topic, keyed by the stream key;
``?wait=true`` answers once every group each event feeds has applied it (read your own writes).
``POST /applied/{group}`` is the check the wait asks of a key's owner."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from app.api.context import ApiContext
from app.api.features import BadRequest, unknown_group
from app.api.forwarding import ask, is_forwarded, route_keys
from app.api.http import JSON, HttpError, error_response
from app.config.routing import Stage, stream_stages
from app.config.spec import StreamSpec
from app.kafka.batches import RecordBatches, partition_count
from app.metrics import INGEST_EVENTS, INGEST_REFUSED
from app.records.decode import BadRecord, decode_event
from app.records.keys import key_of
from app.records.partitioning import partition_for
from app.records.source import stage_tag
from tables.apply import choose
from tables.plans import GroupPlan
from tables.read import shows_applied

MAX_ROWS = 10_000  # events per request (the body limit, 1 MiB, usually comes first)
DEFAULT_WAIT_MS = 10_000
MAX_WAIT_MS = 60_000
POLL_S = 0.01  # between two looks at the heads while waiting
YIELD_EVERY = 500  # events validated between two turns given back to the worker's event loop


@dataclass(frozen=True)
class Check:
    """One group's key that must show an event applied: its head lists ``source`` at ``offset`` or later."""

    group: str
    key: str
    source: str  # "<topic>:<partition>" of the produced record, then ">p" per stage partition passed
    offset: int
    time_ms: int  # the event's time: its bucket records the offset when the head does not


class Refused(HttpError):
    """413: the request is larger than ingest takes."""

    status = 413


class WaitTimeout(HttpError):
    """504: ``wait=true`` and some group has not applied every event within ``timeout_ms``."""

    status = 504

    def __init__(self, message: str) -> None:
        super().__init__("wait_timeout", message)


class SendFailed(HttpError):
    """503: the broker did not take every accepted event (some may have been written)."""

    status = 503

    def __init__(self, message: str) -> None:
        super().__init__("produce_failed", message)


JSON_LINES = ("application/x-ndjson", "application/jsonl", "application/json-lines")


def parse_events(body: bytes, content_type: str = "application/json") -> list[Any]:
    """The events of a body: a JSON array, or JSON Lines (one event per non-empty line) when the
    content type says so or the body is not one JSON value. BadRequest otherwise."""
    text = body.strip()
    if not text:
        raise BadRequest("bad_request", "the body is empty; send a JSON array of events or JSON Lines")
    if content_type not in JSON_LINES:
        try:
            events = orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # several lines of JSON, perhaps
        else:
            if not isinstance(events, list):
                raise BadRequest(
                    "bad_request",
                    f"expected a JSON array of events, got a JSON {type(events).__name__} (send JSON Lines "
                    f"as {JSON_LINES[0]})",
                )
            return events
    try:
        return [orjson.loads(line) for line in text.splitlines() if line.strip()]
    except orjson.JSONDecodeError as exc:
        raise BadRequest("bad_json", f"the body is neither a JSON array nor JSON Lines: {exc}") from None


@dataclass
class Accepted:
    """The valid events of a request: per event its index in the request, key, (time, typed fields), JSON."""

    index: list[int]
    keys: list[str]
    events: list[tuple[int, dict[str, Any]]]
    values: list[bytes]


def validate(events: list[Any], stream: StreamSpec, now_ms: int) -> tuple[Accepted, list[dict[str, Any]]]:
    """Split ``events`` as the worker would decode them: the accepted ones, and per rejected one
    ``{"index", "reason", "error"}`` (reasons as the dead-letter header's: decode, missing_key, type)."""
    accepted = Accepted([], [], [], [])
    rejected: list[dict[str, Any]] = []
    for index, event in enumerate(events):
        value = orjson.dumps(event)
        try:
            key, time_ms, fields = decode_event(value, stream, now_ms)
        except BadRecord as exc:
            rejected.append({"index": index, "reason": exc.reason, "error": str(exc)})
            continue
        accepted.index.append(index)
        accepted.keys.append(key)
        accepted.events.append((time_ms, fields))
        accepted.values.append(value)
    return accepted, rejected


async def _validate_yielding(
    events: list[Any], stream: StreamSpec, now_ms: int
) -> tuple[Accepted, list[dict[str, Any]]]:
    """:func:`validate` in slices, giving the event loop back between them (the worker's batches run
    on it: 10,000 events take ~0.1 s to check)."""
    accepted = Accepted([], [], [], [])
    rejected: list[dict[str, Any]] = []
    for begin in range(0, len(events), YIELD_EVERY):
        part, refused = validate(events[begin : begin + YIELD_EVERY], stream, now_ms)
        accepted.index += [begin + i for i in part.index]
        accepted.keys += part.keys
        accepted.events += part.events
        accepted.values += part.values
        rejected += [{**row, "index": begin + row["index"]} for row in refused]
        await asyncio.sleep(0)
    return accepted, rejected


def checks_for(
    stages: tuple[Stage, ...],
    plans: dict[str, GroupPlan],
    stream: str,
    event: tuple[int, dict[str, Any]],
    produced: tuple[str, int, int],
    partitions: int,
) -> list[Check]:
    """What shows one event (time and typed fields; produced at topic, partition, offset) applied: its
    key in each group of each stage it visits, with the source name that stage records
    (app/records/source.py). A group whose aggregations the event adds nothing to (filtered out, null
    fields) answers the same either way, and leaves no trace to wait for: not checked."""
    time_ms, fields = event
    topic, partition, offset = produced
    checks: list[Check] = []
    source = f"{topic}:{partition}"
    for stage in stages:
        key = key_of(fields, stage.key)
        if key is None:  # the event skips this stage (app/engine/shards.py: the next stage it has a key for)
            continue
        checks += [
            Check(group, key, source, offset, time_ms)
            for group in stage.groups
            if _feeds(plans[group], stream, fields)
        ]
        source += f">{stage_tag(stage.key).decode()}:{partition_for(key.encode('utf-8'), partitions)}"
    return checks


def _feeds(plan: GroupPlan, stream: str, fields: dict[str, Any]) -> bool:
    try:
        chosen = choose(plan, stream, fields)
    except Exception:  # a `where` that fails: the worker dead-letters the event ('expression')
        return False
    return any(agg.field is None or fields.get(agg.field) is not None for agg in chosen)


async def ingest(request: web.Request, ctx: ApiContext, stream: str) -> web.Response:
    """Validate and produce a batch of events: 200 ``{"accepted", "rejected"}``, 400, 404 (stream),
    413 (rows), 503 (broker), 504 (``wait=true`` timed out)."""
    spec = ctx.pipeline.streams.get(stream)
    if spec is None:
        known = ", ".join(ctx.pipeline.streams)
        return error_response(404, "unknown_stream", f"no stream {stream!r} (streams: {known})")
    producer = ctx.producer() if ctx.producer is not None else None
    try:
        wait, timeout_ms = _wait_options(request)
        events = parse_events(await request.read(), request.content_type)
        if len(events) > MAX_ROWS:
            INGEST_REFUSED.labels(stream, "too_many_rows").inc()
            raise Refused("too_many_rows", f"{len(events)} events; a request takes at most {MAX_ROWS}")
        if producer is None:
            raise SendFailed("this process does not produce; ask a worker")
        accepted, rejected = await _validate_yielding(events, spec, int(time.time() * 1000))
        INGEST_EVENTS.labels(stream, "accepted").inc(len(accepted.index))
        INGEST_EVENTS.labels(stream, "rejected").inc(len(rejected))
        positions = await _produce(producer, spec.topic, accepted)
        if wait and accepted.index:
            stages = stream_stages(ctx.pipeline, stream, ctx.group_id)
            plans = ctx.tables.plans
            checks = [
                check
                for event, (partition, offset) in zip(accepted.events, positions, strict=True)
                for check in checks_for(
                    stages, plans, stream, event, (spec.topic, partition, offset), ctx.partitions
                )
            ]
            await _wait_applied(request, ctx, checks, timeout_ms)
    except HttpError as exc:
        return exc.response()
    answer = {"accepted": len(accepted.index), "rejected": rejected}
    return web.Response(body=orjson.dumps(answer), content_type=JSON)


def _wait_options(request: web.Request) -> tuple[bool, int]:
    wait = request.query.get("wait", "false").lower()
    if wait not in ("true", "false", "1", "0"):
        raise BadRequest("bad_request", f"wait: expected true or false, got {wait!r}")
    text = request.query.get("timeout_ms", str(DEFAULT_WAIT_MS))
    if not text.isdigit() or not 1 <= int(text) <= MAX_WAIT_MS:
        raise BadRequest("bad_request", f"timeout_ms: expected 1 to {MAX_WAIT_MS}, got {text!r}")
    return wait in ("true", "1"), int(text)


async def _produce(producer: Any, topic: str, accepted: Accepted) -> list[tuple[int, int]]:
    """Send every accepted event (record batches, one delivery wait for all); each one's
    (partition, offset). SendFailed when the broker does not take them all."""
    count = await partition_count(producer, topic)
    batches = RecordBatches()
    now_ms = int(time.time() * 1000)
    partitions = []
    for n, (key, value) in enumerate(zip(accepted.keys, accepted.values, strict=True), 1):
        if n % YIELD_EVERY == 0:
            await asyncio.sleep(0)
        raw = key.encode("utf-8")
        partition = partition_for(raw, count)  # where `hydrant produce` (Kafka's partitioner) puts it
        partitions.append(partition)
        batches.add(topic, partition, raw, value, None, now_ms)
    sent = await batches.send(producer)
    try:
        metadata = await asyncio.gather(*(batch.future for batch in sent))
    except Exception as exc:
        raise SendFailed(f"the broker did not take every event ({type(exc).__name__}: {exc})") from None
    # Records of one (topic, partition) went out in the order added, in consecutive batches.
    offsets: dict[int, list[int]] = {}
    for batch, meta in zip(sent, metadata, strict=True):
        offsets.setdefault(batch.partition, []).extend(range(meta.offset, meta.offset + batch.count))
    taken: dict[int, int] = {}
    positions = []
    for partition in partitions:
        n = taken.get(partition, 0)
        taken[partition] = n + 1
        positions.append((partition, offsets[partition][n]))
    return positions


async def _wait_applied(request: web.Request, ctx: ApiContext, checks: list[Check], timeout_ms: int) -> None:
    """Return once every check holds (asking each key's owner); WaitTimeout after ``timeout_ms``."""
    deadline = time.monotonic() + timeout_ms / 1000
    pending = checks
    last_error: HttpError | None = None  # an owner that could not answer (rebalancing): asked again
    while True:
        by_group: dict[str, list[Check]] = {}
        for check in pending:
            by_group.setdefault(check.group, []).append(check)
        answers = await asyncio.gather(
            *(_applied(request, ctx, group, group_checks) for group, group_checks in by_group.items()),
            return_exceptions=True,
        )
        for answer in answers:
            if isinstance(answer, BaseException) and not isinstance(answer, HttpError):
                raise answer
            last_error = answer if isinstance(answer, HttpError) else last_error
        pending = [
            check
            for group_checks, done in zip(by_group.values(), answers, strict=True)
            for check, ok in zip(group_checks, _as_list(done, len(group_checks)), strict=True)
            if not ok
        ]
        if not pending:
            return
        if time.monotonic() >= deadline:
            groups = sorted({check.group for check in pending})
            raise WaitTimeout(
                f"the events were accepted and produced, but {len(pending)} group key(s) of "
                f"{', '.join(groups)} had not applied them within {timeout_ms} ms (first: "
                f"{pending[0].group} {pending[0].key!r}, {pending[0].source} offset {pending[0].offset})"
                + (f" (last: {last_error})" if last_error is not None else "")
            )
        await asyncio.sleep(POLL_S)


def _as_list(answer: list[bool] | BaseException, size: int) -> list[bool]:
    return [False] * size if isinstance(answer, BaseException) else answer


async def _applied(request: web.Request, ctx: ApiContext, group: str, checks: list[Check]) -> list[bool]:
    """Whether each check of ``group`` holds, read here or asked of its key's owner."""
    placement = ctx.placement
    placement.ensure_ready()
    table = ctx.tables.features[group]
    keys = [check.key.encode("utf-8") for check in checks]
    local, remote = route_keys(table, keys, is_forwarded(request), ctx.partitions, placement)
    done = [False] * len(checks)
    asked = [
        ask(
            request,
            owner,
            "POST",
            f"/applied/{group}",
            {"checks": [[c.key, c.source, c.offset, c.time_ms] for c in (checks[i] for i in positions)]},
            placement=placement,
        )
        for owner, positions in remote.items()
    ]
    plan = ctx.tables.plans[group]
    for partition, positions in local.items():
        get = placement.database(table, partition).get
        for i in positions:
            check = checks[i]
            done[i] = shows_applied(plan, get, keys[i], check.source, check.offset, check.time_ms)
    for positions, answer in zip(remote.values(), await asyncio.gather(*asked), strict=True):
        for i, ok in zip(positions, answer["applied"], strict=True):
            done[i] = ok
    return done


async def applied(request: web.Request, ctx: ApiContext, group: str) -> web.Response:
    """``{"checks": [[key, source, offset, time_ms], ...]}`` -> ``{"applied": [bool, ...]}`` for keys
    this worker holds (asked by another worker's ``wait=true``): 200, 400, 404, 503."""
    if group not in ctx.tables.plans:
        return unknown_group(ctx, group)
    try:
        raw = orjson.loads(await request.read())
        checks = [Check(group, str(k), str(s), int(o), int(t)) for k, s, o, t in raw["checks"]]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return BadRequest(
            "bad_request", 'expected {"checks": [[key, source, offset, time_ms], ...]}'
        ).response()
    try:
        done = await _applied(request, ctx, group, checks)
    except HttpError as exc:
        return exc.response()
    return web.Response(body=orjson.dumps({"applied": done}), content_type=JSON)
