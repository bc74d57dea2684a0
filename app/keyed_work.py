"""The per-key part of a batch (window updates, output rows) as a pure function of the keys' stored
records, so that a helper process can take part of a batch (agents/process_events.py).

A batch's stream events are split by entity key into shards. For each shard the worker reads the
records the shard's events need from RocksDB: every record of a key whose features an output row
carries (one range read), otherwise its head and the buckets its events fall in; and the lookup
rows they join. A shard then runs anywhere the pipeline spec is loaded: :meth:`BatchWork.run`
returns, per event, its output rows or why it goes to the dead letters, and per key the records to
write (in :meth:`KeyState.changes` order). The worker sends and writes them in batch order.

The worker runs one shard itself while the helper processes run the others: the batch body is
CPU-bound Python, and one process holds one core (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import gc
import os
import pickle
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing import get_context
from multiprocessing.connection import Connection
from typing import Any, cast

import orjson

from app.enrich import OutputBuilder, output_builders
from app.records import BadRecord, decode_event
from app.spec import Pipeline, StreamSpec
from tables.windows import (
    KeyState,
    apply_event,
    bucket_key,
    choose,
    group_plans,
    head_key,
    is_late,
    read_features,
)

Slot = tuple[str, bytes]  # (feature group, entity key)
Decoded = tuple[str, int, dict[str, Any]]  # decode_event's (key, event time ms, fields)
Rows = list[tuple[str, bytes]]  # (output topic, value) per output of the event's stream
Rejected = tuple[str, str]  # a BadRecord's (reason, message)


@dataclass
class ShardEvent:
    stream: str
    value: bytes
    record_ts: int  # the Kafka record's timestamp, ms (event time when the stream has no time field)
    source: str  # "<topic>:<partition>" of the original record (window state's duplicate check)
    offset: int
    decoded: Decoded | None = None  # already decoded (not shipped to a helper: it decodes again)


@dataclass
class Shard:
    """Some keys' events of one batch, in batch order, and the stored records they read."""

    events: list[ShardEvent] = field(default_factory=list)
    #: per slot: (whole: every record of the key, by range read; else the head and the buckets of
    #: ``buckets``) -- what the worker must read
    wants: dict[Slot, tuple[bool, set[int]]] = field(default_factory=dict)
    #: per slot: {record key: stored value, None when absent} (filled by the worker)
    records: dict[Slot, dict[bytes, bytes | None]] = field(default_factory=dict)
    #: (lookup, key) -> the stored row (orjson) or None (filled by the worker)
    lookups: dict[tuple[str, str], bytes | None] = field(default_factory=dict)


@dataclass
class ShardResult:
    outcomes: list[Rows | Rejected] = field(default_factory=list)  # per event of the shard
    changes: list[tuple[str, bytes, list[tuple[bytes, bytes | None]]]] = field(default_factory=list)
    late: dict[str, int] = field(default_factory=dict)  # per group
    duplicates: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class StreamWork:
    name: str
    spec: StreamSpec
    groups: tuple[str, ...]  # feature groups this stream feeds
    reads: frozenset[str]  # groups whose features its output rows carry (read whole)
    builders: tuple[OutputBuilder, ...]
    joins: tuple[str, ...]  # lookups its output rows join


