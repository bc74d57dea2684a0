"""CPU placement (Linux): with HYDRANT_SERVING_CPUS the serving processes run on those CPUs and the worker,
its threads and its helpers on the others, so feature reads do not wait for a time slice behind the
event processing (docs/operations.md, "CPU placement")."""

from __future__ import annotations

import os
from pathlib import Path

LAST = "last:"  # "last:N": the last N of the CPUs the worker may use (a pod's cpuset is known only there)


def check_cpus(text: str) -> None:
    """Raise ValueError with the reason unless ``text`` is a CPU list (``1``, ``2-3``, ``0,2-3``) or
    ``last:N``."""
    text = text.strip()
    if text.startswith(LAST):
        if not text[len(LAST) :].isdigit() or int(text[len(LAST) :]) < 1:
            raise ValueError(f"bad {text!r}: last:N takes a number of CPUs, at least 1")
        return
    _listed(text)


def _listed(text: str) -> frozenset[int]:
    cpus: set[int] = set()
    for part in text.replace(" ", "").split(","):
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"bad CPU list {text!r}: expected numbers and ranges (1, 2-3, 0,2) or last:N")
        first, last = int(low), int(high) if dash else int(low)
        if last < first:
            raise ValueError(f"bad CPU range {part!r} in {text!r}")
        cpus.update(range(first, last + 1))
    return frozenset(cpus)


def split_cpus(text: str, available: frozenset[int] | None = None) -> tuple[frozenset[int], frozenset[int]]:
    """(the serving processes' CPUs, the others) of ``available`` (default: the CPUs this process may
    run on) for a checked ``text``. Raises ValueError when they are not available or leave none."""
    pool = frozenset(os.sched_getaffinity(0)) if available is None else available
    text = text.strip()
    if text.startswith(LAST):
        count = int(text[len(LAST) :])
        if count >= len(pool):
            raise ValueError(f"{text!r} leaves no CPU for the worker (available: {sorted(pool)})")
        serving = frozenset(sorted(pool)[-count:])
    else:
        serving = _listed(text)
    if not serving <= pool:
        raise ValueError(f"CPUs {sorted(serving - pool)} are not available here (available: {sorted(pool)})")
    if not pool - serving:
        raise ValueError(f"no CPU left for the worker (available: {sorted(pool)})")
    return serving, pool - serving


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
