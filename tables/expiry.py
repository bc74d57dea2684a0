"""Entity TTL (a group's ``ttl``, docs/features.md "Keys that go quiet"): a key whose newest bucket
ended ``ttl`` or more before its partition's clock (the newest event time the partition has applied)
is expired. Reads answer it ``found: false``, an event for it starts it afresh (KeyState.reset), and
the sweep (app/engine/expiry.py) deletes its records. Pure, but for the reads of a partition's records."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson

from tables.plans import GroupPlan

#: A feature table partition's clock: the newest event time (ms) applied on it (no entity key is
#: empty, so this is no entity's record; written with the batch that moves it).
CLOCK_KEY = b"\x00clock"


def is_expired(plan: GroupPlan, newest_bucket: int | None, clock: int | None) -> bool:
    """Whether a key of ``plan`` whose newest bucket is ``newest_bucket`` (None: no bucket) is expired
    on a partition whose clock is ``clock`` (None: no event applied yet)."""
    ttl = plan.ttl
    if ttl is None or clock is None or newest_bucket is None:
        return False
    return (newest_bucket + 1) * plan.period_ms <= clock - ttl


def head_expired(plan: GroupPlan, head: bytes | None, clock: int | None) -> bool:
    """:func:`is_expired` from a key's stored head record (None: no head)."""
    if head is None or plan.ttl is None or clock is None:
        return False
    newest: int | None = orjson.loads(head)["n"]
    return is_expired(plan, newest, clock)


def read_clock(get: Callable[[bytes], bytes | None]) -> int | None:
    """The clock of the partition whose records ``get`` reads (None: none yet)."""
    raw = get(CLOCK_KEY)
    return None if raw is None else int(orjson.loads(raw))


def clock_record(clock: int) -> tuple[bytes, bytes]:
    """The (record key, value) that stores a partition's clock."""
    return CLOCK_KEY, b"%d" % clock


def expired_keys(
    plan: GroupPlan, records: Iterable[tuple[bytes, bytes]], clock: int | None, limit: int
) -> tuple[list[bytes], bytes | None]:
    """The expired keys among the next ``limit`` heads of ``records`` (a partition's records in key
    order, from a cursor), and the record key to continue from (None: the partition's end)."""
    found: list[bytes] = []
    seen = 0
    iterator: Iterator[tuple[bytes, Any]] = iter(records)
    for record_key, value in iterator:
        if not record_key.endswith(b"\x00"):
            continue
        if seen == limit:
            return found, record_key
        seen += 1
        if head_expired(plan, value, clock):
            found.append(record_key[:-1])
    return found, None
