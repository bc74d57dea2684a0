"""The serving process (``python -m app.serving.process``, the worker's child): feature reads, lookup
row batches and feature services from RocksDB secondaries on the public port; every other request
passed to the worker (docs/api.md)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import rocksdict
import uvloop
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from app.api.context import ApiContext
from app.api.features import lookup_batch, lookup_one
from app.api.http import Handler, application_options, error_response
from app.api.placement import Placement, Unavailable
from app.api.services import service_answer
from app.api.tables import lookup_rows_batch
from app.config.settings import Settings, get_settings, worker_socket
from app.config.spec import load_pipeline
from app.metrics import FEATURE_AGE, HTTP_REQUEST_SECONDS, HTTP_REQUESTS, REGISTRY
from app.serving.bulletin import (
    SERVING_INDEX_ENV,
    STATUS_SLOT,
    Bulletin,
    Status,
    bulletin_dir,
    monotonic_ms,
    open_bulletin,
)
from app.system.memory import settle_garbage_collector
from tables.registry import StateTables

logger = logging.getLogger("hydrant.serving")

#: The worker's heartbeat is older than this: its loop is frozen or the process stopped; another
#: worker may have taken its partitions over, so answer 503 rather than from this state.
STALE_HEARTBEAT_MS = 2_000
#: A partition read this long after its last catch-up is caught up even without a counted write.
CATCH_UP_AT_LEAST_EVERY_MS = 1_000
SLOW_CATCH_UP_MS = 5  # a catch-up slower than this is logged
UPSTREAM_TIMEOUT = aiohttp.ClientTimeout(total=60)
PASS_ON_NAME = "pass_on"  # noqa: S105 (the route of what the worker answers itself)
HOP_BY_HOP = frozenset(
    ("connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "date", "server")
)


class Secondaries:
    """One RocksDB secondary instance per table partition the worker holds, opened on first read,
    closed when the worker no longer holds it (or holds it at another path)."""

    def __init__(self, bulletin: Bulletin, scratch: Path) -> None:
        self._bulletin = bulletin
        self._scratch = scratch
        self._dbs: dict[tuple[str, int], tuple[str, rocksdict.Rdict]] = {}
        self._seen: dict[tuple[str, int], tuple[int, int]] = {}  # counter, monotonic ms at catch-up

    def refresh(self, status: Status) -> None:
        """Close the secondaries of partitions ``status`` no longer lists at the same path."""
        for slot, (path, db) in list(self._dbs.items()):
            table, partition = slot
            if status.active.get(table, {}).get(partition) != path:
                del self._dbs[slot]
                db.close()
        self._seen.clear()  # after any change of status, catch every partition up on its next read

    def get(self, table: str, partition: int, path: str) -> rocksdict.Rdict:
        """The secondary of ``partition`` of ``table`` at ``path``, caught up if the worker wrote to it
        since its last catch-up (or more than a second ago)."""
        slot = (table, partition)
        entry = self._dbs.get(slot)
        if entry is None:
            options = rocksdict.Options(raw_mode=True)
            options.set_max_open_files(-1)  # what RocksDB asks of secondaries
            options.set_max_file_opening_threads(1)  # else each catch-up seeing a new file starts 16
            scratch = self._scratch / f"{table}-{partition}"
            scratch.mkdir(parents=True, exist_ok=True)
            db = rocksdict.Rdict(
                path, options=options, access_type=rocksdict.AccessType.secondary(str(scratch))
            )
            entry = self._dbs[slot] = (path, db)
        db = entry[1]
        counter = self._bulletin.read(self._bulletin.slot(table, partition))
        seen = self._seen.get(slot)
        now = monotonic_ms()
        if seen is None or seen[0] != counter or now - seen[1] > CATCH_UP_AT_LEAST_EVERY_MS:
            db.try_catch_up_with_primary()
            self._seen[slot] = (counter, now)
            took = monotonic_ms() - now
            if took > SLOW_CATCH_UP_MS:
                logger.warning("catching up %s[%d] took %d ms", table, partition, took)
        return db

    def close(self) -> None:
        for _, db in self._dbs.values():
            db.close()
        self._dbs.clear()


class TableName:
    """A table as the serving process knows it: by name (its state is the worker's, read through
    :class:`Secondaries`)."""

    def __init__(self, name: str, description: str = "") -> None:
        self.name = name

    @property
    def changelog(self) -> str:
        raise NotImplementedError("the serving process does not write tables")

    @property
    def offset_key(self) -> bytes:
        raise NotImplementedError("the serving process reads tables through Secondaries")

    def db(self, partition: int) -> rocksdict.Rdict:
        raise NotImplementedError("the serving process reads tables through Secondaries")

    def serves(self, partition: int) -> bool:
        raise NotImplementedError("the bulletin says which partitions the worker serves")

    def persist(self, partition: int, offset: int) -> None:
        raise NotImplementedError("the serving process does not write tables")

    def persisted(self, partition: int) -> int | None:
        raise NotImplementedError("the serving process does not write tables")


class BulletinPlacement(Placement):
    """Readiness, ownership and state as the worker last published them."""

    def __init__(self, bulletin: Bulletin, secondaries: Secondaries, client: aiohttp.ClientSession) -> None:
        self._bulletin = bulletin
        self._secondaries = secondaries
        self._client = client
        self._version = -1
        self.status = Status()

    def current(self) -> Status:
        """The worker's last published status (reloaded when its version moved)."""
        version = self._bulletin.read(STATUS_SLOT)
        if version != self._version:
            self.status = self._bulletin.load_status()
            self._version = version
            self._secondaries.refresh(self.status)
        return self.status

    def readiness(self) -> tuple[bool, str]:
        status = self.current()
        return status.ready, status.reason

    def ensure_ready(self) -> None:
        status = self.current()
        if not status.ready:
            raise Unavailable("not_ready", status.reason)
        age = self._bulletin.heartbeat_age_ms()
        if age > STALE_HEARTBEAT_MS:
            logger.warning("answering 503: no heartbeat from the worker for %d ms", age)
            raise Unavailable("worker_unresponsive", f"the worker has not reported for {age} ms")

    def holds(self, table: Any, partition: int) -> bool:
        return partition in self.status.active.get(table.name, {})

    def owner_of(self, table: Any, partition: int) -> str | None:
        return self.status.owners.get(table.name, {}).get(partition)

    def own_url(self) -> str:
        return self.status.own_url

    def database(self, table: Any, partition: int) -> Any:
        path = self.status.active[table.name][partition]
        return self._secondaries.get(table.name, partition, path)

    @property
    def client(self) -> aiohttp.ClientSession:
        return self._client


