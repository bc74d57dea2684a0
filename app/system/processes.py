"""Child processes that never outlive their parent: their own session (a terminal's Ctrl-C reaches
only the parent, which stops them in order) and, on Linux, SIGTERM when the parent dies."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` giving the child SIGTERM when its parent dies (Linux); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

    def set_pdeathsig() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return set_pdeathsig


def _before_exec(cpus: frozenset[int] | None) -> Callable[[], None] | None:
    """The child's ``preexec_fn``: :func:`die_with_parent`'s, and its CPUs."""
    dying = die_with_parent()
    if cpus is None:
        return dying

    def prepare() -> None:
        if dying is not None:
            dying()
        os.sched_setaffinity(0, cpus)

    return prepare


def spawn(
    cmd: Sequence[str],
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    cpus: frozenset[int] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own session, output appended to ``log_path`` (or inherited); on ``cpus``
    when given (set before it starts, so every thread it starts inherits them)."""
    out: IO[bytes] | None = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = log_path.open("ab")
    try:
        return subprocess.Popen(
            list(cmd),
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            start_new_session=True,
            preexec_fn=_before_exec(cpus),
        )
    finally:
        if out is not None:
            out.close()


def stop(proc: subprocess.Popen[bytes], timeout: float = 30.0, sig: int = signal.SIGTERM) -> int:
    """Send ``sig``, wait up to ``timeout``, then SIGKILL; returns the exit code. Idempotent."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
