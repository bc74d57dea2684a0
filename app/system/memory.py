"""Keep a long-running worker's resident memory at the size of what it holds, and its garbage
collections short.

RocksDB allocates and frees memtable arenas (several MiB each) from its background threads all the
time. With glibc's defaults every thread may get its own malloc arena, and freed memory stays in the
arenas rather than going back to the system, so a worker's RSS crept up by ~10 % in the second half
of a 10-minute soak while its state and RocksDB's own accounting stayed flat (docs/reliability.md).
Two glibc calls fix that: fewer arenas, and returning free memory every 30 s. Elsewhere (musl,
macOS) both are no-ops.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger(__name__)

M_ARENA_MAX = -8  # mallopt parameter (malloc.h)
ARENAS = 2


def _glibc() -> Any | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 (glibc only)
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc()


def limit_arenas() -> None:
    """At most :data:`ARENAS` malloc arenas for the threads created from now on."""
    if _LIBC is not None:
        _LIBC.mallopt(M_ARENA_MAX, ARENAS)


async def release_free_memory() -> None:
    """Give memory that malloc holds but nothing uses back to the system (off the event loop)."""
    if _LIBC is not None:
        await asyncio.to_thread(_LIBC.malloc_trim, 0)


#: Allocations between two young-generation collections (CPython's default is 700). A batch allocates
#: hundreds of thousands of short-lived objects; collecting every 700 of them is wasted work.
GC_YOUNG_THRESHOLD = 50_000


def settle_garbage_collector() -> None:
    """Move every object alive now (modules, Faust's services, the spec) out of the collector's
    reach, and collect the young generation less often. Call once the worker is started: full
    collections then only walk objects created since, instead of stalling the event loop."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


@contextlib.contextmanager
def collections_paused() -> Iterator[None]:
    """No automatic garbage collection inside: for a batch body, whose hundreds of thousands of
    objects all live until its end. A young collection mid-batch finds them alive and moves them
    to older generations, which later collections walk again: ~15 µs per event in a worker, 11 % of
    the batch (docs/performance.md). Collection resumes after the batch, when they are freed."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
