"""The replay of a changed spec while live events keep coming (issue 23): replay records/s, and what it
costs the live rate, on the bundled broker, one worker, the shop pipeline.

Two consumer groups process the same H history events with the shop spec, then L more events are
produced. Then, each timed from /readyz 200 until the L events are consumed:

- (base) group 1 restarts on the same spec: nothing to replay;
- (replay) group 2 restarts on the spec with one aggregation added (the orders' amount above 100:
  count, sum, max over 24 h): it replays the H history into it while it processes the L events.

Prints the live events/s of both, the live rate while the replay ran and its ratio to (base), and the
replay's records/s (HYDRANT_REPLAY_SHARE, default 0.25, bounds its share of the loop while events
arrive). Figures, not pass/fail.

    .venv/bin/python -m bench.replay [--history 100000] [--live 100000] [--keys 10000] [--share 0.25]
                                     [--rate RECORDS_PER_S]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from app.kafka.broker import EmbeddedBroker
from bench.pipeline import T0, counter, create_hydrant_topics, preload, shop_events, user_rows
from tests.conftest import shop_pipeline_text
from tests.support.broker import BrokerUnderTest
from tests.support.worker import WorkerProcess

ADDED = (
    "      - {name: big, stream: orders, field: amount, ops: [count, sum, max], windows: [24h], "
    'where: "amount > 100"}\n'
)


def consume(worker: WorkerProcess, total: float, replaying: bool) -> dict[str, Any]:
    """Poll /metrics every 0.1 s until ``total`` events were consumed (and, ``replaying``, the replay
    is done); the samples (time, events consumed, records replayed) and when each ended."""
    started = time.monotonic()
    samples: list[tuple[float, float, float]] = []
    marks: dict[str, Any] = {"samples": samples}
    with httpx.Client(base_url=worker.url, timeout=5) as http:
        while time.monotonic() - started < 1800:
            page = http.get("/metrics").text
            now = time.monotonic()
            consumed = counter(page, "hydrant_events_consumed_total")
            replayed = counter(page, "hydrant_replayed_events_total")
            samples.append((now, consumed, replayed))
            if replaying and replayed > 0 and "replay_end" not in marks:
                states = [
                    s
                    for entry in http.get("/pipeline").json()["replay"].get("user", {}).values()
                    for s in entry.values()
                ]
                if states and all(s["done"] for s in states):
                    marks["replay_end"] = now
            if consumed >= total and "live_end" not in marks:
                marks["live_end"] = now
            if "live_end" in marks and (not replaying or "replay_end" in marks):
                return marks
            time.sleep(0.1)
    raise AssertionError(f"timed out: {samples[-1:]}")


def rate(samples: list[tuple[float, float, float]], begin: float, end: float, field: int) -> float:
    """Per second of ``samples``' ``field`` (1: events consumed, 2: records replayed) over [begin, end]."""
    inside = [s for s in samples if begin <= s[0] <= end]
    if len(inside) < 2:
        return float("nan")
    return (inside[-1][field] - inside[0][field]) / (inside[-1][0] - inside[0][0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=int, default=100_000)
    parser.add_argument("--live", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--share", type=float, default=0.25, help="HYDRANT_REPLAY_SHARE")
    parser.add_argument("--rate", type=float, default=0, help="HYDRANT_REPLAY_RECORDS_PER_S (0: none)")
    args = parser.parse_args()
    uid = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as tmp_name, EmbeddedBroker() as embedded:
        tmp = Path(tmp_name)
        broker = BrokerUnderTest(embedded.url, "tansu", "tansu")
        v1, v2 = tmp / "v1.yaml", tmp / "v2.yaml"
        v1.write_text(shop_pipeline_text(uid))
        v2.write_text(v1.read_text().replace("windows: [10m, 1h]}\n", "windows: [10m, 1h]}\n" + ADDED, 1))
        assert ADDED in v2.read_text()
        groups = {"base": f"hydrant-replay-base-{uid}", "replay": f"hydrant-replay-{uid}"}
        for app_id in groups.values():
            create_hydrant_topics(broker.url, v1, app_id)
        orders, clicks = shop_events(args.history, args.keys)
        preload(
            broker.bootstrap,
            [(f"users-{uid}", user_rows(args.keys)), (f"orders-{uid}", orders), (f"clicks-{uid}", clicks)],
        )
        print(f"history: {args.history:,} events over {args.keys:,} users; each group processes it on v1")
        for name, app_id in groups.items():
            worker = WorkerProcess(broker, v1, tmp / f"data-{name}", app_id, tmp / f"{name}-v1.log")
            worker.start()
            try:
                worker.wait_ready(180)
                consume(worker, args.history, replaying=False)
            finally:
                worker.stop()
        orders, clicks = shop_events(args.live, args.keys, seed=2, t0=T0 + args.history * 50)
        preload(broker.bootstrap, [(f"orders-{uid}", orders), (f"clicks-{uid}", clicks)])
        results = {}
        for name, spec in (("base", v1), ("replay", v2)):
            env = {"HYDRANT_REPLAY_SHARE": str(args.share), "HYDRANT_REPLAY_RECORDS_PER_S": str(args.rate)}
            worker = WorkerProcess(broker, spec, tmp / f"data-{name}", groups[name], tmp / f"{name}.log", env)
            worker.start()
            try:
                worker.wait_ready(180, poll=0.05)
                results[name] = consume(worker, args.live, replaying=name == "replay")  # this process's count
                if name == "replay":
                    print("\n".join(line for line in worker.log().splitlines() if " done: " in line))
            finally:
                worker.stop()
    base, replay = results["base"], results["replay"]
    base_samples, samples = base["samples"], replay["samples"]
    base_rate = rate(base_samples, base_samples[0][0], base["live_end"], 1)
    replay_start = next(t for t, _, replayed in samples if replayed > 0)
    both = (replay_start, min(replay["replay_end"], replay["live_end"]))  # live and replay at once
    during, replayed = rate(samples, *both, 1), rate(samples, *both, 2)
    total = samples[-1][2]
    print(f"(base)   live: {base_rate:,.0f} events/s (nothing to replay)")
    print(
        f"(replay) replay: {total:,.0f} records in {replay['replay_end'] - replay_start:.1f} s; while live "
        f"events were waiting ({both[1] - both[0]:.1f} s): {replayed:,.0f} records/s (share {args.share})"
    )
    print(
        f"(replay) live meanwhile: {during:,.0f} events/s = {during / base_rate:.0%} of (base) "
        f"(a drop of {1 - during / base_rate:.0%})"
    )


if __name__ == "__main__":
    main()
