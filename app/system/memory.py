"""Malloc and garbage-collector settings of a long-running process: fewer malloc arenas and free memory
returned to the system (glibc only; docs/operations.md), short collections (docs/performance.md)."""

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


#: Allocations between two young-generation collections (CPython's default is 700).
GC_YOUNG_THRESHOLD = 50_000


def settle_garbage_collector() -> None:
    """Freeze every object alive now out of the collector's reach and collect the young generation
    every :data:`GC_YOUNG_THRESHOLD` allocations; call once, after start-up."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


@contextlib.contextmanager
def collections_paused() -> Iterator[None]:
    """No automatic garbage collection inside (a batch body); collection resumes on exit, unless it
    was disabled before."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
