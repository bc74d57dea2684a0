"""State per key at a later stage while one upstream partition lags the others (docs/features.md,
"Later stages"): a key keeps its buckets back to the lagging partition's progress, so its size grows
with the lag. The payments example's device group (count and sum, 1 h window, 10 min period: R = 6),
a key with a payment every 2 minutes from a partition at time t and from one at t - lag, applied by
the worker's own code (tables/apply.py with the stage's bound); prints the stored bytes per key
(head and bucket records, as RocksDB and the changelog hold them) once the key is in steady state.

    .venv/bin/python -m bench.skew_state
"""

from __future__ import annotations

from app.config.spec import load_pipeline
from tables.apply import apply_event, choose
from tables.key_state import KeyState
from tables.plans import group_plans
from tests.conftest import PAYMENTS

MINUTE = 60_000
T0 = 1_767_225_600_000


def bytes_per_key(lag_ms: int, hours: int = 24) -> tuple[int, int]:
    """(stored bytes, buckets) of one device key after ``hours`` of payments from two partitions,
    the second ``lag_ms`` behind the first; the stage's progress is the lagging partition's."""
    plan = group_plans(load_pipeline(PAYMENTS))["device"]
    stored: dict[bytes, bytes] = {}
    offsets = [0, 0]
    for step in range(hours * 30):
        now = T0 + lag_ms + step * 2 * MINUTE
        for p, t in enumerate((now, now - lag_ms)):
            state = KeyState(b"d1", stored.get, plan.retention)
            fields = {"device_id": "d1", "amount": 10.0, "card_id": "c", "merchant_id": "m", "status": "ok"}
            limit = plan.bucket(now - lag_ms) - plan.retention  # every upstream partition's progress
            apply_event(
                plan,
                state,
                choose(plan, "payments", fields),
                fields,
                t,
                f"payments:{p}",
                offsets[p],
                None,
                limit,
            )
            offsets[p] += 1
            for key, value in state.changes():
                if value is None:
                    stored.pop(key, None)
                else:
                    stored[key] = value
    return sum(len(k) + len(v) for k, v in stored.items()), len(stored) - 1


def main() -> None:
    print(f"{'lag':>6} {'buckets':>8} {'bytes/key':>10}")
    for hours in (0, 1, 6):
        size, buckets = bytes_per_key(hours * 3_600_000)
        print(f"{hours:>5}h {buckets:>8} {size:>10}")


if __name__ == "__main__":
    main()
