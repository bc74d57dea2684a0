"""The serving process (app/serving.py) of this worker: started by ``hydrant worker`` before Faust
(so the port answers, 503 with the reason, while the worker joins its group and recovers), then
watched by the task below, which keeps its bulletin current and restarts it if it exits.

Every 10 ms the task beats the heartbeat and publishes the status (readiness, the feature table
partitions held here with their RocksDB paths, every partition's owner), rewritten only when it
changed. The agent reports each write batch it applies (:meth:`ServingProcess.wrote`), which is
what makes the serving process catch that partition's secondary up before its next read.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys

from app.api.routing import WORKER
from app.bulletin import Bulletin, Status, open_bulletin
from app.main import app, settings
from app.processes import spawn, stop
from app.views import readiness
from tables.features import FEATURE_TABLES
from tables.store import local_db, serves

logger = logging.getLogger(__name__)

PUBLISH_EVERY_S = 0.01
RESTART_AFTER_S = 1.0


def current_status() -> Status:
    ready, reason = readiness(app)
    own = WORKER.own_url()
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
                held[partition] = str(table.data.partition_path(partition))
            elif (url := WORKER.owner_of(table, partition)) is not None:
                known[partition] = url
    return Status(ready=True, reason=reason, own_url=own, active=active, owners=owners)


class ServingProcess:
    """This worker's serving process and its bulletin (both None with HYDRANT_SERVING_PROCESS=false)."""

    def __init__(self) -> None:
        self.bulletin: Bulletin | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if not settings.serving_process or self.proc is not None:
            return
        tables = [table.name for table in FEATURE_TABLES.values()]
        self.bulletin = open_bulletin(settings.data_dir, tables, settings.partitions, create=True)
        self._spawn()

    def _spawn(self) -> None:
        self.proc = spawn([sys.executable, "-m", "app.serving"], env=os.environ)
        logger.info("started the serving process (pid %d) on port %d", self.proc.pid, settings.web_port)

    def wrote(self, table: str, partition: int) -> None:
        """A write batch was applied to ``partition`` of ``table``."""
        if self.bulletin is not None:
            self.bulletin.wrote(table, partition)

    async def watch(self) -> None:
        self.start()
        if self.bulletin is None or self.proc is None:
            return
        try:
            while True:
                self.bulletin.beat()
                self.bulletin.publish(current_status())
                if self.proc.poll() is not None:
                    logger.error("the serving process exited with %s; restarting it", self.proc.returncode)
                    await asyncio.sleep(RESTART_AFTER_S)
                    self._spawn()
                await asyncio.sleep(PUBLISH_EVERY_S)
        finally:
            await asyncio.to_thread(self.stop)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, 10.0)


SERVING = ServingProcess()


@app.task
async def serving_process() -> None:
    await SERVING.watch()
