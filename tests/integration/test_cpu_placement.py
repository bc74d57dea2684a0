"""HYDRANT_SERVING_CPUS on a real worker: every thread of its serving processes runs on those CPUs (a
restarted one too), and every thread of the worker and of its helpers on the others (read from
/proc), while it answers."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.broker import BrokerUnderTest
from tests.support.kafka import create_pipeline_topics_for
from tests.support.worker import WorkerProcess, wait_for

CPUS = sorted(os.sched_getaffinity(0))


def _allowed(pid: int) -> dict[int, frozenset[int]]:
    """Per thread of ``pid``, the CPUs it may run on."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                cpus: set[int] = set()
                for part in line.split(":", 1)[1].strip().split(","):
                    low, _, high = part.partition("-")
                    cpus.update(range(int(low), int(high or low) + 1))
                out[int(task.name)] = frozenset(cpus)
    return out


def _children(pid: int) -> dict[int, str]:
    """Child pid -> its command line."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if parent == pid:
                    out[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, IndexError, ValueError):
                continue
    return out


@pytest.mark.skipif(len(CPUS) < 2, reason="CPU placement needs two CPUs to split")
def test_serving_processes_and_the_worker_run_on_their_own_cpus(
    broker: BrokerUnderTest, uid: str, shop_pipeline: Path, workers: Callable[..., WorkerProcess]
) -> None:
    create_pipeline_topics_for(broker.url, shop_pipeline, uid)
    serving, rest = frozenset(CPUS[-1:]), frozenset(CPUS[:-1])
    worker = workers(shop_pipeline, HYDRANT_SERVING_CPUS="last:1")
    worker.wait_ready()
    assert worker.get("/readyz").status_code == 200
    assert worker.proc is not None
    children = _children(worker.proc.pid)
    kinds = {pid: "serving" if "app.serving.process" in cmd else "helper" for pid, cmd in children.items()}
    assert sorted(kinds.values()) == ["helper", "helper", "serving", "serving"], children
    threads = _allowed(worker.proc.pid)
    assert len(threads) > 3 and set(threads.values()) == {rest}, threads  # Faust's, RocksDB's too
    for pid, kind in kinds.items():
        assert set(_allowed(pid).values()) == {serving if kind == "serving" else rest}, (kind, pid)

    # A serving process that dies is restarted on the serving CPUs, though the worker is not on them.
    killed = next(pid for pid, kind in kinds.items() if kind == "serving")
    os.kill(killed, signal.SIGKILL)

    def restarted() -> bool:
        now = _children(worker.proc.pid) if worker.proc is not None else {}
        return sum("app.serving.process" in cmd for pid, cmd in now.items() if pid != killed) == 2

    wait_for(restarted, "the serving process restarted", 60)
    assert worker.proc is not None
    new = [pid for pid, cmd in _children(worker.proc.pid).items() if "app.serving.process" in cmd]
    assert killed not in new
    for pid in new:
        assert set(_allowed(pid).values()) == {serving}, pid
    assert worker.get("/readyz").status_code == 200
