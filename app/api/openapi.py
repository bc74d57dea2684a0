"""`GET /openapi.json`: the OpenAPI 3.1 document of the HTTP API: routes, parameters and statuses listed
here, schemas from the pydantic models that validate requests (app/api/models.py)."""

from __future__ import annotations

import re
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from app import __version__
from app.api.context import ApiContext
from app.api.http import JSON
from app.api.models import (
    KEY_VALUE_SCHEMA,
    BatchAnswer,
    BatchRequest,
    ErrorAnswer,
    FeatureAnswer,
    FeatureQuery,
    LookupAnswer,
    LookupBatchAnswer,
    LookupBatchRequest,
    PipelineAnswer,
    ScanAnswer,
    ScanQuery,
    ServiceAnswer,
    ServiceRequest,
    ServicesAnswer,
    StatusAnswer,
)
from app.api.tables import PARQUET, table_columns
from app.metrics import CONTENT_TYPE

MODELS: list[type[BaseModel]] = [
    ErrorAnswer,
    FeatureAnswer,
    BatchAnswer,
    LookupAnswer,
    LookupBatchAnswer,
    ScanAnswer,
    PipelineAnswer,
    StatusAnswer,
    ServicesAnswer,
]
ERRORS = {
    400: "Bad request: a parameter or the body is invalid (the message names it).",
    401: "Missing or wrong bearer token (only when HYDRANT_API_TOKEN is set).",
    404: "Unknown table, group, service or key.",
    413: "More than 1000 keys or rows (10,000 events to ingest), or a body above 1 MiB.",
    422: "`at` is outside the key's retention.",
    503: "Not ready, rebalancing, or the key's owner did not answer; retry after Retry-After seconds.",
    504: "wait=true: some group had not applied the events within timeout_ms (they stay produced).",
}


def ref(model: type[BaseModel]) -> dict[str, str]:
    """A JSON-schema reference to ``model`` among the document's components."""
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def json_body(model: type[BaseModel], description: str) -> dict[str, Any]:
    """An OpenAPI response or body object: ``model`` as JSON."""
    return {"description": description, "content": {JSON: {"schema": ref(model)}}}


def names_pattern(names: list[str]) -> str:
    """A regex for a comma-separated list of ``names`` (what `features=` and `columns=` take; empty
    means all)."""
    one = "|".join(re.escape(name) for name in names)
    return f"^(({one})(,({one}))*)?$"


KEY = {
    "name": "key",
    "in": "path",
    "required": True,
    "description": "Entity key (keys containing '/' are asked with POST /features/{group}).",
    "schema": {"type": "string", "minLength": 1},
}


def group_key(fields: tuple[str, ...]) -> dict[str, Any]:
    """The ``key`` path parameter of a group keyed by ``fields``: the key's string form."""
    if len(fields) == 1:
        return KEY
    form = "|".join(fields)
    return {
        **KEY,
        "description": f"The key's string form {form}: its values in this order joined by '|', a '|' or "
        "'\\' inside a value escaped with '\\' ('|' sent as %7C; keys containing '/' are asked with "
        "POST /features/{group}).",
    }


