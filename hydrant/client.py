"""A client of Hydrant's HTTP API that speaks pandas (docs/api.md, "Python client"): one connection
pool per client, requests split at the API's 1,000-item limit, 503 answers retried after their
Retry-After, every error raised as :class:`HydrantClientError`. No Faust, no engine code."""

from __future__ import annotations

import io
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import httpx
import orjson
import pandas as pd

MAX_ITEMS = 1000  # keys or rows per request (the API answers 413 above)
MAX_INGEST_BYTES = 900_000  # events per ingest request: under the API's 1 MiB body limit


class HydrantClientError(Exception):
    """An answer other than success: the HTTP ``status``, the API's error ``code`` and ``message``
    (``status`` 0 and code ``unreachable`` when no answer came)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class Client:
    """Feature values, services and tables of the workers at ``url`` (any worker: it fetches keys
    from their owners). ``token``: the bearer token when the API has one. Use it as a context manager
    or call :meth:`close`.

    >>> with Client("http://127.0.0.1:6066") as hydrant:
    ...     frame = hydrant.features("user", ["u0001", "u0002"], ["spend_sum_1h"])
    """

    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0, retries: int = 5) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        self.retries = retries  # 503 answers retried, each after its Retry-After (at most 5 s)
        self.retried = 0  # 503 answers retried so far

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def features(
        self,
        group: str,
        keys: Iterable[str | Mapping[str, Any]],
        features: Sequence[str] | None = None,
        at: int | str | None = None,
    ) -> pd.DataFrame:
        """One row per key, in order: ``key`` (its string form), ``found``, then the features (all of
        the group's, or ``features``), ``newest_event`` (epoch ms, the newest event the answer
        counts); ``stale`` (groups with a max_age), ``error`` (the code, e.g. ``outside_retention``)
        and ``incomplete`` columns when some key has one. ``at``: epoch ms or ISO-8601 (default now)."""
        keys = list(keys)
        results: list[dict[str, Any]] = []
        for begin in range(0, max(len(keys), 1), MAX_ITEMS):
            body: dict[str, Any] = {"keys": keys[begin : begin + MAX_ITEMS]}
            if features is not None:
                body["features"] = list(features)
            if at is not None:
                body["at"] = at
            if body["keys"]:
                results += self._json("POST", f"/features/{group}", body)["results"]
        names = list(features) if features is not None else self._feature_names(group)
        rows = []
        for result in results:
            row = {"key": result["key"], "found": result["found"]}
            values = result.get("features") or {}
            row.update((name, values.get(name)) for name in names)
            row["newest_event"] = result.get("newest_event")
            if "stale" in result:
                row["stale"] = result["stale"]
            if "error" in result:
                row["error"] = result["error"]["code"]
            if "incomplete" in result:
                row["incomplete"] = result["incomplete"]
            rows.append(row)
        columns = ["key", "found", *names, "newest_event"]
        columns += [c for c in ("stale", "error", "incomplete") if any(c in row for row in rows)]
        return _typed(pd.DataFrame(rows, columns=columns))

    def service(
        self, name: str, rows: pd.DataFrame | Sequence[Mapping[str, Any]], at: int | str | None = None
    ) -> pd.DataFrame:
        """The service's columns for each request row, in order, then ``missing`` and
        ``outside_retention`` (lists of groups), ``newest_event`` (per group, epoch ms), ``stale``
        (groups), ``error`` (a row's error message, else None) and, while a replay runs,
        ``incomplete``."""
        records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)
        answers: list[dict[str, Any]] = []
        for begin in range(0, len(records), MAX_ITEMS):
            body: dict[str, Any] = {"rows": records[begin : begin + MAX_ITEMS]}
            if at is not None:
                body["at"] = at
            answers += self._json("POST", f"/services/{name}", body)["rows"]
        columns = self._service_columns(name)
        out = []
        for answer in answers:
            values = answer.get("features") or {}
            row = {column: values.get(column) for column in columns}
            row["missing"] = answer.get("missing", [])
            row["outside_retention"] = answer.get("outside_retention", [])
            row["newest_event"] = answer.get("newest_event", {})
            row["stale"] = answer.get("stale", [])
            row["error"] = answer["error"]["message"] if "error" in answer else None
            if "incomplete" in answer:
                row["incomplete"] = answer["incomplete"]
            out.append(row)
        names = [*columns, "missing", "outside_retention", "newest_event", "stale", "error"]
        names += ["incomplete"] if any("incomplete" in row for row in out) else []
        return _typed(pd.DataFrame(out, columns=names))

    def table(
        self,
        name: str,
        columns: Sequence[str] | None = None,
        limit: int | None = None,
        at: int | str | None = None,
    ) -> pd.DataFrame:
        """Every row of a lookup table or feature group (across the workers, in key order), as the
        API's Parquet answer gives it."""
        params: dict[str, Any] = {"format": "parquet"}
        if columns is not None:
            params["columns"] = ",".join(columns)
        if limit is not None:
            params["limit"] = limit
        if at is not None:
            params["at"] = at
        response = self._request("GET", f"/tables/{name}", params=params)
        return pd.read_parquet(io.BytesIO(response.content))

    def ingest(
        self,
        stream: str,
        rows: pd.DataFrame | Sequence[Mapping[str, Any]],
        wait: bool = False,
        timeout_ms: int | None = None,
    ) -> dict[str, Any]:
        """Send events to ``stream`` over HTTP (``POST /ingest/{stream}``, in requests under the body
        limit): ``{"accepted": n, "rejected": [{"index", "reason", "error"}, ...]}``, indices into
        ``rows``. With ``wait``, each request returns once its events are applied (504 raises). Not
        retried: a request that failed may have sent some of its events."""
        records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)
        params: dict[str, Any] = {"wait": "true"} if wait else {}
        if timeout_ms is not None:
            params["timeout_ms"] = timeout_ms
        accepted, rejected = 0, []
        for begin, body in _ingest_bodies(records):
            response = self._request(
                "POST", f"/ingest/{stream}", params=params, content=body, retry=False, lines=True
            )
            answer = orjson.loads(response.content)
            accepted += answer["accepted"]
            rejected += [{**row, "index": row["index"] + begin} for row in answer["rejected"]]
        return {"accepted": accepted, "rejected": rejected}

    def _feature_names(self, group: str) -> list[str]:
        names: list[str] = self._json("GET", "/pipeline")["features"].get(group, [])  # as the workers run
        return names

    def _service_columns(self, name: str) -> list[str]:
        for service in self._json("GET", "/services")["services"]:
            if service["name"] == name:
                return [column["name"] for column in service["columns"]]
        raise HydrantClientError(404, "unknown_service", f"no service {name!r}")

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        return orjson.loads(self._request(method, path, body=body).content)

    def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        content: bytes | None = None,
        retry: bool = True,
        lines: bool = False,
    ) -> httpx.Response:
        if body is not None:
            content = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
        kind = "application/x-ndjson" if lines else "application/json"  # JSON Lines or JSON
        headers = {"Content-Type": kind} if content is not None else None
        retries = self.retries if retry else 0
        for attempt in range(retries + 1):
            try:
                response = self._http.request(method, path, content=content, params=params, headers=headers)
            except httpx.HTTPError as exc:
                raise HydrantClientError(0, "unreachable", f"{method} {path}: {exc}") from exc
            if response.status_code == 503 and attempt < retries:
                self.retried += 1
                time.sleep(min(float(response.headers.get("Retry-After", "1")), 5.0))
                continue
            if response.status_code >= 400:
                raise _error(response)
            return response
        raise AssertionError("unreachable")  # the loop returns or raises


def _ingest_bodies(records: Sequence[Mapping[Any, Any]]) -> Iterable[tuple[int, bytes]]:
    """(index of the first event, JSON Lines body) per request: under MAX_INGEST_BYTES each, one event
    at least; datetimes as ISO-8601, NaN as null."""
    begin, size = 0, 0
    lines: list[bytes] = []
    for index, record in enumerate(records):
        line = orjson.dumps(record, default=_iso, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
        if lines and size + len(line) + 1 > MAX_INGEST_BYTES:
            yield begin, b"\n".join(lines)
            begin, lines, size = index, [], 0
        lines.append(line)
        size += len(line) + 1
    if lines:
        yield begin, b"\n".join(lines)


def _iso(value: Any) -> Any:
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if value is pd.NA or value is pd.NaT:
        return None
    raise TypeError(f"cannot send a {type(value).__name__} as JSON")


def _error(response: httpx.Response) -> HydrantClientError:
    try:
        error = response.json()["error"]
        return HydrantClientError(response.status_code, str(error["code"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        return HydrantClientError(response.status_code, "http_error", response.text[:200])


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Nullable pandas types where a column has one type (Int64, Float64, boolean, string); lists stay
    objects."""
    return frame.convert_dtypes()
