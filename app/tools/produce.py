"""`hydrant produce`: CSV / Parquet / JSONL -> one JSON record per row, keyed by a column."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from tqdm import tqdm

from app.config.settings import Settings
from app.errors import BrokerError, InputFileError
from app.kafka.clients import bulk_producer, consumer_options
from app.tools.frames import encode_rows, order_by_time, read_table

_CHUNK = 5_000  # records per send while producing a file


@dataclass(frozen=True)
class ProduceSummary:
    """What a `hydrant produce` run sent, for its summary line."""

    topic: str
    records: int
    without_key: int
    seconds: float
    skipped: int = 0  # rows an earlier run of the same checkpoint already delivered

    def line(self) -> str:
        """The one-line summary printed at the end."""
        rate = self.records / self.seconds if self.seconds > 0 else float("inf")
        extra = f", {self.without_key} without a key" if self.without_key else ""
        if self.skipped:
            extra += f", {self.skipped:,} already delivered by an earlier run"
        return f"sent {self.records:,} records to {self.topic} in {self.seconds:.2f}s ({rate:,.0f}/s){extra}"


async def produce_file(
    settings: Settings,
    topic: str,
    path: Path,
    key: str | None = None,
    rate: float | None = None,
    fmt: str | None = None,
    progress: bool = True,
    order_by: str | None = None,
    checkpoint: Path | None = None,
) -> ProduceSummary:
    """Send every row of the file to ``topic`` (in event-time order of ``order_by``; resumable with a
    ``checkpoint``); returns the summary once every record is acknowledged."""
    frame = read_table(path, fmt)
    if order_by is not None:
        frame = order_by_time(frame, order_by)
    keys, values = encode_rows(frame, key)
    started = time.monotonic()
    todo = list(range(len(values)))
    state: Checkpoint | None = None
    if checkpoint is not None:
        state = Checkpoint.open(checkpoint, topic, path, len(values), key, order_by)
        todo = await state.pending(settings)
    producer = bulk_producer(settings)
    await producer.start()
    chunk = _CHUNK if not rate else max(1, min(_CHUNK, int(rate // 4)))
    try:
        with tqdm(total=len(values), unit="rec", desc=topic, disable=not progress, leave=False) as bar:
            bar.update(len(values) - len(todo))
            for begin in range(0, len(todo), chunk):
                rows = todo[begin : begin + chunk]
                pending: list[Awaitable[Any]] = []
                for n, i in enumerate(rows, start=begin):
                    if rate:
                        delay = started + n / rate - time.monotonic()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    headers = state.headers(i) if state is not None else None
                    pending.append(await producer.send(topic, values[i], key=keys[i], headers=headers))
                delivered = await asyncio.gather(*pending)
                if state is not None:
                    state.acknowledged(
                        todo[begin + len(rows)] if begin + len(rows) < len(todo) else len(values),
                        [(m.partition, m.offset) for m in delivered],
                    )
                bar.update(len(pending))
    finally:
        await producer.stop()
    return ProduceSummary(
        topic,
        len(todo),
        sum(keys[i] is None for i in todo) if key else 0,
        time.monotonic() - started,
        skipped=len(values) - len(todo),
    )


RUN_HEADER = "hydrant-produce-run"
ROW_HEADER = "hydrant-produce-row"


@dataclass
class Checkpoint:
    """A resumable `hydrant produce` run, kept in a JSON file rewritten atomically; a resumed run sends
    only the rows not found delivered (fields and protocol: docs/offline.md, `hydrant produce`)."""

    path: Path
    topic: str
    source: str
    rows: int
    key: str | None
    order_by: str | None
    run: str
    acked: int = 0
    offsets: dict[str, int] | None = None
    start: dict[str, int] | None = None
    found: list[int] = field(default_factory=list)  # rows above ``acked`` found delivered in the topic

    @classmethod
    def open(
        cls, path: Path, topic: str, source: Path, rows: int, key: str | None, order_by: str | None
    ) -> Checkpoint:
        """The checkpoint at ``path``, or a new run; InputFileError when it belongs to another run."""
        if path.exists():
            try:
                data = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError) as exc:
                raise InputFileError(f"{path}: not a readable checkpoint: {exc}") from None
            mine = {"topic": topic, "rows": rows, "key": key, "order_by": order_by}
            theirs = {k: data.get(k) for k in mine}
            if mine != theirs:
                diff = ", ".join(f"{k} {theirs[k]!r} (now {v!r})" for k, v in mine.items() if theirs[k] != v)
                raise InputFileError(
                    f"{path}: the checkpoint belongs to another run: {diff}; remove it to start over"
                )
            return cls(
                path, topic, data["source"], rows, key, order_by, data["run"], data["acked"],
                data.get("offsets") or {}, data.get("start"), list(data.get("found") or []),
            )  # fmt: skip
        return cls(path, topic, str(source), rows, key, order_by, uuid.uuid4().hex, 0, {}, None)

    def headers(self, row: int) -> list[tuple[str, bytes]]:
        """The record headers of ``row``: the run id and the row number."""
        return [(RUN_HEADER, self.run.encode()), (ROW_HEADER, str(row).encode())]

    def save(self) -> None:
        """Rewrite the file atomically (write, then rename)."""
        data = {
            "topic": self.topic, "source": self.source, "rows": self.rows, "key": self.key,
            "order_by": self.order_by, "run": self.run, "acked": self.acked, "offsets": self.offsets,
            "start": self.start, "found": self.found, "done": self.acked >= self.rows,
        }  # fmt: skip
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
        os.replace(tmp, self.path)

    def acknowledged(self, acked: int, positions: list[tuple[int, int]]) -> None:
        """Every row below ``acked`` is delivered; ``positions`` are the new acknowledgements."""
        offsets = self.offsets if self.offsets is not None else {}
        for partition, offset in positions:
            offsets[str(partition)] = max(offsets.get(str(partition), -1), offset)
        self.offsets = offsets
        self.acked = max(self.acked, acked)
        self.found = [row for row in self.found if row >= self.acked]
        self.save()

    async def pending(self, settings: Settings) -> list[int]:
        """The rows still to send: at or above ``acked`` and not found in the topic."""
        logging.getLogger("aiokafka.consumer.subscription_state").setLevel(logging.WARNING)
        consumer = AIOKafkaConsumer(**consumer_options(settings), group_id=None, enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = await _partitions(consumer, self.topic)
            tps = [TopicPartition(self.topic, p) for p in partitions]
            if self.start is None:  # a fresh run: where the topic ends now (a lower bound is enough)
                ends = await consumer.end_offsets(tps)
                self.start = {str(tp.partition): int(ends[tp]) for tp in tps}
                self.save()
                return list(range(self.acked, self.rows))
            found = await self._scan(consumer, tps)
        finally:
            await consumer.stop()
        done = set(self.found) | {row for row, _, _ in found}
        todo = [i for i in range(self.acked, self.rows) if i not in done]
        # Only rows below the first missing one move the scan's start; those above are kept by number.
        acked = todo[0] if todo else self.rows
        self.found = sorted(row for row in done if row >= acked)
        self.acknowledged(acked, [(p, o) for row, p, o in found if row < acked])
        return todo

    async def _scan(
        self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]
    ) -> list[tuple[int, int, int]]:
        """(row, partition, offset) of this run's records at or above ``acked`` in the topic."""
        run = self.run.encode()
        offsets = self.offsets or {}
        start = self.start or {}
        consumer.assign(tps)
        for tp in tps:
            begin = max(start.get(str(tp.partition), 0), offsets.get(str(tp.partition), -1) + 1)
            consumer.seek(tp, begin)
        found: list[tuple[int, int, int]] = []
        deadline = time.monotonic() + 120
        remaining = set(tps)
        while remaining:
            if time.monotonic() > deadline:
                raise BrokerError(f"resume: could not read {self.topic} to its end within 120 s")
            batch = await consumer.getmany(*remaining, timeout_ms=500, max_records=10_000)
            for messages in batch.values():
                for m in messages:
                    headers = dict(m.headers or ())
                    if headers.get(RUN_HEADER) == run:
                        row = int(headers[ROW_HEADER])
                        if row >= self.acked:
                            found.append((row, m.partition, m.offset))
            for tp in list(remaining):
                high = consumer.highwater(tp)
                if high is not None and await consumer.position(tp) >= high:
                    remaining.discard(tp)
        return found


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return sorted(partitions)
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.2)
    raise BrokerError(f"topic {topic!r} not found; create it first (hydrant topics create)")
