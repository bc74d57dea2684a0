"""Helpers for the window-state tests (tests/unit/tables/test_apply.py, test_read.py, test_state_format.py): a
pipeline with streams s1/s2 and one feature group g, events, and a :class:`Worker` that keeps a
group's feature table in a dict, written with ``KeyState.changes()`` exactly as the engine
does, so flushes, reloads and crashes (unflushed changes lost, events redelivered) can be tested."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import pandas as pd

from app.config.spec import parse_pipeline
from tables.apply import apply_event, choose
from tables.key_state import KeyState
from tables.plans import GroupPlan
from tables.read import read_features

MINUTE = 60_000
HOUR = 60 * MINUTE
BASE = 1_699_999_800_000  # a multiple of 10 minutes (so of every period used here)
STREAMS = """\
streams:
  s1:
    topic: s1
    key: k
    time: ts
    fields: {k: str, ts: int, x: float, n: int, word: str, status: str}
  s2:
    topic: s2
    key: k
    time: ts
    fields: {k: str, ts: int, y: float, page: str}
"""
APPROX_OPS = ("sum", "avg", "stddev", "percentile")
SPEND = (
    "{name: spend, stream: s1, field: x, ops: [count, sum, avg, min, max, stddev, first, last, distinct], "
    "windows: [10m, 1h]}"
)


def pipeline_text(period: str, aggregations: Iterable[str]) -> str:
    """A pipeline with streams s1/s2 keyed by k and one feature group g; ``aggregations`` are YAML flow
    mappings, e.g. ``{name: spend, stream: s1, field: x, ops: [sum], windows: [1h]}``."""
    lines = "".join(f"      - {a}\n" for a in aggregations)
    return f"name: t\n{STREAMS}features:\n  g:\n    key: k\n    period: {period}\n    aggregations:\n{lines}"


@functools.lru_cache(maxsize=512)
def group_spec(text: str) -> Any:
    """The feature group g of a pipeline text (parsing YAML is slow; hypothesis repeats texts)."""
    return parse_pipeline(text).features["g"]


def group(period: str, *aggregations: str) -> tuple[GroupPlan, Any]:
    spec = group_spec(pipeline_text(period, aggregations))
    return GroupPlan.from_spec("g", spec), spec


@dataclass
class Event:
    key: str
    stream: str
    time: int
    fields: dict[str, Any]


def s1(key: str, time: int, x: float | None = None, **extra: Any) -> Event:
    fields = {"k": key, "ts": time, "x": x, "n": None, "word": None, "status": "ok"}
    fields.update(extra)
    return Event(key, "s1", time, fields)


def s2(key: str, time: int, y: float | None = None, page: str | None = "home") -> Event:
    return Event(key, "s2", time, {"k": key, "ts": time, "y": y, "page": page})


def frame(events: Iterable[Event]) -> pd.DataFrame:
    rows = [{"key": e.key, "time": e.time, "stream": e.stream, **e.fields} for e in events]
    return pd.DataFrame(rows, dtype=object)


@dataclass
class Worker:
    """One group's feature table (record key -> bytes) and the key states of the current batch."""

    plan: GroupPlan
    table: dict[bytes, bytes] = field(default_factory=dict)
    states: dict[str, KeyState] = field(default_factory=dict)

    def state(self, key: str) -> KeyState:
        if key not in self.states:
            self.states[key] = KeyState(key.encode(), self.table.get, self.plan.retention)
        return self.states[key]

    def apply(self, event: Event, offset: int, source: str | None = None) -> str:
        """Source ``<stream>:0`` unless given: each stream is one topic partition."""
        chosen = choose(self.plan, event.stream, event.fields)
        source = source or f"{event.stream}:0"
        state = self.state(event.key)
        return apply_event(self.plan, state, chosen, event.fields, event.time, source, offset)

    def run(self, events: Iterable[Event], start: int = 0) -> list[str]:
        """Apply ``events`` in order, at source offsets ``start``, ``start + 1``, ..."""
        return [self.apply(event, offset) for offset, event in enumerate(events, start=start)]

    def run_crashing(self, events: list[Event], flushes: Iterable[int], crash: int, committed: int) -> None:
        """Apply ``events`` flushing after each count in ``flushes``, crash after the first ``crash``,
        redeliver from flush number ``committed`` (modulo the flushes made; 0: from the start), run to
        the end and flush: how a worker that crashed mid-way ends."""
        at = set(flushes)
        persisted = [0]
        for i, event in enumerate(events[:crash]):
            self.apply(event, i)
            if i + 1 in at:
                self.flush()
                persisted.append(i + 1)
        self.crash()
        restart = persisted[committed % len(persisted)]
        self.run(events[restart:], start=restart)
        self.flush()

    def flush(self) -> None:
        """Write every key's changes (as the engine does) and end the batch."""
        for state in self.states.values():
            for record_key, value in state.changes():
                if value is None:
                    self.table.pop(record_key, None)
                else:
                    self.table[record_key] = value
        self.states.clear()

    def crash(self) -> None:
        """Lose what was not flushed."""
        self.states.clear()

    def read(self, key: str, at_ms: int) -> dict[str, Any]:
        return read_features(self.plan, self.state(key), at_ms)

    def scan(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """A range read of the table, as tables/store.py prefix_scan does on RocksDB."""
        return sorted((k, v) for k, v in self.table.items() if k.startswith(prefix))

    def scanned(self, key: str) -> KeyState:
        """The key's stored state read with one range read (how feature reads load it)."""
        return KeyState(key.encode(), self.table.get, self.plan.retention, self.scan)

    def stored_buckets(self, key: str) -> int:
        prefix = key.encode() + b"\x00"
        return sum(1 for k in self.table if k.startswith(prefix) and k not in (prefix, prefix + b"L"))


def op_of(spec: Any) -> dict[str, str]:
    labels = [(a, op, label) for a in spec.aggregations for op, label in a.op_labels()]
    return {f"{a.name}_{label}_{w}": op for a, op, label in labels for w in a.windows}


def assert_same(
    got: Mapping[str, Any], want: Mapping[str, Any], ops: Mapping[str, str], context: str
) -> None:
    """Exact for counts, distinct, min, max, first, last; 1e-9 relative (or absolute) for the rest."""
    assert list(got) == list(want), context
    for name, expected in want.items():
        actual = got[name]
        if ops[name] in APPROX_OPS and expected is not None:
            assert actual is not None and math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-9), (
                f"{context}: {name} = {actual!r}, expected {expected!r}"
            )
        else:
            assert actual == expected and (actual is None) == (expected is None), (
                f"{context}: {name} = {actual!r}, expected {expected!r}"
            )
            if ops[name] in ("count", "distinct"):
                assert type(actual) is int, f"{context}: {name} = {actual!r} is not an int"


def buckets_of(worker: Worker, key: str) -> list[list[Any]]:
    prefix = key.encode() + b"\x00"
    return [orjson.loads(v) for k, v in sorted(worker.table.items()) if k.startswith(prefix) and k != prefix]
