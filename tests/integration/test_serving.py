"""The serving process (app/serving/process.py) on the real broker: it answers feature reads on the public
port from RocksDB secondaries, as fresh as the worker's own state; it says 503 while the worker is
frozen; it never outlives the worker; and HYDRANT_SERVING_PROCESS=false puts the worker back on
the port."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import psutil

from app.config.settings import worker_socket
from tests.support.broker import BrokerUnderTest
from tests.support.kafka import consume, create_pipeline_topics_for, produce
from tests.support.worker import WorkerProcess, wait_for

T0 = 1_700_000_000_000
HOUR = 3_600_000


def order(i: int, user: str, amount: float, ts: int) -> tuple[bytes, bytes]:
    value = {"user_id": user, "order_id": f"o-{i}", "product": f"p{i % 5}", "amount": amount}
    return user.encode(), orjson.dumps({**value, "status": "paid", "ts": ts})


def serving_children(worker: WorkerProcess) -> list[psutil.Process]:
    assert worker.proc is not None
    return [p for p in psutil.Process(worker.proc.pid).children() if "app.serving.process" in p.cmdline()]


def listener_pids(port: int) -> set[int | None]:
    return {
        conn.pid
        for conn in psutil.net_connections("tcp")
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port
    }


def spend(worker: WorkerProcess, user: str, at: int) -> dict[str, float] | None:
    """The user's 24 h spend; None while the key has no state (its events not processed yet:
    /readyz 200 says recovery is done, not that the input was read)."""
    response = httpx.get(f"{worker.url}/features/user/{user}", params={"at": at}, timeout=5)
    if response.status_code == 404 and response.json()["error"]["code"] == "key_not_found":
        return None
    assert response.status_code == 200, response.text
    features = response.json()["features"]
    return {"count": features["spend_count_24h"], "sum": features["spend_sum_24h"]}


def test_serving_process_reads_as_fresh_as_the_worker_and_follows_its_lifecycle(
    broker: BrokerUnderTest, shop_pipeline: Path, uid: str, workers: Callable[..., WorkerProcess]
) -> None:
    create_pipeline_topics_for(broker.url, shop_pipeline, uid)
    orders_topic, out_topic = f"orders-{uid}", f"orders-enriched-{uid}"
    asyncio.run(produce(broker.bootstrap, orders_topic, [order(i, "u1", 10.0, T0 + i) for i in range(20)]))
    worker = workers(shop_pipeline)
    worker.wait_ready()
    serving = serving_children(worker)
    assert len(serving) == 2, f"expected HYDRANT_SERVING_PROCESSES' default of two, found {serving}"
    assert listener_pids(worker.port) == {p.pid for p in serving}, "the serving processes own the port"
    wait_for(lambda: spend(worker, "u1", T0 + HOUR) == {"count": 20, "sum": 200.0}, "first 20 orders")

    # The worker's own web server (on its Unix socket) and the serving process agree as soon as
    # the batch is written: the serving process catches its secondary up on the worker's write
    # counter, not on a timer (which would leave it a second behind).
    more = [order(100 + i, "u1", 1.5, T0 + 1000 + i) for i in range(7)]
    asyncio.run(produce(broker.bootstrap, orders_topic, more))
    asyncio.run(consume(broker.bootstrap, out_topic, 27, timeout=60))
    time.sleep(0.2)
    uds = str(worker_socket(Path(worker.env["HYDRANT_DATA_DIR"])))
    with httpx.Client(transport=httpx.HTTPTransport(uds=uds)) as own:
        direct = own.get("http://worker/features/user/u1", params={"at": T0 + HOUR}).json()["features"]
    assert {"count": direct["spend_count_24h"], "sum": direct["spend_sum_24h"]} == {"count": 27, "sum": 210.5}
    assert spend(worker, "u1", T0 + HOUR) == {"count": 27, "sum": 210.5}

    # Everything else is passed to the worker: readiness, tables, metrics (with the serving
    # process's request counts merged into the worker's series).
    assert worker.get("/readyz").json()["status"] == "ready"
    assert worker.get("/tables/user?limit=5").status_code == 200
    assert worker.metric("hydrant_http_requests_total", route="/features/{group}/{key}", status="200") >= 2
    # ...from both serving processes (each new connection may land on either), exactly.
    route = {"route": "/features/{group}/{key}", "status": "200"}
    timed = "hydrant_http_request_duration_seconds_count"
    before = worker.metric("hydrant_http_requests_total", **route), worker.metric(timed, route=route["route"])
    for _ in range(30):
        spend(worker, "u1", T0 + HOUR)
    after = worker.metric("hydrant_http_requests_total", **route), worker.metric(timed, route=route["route"])
    assert after == (before[0] + 30, before[1] + 30)
    assert worker.metric("hydrant_http_requests_total", route="/tables/{name}", status="200") >= 1

    # A frozen worker: its partitions may move to another worker, so no answers from this state.
    assert worker.proc is not None
    worker.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(2.5)
        frozen = httpx.get(f"{worker.url}/features/user/u1", params={"at": T0 + HOUR}, timeout=5)
        assert frozen.status_code == 503
        assert frozen.json()["error"]["code"] == "worker_unresponsive"
        assert frozen.headers["Retry-After"] == "1"
    finally:
        worker.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: (spend(worker, "u1", T0 + HOUR) or {}).get("count") == 27, "answers again after SIGCONT")

    # Killed worker: the kernel stops the serving process too, and the port is free again.
    worker.stop(sig=signal.SIGKILL)
    wait_for(
        lambda: all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in serving),
        "the serving processes to end with their worker",
        10,
    )
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", worker.port)) != 0, "someone still listens on the port"


def test_without_a_serving_process_the_worker_answers_on_the_port(
    broker: BrokerUnderTest, shop_pipeline: Path, uid: str, workers: Callable[..., WorkerProcess]
) -> None:
    create_pipeline_topics_for(broker.url, shop_pipeline, uid)
    asyncio.run(produce(broker.bootstrap, f"orders-{uid}", [order(i, "u2", 2.0, T0 + i) for i in range(5)]))
    worker = workers(shop_pipeline, HYDRANT_SERVING_PROCESS="false")
    worker.wait_ready()
    assert worker.proc is not None
    assert listener_pids(worker.port) == {worker.proc.pid}
    assert not [p for p in psutil.Process(worker.proc.pid).children() if "app.serving.process" in p.cmdline()]
    wait_for(lambda: spend(worker, "u2", T0 + HOUR) == {"count": 5, "sum": 10.0}, "5 orders")
