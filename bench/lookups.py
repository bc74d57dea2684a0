"""Feature lookups over HTTP: requests/s and latency of one worker (optionally two) under ingest.

Starts the bundled broker, preloads the users lookup and N shop events over K users (event times
spanning the last 20 h, so reads at "now" merge real buckets), starts a Hydrant worker (a real
process, with its serving processes: app/serving/process.py, HYDRANT_SERVING_PROCESSES of them, 2 by
default) and waits until every event is consumed. Then,
while a background process keeps ingesting ~1,000 ev/s (orders and clicks of the same keys, event
time = wall clock), a load generator (one process on uvloop, its garbage collector frozen during a
phase; a minimal keep-alive HTTP/1.1 client on asyncio streams, a third of aiohttp's client CPU per
request, which --client aiohttp uses instead) runs each phase for --duration seconds after a 1 s
warm-up:

- the HTTP floor first: closed loop against a trivial aiohttp handler on uvloop in a process of its
  own (no worker), the most requests/s this machine gives any aiohttp server with this generator;
- closed loop, C connections: GET /features/user/{key} (one random key), POST /features/user
  {"keys": [100 random keys]};
- fixed rate (open loop: sent on schedule on an idle or a new connection, never waiting for an
  answer, so server queueing shows in the latency): GET /features/user/{key} at 500 req/s, POST of
  100 keys at --batch-rate req/s; how late the generator itself sent is printed apart.

Then the same-run baseline (unless --no-in-loop): the worker restarts on the same state with
HYDRANT_SERVING_PROCESS=false, answering on its own event loop beside the agents, and the phases
repeat. With --two-workers a second worker joins first and the phases repeat, requests alternating
between both workers' URLs (keys the receiving worker does not own are forwarded). Each phase starts
once the workers' consumer lag is at most half a second of the ingest (a closed-loop phase can leave
a backlog, which the next phase would otherwise measure being caught up).

Only keys that have state are asked, so every answer should be 200. Per phase: who answers (api),
requests/s, p50/p99/max latency, non-200 answers, and the CPU of the generator, the worker(s) and
their serving process(es) (from /proc). Targets printed: single-key p99 <= 5 ms at 500 req/s, >=
3,000 req/s single-key on one worker, 100-key batch p99 <= 20 ms (at the fixed batch rate: in a
closed loop, latency is mostly queueing, C / throughput). Figures, not pass/fail. The worker logs
are kept in the temp dir (printed at the end).

With --serving-cpus LIST, the worker runs with HYDRANT_SERVING_CPUS=LIST (its serving processes on
those CPUs, the worker and its helpers on the others); the bundled broker and the ingest feeder are
kept on the other CPUs too and the generator on LIST during the serving phases, as on a host whose
broker runs elsewhere.

With --example payments, the same run on the payments example (examples/payments) and its feature
service: it preloads the merchants lookup and --events payments over --keys cards and 300 merchants
(same 20 h span), ingests payments of those (card, merchant) pairs, and the phases call POST
/services/fraud (3 groups on 2 keys, card and merchant, and the merchants lookup) with 1 row and with
100 rows of random pairs that have state: closed loop, then 1 row at 500 req/s (target p99 <= 5 ms)
and 100 rows at --batch-rate (target p99 <= 30 ms). A 200 answer with a row carrying an "error" counts
as non-200. Before the phases it prints the preload's dead letters (group device, 1 h windows after a
hop, gets part of the 20 h preload late while the worker catches up) and one 100-row answer's check.

    .venv/bin/python -m bench.lookups [--duration 10] [--keys 10000] [--events 50000] \
        [--connections 8] [--batch-rate 20] [--ingest-rate 1000] [--two-workers] [--no-in-loop] \
        [--client raw|aiohttp] [--example shop|payments]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing
import os
import random
import shutil
import socket
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import uvloop
from aiohttp import web
from aiokafka import AIOKafkaProducer

from app.kafka.broker import EmbeddedBroker
from app.system.cpus import pin_process, split_cpus
from bench.pipeline import (
    MERCHANTS,
    create_hydrant_topics,
    merchant_rows,
    payment_events,
    preload,
    shop_events,
    shop_value,
    user_rows,
)
from bench.procs import process_cpu, process_tree
from tests.conftest import payments_pipeline_text, shop_pipeline_text
from tests.support.broker import BrokerUnderTest
from tests.support.worker import WorkerProcess, wait_for

SPAN_MS = 20 * 3600 * 1000  # event times of the preload: the last 20 h (retention is 24 h)
BATCH_KEYS = 100
SERVICE = "fraud"  # the payments example's service: 3 groups on 2 keys (card, merchant) and a lookup
ROW_ERROR = -1  # a status of its own: a 200 answer with a row that carries an "error"
WARMUP_S = 1.0
MAX_IN_FLIGHT = 256  # fixed rate: open connections at most (beyond, a request waits: counted as lag)

Request = tuple[int, str, str, bytes | None]  # worker index, method, path, body


# --- background ingest (a separate process, so it does not share the generator's event loop) ---


def ingest(
    bootstrap: str, topics: tuple[str, ...], keys: Sequence[Any], rate: float, stop: Event, sent: Any
) -> None:
    """Until ``stop`` is set, at ``rate`` ev/s, event time = now: orders and clicks of ``keys`` (users)
    when ``topics`` holds two topics, else payments of ``keys`` ((card, merchant) pairs)."""
    asyncio.run(_ingest(bootstrap, topics, keys, rate, stop, sent))


def payment_value(rng: random.Random, card: str, merchant: str, ts: int) -> dict[str, Any]:
    """A payment as :func:`bench.pipeline.payment_events` makes them (5 % without a device)."""
    return {
        "card_id": card,
        "merchant_id": merchant,
        "device_id": None if rng.random() < 0.05 else f"d{card[1:]}",
        "amount": round(rng.uniform(1, 500), 2),
        "status": "declined" if rng.random() < 0.08 else "ok",
        "ts": ts,
    }


async def _ingest(
    bootstrap: str,
    topics: tuple[str, ...],
    keys: Sequence[Any],
    rate: float,
    stop: Event,
    sent: Any,
) -> None:
    rng = random.Random(7)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    try:
        started = time.monotonic()
        count = 0
        pending = []
        while not stop.is_set():
            due = int((time.monotonic() - started) * rate)
            now = int(time.time() * 1000)
            for i in range(count, due):
                if len(topics) == 1:
                    card, merchant = rng.choice(keys)
                    value, key, topic = payment_value(rng, card, merchant, now), card, topics[0]
                else:
                    key = rng.choice(keys)
                    value = shop_value(rng, i, key, now, f"live{i}")
                    topic = topics[0] if i % 2 else topics[1]
                pending.append(await producer.send(topic, orjson.dumps(value), key=key.encode()))
            count = max(count, due)
            if len(pending) >= 200:
                await asyncio.gather(*pending)
                pending.clear()
            sent.value = count
            await asyncio.sleep(0.01)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


# --- the load generator ---


@dataclass
class Phase:
    name: str
    mode: str  # "closed, 8 conns" / "500/s"
    workers: int
    api: str = "serving"  # who answers: "serving" (the serving process), "in-loop" (the worker), "floor"
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds
    statuses: Counter[int] = field(default_factory=Counter)  # 0 = connection error / timeout
    lags: list[float] = field(default_factory=list)  # fixed rate: seconds sent after the schedule
    generator_cpu: float = 0.0  # share of one core
    worker_cpu: float = 0.0  # share of one core, all workers together
    serving_cpu: float = 0.0  # share of one core, the workers' serving processes together
    ingested: float = 0.0  # events/s the worker(s) consumed during the phase (the background ingest)
    target: str = ""
    check: Callable[[Phase], bool] | None = None

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def quantile(self, q: float, values: list[float] | None = None) -> float:
        """The ``q`` quantile of the latencies (or of ``values``) in milliseconds."""
        ordered = sorted(self.latencies if values is None else values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")

    @property
    def non_200(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != 200)


def cpu_of(pids: list[int]) -> tuple[float, float]:
    """CPU seconds of the worker processes (with their helpers) and of their serving processes."""
    trees = [process_tree(pid) for pid in pids]
    work = [p for tree in trees for p, kind in tree.items() if kind != "serving"]
    serving = [p for tree in trees for p, kind in tree.items() if kind == "serving"]
    return sum(map(process_cpu, work)), sum(map(process_cpu, serving))


class RawHttp:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams (Content-Length or chunked answers),
    with a pool of idle connections per worker: a fraction of aiohttp's client CPU per request, so the
    generator's own cost stays small next to the server's (compare with --client aiohttp)."""

    def __init__(self, urls: list[str], check: Callable[[bytes], bool] | None = None) -> None:
        self.check = check  # of a 200 answer's body: False counts it as ROW_ERROR
        self.addresses = []
        for url in urls:
            host, _, port = url.removeprefix("http://").rstrip("/").rpartition(":")
            self.addresses.append((host, int(port)))
        self.idle: list[list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = [[] for _ in urls]

    async def call(self, request: Request) -> int:
        worker, method, path, body = request
        idle = self.idle[worker]
        host, port = self.addresses[worker]
        conn = None
        try:
            async with asyncio.timeout(10):
                conn = idle.pop() if idle else await asyncio.open_connection(host, port)
                reader, writer = conn
                head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                if body is not None:
                    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                writer.write(head.encode() + b"\r\n" + (body or b""))
                headers = (await reader.readuntil(b"\r\n\r\n")).lower()
                status = int(headers[9:12])
                at = headers.find(b"\r\ncontent-length:")
                answer = b""
                if at >= 0:
                    answer = await reader.readexactly(int(headers[at + 17 : headers.index(b"\r\n", at + 2)]))
                elif b"\r\ntransfer-encoding: chunked" in headers:
                    chunks = []
                    while size := int((await reader.readline()).split(b";")[0], 16):
                        chunks.append((await reader.readexactly(size + 2))[:-2])
                    await reader.readuntil(b"\r\n")
                    answer = b"".join(chunks)
                if b"\r\nconnection: close" in headers:
                    writer.close()
                else:
                    idle.append(conn)
                if status == 200 and self.check is not None and not self.check(answer):
                    return ROW_ERROR
                return status
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            if conn is not None:
                conn[1].close()
            return 0

    async def close(self) -> None:
        for idle in self.idle:
            for _, writer in idle:
                writer.close()


class AiohttpClient:
    """The same calls through aiohttp's client (a cross-check of the raw client's figures)."""

    def __init__(
        self, urls: list[str], connections: int, check: Callable[[bytes], bool] | None = None
    ) -> None:
        self.urls = urls
        self.check = check
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections, ttl_dns_cache=None),
            timeout=aiohttp.ClientTimeout(total=10),
        )

    async def call(self, request: Request) -> int:
        worker, method, path, body = request
        try:
            headers = {"Content-Type": "application/json"} if body is not None else None
            async with self.session.request(
                method, self.urls[worker] + path, data=body, headers=headers
            ) as response:
                answer = await response.read()
                if response.status == 200 and self.check is not None and not self.check(answer):
                    return ROW_ERROR
                return response.status
        except (TimeoutError, aiohttp.ClientError):
            return 0

    async def close(self) -> None:
        await self.session.close()