def query_params(model: type[BaseModel], narrow: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The query parameters of a pydantic query model, from its field schemas (``narrow`` replaces
    the schema of a parameter whose values depend on the pipeline)."""
    properties = model.model_json_schema()["properties"]
    params = []
    for name, schema in properties.items():
        schema = narrow.get(name) or {k: v for k, v in schema.items() if k not in ("title", "description")}
        params.append(
            {
                "name": name,
                "in": "query",
                "required": False,
                "description": model.model_fields[name].description,
                "schema": schema,
            }
        )
    return params


def batch_body(names: list[str], fields: tuple[str, ...]) -> dict[str, Any]:
    """BatchRequest's schema with `features` narrowed to the group's names and an object key to
    exactly the group's key ``fields``."""
    schema = BatchRequest.model_json_schema()
    schema["properties"]["features"]["anyOf"][0]["items"] = {"type": "string", "enum": names}
    forms = schema["properties"]["keys"]["items"]["anyOf"]
    forms[1] = {
        "type": "object",
        "properties": dict.fromkeys(fields, KEY_VALUE_SCHEMA),
        "required": list(fields),
        "additionalProperties": False,
    }
    return schema


def operation(
    token: bool,
    summary: str,
    ok: dict[str, Any],
    errors: tuple[int, ...],
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    protected: bool = True,
) -> dict[str, Any]:
    """One OpenAPI operation: 200 ``ok``, the ``errors`` statuses, bearer security when ``token`` and
    ``protected``."""
    responses: dict[str, Any] = {"200": ok}
    for status in errors:
        if status == 401 and not protected:
            continue
        responses[str(status)] = json_body(ErrorAnswer, ERRORS[status])
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = {"required": True, "content": {JSON: {"schema": body}}}
    if protected and token:
        op["security"] = [{"bearer": []}]
    return op


def feature_paths(ctx: ApiContext, group: str) -> dict[str, Any]:
    """The paths of feature group ``group`` (one key, batch)."""
    plan = ctx.tables.plans[group]
    names = plan.feature_names()
    narrow = {"features": {"type": "string", "pattern": names_pattern(names)}}
    return {
        f"/features/{group}/{{key}}": {
            "get": operation(
                ctx.protected,
                f"Features of one key of group {group}",
                json_body(FeatureAnswer, "The key's features at `at`."),
                (400, 401, 404, 422, 503),
                [group_key(plan.key), *query_params(FeatureQuery, narrow)],
            )
        },
        f"/features/{group}": {
            "post": operation(
                ctx.protected,
                f"Features of up to 1000 keys of group {group}, in request order",
                json_body(BatchAnswer, "One result per key; found=false for keys without state."),
                (400, 401, 404, 413, 503),
                body=batch_body(names, plan.key),
            )
        },
    }


def table_paths(ctx: ApiContext, name: str) -> dict[str, Any]:
    """The paths of table ``name`` (scan; one row for a lookup)."""
    scan_ok = {
        "description": "The table's rows across every worker, in key order.",
        "content": {
            JSON: {"schema": ref(ScanAnswer)},
            "text/csv": {"schema": {"type": "string"}},
            PARQUET: {"schema": {"type": "string", "format": "binary"}},
        },
    }
    narrow = {"columns": {"type": "string", "pattern": names_pattern(table_columns(ctx, name))}}
    params = query_params(ScanQuery, narrow)
    if name not in ctx.tables.plans:
        params = [p for p in params if p["name"] != "at"]
    paths = {
        f"/tables/{name}": {
            "get": operation(
                ctx.protected, f"Every row of {name}, across workers", scan_ok, (400, 401, 503), params
            )
        }
    }
    if name in ctx.tables.lookups:
        paths[f"/tables/{name}"]["post"] = operation(
            ctx.protected,
            f"Rows of up to 1000 keys of lookup {name}, in request order",
            json_body(LookupBatchAnswer, "One result per key; found=false for keys without a row."),
            (400, 401, 404, 413, 503),
            body=LookupBatchRequest.model_json_schema(),
        )
        paths[f"/tables/{name}/{{key}}"] = {
            "get": operation(
                ctx.protected,
                f"One row of lookup {name}",
                json_body(LookupAnswer, "The row."),
                (401, 404, 503),
                [KEY],
            )
        }
    return paths


JSON_TYPES = {"int": {"type": "integer"}, "float": {"type": "number"}, "str": {"type": "string"}}
JSON_TYPES["bool"] = {"type": "boolean"}
JSON_TYPES["list"] = {"type": "array"}  # last_n: the window's latest values, newest first


def service_paths(ctx: ApiContext, name: str) -> dict[str, Any]:
    """``POST /services/{name}``: its rows' entity and request fields, its answer's columns."""
    plan = ctx.services[name]
    row = {
        "type": "object",
        "properties": {
            **dict.fromkeys(plan.entities, KEY_VALUE_SCHEMA),
            **{field: JSON_TYPES[kind] for field, kind in plan.request.items()},
        },
        "required": [*plan.entities, *plan.request],
    }
    body = ServiceRequest.model_json_schema()
    # Any other row is answered too, with that row's error in its place (not a 400): documented so.
    other = {"description": "Any other value: its answer row is an error (missing_field, bad_type, bad_row)."}
    body["properties"]["rows"]["items"] = {"anyOf": [row, other]}
    answer = ServiceAnswer.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = answer.pop("$defs")
    columns = {
        c: {"type": [JSON_TYPES[k]["type"], "null"]} if k in JSON_TYPES else {} for c, k in plan.columns
    }
    service_row = defs["ServiceRow"]
    service_row["properties"]["features"] = {"type": "object", "properties": columns}
    answer["properties"]["rows"]["items"] = service_row
    return {
        f"/services/{name}": {
            "post": operation(
                ctx.protected,
                f"Service {name}: its columns for up to 1000 rows, in request order",
                {"description": "One answer per row: its columns, or its error.",
                 "content": {JSON: {"schema": answer}}},
                (400, 401, 404, 413, 503),
                body=body,
            )
        }
    }  # fmt: skip


def ingest_paths(ctx: ApiContext, stream: str) -> dict[str, Any]:
    """``POST /ingest/{stream}``: an array of the stream's events (JSON Lines too), per-row rejections."""
    spec = ctx.pipeline.streams[stream]
    event = {
        "type": "object",
        "properties": {
            field: {"type": [JSON_TYPES[kind]["type"], "null"]} for field, kind in spec.fields.items()
        },
        "required": [spec.key],
    }
    # Any other item is answered too, as a rejected row with its reason (not a 400): documented so.
    other = {
        "description": "Any other value: rejected with its index and reason (decode, missing_key, type)."
    }
    rejected = {
        "type": "object",
        "properties": {
            "index": {"type": "integer"},
            "reason": {"type": "string"},
            "error": {"type": "string"},
        },
        "required": ["index", "reason", "error"],
    }
    answer = {
        "type": "object",
        "properties": {"accepted": {"type": "integer"}, "rejected": {"type": "array", "items": rejected}},
        "required": ["accepted", "rejected"],
    }
    parameters = [
        {
            "name": "wait",
            "in": "query",
            "required": False,
            "schema": {"type": "boolean"},
            "description": "Answer once every group each event feeds has applied it.",
        },
        {
            "name": "timeout_ms",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": 60_000},
        },
    ]
    return {
        f"/ingest/{stream}": {
            "post": operation(
                ctx.protected,
                f"Send events to stream {stream}: the valid ones are produced to its topic",
                {"description": "How many were accepted; the rejected ones with their index and reason.",
                 "content": {JSON: {"schema": answer}}},
                (400, 401, 413, 503, 504),
                parameters,
                body={"type": "array", "maxItems": 10_000, "items": {"anyOf": [event, other]}},
            )
        }
    }  # fmt: skip


def open_operation(summary: str, ok: dict[str, Any], errors: tuple[int, ...] = ()) -> dict[str, Any]:
    """A GET operation that needs no token."""
    return {"get": operation(False, summary, ok, errors, protected=False)}


def document(ctx: ApiContext) -> dict[str, Any]:
    """The OpenAPI document of ``ctx``'s pipeline."""
    paths: dict[str, Any] = {}
    for group in ctx.tables.plans:
        paths.update(feature_paths(ctx, group))
    for name in ctx.tables.all():
        paths.update(table_paths(ctx, name))
    for name in ctx.services:
        paths.update(service_paths(ctx, name))
    for name in ctx.pipeline.streams:
        paths.update(ingest_paths(ctx, name))
    metrics_type = CONTENT_TYPE.split(";")[0]
    paths.update(
        {
            "/services": {
                "get": operation(
                    ctx.protected,
                    "The feature services, with their entity and request fields and answer columns",
                    json_body(ServicesAnswer, "The services."),
                    (401,),
                )
            },
            "/pipeline": {
                "get": operation(
                    ctx.protected,
                    "The pipeline spec and its derived topics and tables",
                    json_body(PipelineAnswer, "The pipeline."),
                    (401,),
                )
            },
            "/healthz": open_operation("Liveness", json_body(StatusAnswer, "The process serves.")),
            "/readyz": open_operation(
                "Readiness", json_body(StatusAnswer, "Every table finished recovery."), (503,)
            ),
            "/metrics": open_operation(
                "Prometheus metrics",
                {
                    "description": "Prometheus text format.",
                    "content": {metrics_type: {"schema": {"type": "string"}}},
                },
            ),
            "/openapi.json": open_operation(
                "This document",
                {"description": "OpenAPI 3.1.", "content": {JSON: {"schema": {"type": "object"}}}},
            ),
        }
    )
    _, top = models_json_schema(
        [(model, "validation") for model in MODELS], ref_template="#/components/schemas/{model}"
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"Hydrant data API — pipeline {ctx.pipeline.name}",
            "version": __version__,
            "description": "Feature values and table contents; any worker answers any key. "
            "Paths are this pipeline's groups and tables.",
        },
        "paths": paths,
        "components": {
            "schemas": top["$defs"],
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


async def openapi_answer(request: web.Request, ctx: ApiContext) -> web.Response:
    """The OpenAPI document of this worker's API (its groups and tables are the path enums)."""
    return web.Response(body=orjson.dumps(document(ctx)), content_type=JSON)
