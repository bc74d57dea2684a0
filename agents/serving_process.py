"""The serving process (app/serving/process.py) of this worker: started by ``hydrant worker`` before Faust
(so the port answers, 503 with the reason, while the worker joins its group and recovers), then
watched by the task below, which keeps its bulletin current and restarts it if it exits.

Every 10 ms the task beats the heartbeat and publishes the status (readiness, the feature table
partitions held here with their RocksDB paths, every partition's owner), rewritten only when it
changed. The agent reports each write batch it applies (:meth:`ServingProcess.wrote`), which is
what makes the serving process catch that partition's secondary up before its next read.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import subprocess
import sys

from app.api.health import readiness
from app.api.routing import WORKER
from app.runtime import app, settings
from app.serving.bulletin import SERVING_INDEX_ENV, Bulletin, Status, metrics_dir, open_bulletin
from app.system.processes import spawn, stop
from tables.features import FEATURE_TABLES
from tables.store import local_db, serves

logger = logging.getLogger(__name__)

PUBLISH_EVERY_S = 0.01
RESTART_AFTER_S = 1.0


@functools.cache
def partition_path(table: str, partition: int) -> str:
    """Where RocksDB keeps ``partition`` of feature table ``table`` (fixed for the worker's life;
    Faust derives it through its settings on every call, ~4 % of the worker's time at 100 calls/s)."""
    tables = {t.name: t for t in FEATURE_TABLES.values()}
    return str(tables[table].data.partition_path(partition))


@functools.cache
def own_url() -> str:
    return WORKER.own_url()  # the configured canonical URL: fixed once the worker runs


def current_status() -> Status:
    ready, reason = readiness(app)
    own = own_url()
    if not ready:
        return Status(ready=False, reason=reason, own_url=own)
    active: dict[str, dict[int, str]] = {}
    owners: dict[str, dict[int, str]] = {}
    for table in FEATURE_TABLES.values():
        held = active[table.name] = {}
        known = owners[table.name] = {}
        for partition in range(settings.partitions):
            if serves(table, partition):
                local_db(table, partition)  # open (or create) it: the secondary needs its files
                held[partition] = partition_path(table.name, partition)
            elif (url := WORKER.owner_of(table, partition)) is not None:
                known[partition] = url
    return Status(ready=True, reason=reason, own_url=own, active=active, owners=owners)


class ServingProcess:
    """This worker's serving processes (HYDRANT_SERVING_PROCESSES of them, sharing the port) and
    their bulletin (none with HYDRANT_SERVING_PROCESS=false)."""

    def __init__(self) -> None:
        self.bulletin: Bulletin | None = None
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        if not settings.serving_process or self.procs:
            return
        tables = [table.name for table in FEATURE_TABLES.values()]
        self.bulletin = open_bulletin(settings.data_dir, tables, settings.partitions, create=True)
        metrics = metrics_dir(settings.data_dir)  # their request counts start from zero with the worker
        shutil.rmtree(metrics, ignore_errors=True)
        metrics.mkdir(parents=True)
        self.procs = [self._spawn(index) for index in range(settings.serving_processes)]

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            SERVING_INDEX_ENV: str(index),
            # prometheus_client's multiprocess mode: each process keeps its counts in files there, so
            # whichever answers /metrics adds every serving process's requests to the worker's series
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir(settings.data_dir)),
        }
        proc = spawn([sys.executable, "-m", "app.serving.process"], env=env)
        logger.info("started serving process %d (pid %d) on port %d", index, proc.pid, settings.web_port)
        return proc

    def wrote(self, table: str, partition: int) -> None:
        """A write batch was applied to ``partition`` of ``table``."""
        if self.bulletin is not None:
            self.bulletin.wrote(table, partition)

    async def watch(self) -> None:
        self.start()
        if self.bulletin is None or not self.procs:
            return
        try:
            while True:
                self.bulletin.beat()
                self.bulletin.publish(current_status())
                for index, proc in enumerate(self.procs):
                    if proc.poll() is not None:
                        logger.error(
                            "serving process %d exited with %s; restarting it", index, proc.returncode
                        )
                        await asyncio.sleep(RESTART_AFTER_S)
                        self.procs[index] = self._spawn(index)
                await asyncio.sleep(PUBLISH_EVERY_S)
        finally:
            await asyncio.to_thread(self.stop)

    def stop(self) -> None:
        for proc in self.procs:
            stop(proc, 10.0)


SERVING = ServingProcess()


@app.task
async def serving_process() -> None:
    await SERVING.watch()
