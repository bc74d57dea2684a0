"""Per-event cost of a window-state update: windows [1h] vs [1h, 24h, 7d] at period 10m, and each op.

Runs the worker's update path (tables/apply.py: choose + apply_event per event, one coalesced
write of the changed records per key per batch) against a dict standing in for the RocksDB table,
so the figure is the state logic's own cost, without broker or disk. Prints events/s, records and
bytes written per event, and the ratio of the two configurations (target: <= 1.2).

With --ops: the shop's spend aggregation (count, sum, avg, min, max, stddev over [1h, 24h, 7d]) as
the baseline, then the same plus one more aggregation of each op (distinct, last_n, top_k over the
product, percentile over the amount; same windows): µs per event, the added cost and the ratio to
the baseline, for --keys keys (small buckets, as in the shop) and for one hot key (--hot-events in
one day: ~700 values per bucket, so percentile runs its t-digests); and spend with a lifetime window
added (each expiring bucket merged into the key's roll-up).

    .venv/bin/python bench/window_update.py [--events 200000] [--keys 2000] [--days 10] [--ops]
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
  orders:
    topic: orders
    key: user_id
    time: ts
    fields: {{user_id: str, amount: float, product: str, ts: int}}
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
{extra}"""
#: One more aggregation per op (--ops), beside the baseline's.
OP_AGGREGATIONS = {
    "distinct": "{name: p, stream: orders, field: product, ops: [distinct], windows: [1h, 24h, 7d]}",
    "last_n": "{name: p, stream: orders, field: product, ops: [last_n], n: 10, windows: [1h, 24h, 7d]}",
    "top_k": "{name: p, stream: orders, field: product, ops: [top_k], k: 5, windows: [1h, 24h, 7d]}",
    "percentile": "{name: a, stream: orders, field: amount, ops: [percentile], quantiles: [0.5, 0.9, 0.99], "
    "windows: [1h, 24h, 7d]}",
}


LABELS = {"baseline": "spend (6 ops)", "lifetime": "spend, + lifetime"}


def plan_for(windows: str, extra: str = "") -> GroupPlan:
    more = f"      - {extra}\n" if extra else ""
    return group_plans(parse_pipeline(SPEC.format(windows=windows, extra=more)))["user"]


def make_events(n: int, keys: int, days: int, seed: int = 1) -> list[tuple[bytes, int, dict[str, object]]]:
    rng = random.Random(seed)
    span = days * 86_400_000
    t0 = 1_767_225_600_000
    out = []
    for i in range(n):
        key = f"u{rng.randrange(keys)}"
        ts = t0 + i * span // n + rng.randint(-600_000, 600_000)
        product = f"sku-{int(rng.paretovariate(1.1)) % 3000}"  # skewed: a few products sell most
        out.append(
            (key.encode(), ts, {"user_id": key, "amount": rng.uniform(1, 100), "product": product, "ts": ts})
        )
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
    parser.add_argument("--ops", action="store_true", help="the cost of each op instead of windows")
    parser.add_argument("--hot-events", type=int, default=100_000, help="--ops: events of the one hot key")
    args = parser.parse_args()
    if args.ops:
        per_op(args)
        return
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


def per_op(args: argparse.Namespace) -> None:
    """--ops: the baseline and baseline + one aggregation of each op, interleaved, best of --repeat."""
    plans = {"baseline": plan_for("[1h, 24h, 7d]")}
    plans.update({op: plan_for("[1h, 24h, 7d]", extra) for op, extra in OP_AGGREGATIONS.items()})
    plans["lifetime"] = plan_for("[1h, 24h, 7d, lifetime]")  # spend's 6 ops, rolled up as buckets expire
    loads = {
        f"{args.keys:,} keys, {args.days} days": make_events(args.events, args.keys, args.days),
        "1 hot key, 1 day": make_events(args.hot_events, 1, 1),
    }
    for load, events in loads.items():
        best: dict[str, float] = {}
        written: dict[str, int] = {}
        for _ in range(args.repeat):
            for name, plan in plans.items():
                seconds, _, size = run(plan, events)
                best[name] = min(seconds, best.get(name, seconds))
                written[name] = size
        base = best["baseline"] / len(events) * 1e6
        print(f"{len(events):,} events, {load}, period 10m, windows [1h, 24h, 7d], batches of 2000")
        print(f"{'aggregations':<22}{'µs/event':>10}{'added µs':>10}{'ratio':>8}{'bytes/event':>13}")
        for name, seconds in best.items():
            cost = seconds / len(events) * 1e6
            label = LABELS.get(name, f"spend + {name}")
            print(
                f"{label:<22}{cost:>10.2f}{cost - base:>10.2f}{cost / base:>8.2f}"
                f"{written[name] / len(events):>13.0f}"
            )
        print()


if __name__ == "__main__":
    main()
