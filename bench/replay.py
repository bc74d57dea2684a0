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
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

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


def consume(worker: WorkerProcess, total: float, replaying: bool) -> dict[str, float]:
    """Poll /metrics until ``total`` events were consumed (and, ``replaying``, the replay is done);
    the timings of both."""
    started = time.monotonic()
    marks: dict[str, float] = {}
    base = 0.0
    with httpx.Client(base_url=worker.url, timeout=5) as http:
        while time.monotonic() - started < 1800:
            page = http.get("/metrics").text
            consumed = counter(page, "hydrant_events_consumed_total")
            replayed = counter(page, "hydrant_replayed_events_total")
            now = time.monotonic()
            if "live_start" not in marks:
                marks["live_start"], base = now, consumed
            if replaying and replayed > 0 and "replay_start" not in marks:
                marks["replay_start"], marks["consumed_at_replay_start"] = now, consumed
            if replaying and "replay_start" in marks and "replay_end" not in marks:
                states = [
                    s
                    for entry in http.get("/pipeline").json()["replay"].get("user", {}).values()
                    for s in entry.values()
                ]
                if states and all(s["done"] for s in states):
                    marks["replay_end"], marks["consumed_at_replay_end"] = now, consumed
                    marks["replayed"] = replayed
            if consumed >= total and "live_end" not in marks:
                marks["live_end"], marks["live_events"] = now, consumed - base
            if "live_end" in marks and (not replaying or "replay_end" in marks):
                return marks
            time.sleep(0.1)
    raise AssertionError(f"timed out: {marks}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=int, default=100_000)
    parser.add_argument("--live", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--share", type=float, default=0.25, help="HYDRANT_REPLAY_SHARE")
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
            env = {"HYDRANT_REPLAY_SHARE": str(args.share)}
            worker = WorkerProcess(broker, spec, tmp / f"data-{name}", groups[name], tmp / f"{name}.log", env)
            worker.start()
            try:
                worker.wait_ready(180, poll=0.05)
                results[name] = consume(worker, args.history + args.live, replaying=name == "replay")
            finally:
                worker.stop()
    base, replay = results["base"], results["replay"]
    base_rate = base["live_events"] / (base["live_end"] - base["live_start"])
    overall = replay["live_events"] / (replay["live_end"] - replay["live_start"])
    seconds = replay["replay_end"] - replay["replay_start"]
    during = (replay["consumed_at_replay_end"] - replay["consumed_at_replay_start"]) / seconds
    print(f"(base)   live: {base_rate:,.0f} events/s (nothing to replay)")
    print(f"(replay) live: {overall:,.0f} events/s over the {args.live:,} events")
    print(
        f"(replay) replay: {replay['replayed']:,.0f} records in {seconds:.1f} s = "
        f"{replay['replayed'] / seconds:,.0f} records/s (share {args.share})"
    )
    print(
        f"(replay) live while replaying: {during:,.0f} events/s = {during / base_rate:.0%} of (base) "
        f"(a drop of {1 - during / base_rate:.0%})"
    )


if __name__ == "__main__":
    main()
