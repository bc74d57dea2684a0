"""CPU time of the processes a benchmark starts, read from /proc (Linux)."""

from __future__ import annotations

import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (which may hold spaces)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (0 once it is gone)."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def process_tree(root: int) -> dict[int, str]:
    """``root`` and its descendants, pid -> what it is: "helper" (app.engine.helpers), "serving"
    (app.serving.process) or "worker" (anything else, ``root`` itself)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int(_stat_fields(int(entry.name))[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    tree: dict[int, str] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        kind = (
            "helper"
            if b"app.engine.helpers" in cmdline
            else "serving"
            if b"app.serving.process" in cmdline
            else "worker"
        )
        tree[pid] = kind
        todo.extend(children.get(pid, []))
    return tree
