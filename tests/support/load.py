"""HTTP lookup load from a thread: what clients see while workers crash, join and leave."""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass, field

import httpx

from tests.support.checks import mismatches


@dataclass
class Load:
    """Closed-loop lookups (single GETs and 25-key batches) from one thread, tagged by phase.
    With ``check`` every 200 answer is compared with ``expected`` (the state must be final); without,
    only statuses are counted (during ingest, values move)."""

    url: str
    expected: dict[str, dict[str, object]]
    at: int
    check: bool = True
    phase: str = "one worker"
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        rng = random.Random(3)
        keys = sorted(self.expected)
        with httpx.Client(timeout=15) as client:
            while not self.stop.is_set():
                phase = self.phase
                try:
                    if rng.random() < 0.5:
                        key = rng.choice(keys)
                        answer = client.get(f"{self.url}/features/user/{key}", params={"at": self.at})
                        found = {key: answer.json().get("features")} if answer.status_code == 200 else {}
                    else:
                        batch = rng.sample(keys, 25)
                        answer = client.post(f"{self.url}/features/user", json={"keys": batch, "at": self.at})
                        results = answer.json().get("results", []) if answer.status_code == 200 else []
                        found = {r["key"]: r.get("features") for r in results}
                        if answer.status_code == 200 and [r["key"] for r in results] != batch:
                            self.wrong.append(f"{phase}: batch answered out of order")
                except httpx.HTTPError as exc:
                    self.failures.append(f"{phase}: {exc!r}")
                    continue
                self.statuses[(phase, answer.status_code)] += 1
                if not self.check:
                    continue
                for key, features in found.items():
                    problems = mismatches(features or {}, self.expected[key])
                    self.wrong += [f"{phase} {key}: {p}" for p in problems[:3]]

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        return thread

    def statuses_seen(self) -> set[int]:
        return {status for _, status in self.statuses}