def make_client(
    kind: str, urls: list[str], connections: int, check: Callable[[bytes], bool] | None = None
) -> RawHttp | AiohttpClient:
    return RawHttp(urls, check) if kind == "raw" else AiohttpClient(urls, connections, check)


def rows_ok(answer: bytes) -> bool:
    """A service's 200 answer without a row that carries an ``error`` (the only key named so)."""
    return b'"error":' not in answer


Client = RawHttp | AiohttpClient


async def closed_loop(
    phase: Phase,
    make: Callable[[int], Request],
    connections: int,
    duration: float,
    pids: list[int],
    new_client: Callable[[], Client],
) -> Phase:
    """``connections`` clients, each sending its next request when the previous answer came."""
    client = new_client()
    try:
        start = time.perf_counter()
        record_from = start + WARMUP_S
        deadline = record_from + duration
        cpu_marks: list[tuple[float, float, tuple[float, float]]] = []

        async def mark() -> None:
            await asyncio.sleep(max(0.0, record_from - time.perf_counter()))
            cpu_marks.append((time.perf_counter(), time.process_time(), cpu_of(pids)))

        async def one_client(i: int) -> None:
            n = 0
            while (sent_at := time.perf_counter()) < deadline:
                status = await client.call(make(i + n * connections))
                n += 1
                if sent_at >= record_from:
                    phase.latencies.append(time.perf_counter() - sent_at)
                    phase.statuses[status] += 1

        await asyncio.gather(mark(), *(one_client(i) for i in range(connections)))
        ended = time.perf_counter()
        wall0, gen0, work0 = cpu_marks[0]
        phase.seconds = ended - wall0
        phase.generator_cpu = (time.process_time() - gen0) / phase.seconds
        work1 = cpu_of(pids)
        phase.worker_cpu = (work1[0] - work0[0]) / phase.seconds
        phase.serving_cpu = (work1[1] - work0[1]) / phase.seconds
    finally:
        await client.close()
    return phase