def serving_metrics() -> Any:
    """The metric families of every serving process of the worker (prometheus_client's multiprocess
    files, which the worker passes in PROMETHEUS_MULTIPROC_DIR), or of this process alone."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return MultiProcessCollector(None).collect()
    return REGISTRY.collect()


def merged_metrics(worker_text: str) -> bytes:
    """The worker's metrics with the serving processes' HTTP request counts and answer ages added to
    the same series."""
    own: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in serving_metrics():
        if family.name not in (HTTP_REQUESTS._name, HTTP_REQUEST_SECONDS._name, FEATURE_AGE._name):
            continue
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                own[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    families = list(text_string_to_metric_families(worker_text))
    for family in families:
        for i, sample in enumerate(family.samples):
            extra = own.pop((sample.name, tuple(sorted(sample.labels.items()))), None)
            if extra is not None:
                family.samples[i] = Sample(sample.name, sample.labels, sample.value + extra, sample.timestamp)
    for (name, labels), value in own.items():  # series the worker has not seen itself
        for family in families:
            if name.startswith(family.name):
                family.samples.append(Sample(name, dict(labels), value))
                break

    class Collected:
        def collect(self) -> Any:
            return families

    return generate_latest(Collected())


@web.middleware
async def mark_passed_on(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Requests for the worker's own web server are counted and authenticated there, not here."""
    route = request.match_info.route
    name = route.resource.name if route.resource is not None else None
    request["passed_on"] = name is not None and name.startswith(PASS_ON_NAME)
    return await handler(request)


