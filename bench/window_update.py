"""Per-event cost of a window-state update: windows [1h] vs [1h, 24h, 7d] at period 10m.

Runs the worker's update path (tables/apply.py: choose + apply_event per event, one coalesced
write of the changed records per key per batch) against a dict standing in for the RocksDB table,
so the figure is the state logic's own cost, without broker or disk. Prints events/s, records and
bytes written per event, and the ratio of the two configurations (target: <= 1.2).

    .venv/bin/python bench/window_update.py [--events 200000] [--keys 2000] [--days 10]
"""

from __future__ import annotations

import argparse
import random
import time

from app.config.spec import parse_pipeline
from tables.apply import apply_event, choose
from tables.key_state import KeyState
from tables.plans import GroupPlan, group_plans

SPEC = """
name: bench
streams:
  orders: {{topic: orders, key: user_id, time: ts, fields: {{user_id: str, amount: float, ts: int}}}}
features:
  user:
    key: user_id
    period: 10m
    aggregations:
      - name: spend
        stream: orders
        field: amount
        ops: [count, sum, avg, min, max, stddev]
        windows: {windows}
"""


def plan_for(windows: str) -> GroupPlan:
    return group_plans(parse_pipeline(SPEC.format(windows=windows)))["user"]


def make_events(n: int, keys: int, days: int, seed: int = 1) -> list[tuple[bytes, int, dict[str, object]]]:
    rng = random.Random(seed)
    span = days * 86_400_000
    t0 = 1_767_225_600_000
    out = []
    for i in range(n):
        key = f"u{rng.randrange(keys)}"
        ts = t0 + i * span // n + rng.randint(-600_000, 600_000)
        out.append((key.encode(), ts, {"user_id": key, "amount": rng.uniform(1, 100), "ts": ts}))
    return out


def run(
    plan: GroupPlan, events: list[tuple[bytes, int, dict[str, object]]], batch: int = 2000
) -> tuple[float, int, int]:
    store: dict[bytes, bytes] = {}
    records = written = 0
    started = time.perf_counter()
    for begin in range(0, len(events), batch):
        states: dict[bytes, KeyState] = {}
        for offset, (key, ts, fields) in enumerate(events[begin : begin + batch], start=begin):
            state = states.get(key)
            if state is None:
                state = states[key] = KeyState(key, store.get, plan.retention)
            apply_event(plan, state, choose(plan, "orders", fields), fields, ts, "orders:0", offset)
        for state in states.values():
            for record_key, value in state.changes():
                records += 1
                if value is None:
                    store.pop(record_key, None)
                else:
                    store[record_key] = value
                    written += len(value)
    return time.perf_counter() - started, records, written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=2_000)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    events = make_events(args.events, args.keys, args.days)
    configs = {"[1h]": plan_for("[1h]"), "[1h, 24h, 7d]": plan_for("[1h, 24h, 7d]")}
    results: dict[str, tuple[float, int, int]] = {}
    for _ in range(args.repeat):  # interleaved runs, medians: the machine is shared and noisy
        for name, plan in configs.items():
            seconds, records, written = run(plan, events)
            prev = results.get(name)
            results[name] = (min(seconds, prev[0]) if prev else seconds, records, written)
    print(
        f"{args.events:,} events, {args.keys:,} keys, event time over {args.days} days, "
        "period 10m, batches of 2000"
    )
    print(f"{'windows':<16}{'events/s':>12}{'µs/event':>10}{'records/event':>15}{'bytes/event':>13}")
    for name, (seconds, records, written) in results.items():
        print(
            f"{name:<16}{args.events / seconds:>12,.0f}{seconds / args.events * 1e6:>10.2f}"
            f"{records / args.events:>15.3f}{written / args.events:>13.0f}"
        )
    ratio = results["[1h, 24h, 7d]"][0] / results["[1h]"][0]
    print(f"cost ratio [1h, 24h, 7d] / [1h] = {ratio:.2f}  (target <= 1.2)")


if __name__ == "__main__":
    main()
