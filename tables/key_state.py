"""One entity key's window state as loaded from a feature table: its head and the buckets touched,
and the records to write back, in the order docs/state-format.md requires. No I/O of its own."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import orjson

from tables.state_format import OFFSETS, Bucket, bucket_key, encode_bucket, head_key, rollup_key

Loader = Callable[[bytes], bytes | None]
#: Every (record key, value) whose key starts with the given prefix, in key order (a range read).
Scanner = Callable[[bytes], Iterable[tuple[bytes, bytes]]]
UNREAD: Any = object()  # KeyState._buckets: not looked up yet


class KeyState:
    """One key's head and the buckets touched so far (and its lifetime roll-up), with what changed since
    the last :meth:`changes`; records come through ``load`` (head now, the others on demand) or all at
    once from ``scan``."""

    __slots__ = (
        "_buckets",
        "_deleted",
        "_dirty",
        "_head_dirty",
        "_horizon",
        "_load",
        "_raw",
        "_retention",
        "_rollup",
        "_rollup_dirty",
        "_wiped",
        "key",
        "mask",
        "newest",
        "processed",
    )

    def __init__(self, key: bytes, load: Loader, retention: int, scan: Scanner | None = None) -> None:
        self.key = key
        self._load = load
        self._retention = retention
        # scanned: every record by record key (a bucket absent here is not stored); else None
        self._raw: dict[bytes, bytes] | None = None
        if scan is None:
            raw = load(key + b"\x00")  # head_key(key)
        else:
            raw, self._raw = self._scan(scan)
        self.newest: int | None
        self.processed: dict[str, int]
        # buckets at or below the horizon are expired; None: n - R (a key fed only at its stream's
        # own key, or whose upstream partitions were never behind it)
        self._horizon: int | None = None
        if raw is None:
            self.newest, self.mask, self.processed = None, 0, {}
        else:
            head = orjson.loads(raw)
            self.newest, self.mask, self.processed = head["n"], int(head["m"], 16), head["o"]
            self._horizon = head.get("h")
        self._buckets: dict[int, Bucket | None] = {}
        self._rollup: Bucket | None = UNREAD
        self._rollup_dirty = False
        self._head_dirty = False
        self._dirty: set[int] = set()
        self._deleted: set[int] = set()
        self._wiped: list[bytes] = []  # records of the key's previous life, deleted first (:meth:`reset`)

    def _scan(self, scan: Scanner) -> tuple[bytes | None, dict[bytes, bytes]]:
        """The head and every record of the prefix by record key, from one range read. Records of
        other keys that share the prefix (a key that itself contains a NUL) are never looked up: a
        bucket is found by its record key, and the head decides which buckets count as stored."""
        prefix = self.key + b"\x00"
        records = dict(scan(prefix))
        return records.get(prefix), records

    @property
    def exists(self) -> bool:
        """False for a key that never had an event (of the group's streams)."""
        return self.newest is not None

    def stored(self, lo: int, hi: int) -> list[int]:
        """The stored bucket numbers in [lo, hi], ascending."""
        n = self.newest
        if n is None:
            return []
        hi = min(hi, n)
        lo = max(lo, self.floor + 1, n - self.mask.bit_length() + 1)  # no stored bucket below the mask
        if lo > hi:
            return []
        bits = (self.mask >> (n - hi)) & ((1 << (hi - lo + 1)) - 1)
        found = []
        while bits:
            low = bits & -bits
            found.append(hi - (low.bit_length() - 1))
            bits ^= low
        found.reverse()
        return found

    def stored_buckets(self) -> list[int]:
        """Every stored bucket number, ascending."""
        n = self.newest
        return [] if n is None else self.stored(self.floor + 1, n)

    def is_stored(self, number: int) -> bool:
        """Whether bucket ``number`` is stored (the head lists it)."""
        n = self.newest
        return n is not None and self.floor < number <= n and bool(self.mask >> (n - number) & 1)

    def bucket(self, number: int) -> Bucket | None:
        """Bucket ``number`` as decoded and cached (None: not stored)."""
        record = self._buckets.get(number, UNREAD)
        if record is UNREAD:
            record = self._decoded(number) if self.is_stored(number) else self._cache(number, None)
        return record

    def _decoded(self, number: int) -> Bucket | None:
        """Stored bucket ``number``, decoded and kept (the caller knows it is stored)."""
        record_key = b"%b\x00%d" % (self.key, number)  # bucket_key(self.key, number)
        raw = self._raw.get(record_key) if self._raw is not None else self._load(record_key)
        if raw is None:
            return self._cache(number, None)
        record = orjson.loads(raw)
        if type(record) is dict:  # the earlier format: {"o": ..., "a": ..., "l": ...}
            record = [record["a"], record.get("l"), record["o"]]
        return self._cache(number, record)

    def buckets_in(self, lo: int, hi: int) -> tuple[list[int], list[Bucket]]:
        """The stored buckets in [lo, hi], ascending: their numbers and records (decoded and kept)."""
        numbers: list[int] = []
        records: list[Bucket] = []
        loaded = self._buckets
        for number in self.stored(lo, hi):
            record = loaded.get(number, UNREAD)
            if record is UNREAD:
                record = self._decoded(number)
            if record is not None:
                numbers.append(number)
                records.append(record)
        return numbers, records

    def rollup(self) -> Bucket | None:
        """The lifetime roll-up record, decoded and kept (None: none yet)."""
        record = self._rollup
        if record is UNREAD:
            record_key = rollup_key(self.key)
            raw = self._raw.get(record_key) if self._raw is not None else self._load(record_key)
            record = self._rollup = None if raw is None else orjson.loads(raw)
        return record

    def set_rollup(self, record: Bucket) -> None:
        """Replace the roll-up record (written with the next :meth:`changes`)."""
        self._rollup = record
        self._rollup_dirty = True

    @property
    def floor(self) -> int:
        """Buckets at or below this one are expired (n - R unless upstream partitions held it lower);
        only for a key that exists."""
        n = self.newest
        assert n is not None
        return n - self._retention if self._horizon is None else self._horizon

    def target(self, number: int, limit: int | None = None) -> int:
        """The floor once bucket ``number`` is seen: max(n, number) - R, but not above ``limit`` (the
        bucket of every upstream partition's progress minus R, docs/features.md) nor below today's."""
        n = self.newest
        top = number if n is None or number > n else n
        line = top - self._retention
        if limit is not None and limit < line:
            line = limit
        return line if n is None or line > self.floor else self.floor

    def expiring(self, number: int, limit: int | None = None) -> list[int]:
        """The stored buckets that seeing bucket ``number`` (under ``limit``) would expire, ascending."""
        if self.newest is None:
            return []
        return self.stored(self.floor + 1, self.target(number, limit))

    def moves(self, number: int, limit: int | None = None) -> bool:
        """Whether seeing bucket ``number`` (under ``limit``) changes the newest bucket or the floor."""
        n = self.newest
        return n is None or number > n or self.target(number, limit) > self.floor

    def _keep_marks(self, number: int) -> None:
        """Before stored bucket ``number`` is deleted: its sources' offsets into the head's, so that a
        redelivered event of it stays a duplicate (docs/state-format.md). Skipped when the bucket was
        not read (the worker reads the buckets a batch may expire: :func:`expiring_records`)."""
        try:
            record = self._buckets[number] if number in self._buckets else self._decoded(number)
        except (KeyError, AssertionError):
            return
        if record is None:
            return
        processed = self.processed
        for name, offset in record[OFFSETS].items():
            if "|" not in name and "<" not in name and processed.get(name, -1) < offset:
                processed[name] = offset  # a source's offset; not a replay's marks

    def mark_processed(self, source: str, offset: int) -> None:
        """Record event ``offset`` of ``source`` as processed without applying it (a late decision),
        in the head written with the next :meth:`changes`; a key without events gets a head that
        lists no bucket (``exists`` stays False)."""
        if self.processed.get(source, -1) < offset:
            self.processed[source] = offset
        self._head_dirty = True

    def _cache(self, number: int, record: Bucket | None) -> Bucket | None:
        self._buckets[number] = record
        return record

    def advance(self, number: int, limit: int | None = None) -> None:
        """See bucket ``number``: it becomes the newest if it is newer, and buckets at or below the new
        floor (:meth:`target`) are expired (deleted on write)."""
        n = self.newest
        top = number if n is None or number > n else n
        line = self.target(number, limit)
        if n is not None:
            shifted = self.mask << (top - n)
            keep = top - line  # buckets (line, top]: bits 0 .. keep - 1
            if shifted.bit_length() > keep:  # stored buckets at or below the line
                expired = shifted >> keep
                while expired:  # bit j: bucket line - j
                    low = expired & -expired
                    number = line - (low.bit_length() - 1)
                    self._deleted.add(number)
                    self._keep_marks(number)
                    expired ^= low
                shifted &= (1 << keep) - 1
            self.mask = shifted
        self.newest = top
        self._horizon = None if line == top - self._retention else line
        self._head_dirty = True

    def reset(self) -> None:
        """Start the key afresh (its ``ttl`` expired, tables/expiry.py): every stored bucket and the
        roll-up are deleted on write, before anything written after; the head keeps its processed
        offsets, so that a redelivered event of the previous life stays a duplicate."""
        for number in self.stored_buckets():
            self._keep_marks(number)
            self._wiped.append(bucket_key(self.key, number))
        self._wiped.append(rollup_key(self.key))
        self._buckets = {}
        self._rollup = None
        self._rollup_dirty = False
        self._dirty.clear()
        self._deleted.clear()
        self.newest, self.mask, self._horizon = None, 0, None
        self._head_dirty = True

    def _create(self, number: int, size: int, tag: str) -> Bucket:
        record: Bucket = [[None] * size, tag, {}, None]
        self._buckets[number] = record
        if not self.is_stored(number):
            assert self.newest is not None and number <= self.newest
            self.mask |= 1 << (self.newest - number)
            self._head_dirty = True
        return record

    def changes(self) -> list[tuple[bytes, bytes | None]]:
        """(record key, value or None to delete) to write in this order: a previous life's records
        (:meth:`reset`), buckets, roll-up, head, deletions (docs/state-format.md says why); then
        forgets them."""
        if not (self._dirty or self._head_dirty or self._deleted or self._rollup_dirty):
            return []
        out: list[tuple[bytes, bytes | None]] = [(record_key, None) for record_key in self._wiped]
        self._wiped = []
        out.extend(
            (bucket_key(self.key, number), encode_bucket(self._buckets[number]))
            for number in sorted(self._dirty - self._deleted)
        )
        if self._rollup_dirty:
            out.append((rollup_key(self.key), encode_bucket(self._rollup)))
            self._rollup_dirty = False
        if self._head_dirty:
            head: dict[str, Any] = {"n": self.newest, "m": format(self.mask, "x"), "o": self.processed}
            if self._horizon is not None:
                head["h"] = self._horizon
            out.append((head_key(self.key), orjson.dumps(head)))
        out.extend((bucket_key(self.key, number), None) for number in sorted(self._deleted))
        self._head_dirty = False
        self._dirty.clear()
        self._deleted.clear()
        return out


def expiring_records(head: bytes, top: int, retention: int) -> list[int]:
    """The stored buckets that events up to bucket ``top`` may expire, from a key's head record: what
    the worker reads with the head so that their offsets outlive them (:meth:`KeyState._keep_marks`)."""
    decoded = orjson.loads(head)
    n = decoded["n"]
    if n is None or (top <= n and "h" not in decoded):
        return []
    mask = int(decoded["m"], 16)
    floor = decoded.get("h", n - retention)
    line = max(n, top) - retention
    return [n - i for i in range(mask.bit_length()) if mask >> i & 1 and floor < n - i <= line]