class Server:
    """The serving process's aiohttp application."""

    def __init__(self, bulletin: Bulletin, settings: Settings) -> None:
        self.bulletin = bulletin
        index = os.environ.get(SERVING_INDEX_ENV, "0")
        self.secondaries = Secondaries(bulletin, bulletin_dir(settings.data_dir) / "secondary" / index)
        self.upstream = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(worker_socket(settings.data_dir))),
            timeout=UPSTREAM_TIMEOUT,
            auto_decompress=False,
        )
        self.peers = aiohttp.ClientSession()
        self.placement = BulletinPlacement(bulletin, self.secondaries, self.peers)
        pipeline = load_pipeline(settings.pipeline)
        self.ctx = ApiContext(
            pipeline,
            settings.group_id(pipeline.name),
            settings.partitions,
            StateTables.build(pipeline, TableName),
            self.placement,
        )
        token = settings.api_token.get_secret_value() if settings.api_token else None
        options = application_options(token)
        options["middlewares"] = [mark_passed_on, *options["middlewares"]]
        self.web = web.Application(**options)
        self.web.router.add_get("/features/{group}/{key}", self.lookup_one)
        self.web.router.add_post("/features/{group}", self.lookup_batch)
        for lookup in self.ctx.tables.lookups:  # only there: a feature group's table allows GET alone
            self.web.router.add_post(f"/tables/{lookup}", partial(self.lookup_rows, lookup))
        self.web.router.add_post("/services/{name}", self.service)
        self.web.router.add_get("/readyz", self.readyz)
        # Ingest goes to the worker (it produces) under its own route: a body refused here is counted by it.
        self.web.router.add_post("/ingest/{stream}", self.pass_on, name=PASS_ON_NAME + "-ingest")
        self.web.router.add_route("*", "/{path:.*}", self.pass_on, name=PASS_ON_NAME)

    async def lookup_one(self, request: web.Request) -> web.Response:
        """``GET /features/{group}/{key}``, as app.api.features.lookup_one answers it."""
        info = request.match_info
        return await lookup_one(request, self.ctx, info["group"], info["key"])

    async def lookup_batch(self, request: web.Request) -> web.Response:
        """``POST /features/{group}``, as app.api.features.lookup_batch answers it."""
        return await lookup_batch(request, self.ctx, request.match_info["group"])

    async def lookup_rows(self, lookup: str, request: web.Request) -> web.Response:
        """``POST /tables/{lookup}``, as app.api.tables.lookup_rows_batch answers it."""
        return await lookup_rows_batch(request, self.ctx, lookup)

    async def service(self, request: web.Request) -> web.Response:
        """``POST /services/{name}``, as app.api.services.service_answer answers it."""
        return await service_answer(request, self.ctx, request.match_info["name"])

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        """Not ready: 503 with the worker's reason from the bulletin (also before the worker's web
        server is up); ready: the worker's own ``/readyz`` answer."""
        status = self.placement.current()
        if not status.ready:
            return Unavailable("not_ready", status.reason).response()
        request["passed_on"] = True
        return await self.pass_on(request)

    async def pass_on(self, request: web.Request) -> web.StreamResponse:
        """Hand the request to the worker's web server and its answer back, unchanged; 503
        ``worker_unavailable`` when the worker does not answer."""
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP | {"host"}}
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            request["passed_on"] = False  # answered here (413): counted here, not by the worker
            raise
        try:
            async with self.upstream.request(
                request.method,
                "http://worker" + request.path_qs,
                headers=headers,
                data=body or None,
                allow_redirects=False,
            ) as answer:
                payload = await answer.read()
                out = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
                status = answer.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            return error_response(
                503, "worker_unavailable", f"the worker did not answer: {exc!r}", {"Retry-After": "1"}
            )
        if request.path == "/metrics" and status == 200:
            payload = merged_metrics(payload.decode("utf-8"))
        return web.Response(body=payload, status=status, headers=out)

    async def close(self) -> None:
        await self.upstream.close()
        await self.peers.close()
        self.secondaries.close()


async def serve(bulletin: Bulletin, settings: Settings) -> None:
    """Answer on the worker's port until SIGTERM/SIGINT or until the worker exits."""
    server = Server(bulletin, settings)
    runner = web.AppRunner(server.web, access_log=None)
    await runner.setup()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        # SO_REUSEPORT: the worker's serving processes all listen; the kernel spreads connections.
        site = web.TCPSite(runner, settings.web_host, settings.web_port, reuse_address=True, reuse_port=True)
        for attempt in range(150):  # a worker restarted on the same port: its old serving process may
            try:  # still be letting go of it
                await site.start()
                break
            except OSError as exc:
                if attempt == 149:
                    raise
                logger.warning("port %d busy (%s); retrying", settings.web_port, exc)
                await asyncio.sleep(0.2)
        logger.info(
            "serving process %d answers http://%s:%d", os.getpid(), settings.web_host, settings.web_port
        )
        settle_garbage_collector()  # Faust, the app and the spec are imported: freeze them
        parent = os.getppid()
        while not stopping.is_set():
            if os.getppid() != parent:
                break
            try:
                await asyncio.wait_for(stopping.wait(), 1.0)
            except TimeoutError:
                pass
    finally:
        await runner.cleanup()
        await server.close()


def main() -> None:
    """Entry point of ``python -m app.serving.process``: settings from the worker's environment."""
    settings = get_settings()
    logging.basicConfig(
        level=settings.log_level,
        stream=sys.stdout,
        format="[%(asctime)s] [%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    tables = StateTables.build(load_pipeline(settings.pipeline), TableName)
    names = [table.name for table in tables.all().values()]
    bulletin = open_bulletin(settings.data_dir, names, settings.partitions, create=False)
    try:
        uvloop.run(serve(bulletin, settings))  # libuv's loop: cheaper per request than asyncio's
    finally:
        bulletin.close()


if __name__ == "__main__":
    main()