class BatchWork:
    """What every shard needs of the pipeline: group plans and, per stream, its outputs."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.plans = group_plans(pipeline)
        self.streams: dict[str, StreamWork] = {}
        for name, spec in pipeline.streams.items():
            builders = tuple(output_builders(pipeline, name))
            self.streams[name] = StreamWork(
                name,
                spec,
                tuple(g for g, plan in self.plans.items() if name in plan.by_stream),
                frozenset(g for b in builders for g in b.groups),
                builders,
                tuple(dict.fromkeys(lookup for b in builders for lookup, _ in b.joins)),
            )

    def add(self, shard: Shard, event: ShardEvent, key: str, raw_key: bytes, ts: int) -> int:
        """Add a decoded home event to ``shard`` and note the records it reads; its position there."""
        work = self.streams[event.stream]
        wants = shard.wants
        for group in work.groups:
            _, buckets = wants.setdefault((group, raw_key), (False, set()))
            buckets.add(self.plans[group].bucket(ts))
        for group in work.reads:
            _, buckets = wants.get((group, raw_key), (False, set()))
            wants[group, raw_key] = (True, buckets)
        for lookup in work.joins:
            shard.lookups[lookup, key] = None
        shard.events.append(event)
        return len(shard.events) - 1

    def run(self, shard: Shard) -> ShardResult:
        """Every event of ``shard``, at once (in a helper process)."""
        result = ShardResult()
        for _ in self.steps(shard, result):
            pass
        return result

    def steps(self, shard: Shard, result: ShardResult) -> Iterator[None]:
        """Every event of ``shard`` into ``result``, yielding after each (the worker's own shard
        lets its event loop turn in between)."""
        states: dict[Slot, KeyState] = {}
        for slot, (whole, _) in shard.wants.items():
            states[slot] = _state(slot[1], whole, shard.records[slot], self.plans[slot[0]].retention)
        rows: dict[tuple[str, str], dict[str, Any] | None] = {
            name: orjson.loads(raw) if raw is not None else None for name, raw in shard.lookups.items()
        }
        for event in shard.events:
            result.outcomes.append(self._event(event, states, rows, result))
            yield None
        for (group, raw_key), state in states.items():
            changes = state.changes()
            if changes:
                result.changes.append((group, raw_key, changes))

    def _event(
        self,
        event: ShardEvent,
        states: dict[Slot, KeyState],
        lookups: dict[tuple[str, str], dict[str, Any] | None],
        result: ShardResult,
    ) -> Rows | Rejected:
        work = self.streams[event.stream]
        try:
            key, ts, fields = event.decoded or decode_event(event.value, work.spec, event.record_ts)
            raw_key = key.encode("utf-8")
            self._apply(work, states, raw_key, fields, ts, event.source, event.offset, result)

            def features(group: str, _key: str, at: int) -> dict[str, Any]:
                # The group's state as this batch holds it (applied above if its stream feeds it).
                return read_features(self.plans[group], states[group, raw_key], at)

            def lookup(name: str, join_key: str) -> dict[str, Any] | None:
                return lookups[name, join_key]

            return [
                (b.topic, orjson.dumps(b.build(key, ts, fields, lookup, features))) for b in work.builders
            ]
        except BadRecord as exc:
            return (exc.reason, str(exc))

    def _apply(
        self,
        work: StreamWork,
        states: dict[Slot, KeyState],
        raw_key: bytes,
        fields: dict[str, Any],
        ts: int,
        source: str,
        offset: int,
        result: ShardResult,
    ) -> None:
        """Apply the event to every group its stream feeds; BadRecord('late') when it is late for
        any of them (then it is applied to none), BadRecord('expression') when a `where` fails."""
        if not work.groups:
            return
        plans = self.plans
        try:
            chosen = {g: choose(plans[g], work.name, fields) for g in work.groups}
        except Exception as exc:
            raise BadRecord("expression", f"where filter: {type(exc).__name__}: {exc}") from None
        keyed = {g: states[g, raw_key] for g in work.groups}
        # A redelivery that a head already recorded is a duplicate there, even if its bucket expired since.
        fresh = {g: state for g, state in keyed.items() if state.processed.get(source, -1) < offset}
        late = [g for g, state in fresh.items() if is_late(plans[g], state, ts)]
        if late:
            for g in late:  # 'late': recorded as processed
                apply_event(plans[g], fresh[g], [], fields, ts, source, offset)
                result.late[g] = result.late.get(g, 0) + 1
            plan = plans[late[0]]
            horizon = (keyed[late[0]].newest or 0) - plan.retention
            raise BadRecord(
                "late",
                f"event time {ts} is in bucket {plan.bucket(ts)} <= {horizon} (the key's newest bucket "
                f"minus the retention of group {late[0]!r})",
            )
        for g, state in keyed.items():
            if apply_event(plans[g], state, chosen[g], fields, ts, source, offset) == "duplicate":
                result.duplicates[g] = result.duplicates.get(g, 0) + 1


def _state(key: bytes, whole: bool, records: dict[bytes, bytes | None], retention: int) -> KeyState:
    if whole:  # records: every record of the key, from one range read
        return KeyState(key, _unread, retention, lambda prefix: records.items())  # type: ignore[arg-type, return-value]
    # records: the head and the buckets the events fall in; any other read is a bug, never "absent"
    return KeyState(key, records.__getitem__, retention)


def _unread(record_key: bytes) -> bytes | None:
    raise AssertionError(f"record {record_key!r} was not read for this shard")


def read_records(
    shard: Shard, feature_db: Callable[[str, bytes], Any], lookup_db: Callable[[str, bytes], Any]
) -> None:
    """Fill ``shard`` with the stored records and lookup rows its events read; ``feature_db(group,
    key)`` and ``lookup_db(lookup, key)`` give the RocksDB partition (rocksdict, raw mode) holding
    the key. A key whose features are read: all its records (one range read); else its head and
    the buckets its events fall in."""
    from tables.store import prefix_scan  # the worker's side only: it imports Faust, helpers need not

    for slot, (whole, buckets) in shard.wants.items():
        group, raw_key = slot
        db = feature_db(group, raw_key)
        if whole:
            shard.records[slot] = dict(prefix_scan(db)(head_key(raw_key)))
        else:
            get = db.get
            record_keys = [head_key(raw_key), *(bucket_key(raw_key, number) for number in buckets)]
            shard.records[slot] = {record_key: get(record_key) for record_key in record_keys}
    lookups = shard.lookups
    for name, key in list(lookups):
        raw_key = key.encode("utf-8")
        lookups[name, key] = lookup_db(name, raw_key).get(raw_key)


def helper_main(connection: Connection, load: Callable[[], Pipeline]) -> None:
    """A helper process: load the pipeline, then run each pickled shard that arrives on
    ``connection`` and answer with its pickled result, until the worker closes its end."""
    work = BatchWork(load())
    gc.collect()
    gc.freeze()
    connection.send_bytes(b"ready")
    while True:
        try:
            shard = pickle.loads(connection.recv_bytes())  # noqa: S301 (from the worker that started us)
        except EOFError:  # the worker closed its end, or is gone
            return
        gc.disable()  # as in the worker's batches: the shard's objects all live until its end
        try:
            result = work.run(shard)
        finally:
            gc.enable()
        connection.send_bytes(pickle.dumps(result, pickle.HIGHEST_PROTOCOL))


_SIZE = struct.Struct("!i")  # multiprocessing.Connection's frame header (up to 2 GiB)
_LONG_SIZE = struct.Struct("!Q")  # after a header of -1


class HelperPool:
    """``count`` helper processes, each running one shard of every batch (none when 0). The worker
    keeps two keys in ``count + 2`` for its own shard: it also decodes, reads, sends and writes,
    and a helper's shard costs ~1.35x the worker's (pickling, sending, decoding again).

    Shards and results go over a socket pair that the worker's event loop reads and writes without
    blocking. Not a ProcessPoolExecutor: its threads pass work and results on, each waiting for the
    GIL while the worker runs its own shard, which added ~20 ms to a helper's ~20 ms shard."""

    def __init__(self, count: int, load: Callable[[], Pipeline]) -> None:
        self.count = count
        self._load = load
        self._processes: list[Any] = []
        self._streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._sockets: list[socket.socket] = []

    async def start(self) -> None:
        """Start the processes (spawned: the worker has threads) and wait until they have loaded the
        pipeline, so the first batch does not wait for them."""
        if not self.count or self._processes:
            return
        for connection in await asyncio.to_thread(self._spawn):
            sock = socket.socket(fileno=os.dup(connection.fileno()))  # Pipe() is a socket pair here
            connection.close()
            self._sockets.append(sock)
            self._streams.append(await asyncio.open_unix_connection(sock=sock))

    def _spawn(self) -> list[Connection]:
        context = get_context("spawn")
        ours: list[Connection] = []
        for index in range(self.count):
            mine, theirs = context.Pipe()
            process = context.Process(
                target=helper_main, args=(theirs, self._load), name=f"hydrant-helper-{index}", daemon=True
            )
            process.start()
            theirs.close()
            self._processes.append(process)
            ours.append(mine)
        for process, mine in zip(self._processes, ours, strict=True):
            if not mine.poll(120) or mine.recv_bytes() != b"ready":
                raise RuntimeError(f"helper process {process.pid} did not start")
        return ours

    def shard_for(self, n: int) -> int:
        """The shard of the batch's ``n``-th key (0: the worker's own, s > 0: helper s - 1)."""
        position = n % (self.count + 2)
        return 0 if position < 2 else position - 1

    async def run(self, s: int, shard: Shard) -> ShardResult:
        """``shard`` run by helper ``s - 1`` (IncompleteReadError if it died)."""
        reader, writer = self._streams[s - 1]
        payload = pickle.dumps(shard, pickle.HIGHEST_PROTOCOL)
        writer.write(_SIZE.pack(len(payload)))
        writer.write(payload)
        await writer.drain()
        (size,) = _SIZE.unpack(await reader.readexactly(_SIZE.size))
        if size == -1:
            (size,) = _LONG_SIZE.unpack(await reader.readexactly(_LONG_SIZE.size))
        return cast(ShardResult, pickle.loads(await reader.readexactly(size)))  # noqa: S301 (our helper)

    def pids(self) -> list[int]:
        return [process.pid for process in self._processes]

    def close(self) -> None:
        """Stop the helpers (the end of their input ends their loop), waiting for each by its PID."""
        for sock in self._sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # now, not on a later turn of the event loop
            except OSError:
                pass
        for _, writer in self._streams:
            writer.close()
        self._streams, self._sockets = [], []
        for process in self._processes:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()
        self._processes = []
