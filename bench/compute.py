"""`hydrant compute` throughput: shop events from Parquet files -> every feature of group `user`.

    .venv/bin/python bench/compute.py                      # 2,000,000 events (the target size)
    .venv/bin/python bench/compute.py --events 100000      # a smoke run
    .venv/bin/python bench/compute.py --payments           # payments: 4 keys, group card_merchant
    .venv/bin/python bench/compute.py --payments --group card

Prints events/s of the whole command (read, type, late events, bucket states, window merges, write)
as `hydrant compute` reports it (the CLI in a subprocess; Python's start and imports, ~2 s, shown
apart), and the in-process stages. Target: >= 500,000 events/s at 2,000,000 events. A figure, not a
pass/fail check.
"""

from __future__ import annotations

import argparse
import itertools
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
PIPELINE = REPO / "examples" / "shop" / "pipeline.yaml"
PAYMENTS = REPO / "examples" / "payments" / "pipeline.yaml"
T0 = 1_767_225_600_000
HOUR = 3_600_000


def make_files(directory: Path, events: int, keys: int, days: int, seed: int = 7) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    n_orders = int(events * 0.6)
    n_clicks = events - n_orders
    span = days * 24 * HOUR

    def times(n: int) -> np.ndarray:  # roughly in order, +-30 min of disorder
        return T0 + np.arange(n, dtype=np.int64) * span // max(n, 1) + rng.integers(-HOUR // 2, HOUR // 2, n)

    orders = pd.DataFrame(
        {
            "user_id": pd.Series(rng.integers(0, keys, n_orders)).map("u{:06d}".format),
            "order_id": pd.Series(np.arange(n_orders)).map("o-{}".format),
            "product": pd.Series(rng.integers(0, 500, n_orders)).map("p{}".format),
            "amount": rng.uniform(1, 300, n_orders),
            "status": rng.choice(np.array(["paid", "failed", "paid"], dtype=object), n_orders),
            "ts": times(n_orders),
        }
    )
    clicks = pd.DataFrame(
        {
            "user_id": pd.Series(rng.integers(0, keys, n_clicks)).map("u{:06d}".format),
            "page": rng.choice(np.array(list("abcdef"), dtype=object), n_clicks),
            "ts": times(n_clicks),
        }
    )
    paths = directory / "orders.parquet", directory / "clicks.parquet"
    orders.to_parquet(paths[0], index=False)
    clicks.to_parquet(paths[1], index=False)
    return paths


def make_payments(directory: Path, events: int, cards: int, days: int, seed: int = 7) -> Path:
    """Payments of ``cards`` cards at cards / 10 merchants, 5 % without a device: every event visits
    the card, merchant, device and (card, merchant) stages."""
    rng = np.random.default_rng(seed)
    span = days * 24 * HOUR
    device = pd.Series(rng.integers(0, cards, events)).map("d{:06d}".format)
    device[rng.random(events) < 0.05] = None
    payments = pd.DataFrame(
        {
            "card_id": pd.Series(rng.integers(0, cards, events)).map("c{:06d}".format),
            "merchant_id": pd.Series(rng.integers(0, max(cards // 10, 1), events)).map("m{:05d}".format),
            "device_id": device,
            "amount": rng.uniform(1, 300, events),
            "status": rng.choice(np.array(["ok", "declined", "ok"], dtype=object), events),
            "ts": T0
            + np.arange(events, dtype=np.int64) * span // max(events, 1)
            + rng.integers(-HOUR // 2, HOUR // 2, events),
        }
    )
    path = directory / "payments.parquet"
    payments.to_parquet(path, index=False)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--payments", action="store_true", help="The payments example instead of shop.")
    parser.add_argument("--group", default="card_merchant", help="With --payments: the group computed.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        at = T0 + args.days * 24 * HOUR
        out = directory / "features.parquet"
        if args.payments:
            pipeline = PAYMENTS
            files = {"payments": make_payments(directory, args.events, args.keys, args.days)}
            groups = [args.group]
        else:
            pipeline = PIPELINE
            orders, clicks = make_files(directory, args.events, args.keys, args.days)
            files = {"orders": orders, "clicks": clicks}
            groups = []
        inputs = [arg for name, path in files.items() for arg in ("--input", f"{name}={path}")]
        command = [
            sys.executable, "-m", "app.tools.cli", "compute", str(pipeline), *inputs,
            *(arg for g in groups for arg in ("--group", g)), "--at", str(at), "--out", str(out),
        ]  # fmt: skip
        started = time.perf_counter()
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            sys.exit(f"hydrant compute failed:\n{result.stderr}")
        rows = len(pd.read_parquet(out))
        own = float(re.search(r" in ([0-9.]+)s ", result.stdout).group(1))  # type: ignore[union-attr]
        print(f"{args.events:,} events, {args.keys:,} keys over {args.days} days -> {rows:,} feature rows")
        print(f"  {result.stdout.strip()}")
        print(f"  hydrant compute, files read to output written: {own:.2f}s  {args.events / own:,.0f} ev/s")
        print(f"  the process, incl. Python start and imports:   {wall:.2f}s  {args.events / wall:,.0f} ev/s")

        # In-process, without the interpreter start: where the time goes.
        from app.config.spec import load_pipeline
        from app.tools.frames import read_table
        from app.tools.offline import compute

        spec = load_pipeline(pipeline)
        marks: list[tuple[str, float]] = [("start", time.perf_counter())]
        compute(
            spec,
            files,
            read_table,
            ats=[at],
            groups=groups or None,
            progress=lambda stage: marks.append((stage, time.perf_counter())),
        )
        marks.append(("end", time.perf_counter()))
        total = marks[-1][1] - marks[0][1]
        print(f"  in process: {total:.2f}s  {args.events / total:,.0f} events/s")
        for (stage, t0), (_, t1) in itertools.pairwise(marks[1:]):
            print(f"    {stage:<20} {t1 - t0:6.2f}s")
        target = 500_000
        ratio = args.events / own / target
        print(f"  target >= {target:,} events/s at 2,000,000 events; this run: {ratio:.2f}x the target")


if __name__ == "__main__":
    main()
