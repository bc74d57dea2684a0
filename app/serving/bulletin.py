"""What a worker tells its serving processes (app/serving/process.py), through two files in its data
dir: ``serving/status.json`` (:class:`Status`) and ``serving/counters`` (shared int64 slots); docs/api.md."""

from __future__ import annotations

import ctypes
import mmap
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

STATUS_SLOT = 0
HEARTBEAT_SLOT = 1
FIRST_PARTITION_SLOT = 2
SLOT_BYTES = 8  # a ctypes int64 each: one aligned 8-byte store or load, never seen half-written


def monotonic_ms() -> int:
    """Monotonic clock in milliseconds (system-wide on Linux: comparable across processes)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1_000_000


@dataclass(frozen=True)
class Status:
    """The worker's view of readiness and ownership, as the serving process needs it."""

    ready: bool = False
    reason: str = "the worker is starting: tables are not recovered from their changelogs yet"
    own_url: str = ""
    active: dict[str, dict[int, str]] = field(default_factory=dict)  # table -> partition -> db path
    owners: dict[str, dict[int, str]] = field(default_factory=dict)  # table -> partition -> URL

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "ready": self.ready,
                "reason": self.reason,
                "own_url": self.own_url,
                "active": {t: {str(p): path for p, path in ps.items()} for t, ps in self.active.items()},
                "owners": {t: {str(p): url for p, url in ps.items()} for t, ps in self.owners.items()},
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> Status:
        data = orjson.loads(raw)
        return cls(
            ready=data["ready"],
            reason=data["reason"],
            own_url=data["own_url"],
            active={t: {int(p): path for p, path in ps.items()} for t, ps in data["active"].items()},
            owners={t: {int(p): url for p, url in ps.items()} for t, ps in data["owners"].items()},
        )


class Bulletin:
    """The two files, for one worker (``directory`` in its data dir) and its ``tables`` (feature
    table names, in the same order in both processes) of ``partitions`` partitions each."""

    def __init__(self, directory: Path, tables: list[str], partitions: int, create: bool) -> None:
        self.directory = directory
        self.status_path = directory / "status.json"
        self._slots = {
            (table, p): FIRST_PARTITION_SLOT + i * partitions + p
            for i, table in enumerate(tables)
            for p in range(partitions)
        }
        count = FIRST_PARTITION_SLOT + len(tables) * partitions
        size = SLOT_BYTES * count
        counters = directory / "counters"
        if create:
            directory.mkdir(parents=True, exist_ok=True)
            with counters.open("wb") as out:
                out.write(b"\0" * size)
            self.status_path.unlink(missing_ok=True)
        fd = os.open(counters, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        # Not struct.pack_into: it writes byte by byte, and a reader could see a torn value.
        self._counters = (ctypes.c_int64 * count).from_buffer(self._map)
        self._published: bytes | None = None

    def slot(self, table: str, partition: int) -> int:
        """The counter slot of ``partition`` of ``table`` (KeyError for an unknown one)."""
        return self._slots[(table, partition)]

    def read(self, slot: int) -> int:
        """The current value of counter ``slot``."""
        return int(self._counters[slot])

    def _bump(self, slot: int) -> None:
        self._counters[slot] += 1  # one writer (the worker's event loop)

    # --- the worker's side ---

    def wrote(self, table: str, partition: int) -> None:
        """A write batch was applied to ``partition`` of ``table`` (after the RocksDB write)."""
        slot = self._slots.get((table, partition))
        if slot is not None:
            self._bump(slot)

    def beat(self) -> None:
        """Set the heartbeat to now."""
        self._counters[HEARTBEAT_SLOT] = monotonic_ms()

    def publish(self, status: Status) -> None:
        """Rewrite the status file if ``status`` differs from the last one published."""
        raw = status.to_json()
        if raw == self._published:
            return
        partial = self.status_path.with_suffix(".tmp")
        partial.write_bytes(raw)
        os.replace(partial, self.status_path)
        self._published = raw
        self._bump(STATUS_SLOT)

    # --- the serving process's side ---

    def heartbeat_age_ms(self) -> int:
        """Milliseconds since the worker's last beat (huge when it never beat)."""
        beat = self.read(HEARTBEAT_SLOT)
        return monotonic_ms() - beat if beat else 1 << 62

    def load_status(self) -> Status:
        """The last published status (a not-ready one before the first)."""
        try:
            return Status.from_json(self.status_path.read_bytes())
        except FileNotFoundError:
            return Status()

    def close(self) -> None:
        del self._counters  # the map cannot close while a ctypes view of it exists
        self._map.close()


def bulletin_dir(data_dir: Path) -> Path:
    """The directory of the bulletin's files in a worker's data dir."""
    return data_dir / "serving"


#: Which of the worker's serving processes this is (0, 1, ...), in the environment it starts with.
SERVING_INDEX_ENV = "HYDRANT_SERVING_INDEX"


def metrics_dir(data_dir: Path) -> Path:
    """Where the serving processes keep their metrics (prometheus_client multiprocess files)."""
    return bulletin_dir(data_dir) / "metrics"


def open_bulletin(data_dir: Path, tables: list[str], partitions: int, create: bool) -> Bulletin:
    """The bulletin of the worker of ``data_dir``; ``create`` (the worker only) starts it afresh."""
    return Bulletin(bulletin_dir(data_dir), tables, partitions, create)