async def fixed_rate(
    phase: Phase,
    make: Callable[[int], Request],
    rate: float,
    duration: float,
    pids: list[int],
    new_client: Callable[[], Client],
) -> Phase:
    """Open loop: request i is sent at start + i / rate whatever the answers, on an idle connection or
    a new one (never waiting for a busy one, so a slow server cannot slow the senders down: its
    queueing shows in the latency, counted from the send), up to MAX_IN_FLIGHT at once. How late the
    generator sent (its timer and loop delays, or that cap) is kept apart, in ``lags``."""
    client = new_client()
    try:
        start = time.perf_counter() + 0.01
        record_from = start + WARMUP_S
        total = int(rate * (WARMUP_S + duration))
        tasks = []
        cpu0: tuple[float, tuple[float, float]] | None = None

        in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)

        async def one(i: int, due: float) -> None:
            async with in_flight:
                sent = time.perf_counter()
                status = await client.call(make(i))
            if due >= record_from:
                phase.latencies.append(time.perf_counter() - sent)
                phase.lags.append(sent - due)
                phase.statuses[status] += 1

        for i in range(total):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if cpu0 is None and due >= record_from:
                cpu0 = (time.process_time(), cpu_of(pids))
            tasks.append(asyncio.create_task(one(i, due)))
        await asyncio.gather(*tasks)
        phase.seconds = duration
        elapsed = time.perf_counter() - record_from
        assert cpu0 is not None
        phase.generator_cpu = (time.process_time() - cpu0[0]) / elapsed
        work1 = cpu_of(pids)
        phase.worker_cpu = (work1[0] - cpu0[1][0]) / elapsed
        phase.serving_cpu = (work1[1] - cpu0[1][1]) / elapsed
    finally:
        await client.close()
    return phase


