"""Request and answer models of the data API: they validate requests and are the OpenAPI schemas."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictStr

MAX_BATCH_KEYS = 1000
MAX_SCAN_ROWS = 1_000_000
DEFAULT_SCAN_ROWS = 10_000

#: Integer values of object keys are JSON's safe integers, |v| < 2^53: exact however a JSON parser
#: reads them (as a double, or 7.0 for 7); a larger integer key is sent in the string form.
KEY_INT_LIMIT = 2**53

#: Reference times beyond ±10^15 ms (year ~33,000) are refused: nothing real is there, and they would
#: not fit the 64-bit integers of JSON consumers.
AT_LIMIT = 10**15


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a reference time is epoch milliseconds or ISO-8601, not a boolean")
    return value


Timestamp = (
    Annotated[int, Field(ge=-AT_LIMIT, le=AT_LIMIT), BeforeValidator(_not_bool)]
    | Annotated[str, Field(json_schema_extra={"format": "date-time"})]
)
AT_HELP = "Reference time: epoch milliseconds or ISO-8601 (default: now)."


#: A requested key: its string form, or an object of the group's key fields (app/api/features.py
#: checks the fields and values, which depend on the group).
Key = StrictStr | dict[str, Any]
#: The schema of a key field's value in an object key.
KEY_VALUE_SCHEMA = {
    "anyOf": [
        {"type": "string"},
        {"type": "integer", "minimum": 1 - KEY_INT_LIMIT, "maximum": KEY_INT_LIMIT - 1},
    ]
}
KEYS_HELP = (
    f"Entity keys, at most {MAX_BATCH_KEYS} (413 above): each the key's string form, or an object of "
    "exactly the group's key fields (values strings or integers, |v| < 2^53). The string form of a "
    "composite key is its values in key order joined by '|', a '|' or '\\' inside a value escaped with '\\'."
)


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. key_not_found.")
    message: str = Field(description="What went wrong, for people.")


class ErrorAnswer(BaseModel):
    """Every error of the API has this shape."""

    error: ErrorDetail


class FeatureQuery(BaseModel):
    """Query of ``GET /features/{group}/{key}``."""

    model_config = ConfigDict(extra="ignore")
    features: str | None = Field(
        default=None, description="Comma-separated feature names (default: all of the group)."
    )
    at: Timestamp | None = Field(default=None, description=AT_HELP)


NEWEST_HELP = (
    "The newest event time (epoch ms) among the events the answer counts: the key's buckets up to b(at) "
    'that its windows read; null when none holds an event (docs/features.md, "Freshness").'
)
STALE_HELP = "Groups with a max_age: true when newest_event is null or older than at - max_age."
INCOMPLETE_HELP = (
    "Present while some of these features cannot be answered in full: a replay of history into a new or "
    "changed aggregation runs, or the topics no longer hold the history their window needs "
    '(docs/operations.md, "Changing a pipeline").'
)


class FeatureAnswer(BaseModel):
    group: str
    key: str
    at: int = Field(description="The reference time used, epoch milliseconds.")
    features: dict[str, Any] = Field(description="Feature name -> value (null for an empty window).")
    newest_event: int | None = Field(description=NEWEST_HELP)
    stale: bool | None = Field(default=None, description=STALE_HELP)
    incomplete: list[str] | None = Field(default=None, description=INCOMPLETE_HELP)


class BatchRequest(BaseModel):
    """Body of ``POST /features/{group}``."""

    model_config = ConfigDict(extra="forbid")
    keys: list[Key] = Field(
        description=KEYS_HELP,
        json_schema_extra={"maxItems": MAX_BATCH_KEYS},  # documented; enforced as 413, not 400
    )
    features: list[str] | None = Field(default=None, description="Feature names (default: all).")
    at: Timestamp | None = Field(default=None, description=AT_HELP)


class BatchResult(BaseModel):
    key: str = Field(description="The key's string form.")
    found: bool = Field(description="False when the key has no stored state.")
    features: dict[str, Any] | None = Field(
        default=None, description="Present when found and inside retention."
    )
    error: ErrorDetail | None = Field(
        default=None, description="outside_retention when `at` needs expired buckets for this key."
    )
    newest_event: int | None = Field(default=None, description="With features: " + NEWEST_HELP)
    stale: bool | None = Field(default=None, description=STALE_HELP)
    incomplete: list[str] | None = Field(default=None, description=INCOMPLETE_HELP)


class BatchAnswer(BaseModel):
    group: str
    at: int
    results: list[BatchResult] = Field(description="One result per requested key, in request order.")


class LookupBatchRequest(BaseModel):
    """Body of ``POST /tables/{lookup}``."""

    model_config = ConfigDict(extra="forbid")
    keys: list[str] = Field(description="Lookup keys.", json_schema_extra={"maxItems": MAX_BATCH_KEYS})


class LookupResult(BaseModel):
    key: str
    found: bool
    value: dict[str, Any] | None = Field(default=None, description="The row's fields, when found.")


class LookupBatchAnswer(BaseModel):
    table: str
    results: list[LookupResult] = Field(description="One result per requested key, in request order.")


class ServiceRequest(BaseModel):
    """Body of ``POST /services/{name}``."""

    model_config = ConfigDict(extra="forbid")
    rows: list[Any] = Field(
        description="Each row, an object: the service's entity fields and request fields.",
        json_schema_extra={"maxItems": MAX_BATCH_KEYS},  # documented; enforced as 413, not 400
    )
    at: Timestamp | None = Field(default=None, description=AT_HELP)


class ServiceRow(BaseModel):
    features: dict[str, Any] | None = Field(
        default=None, description="Request fields, features, lookup columns, computed columns, in that order."
    )
    missing: list[str] = Field(default_factory=list, description="Groups without state for the row's key.")
    outside_retention: list[str] = Field(
        default_factory=list,
        description="Groups whose key needs expired buckets at `at` (their features are null).",
    )
    newest_event: dict[str, int | None] = Field(
        default_factory=dict, description="Per group answered with features: " + NEWEST_HELP
    )
    stale: list[str] = Field(
        default_factory=list, description="Groups with a max_age whose answer is stale (values unchanged)."
    )
    incomplete: list[str] | None = Field(default=None, description="Columns: " + INCOMPLETE_HELP)
    error: ErrorDetail | None = Field(default=None, description="A row that could not be answered, instead.")


class ServiceAnswer(BaseModel):
    service: str
    at: int
    rows: list[ServiceRow] = Field(description="One per request row, in request order.")


class ServiceColumn(BaseModel):
    name: str
    type: str = Field(description="int, float, str, bool, or any (computed columns).")


class ServiceInfo(BaseModel):
    name: str
    entities: list[str]
    request: dict[str, str]
    columns: list[ServiceColumn]


class ServicesAnswer(BaseModel):
    services: list[ServiceInfo]


class LookupAnswer(BaseModel):
    table: str
    key: str
    value: dict[str, Any] = Field(description="The lookup row's fields.")


class ScanQuery(BaseModel):
    """Query of ``GET /tables/{name}``."""

    model_config = ConfigDict(extra="ignore")
    columns: str | None = Field(default=None, description="Comma-separated columns (default: all).")
    limit: int = Field(
        default=DEFAULT_SCAN_ROWS, ge=0, le=MAX_SCAN_ROWS, description="Most rows returned, by key order."
    )
    format: Literal["json", "csv", "parquet"] = Field(default="json", description="Answer format.")
    at: Timestamp | None = Field(default=None, description="Feature groups only. " + AT_HELP)


class ScanAnswer(BaseModel):
    table: str
    columns: list[str] = Field(description="Column order of every row; `key` first.")
    rows: list[dict[str, Any]]
    count: int
    truncated: bool = Field(description="True when `limit` cut rows off.")
    skipped: int = Field(description="Feature groups: keys left out because `at` is outside their retention.")
    at: int | None = Field(default=None, description="Feature groups: the reference time used.")


class TopicAnswer(BaseModel):
    name: str
    role: str
    owner: str
    partitions: int
    compacted: bool


class TableAnswer(BaseModel):
    name: str
    kind: Literal["lookup", "features"]
    changelog_topic: str
    partitions: int
    columns: list[str]


class PipelineAnswer(BaseModel):
    name: str
    consumer_group: str
    partitions: int
    spec: dict[str, Any] = Field(description="The normalized pipeline spec.")
    topics: list[TopicAnswer]
    tables: list[TableAnswer]
    features: dict[str, list[str]] = Field(description="Feature group -> feature names.")
    replay: dict[str, Any] = Field(
        default_factory=dict,
        description="Per feature group with a replay, per partition this worker holds: the aggregations "
        "replayed, done, running (this worker runs it now; false while a rebalance or recovery holds it "
        "up), records replayed and left, whole_history, the features still incomplete there.",
    )


class StatusAnswer(BaseModel):
    status: str
    partitions: list[int] | None = Field(
        default=None, description="/readyz: the table partitions this worker serves."
    )
