"""CPU placement (Linux): with HYDRANT_SERVING_CPUS the serving processes run on those CPUs and the worker,
its threads and its helpers on the others, so feature reads do not wait for a time slice behind the
event processing (docs/operations.md, "CPU placement")."""

from __future__ import annotations

import os
from pathlib import Path


def parse_cpus(text: str) -> frozenset[int]:
    """``"1"``, ``"2-3"``, ``"0,2-3"`` -> the CPU numbers. Raises ValueError with the reason."""
    cpus: set[int] = set()
    for part in text.replace(" ", "").split(","):
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"bad CPU list {text!r}: expected numbers and ranges, e.g. 1 or 2-3 or 0,2")
        first, last = int(low), int(high) if dash else int(low)
        if last < first:
            raise ValueError(f"bad CPU range {part!r} in {text!r}")
        cpus.update(range(first, last + 1))
    return frozenset(cpus)


def available_cpus() -> frozenset[int]:
    """The CPUs this process may run on."""
    return frozenset(os.sched_getaffinity(0))


def pin_process(pid: int, cpus: frozenset[int] | set[int]) -> None:
    """Restrict every thread of process ``pid`` to ``cpus``; threads and children it starts later
    inherit that. (``sched_setaffinity`` of a pid sets one thread only, so each is set.)"""
    tasks = Path(f"/proc/{pid}/task")
    threads = [int(name) for name in os.listdir(tasks)] if tasks.is_dir() else [pid]
    for thread in threads:
        try:
            os.sched_setaffinity(thread, cpus)
        except ProcessLookupError:  # a thread that ended meanwhile
            continue