def measure(phase: Coroutine[Any, Any, Phase]) -> Phase:
    """One phase on uvloop, with the generator's garbage collector out of the way: everything
    alive is frozen and collection is off while it runs (a full collection of this process, which
    imports half of Hydrant, would hold its loop for tens of ms and show up as server latency)."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        return uvloop.run(phase)
    finally:
        gc.enable()
        gc.unfreeze()


def trivial_server(port: int) -> None:
    """The HTTP floor: aiohttp on uvloop answering a constant, nothing else (a spawned process)."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type="application/json")

    application = web.Application()
    application.router.add_get("/floor", answer)
    uvloop.install()
    web.run_app(application, host="127.0.0.1", port=port, print=None, access_log=None)


def http_floor(args: argparse.Namespace) -> Phase:
    """Closed loop against :func:`trivial_server` in its own process: the most requests/s this
    machine gives an aiohttp server with this generator, whatever the server does per request."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = multiprocessing.get_context("spawn").Process(target=trivial_server, args=(port,), daemon=True)
    server.start()
    try:
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/floor").status_code == 200, "trivial server", 30)
        assert server.pid is not None
        urls = [f"http://127.0.0.1:{port}"]
        phase = Phase("GET trivial handler (HTTP floor)", f"closed, {args.connections} conns", 1, api="floor")
        return measure(
            closed_loop(
                phase,
                lambda i: (0, "GET", "/floor", None),
                args.connections,
                args.duration,
                [server.pid],
                lambda: make_client(args.client, urls, 256),
            )
        )
    finally:
        server.terminate()
        server.join()


def consumed(workers: list[WorkerProcess]) -> float:
    return sum(w.metric("hydrant_events_consumed_total") for w in workers)


#: Before a phase starts, the workers' consumer lag must be down to this many seconds of the
#: background ingest. A closed-loop phase can starve the ingest (two workers on 2 cores); the phase
#: after it would then measure workers catching up at ~2x the ingest rate, not ingesting it.
SETTLED_LAG_S = 0.5


def settle(workers: list[WorkerProcess], rate: float) -> float:
    """Wait until the workers' summed consumer lag is at most :data:`SETTLED_LAG_S` of ingest at
    ``rate`` events/s; the seconds waited."""
    started = time.monotonic()
    wait_for(
        lambda: sum(w.metric("hydrant_consumer_lag") for w in workers) <= rate * SETTLED_LAG_S,
        "the background ingest caught up",
        120,
    )
    return time.monotonic() - started


Phases = list[tuple[Callable[..., Coroutine[Any, Any, Phase]], Phase, Callable[[int], Request], float]]
SINGLE_RATE = 500.0  # fixed-rate single-key GETs (or 1-row service calls) per second


def shop_phases(n: int, keys: list[str], args: argparse.Namespace, rng: random.Random) -> Phases:
    """Single-key GETs and 100-key POSTs of group user: closed loop, then fixed rate."""

    def single(i: int) -> Request:
        return (i % n, "GET", f"/features/user/{rng.choice(keys)}", None)

    def batch(i: int) -> Request:
        return (i % n, "POST", "/features/user", orjson.dumps({"keys": rng.sample(keys, BATCH_KEYS)}))

    closed = f"closed, {args.connections * n} conns"
    return [
        (
            closed_loop,
            Phase(
                "GET /features/user/{key}",
                closed,
                n,
                target=">= 3,000 req/s" if n == 1 else "",
                check=(lambda p: p.rate >= 3000) if n == 1 else None,
            ),
            single,
            args.connections * n,
        ),
        (
            closed_loop,
            Phase(f"POST /features/user ({BATCH_KEYS} keys)", closed, n),
            batch,
            args.connections * n,
        ),
        (
            fixed_rate,
            Phase(
                "GET /features/user/{key}",
                f"{SINGLE_RATE:.0f}/s",
                n,
                target="p99 <= 5 ms",
                check=lambda p: p.quantile(0.99) <= 5,
            ),
            single,
            SINGLE_RATE,
        ),
        (
            fixed_rate,
            Phase(
                f"POST /features/user ({BATCH_KEYS} keys)",
                f"{args.batch_rate:.0f}/s",
                n,
                target="p99 <= 20 ms",
                check=lambda p: p.quantile(0.99) <= 20,
            ),
            batch,
            args.batch_rate,
        ),
    ]


def service_phases(
    n: int, pairs: list[tuple[str, str]], args: argparse.Namespace, rng: random.Random
) -> Phases:
    """POST /services/fraud of 1 row and of 100 rows (random (card, merchant) pairs with state, a
    random amount, at = now): closed loop, then fixed rate."""

    def rows(count: int) -> bytes:
        chosen = rng.sample(pairs, count) if count > 1 else [rng.choice(pairs)]
        return orjson.dumps(
            {
                "rows": [
                    {"card_id": card, "merchant_id": merchant, "amount": round(rng.uniform(1, 500), 2)}
                    for card, merchant in chosen
                ]
            }
        )

    def one_row(i: int) -> Request:
        return (i % n, "POST", f"/services/{SERVICE}", rows(1))

    def batch(i: int) -> Request:
        return (i % n, "POST", f"/services/{SERVICE}", rows(BATCH_KEYS))

    closed = f"closed, {args.connections * n} conns"
    one, hundred = f"POST /services/{SERVICE} (1 row)", f"POST /services/{SERVICE} ({BATCH_KEYS} rows)"
    return [
        (closed_loop, Phase(one, closed, n), one_row, args.connections * n),
        (closed_loop, Phase(hundred, closed, n), batch, args.connections * n),
        (
            fixed_rate,
            Phase(
                one, f"{SINGLE_RATE:.0f}/s", n, target="p99 <= 5 ms", check=lambda p: p.quantile(0.99) <= 5
            ),
            one_row,
            SINGLE_RATE,
        ),
        (
            fixed_rate,
            Phase(
                hundred,
                f"{args.batch_rate:.0f}/s",
                n,
                target="p99 <= 30 ms",
                check=lambda p: p.quantile(0.99) <= 30,
            ),
            batch,
            args.batch_rate,
        ),
    ]


def run_phases(
    workers: list[WorkerProcess], keys: list[Any], args: argparse.Namespace, api: str
) -> list[Phase]:
    """Every phase against the workers (request i goes to worker i % len(workers)): ``keys`` are the
    users (shop) or the (card, merchant) pairs (payments) that have state."""
    urls = [w.url for w in workers]
    pids = [w.proc.pid for w in workers if w.proc is not None]
    rng = random.Random(11)
    n = len(urls)
    services = args.example == "payments"
    check = rows_ok if services else None

    def new_client() -> Client:
        return make_client(args.client, urls, 256, check)

    phases = service_phases(n, keys, args, rng) if services else shop_phases(n, keys, args, rng)
    done = []
    everywhere = frozenset(os.sched_getaffinity(0))
    if args.serving_cpus and api == "serving":  # the generator beside the serving processes
        pin_process(os.getpid(), split_cpus(args.serving_cpus)[0])
    try:
        for runner, phase, make, load in phases:
            phase.api = api
            waited = settle(workers, args.ingest_rate)
            if waited > 1:
                print(f"  (waited {waited:.1f} s for the workers to catch up with the ingest)", flush=True)
            before, started = consumed(workers), time.monotonic()
            result = measure(runner(phase, make, load, args.duration, pids, new_client))
            result.ingested = (consumed(workers) - before) / (time.monotonic() - started)
            print(f"  {row(result)}", flush=True)
            done.append(result)
    finally:  # workers started later inherit the generator's CPUs: give them all back
        pin_process(os.getpid(), everywhere)
    return done


HEADER = (
    f"{'phase':<36}{'api':<9}{'load':<17}{'wkrs':>4}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}"
    f"{'non-200':>8}{'gen cpu':>8}{'wkr cpu':>8}{'srv cpu':>8}{'ingest':>8}  target"
)


STATUS_LABELS = {0: "none", ROW_ERROR: "200 with an error row"}


def row(p: Phase) -> str:
    target = f"{p.target} ({'met' if p.check(p) else 'not met'})" if p.check is not None else ""
    if p.non_200:
        target += "; answers " + ", ".join(
            f"{STATUS_LABELS.get(s, s)}: {n}" for s, n in sorted(p.statuses.items()) if s != 200
        )
    if p.lags:
        target += f"; sent late by p99 {p.quantile(0.99, p.lags):.1f} ms"
    text = (
        f"{p.name:<36}{p.api:<9}{p.mode:<17}{p.workers:>4}{p.rate:>9,.0f}{p.quantile(0.5):>8.2f}"
        f"{p.quantile(0.99):>8.2f}{p.quantile(1.0):>8.1f}{p.non_200:>8,}{p.generator_cpu:>8.0%}"
        f"{p.worker_cpu:>8.0%}{p.serving_cpu:>8.0%}{p.ingested:>8,.0f}  {target}"
    )
    return text.rstrip()


def readyz_partitions(worker: WorkerProcess) -> list[int] | None:
    try:
        response = worker.get("/readyz")
    except httpx.HTTPError:
        return None
    return list(response.json()["partitions"]) if response.status_code == 200 else None


def preloaded(worker: WorkerProcess, args: argparse.Namespace) -> bool:
    """Every preloaded event consumed; for payments, also every payment through its last hop (its
    enriched row sent, or a dead letter: see :func:`main`) and every merchants row stored."""
    if args.example == "shop":
        return worker.metric("hydrant_events_consumed_total") >= args.events
    ended = worker.metric("hydrant_events_produced_total") + worker.metric("hydrant_dead_letters_total")
    return ended >= args.events and worker.metric("hydrant_lookup_updates_total") >= MERCHANTS


def sample_answer(worker: WorkerProcess, pairs: list[tuple[str, str]]) -> str:
    """One call of :data:`BATCH_KEYS` rows (before the phases): how many rows carry an error, name a
    group without state, or have a null column (each should be 0: every pair asked has state)."""
    chosen = random.Random(5).sample(pairs, BATCH_KEYS)
    body = {"rows": [{"card_id": c, "merchant_id": m, "amount": 10.0} for c, m in chosen]}
    response = httpx.post(f"{worker.url}/services/{SERVICE}", json=body, timeout=10)
    if response.status_code != 200:
        return f"status {response.status_code}: {response.text[:200]}"
    rows = response.json()["rows"]
    errors = sum("error" in r for r in rows)
    missing = sum(bool(r.get("missing") or r.get("outside_retention")) for r in rows)
    nulls = Counter(name for r in rows for name, value in r.get("features", {}).items() if value is None)
    return (
        f"{len(rows)} rows, {errors} with an error, {missing} naming a group without state or outside "
        f"retention, null columns: {dict(nulls) or 'none'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase (after 1 s warm-up)")
    parser.add_argument("--keys", type=int, default=10_000, help="users (cards with --example payments)")
    parser.add_argument("--events", type=int, default=50_000, help="preloaded events (or payments)")
    parser.add_argument("--connections", type=int, default=8, help="closed-loop connections per worker")
    parser.add_argument(
        "--batch-rate",
        type=float,
        default=20.0,
        help="fixed-rate 100-key batches (or 100-row calls) per second",
    )
    parser.add_argument("--ingest-rate", type=float, default=1000.0, help="background events per second")
    parser.add_argument("--two-workers", action="store_true", help="repeat with a second worker")
    parser.add_argument(
        "--no-in-loop",
        action="store_true",
        help="skip the same-run baseline: the phases again on a worker that answers on its own event "
        "loop (HYDRANT_SERVING_PROCESS=false)",
    )
    parser.add_argument(
        "--client", choices=["raw", "aiohttp"], default="raw", help="HTTP client of the load generator"
    )
    parser.add_argument(
        "--serving-cpus",
        help="CPU placement (e.g. 1): the worker runs with HYDRANT_SERVING_CPUS set to it, and the bundled "
        "broker and the ingest feeder are kept on the other CPUs, the generator on these (as a serving "
        "host whose broker runs elsewhere)",
    )
    parser.add_argument(
        "--example",
        choices=["shop", "payments"],
        default="shop",
        help=f"payments: the payments example, ingesting payments, and POST /services/{SERVICE} of 1 and "
        f"{BATCH_KEYS} rows instead of the shop's feature reads",
    )
    args = parser.parse_args()
    uid = uuid.uuid4().hex[:8]
    app_id = f"hydrant-bench-{uid}"
    mp = multiprocessing.get_context("spawn")
    stop = mp.Event()
    sent = mp.Value("q", 0)
    results: list[Phase] = []
    workers: list[WorkerProcess] = []
    feeder = None
    with tempfile.TemporaryDirectory() as tmp_name, EmbeddedBroker() as embedded:
        tmp = Path(tmp_name)
        broker = BrokerUnderTest(embedded.url, "tansu", "tansu")
        pipeline = tmp / "pipeline.yaml"
        services = args.example == "payments"
        pipeline.write_text(payments_pipeline_text(uid) if services else shop_pipeline_text(uid))
        create_hydrant_topics(broker.url, pipeline, app_id)
        now = int(time.time() * 1000)
        step = max(1, SPAN_MS // max(args.events, 1))
        t0 = now - args.events * step
        keys: list[Any]
        if services:
            payments = payment_events(args.events, args.keys, t0=t0, step_ms=step)
            topics: tuple[str, ...] = (f"payments-{uid}",)
            preload(broker.bootstrap, [(f"merchants-{uid}", merchant_rows()), (topics[0], payments)])
            pairs = {(v["card_id"], v["merchant_id"]) for v in map(orjson.loads, (v for _, v in payments))}
            keys = sorted(pairs)
            described = (
                f"{args.events:,} preloaded payments over {len({c for c, _ in pairs}):,} cards and "
                f"{len({m for _, m in pairs}):,} merchants, {len(keys):,} (card, merchant) pairs with state"
            )
        else:
            orders, clicks = shop_events(args.events, args.keys, t0=t0, step_ms=step)
            topics = (f"orders-{uid}", f"clicks-{uid}")
            preload(
                broker.bootstrap,
                [(f"users-{uid}", user_rows(args.keys)), (topics[0], orders), (topics[1], clicks)],
            )
            keys = sorted({key.decode() for key, _ in orders + clicks})
            described = f"{args.events:,} preloaded events over {len(keys):,} keys with state"
        print(
            f"{described}, ingest {args.ingest_rate:,.0f} ev/s during the phases, {args.duration:g} s per "
            f"phase (+{WARMUP_S:g} s warm-up), bundled broker {broker.bootstrap}",
            flush=True,
        )

        rest = split_cpus(args.serving_cpus)[1] if args.serving_cpus else None
        if rest is not None and embedded.pid is not None:
            pin_process(embedded.pid, rest)

        def start_worker(name: str, data: str, **env: str) -> WorkerProcess:
            worker = WorkerProcess(
                broker, pipeline, tmp / f"data-{data}", app_id, tmp / f"{name}.log", extra_env=env
            )
            workers.append(worker)
            return worker.start()

        try:
            print(HEADER)
            results.append(http_floor(args))
            print(f"  {row(results[-1])}", flush=True)
            placed = {"HYDRANT_SERVING_CPUS": args.serving_cpus} if args.serving_cpus else {}
            first = start_worker("w1", "w1", **placed)
            first.wait_ready(120)
            wait_for(lambda: preloaded(first, args), "preload consumed", 600)
            if services:
                # Group device (1 h windows, after the merchant hop) gets part of the 20 h preload
                # late while the worker catches it up: hop partitions run ahead of each other by a
                # fetch (docs/pipeline.md, "Order at other keys"). The fraud service does not read it.
                late = {
                    group: first.metric("hydrant_late_events_total", group=group)
                    for group in ("card", "merchant", "device", "card_merchant")
                }
                print(
                    f"  preload: {first.metric('hydrant_dead_letters_total'):,.0f} payments dead-lettered; "
                    "late per group: " + ", ".join(f"{g} {n:,.0f}" for g, n in late.items()),
                    flush=True,
                )
                print(f"  sample call of POST /services/{SERVICE}: {sample_answer(first, keys)}", flush=True)
            feeder = mp.Process(
                target=ingest,
                args=(broker.bootstrap, topics, keys, args.ingest_rate, stop, sent),
                daemon=True,
            )
            feeder.start()
            if rest is not None and feeder.pid is not None:
                pin_process(feeder.pid, rest)
            results += run_phases([first], keys, args, "serving")
            if args.two_workers:
                second = start_worker("w2", "w2", **placed)

                def split() -> bool:
                    parts = [readyz_partitions(w) for w in (first, second)]
                    held = sorted(p for part in parts for p in part or [])
                    return all(parts) and held == list(range(4))

                wait_for(split, "two workers ready, partitions split between them", 180)
                print("  second worker ready: /readyz partitions", [readyz_partitions(w) for w in workers])
                results += run_phases([first, second], keys, args, "serving")
                second.stop()
                wait_for(lambda: readyz_partitions(first) == [0, 1, 2, 3], "w1 alone again", 180)
            if not args.no_in_loop:
                # The same worker and state, answering on its own event loop (the same-run baseline).
                first.stop()
                inloop = start_worker("w1-in-loop", "w1", HYDRANT_SERVING_PROCESS="false")
                inloop.wait_ready(180)
                wait_for(lambda: inloop.metric("hydrant_events_consumed_total") > 0, "in-loop consuming", 120)
                print("  worker restarted with HYDRANT_SERVING_PROCESS=false")
                results += run_phases([inloop], keys, args, "in-loop")
        finally:
            stop.set()
            if feeder is not None:
                feeder.join(15)
                if feeder.is_alive():
                    feeder.terminate()
                    feeder.join()
            for worker in workers:
                worker.stop()
                kept = Path(tempfile.gettempdir()) / f"hydrant-bench-lookups-{worker.log_path.name}"
                shutil.copyfile(worker.log_path, kept)
                print(f"worker log: {kept}")
    print()
    print(HEADER)
    for phase in results:
        print(row(phase))
    print(
        f"background ingest: {sent.value:,} events sent ('ingest': events/s the worker(s) consumed during "
        f"a phase; target {args.ingest_rate:,.0f})"
    )


if __name__ == "__main__":
    main()
