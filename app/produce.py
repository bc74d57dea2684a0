"""`hydrant produce`: CSV / Parquet / JSONL -> one JSON record per row, keyed by a column."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from app.errors import InputFileError
from app.kafka import bulk_producer
from app.settings import Settings

FORMATS = ("csv", "parquet", "jsonl")
_SUFFIXES = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
_CHUNK = 5_000


@dataclass(frozen=True)
class ProduceSummary:
    topic: str
    records: int
    without_key: int
    seconds: float

    def line(self) -> str:
        rate = self.records / self.seconds if self.seconds > 0 else float("inf")
        extra = f", {self.without_key} without a key" if self.without_key else ""
        return f"sent {self.records:,} records to {self.topic} in {self.seconds:.2f}s ({rate:,.0f}/s){extra}"


def detect_format(path: Path, fmt: str | None = None) -> str:
    """The file format from ``fmt`` or the file suffix; InputFileError when unknown."""
    if fmt:
        return fmt
    try:
        return _SUFFIXES[path.suffix.lower()]
    except KeyError:
        raise InputFileError(
            f"{path}: cannot tell the format from the suffix {path.suffix!r}; use --format csv|parquet|jsonl"
        ) from None


def read_table(path: Path, fmt: str | None = None) -> pd.DataFrame:
    """The file as a DataFrame; InputFileError with a one-line reason when it cannot be read."""
    kind = detect_format(path, fmt)
    if not path.is_file():
        raise InputFileError(f"{path}: no such file")
    try:
        if kind == "csv":
            return pd.read_csv(path)
        if kind == "parquet":
            return pd.read_parquet(path)
        return pd.read_json(path, lines=True)
    except Exception as exc:  # pandas raises many types; the user needs one line either way
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputFileError(f"{path}: cannot read as {kind}: {reason}") from None


def encode_rows(frame: pd.DataFrame, key: str | None) -> tuple[list[bytes | None], list[bytes]]:
    """(keys, JSON values) for every row; vectorized through pandas' JSON writer (NaN -> null,
    datetimes -> epoch ms). InputFileError when the key column is missing."""
    if key is not None and key not in frame.columns:
        raise InputFileError(f"key column {key!r} not found; columns: {', '.join(map(str, frame.columns))}")
    frame = _datetimes_to_epoch_ms(frame)
    text = frame.to_json(orient="records", lines=True) if len(frame) else ""
    values = [line.encode("utf-8") for line in text.splitlines() if line]
    if key is None:
        return [None] * len(values), values
    column = frame[key]
    keys: list[bytes | None] = [None if pd.isna(v) else _key_text(v).encode("utf-8") for v in column.tolist()]
    return keys, values


def _datetimes_to_epoch_ms(frame: pd.DataFrame) -> pd.DataFrame:
    """Datetime columns as epoch milliseconds (Hydrant's event-time form); NaT becomes null."""
    stamps = [name for name in frame.columns if pd.api.types.is_datetime64_any_dtype(frame[name])]
    if not stamps:
        return frame
    frame = frame.copy()
    for name in stamps:
        column = frame[name]
        zero = pd.Timestamp(0, tz=column.dt.tz)
        frame[name] = ((column - zero) // pd.Timedelta(1, "ms")).astype("Int64")
    return frame


def _key_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


async def produce_file(
    settings: Settings,
    topic: str,
    path: Path,
    key: str | None = None,
    rate: float | None = None,
    fmt: str | None = None,
    progress: bool = True,
) -> ProduceSummary:
    """Send every row of the file to ``topic``; returns the summary after every record is acknowledged."""
    frame = read_table(path, fmt)
    keys, values = encode_rows(frame, key)
    started = time.monotonic()
    producer = bulk_producer(settings)
    await producer.start()
    try:
        with tqdm(total=len(values), unit="rec", desc=topic, disable=not progress, leave=False) as bar:
            for begin in range(0, len(values), _CHUNK):
                pending: list[Awaitable[Any]] = []
                for i in range(begin, min(begin + _CHUNK, len(values))):
                    if rate:
                        delay = started + i / rate - time.monotonic()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    pending.append(await producer.send(topic, values[i], key=keys[i]))
                await asyncio.gather(*pending)
                bar.update(len(pending))
    finally:
        await producer.stop()
    return ProduceSummary(
        topic, len(values), sum(k is None for k in keys) if key else 0, time.monotonic() - started
    )
