"""The worker's side of its serving processes: starts them before Faust, restarts one that exits, and
keeps their bulletin (app/serving/bulletin.py) current: heartbeat and status every ``PUBLISH_EVERY_S``."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
from typing import Any

from app.api.placement import Placement
from app.config.settings import Settings
from app.serving.bulletin import SERVING_INDEX_ENV, Bulletin, Status, metrics_dir, open_bulletin
from app.system.processes import spawn, stop
from tables.registry import StateTables

logger = logging.getLogger(__name__)

PUBLISH_EVERY_S = 0.01
RESTART_AFTER_S = 1.0


class ServingSupervisor:
    """This worker's serving processes (HYDRANT_SERVING_PROCESSES of them, sharing the port) and
    their bulletin (none with HYDRANT_SERVING_PROCESS=false)."""

    def __init__(self, settings: Settings, tables: StateTables, placement: Placement) -> None:
        self.settings = settings
        self.tables = tables
        self.placement = placement
        self.bulletin: Bulletin | None = None
        self.procs: list[subprocess.Popen[bytes]] = []
        self._paths: dict[tuple[str, int], str] = {}  # fixed for the worker's life; Faust derives them
        self._own_url: str | None = None
        self.cpus: frozenset[int] | None = None  # where the serving processes run (None: anywhere)

    def start(self, cpus: frozenset[int] | None = None) -> None:
        """Create the bulletin and start the processes (once; nothing when they are disabled), on
        ``cpus`` when given (HYDRANT_SERVING_CPUS; a restarted one too)."""
        settings = self.settings
        if not settings.serving_process or self.procs:
            return
        self.cpus = cpus
        names = [table.name for table in self.tables.all().values()]
        self.bulletin = open_bulletin(settings.data_dir, names, settings.partitions, create=True)
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
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir(self.settings.data_dir)),
        }
        proc = spawn([sys.executable, "-m", "app.serving.process"], env=env, cpus=self.cpus)
        logger.info("started serving process %d (pid %d) on port %d", index, proc.pid, self.settings.web_port)
        return proc

    def wrote(self, table: str, partition: int) -> None:
        """A write batch was applied to ``partition`` of ``table``."""
        if self.bulletin is not None:
            self.bulletin.wrote(table, partition)

    def current_status(self) -> Status:
        """Readiness, and per feature or lookup table the partitions held here (with their RocksDB
        paths) and every other partition's owner."""
        ready, reason = self.placement.readiness()
        if self._own_url is None:
            self._own_url = self.placement.own_url()  # the configured canonical URL: fixed
        own = self._own_url
        if not ready:
            return Status(ready=False, reason=reason, own_url=own)
        active: dict[str, dict[int, str]] = {}
        owners: dict[str, dict[int, str]] = {}
        for table in self.tables.all().values():
            held = active[table.name] = {}
            known = owners[table.name] = {}
            for partition in range(self.settings.partitions):
                if table.serves(partition):
                    table.db(partition)  # open (or create) it: the secondary needs its files
                    held[partition] = self._path(table, partition)
                elif (url := self.placement.owner_of(table, partition)) is not None:
                    known[partition] = url
        return Status(ready=True, reason=reason, own_url=own, active=active, owners=owners)

    def _path(self, table: Any, partition: int) -> str:
        path = self._paths.get((table.name, partition))
        if path is None:
            path = self._paths[table.name, partition] = table.path(partition)
        return path

    async def watch(self) -> None:
        """Start the processes if needed, then publish the status and restart any that exits,
        until cancelled (then stop them)."""
        self.start()
        if self.bulletin is None or not self.procs:
            return
        try:
            while True:
                self.bulletin.beat()
                self.bulletin.publish(self.current_status())
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
        """Stop every serving process (SIGTERM, then SIGKILL after 10 s)."""
        for proc in self.procs:
            stop(proc, 10.0)
