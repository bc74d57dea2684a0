"""The rebalance storm (issue 31, must-show 2): payments paced at the wall clock, a few of them spoiled
on purpose, while a seeded plan of membership changes (joins, SIGTERM leaves, SIGKILLs, one with its
data dir wiped, SIGSTOP pauses past the session timeout) runs against up to three worker processes;
then the checks: every input offset in the outputs by their ``hydrant-source-*`` headers, every key
of every group equal to ``hydrant compute``, the dead letters exactly the spoiled records.

Sizes: :data:`SHORT` by default (CI), :data:`LONG` with ``HYDRANT_STORM=long``;
``HYDRANT_STORM_CHANGES`` overrides the number of changes (0: a sanity run without any).
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import re
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pandas as pd
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from app.config.spec import load_pipeline
from app.records.keys import key_of
from app.records.partitioning import partition_for
from app.records.source import SOURCE_OFFSET, SOURCE_PARTITION, SOURCE_TOPIC
from app.tools.frames import read_table
from app.tools.offline import compute
from tests.support.kafka import Record
from tests.support.worker import WorkerProcess, _descendants

#: Longer than the bundled broker profile's 10 s session timeout (app/faust_ext/app.py TANSU_PROFILE):
#: the paused worker's partitions go to the others before it wakes up.
PAUSE_S = 14.0
SLOTS = ("w1", "w2", "w3")
#: Every kind of change at least once when the plan has room for it.
REQUIRED = ("kill_wipe", "pause", "term", "kill", "join")
FLOAT_REL = 1e-6


@dataclass(frozen=True)
class Form:
    """One size of the storm: payments over ``seconds`` with ``changes`` membership changes."""

    name: str
    payments: int
    seconds: float
    changes: int
    cards: int = 300
    merchants: int = 40
    devices: int = 150
    spoiled_share: float = 0.005
    settle_s: float = 150.0  # after the storm: all ready, lag 0, every check clean, or give up
    time_limit_s: int = 420  # per run (pytest-timeout)


SHORT = Form("short", payments=9_000, seconds=36.0, changes=7)
LONG = Form("long", payments=40_000, seconds=90.0, changes=20, settle_s=300.0, time_limit_s=900)


def form_from_env() -> Form:
    """The form ``HYDRANT_STORM`` names (``long``, else short), ``HYDRANT_STORM_CHANGES`` applied."""
    form = LONG if os.environ.get("HYDRANT_STORM") == "long" else SHORT
    changes = os.environ.get("HYDRANT_STORM_CHANGES")
    if changes is not None:
        form = Form(**{**form.__dict__, "changes": int(changes)})
    return form


# -- the workload ---------------------------------------------------------------------------------


@dataclass
class Item:
    """One record to produce: a payment (``event``, its ``ts`` set when sent) or a spoiled record
    (``raw``, with the dead-letter ``reason`` it must get)."""

    key: bytes | None
    event: dict[str, Any] | None = None
    raw: bytes | None = None
    reason: str | None = None
    partition: int = -1  # where the broker put it
    offset: int = -1

    def value(self) -> bytes | None:
        return orjson.dumps(self.event) if self.event is not None else self.raw


def spoiled(rng: random.Random, n: int, card: str) -> Item:
    """The ``n``-th spoiled record: not JSON, not an object, or without its card (the stream key)."""
    ts = int(time.time() * 1000)
    kinds: list[tuple[bytes | None, bytes, str]] = [
        (card.encode(), b'{"card_id": "' + card.encode() + b'", "amount": 12.', "decode"),
        (None, bytes(rng.getrandbits(8) for _ in range(40)), "decode"),
        (card.encode(), b'["not", "an", "object"]', "decode"),
        (b"nocard", orjson.dumps({"merchant_id": "m00", "amount": 1.5, "ts": ts}), "missing_key"),
        (card.encode(), orjson.dumps({"card_id": "", "amount": 2.5, "ts": ts}), "missing_key"),
    ]  # fmt: skip
    key, raw, reason = kinds[n % len(kinds)]
    return Item(key=key, raw=raw, reason=reason)


def make_items(form: Form, seed: int) -> list[Item]:
    """The payments in production order (``ts`` still to set) with the spoiled records among them."""
    rng = random.Random(seed)
    cards = [f"c{i:04d}" for i in range(form.cards)]
    merchants = [f"m{i:02d}" for i in range(form.merchants)]
    devices = [f"d{i:03d}" for i in range(form.devices)]
    items = []
    for _ in range(form.payments):
        card = rng.choice(cards)
        event = {
            "card_id": card,
            "merchant_id": rng.choice(merchants),
            "device_id": None if rng.random() < 0.2 else rng.choice(devices),
            "amount": round(rng.uniform(1, 900), 2),
            "status": "declined" if rng.random() < 0.08 else "ok",
            "ts": 0,
        }
        items.append(Item(key=card.encode(), event=event))
    for n in range(int(form.payments * form.spoiled_share)):
        items.insert(rng.randrange(len(items) + 1), spoiled(rng, n, rng.choice(cards)))
    return items


def merchant_rows(form: Form) -> list[tuple[bytes | None, bytes | None]]:
    """The merchants lookup rows, produced before the workers start."""
    return [
        (f"m{i:02d}".encode(), orjson.dumps({"mcc": str(5000 + i), "country": ["FR", "DE", "US"][i % 3]}))
        for i in range(form.merchants)
    ]


class Producer(threading.Thread):
    """Produces the items over ``seconds`` in 50 ms ticks, each payment's ``ts`` the wall clock when
    sent (strictly increasing, so no two payments tie on time); records where each one landed."""

    def __init__(self, bootstrap: str, topic: str, items: list[Item], seconds: float) -> None:
        super().__init__(name="storm-producer", daemon=True)
        self.bootstrap, self.topic, self.items, self.seconds = bootstrap, topic, items, seconds
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._produce())
        except BaseException as exc:  # reported by the test
            self.error = exc

    async def _produce(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5, acks=1)
        await producer.start()
        try:
            started = time.monotonic()
            last_ts = 0
            total = len(self.items)
            while self.sent < total:
                elapsed = time.monotonic() - started
                target = min(total, max(self.sent + 1, int(total * elapsed / self.seconds)))
                batch = self.items[self.sent : target]
                futures = []
                for item in batch:
                    if item.event is not None:
                        last_ts = max(int(time.time() * 1000), last_ts + 1)
                        item.event["ts"] = last_ts
                    futures.append(await producer.send(self.topic, item.value(), key=item.key))
                for item, meta in zip(batch, await asyncio.gather(*futures), strict=True):
                    item.partition, item.offset = meta.partition, meta.offset
                self.sent = target
                await asyncio.sleep(max(0.0, started + elapsed + 0.05 - time.monotonic()))
        finally:
            await producer.stop()


# -- the membership plan --------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One membership change at ``at`` seconds after production starts."""

    at: float
    kind: str  # join, term, kill, kill_wipe, pause (continued PAUSE_S later)
    slot: str


def plan_changes(seed: int, count: int, seconds: float) -> list[Change]:
    """``count`` changes spread over ``seconds``, in a seeded random order, each feasible when it comes:
    1-3 workers running (a paused one does not count), one pause at a time, a join only into a slot
    that is down (the wiped slot first). Starts from three running workers. Every kind of change is
    in it when ``count`` allows (the first seed derived from ``seed`` whose plan has them all)."""
    for attempt in range(100):
        plan = _plan(random.Random(seed + 7919 * attempt), count, seconds)
        if {c.kind for c in plan} >= set(REQUIRED[:count]):
            return plan
    raise AssertionError(f"no plan of {count} changes with every kind from seed {seed}")


def _plan(rng: random.Random, count: int, seconds: float) -> list[Change]:
    extra = max(0, count - len(REQUIRED))
    wanted = list(REQUIRED) + [rng.choice(("join", "term", "kill", "pause")) for _ in range(extra)]
    rng.shuffle(wanted)
    wanted = wanted[:count]
    state = dict.fromkeys(SLOTS, "running")
    paused_until: dict[str, float] = {}
    wiped: str | None = None
    spacing = seconds / (count + 1)
    plan: list[Change] = []
    for i in range(count):
        at = round(spacing * (i + 1) + rng.uniform(-0.25, 0.25) * spacing, 2)
        for slot, until in list(paused_until.items()):
            if until <= at:
                state[slot] = "running"
                del paused_until[slot]
        running = [s for s in SLOTS if state[s] == "running"]
        down = [s for s in SLOTS if state[s] == "down"]

        rest = wanted[i:]
        pick = next(
            (
                j
                for j, k in enumerate(rest)
                if _feasible(k, len(running), bool(down), bool(paused_until), wiped)
            ),
            None,
        )
        if pick is None:
            kind = "join" if down else "term"
            wanted.insert(i, kind)  # what was wanted here may fit later
        else:
            kind = rest[pick]
            wanted[i], wanted[i + pick] = wanted[i + pick], wanted[i]
        if kind == "join":
            slot = wiped if wiped in down else rng.choice(down)
            if slot == wiped:
                wiped = "restarted"
            state[slot] = "running"
        else:
            slot = rng.choice(running)
            if kind == "pause":
                state[slot] = "paused"
                paused_until[slot] = at + PAUSE_S
            else:
                state[slot] = "down"
                if kind == "kill_wipe":
                    wiped = slot
        plan.append(Change(at, kind, slot))
    return plan


def _feasible(kind: str, running: int, down: bool, pausing: bool, wiped: str | None) -> bool:
    """Whether ``kind`` can come next: a slot free for a join; a worker left running after a leave
    or a pause; one pause at a time; one wipe."""
    if kind == "join":
        return down
    if kind == "pause":
        return running >= 2 and not pausing
    return running >= 2 and (kind != "kill_wipe" or wiped is None)


@dataclass
class Slot:
    """One of the three worker places: its data dir survives its processes unless wiped."""

    name: str
    data_dir: Path
    worker: WorkerProcess | None = None  # None: down by the plan
    generation: int = 0
    stopping: threading.Thread | None = None
    frozen: list[int] = field(default_factory=list)  # pids stopped by SIGSTOP
    crashes: int = 0  # exits nobody asked for (the restart backoff grows with them)
    restart_at: float = 0.0


class Cluster:
    """The worker processes of one storm, by slot; ``start`` is the test's ``workers`` fixture. Like
    Kubernetes, it restarts a worker that exits by itself (backoff 1, 2, 4... s, at most 15 s)."""

    def __init__(
        self,
        start: Callable[..., WorkerProcess],
        pipeline: Path,
        root: Path,
        env: dict[str, str],
        log: Callable[[str], None],
    ) -> None:
        self.start, self.pipeline, self.env, self.log = start, pipeline, env, log
        self.slots = {name: Slot(name, root / f"data-{name}") for name in SLOTS}
        self.log_paths: list[Path] = []
        self.done: list[str] = []
        self.exits: list[str] = []  # "<worker> exited <code>", each restarted

    def join(self, slot: str) -> None:
        """Start a worker in ``slot`` (after its previous process has ended)."""
        s = self.slots[slot]
        if s.stopping is not None:
            s.stopping.join()
            s.stopping = None
        assert s.worker is None or s.worker.proc is None or s.worker.proc.poll() is not None
        s.generation += 1
        s.worker = self.start(self.pipeline, name=f"{slot}-{s.generation}", data_dir=s.data_dir, **self.env)
        self.log_paths.append(s.worker.log_path)

    def _live(self, slot: str) -> WorkerProcess | None:
        worker = self.slots[slot].worker
        if worker is None or worker.proc is None or worker.proc.poll() is not None:
            return None
        return worker

    def term(self, slot: str) -> bool:
        """SIGTERM: a graceful leave, waited for in the background."""
        s, worker = self.slots[slot], self._live(slot)
        s.worker = None
        if worker is None:
            return False
        s.stopping = threading.Thread(target=worker.stop, kwargs={"timeout": 60}, daemon=True)
        s.stopping.start()
        return True

    def kill(self, slot: str, wipe: bool = False) -> bool:
        """SIGKILL; with ``wipe``, the data dir is gone too (state comes back from the changelogs)."""
        s, worker = self.slots[slot], self._live(slot)
        s.worker = None
        if worker is not None:
            worker.stop(sig=signal.SIGKILL, timeout=15)
        if wipe:
            shutil.rmtree(s.data_dir, ignore_errors=True)
        return worker is not None

    def pause(self, slot: str) -> bool:
        """SIGSTOP the worker and every process below it (a frozen machine)."""
        s, worker = self.slots[slot], self._live(slot)
        if worker is None or worker.proc is None:
            return False
        s.frozen = [worker.proc.pid, *_descendants(worker.proc.pid)]
        for p in s.frozen:
            _signal(p, signal.SIGSTOP)
        return True

    def resume(self, slot: str) -> None:
        """SIGCONT what :meth:`pause` stopped."""
        s = self.slots[slot]
        for p in s.frozen:
            _signal(p, signal.SIGCONT)
        s.frozen = []

    def apply(self, change: Change) -> bool:
        """Make ``change``; False when its worker was not running (it had exited by itself)."""
        if change.kind == "join":
            self.join(change.slot)
            return True
        if change.kind == "term":
            return self.term(change.slot)
        if change.kind in ("kill", "kill_wipe"):
            return self.kill(change.slot, wipe=change.kind == "kill_wipe")
        assert change.kind == "pause", change
        return self.pause(change.slot)

    def supervise(self) -> None:
        """Restart every worker that exited although the plan has it running, after its backoff."""
        now = time.monotonic()
        for s in self.slots.values():
            worker = s.worker
            if worker is None or worker.proc is None or s.frozen or worker.proc.poll() is None:
                continue
            if not s.restart_at:
                s.crashes += 1
                s.restart_at = now + min(15.0, 2.0 ** (s.crashes - 1))
                self.exits.append(f"{worker.log_path.stem} exited {worker.proc.returncode}")
                self.log(f"{worker.log_path.stem} exited by itself ({worker.proc.returncode}); restart soon")
            if now >= s.restart_at:
                s.worker, s.restart_at = None, 0.0
                self.join(s.name)

    def run_plan(self, plan: list[Change], t0: float) -> None:
        """Each change at its time (and each paused worker continued PAUSE_S later), supervising."""
        steps: list[tuple[float, int, Change | None, str]] = []
        for i, change in enumerate(plan):
            steps.append((change.at, i, change, change.slot))
            if change.kind == "pause":
                steps.append((change.at + PAUSE_S, i, None, change.slot))
        for at, _, step, slot in sorted(steps, key=lambda s: (s[0], s[1])):
            while time.monotonic() < t0 + at:
                self.supervise()
                time.sleep(min(0.25, max(0.0, t0 + at - time.monotonic())))
            late = time.monotonic() - t0 - at
            if step is None:
                self.resume(slot)
                self.log(f"t={at:6.1f}s (+{late:.1f}) SIGCONT {slot}")
                continue
            begun = time.monotonic()
            if self.apply(step):
                self.done.append(f"{step.kind} {step.slot}")
                took = time.monotonic() - begun
                self.log(
                    f"t={at:6.1f}s (+{late:.1f}) {step.kind} {step.slot}"
                    + (f", took {took:.1f}s" if took > 1 else "")
                )
            else:
                self.log(f"t={at:6.1f}s (+{late:.1f}) {step.kind} {step.slot} skipped: it was not running")

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds``, supervising."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.supervise()
            time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))

    def running(self) -> list[WorkerProcess]:
        """The workers whose processes run (not stopping, not paused)."""
        return [
            s.worker
            for s in self.slots.values()
            if s.worker is not None
            and s.worker.proc is not None
            and s.worker.proc.poll() is None
            and not s.frozen
        ]

    def fill(self) -> None:
        """Wait for stopping workers to end and start one in every slot the plan left down."""
        for s in self.slots.values():
            if s.stopping is not None:
                s.stopping.join()
                s.stopping = None
            if s.frozen:
                self.resume(s.name)
            if s.worker is None:
                self.join(s.name)

    def release(self) -> None:
        """Continue any paused worker (the fixture then stops them all)."""
        for s in self.slots.values():
            if s.frozen:
                self.resume(s.name)
            if s.stopping is not None:
                s.stopping.join(70)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# -- reading the broker and the workers ----------------------------------------------------------


async def read_topic(bootstrap: str, topic: str, timeout: float = 60.0) -> list[Record]:
    """Every record of ``topic`` up to its high watermark (as fetch responses give it)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None, fetch_max_wait_ms=50
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        partitions = consumer.partitions_for_topic(topic)
        while not partitions:
            if time.monotonic() > deadline:
                raise AssertionError(f"topic {topic} not found")
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.2)
            partitions = consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[Record] = []
        finished: set[TopicPartition] = set()
        while len(finished) < len(tps):
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}: not read to its end within {timeout}s")
            batch = await consumer.getmany(timeout_ms=200, max_records=50_000)
            for messages in batch.values():
                out += [
                    Record(m.topic, m.partition, m.offset, m.key, m.value, dict(m.headers or ()), m.timestamp)
                    for m in messages
                ]
            for tp in tps:
                highwater = consumer.highwater(tp)
                if highwater is not None and await consumer.position(tp) >= highwater:
                    finished.add(tp)
        return out
    finally:
        await consumer.stop()


def source_of(record: Record) -> tuple[str, int, int] | None:
    """(topic, partition, offset) of the input record an output or dead letter came from."""
    try:
        h = record.headers
        return h[SOURCE_TOPIC].decode(), int(h[SOURCE_PARTITION]), int(h[SOURCE_OFFSET])
    except (KeyError, ValueError):
        return None


@dataclass
class Coverage:
    """The outputs against the input offsets."""

    outputs: int = 0
    duplicates: int = 0  # outputs beyond the first of their input record
    missing: list[tuple[int, int]] = field(default_factory=list)  # (partition, offset) without output
    unexpected: list[str] = field(default_factory=list)  # outputs of no good input record
    wrong: list[str] = field(default_factory=list)  # outputs whose row is not their source's payment


def coverage(outputs: list[Record], topic: str, good: Mapping[tuple[int, int], Item]) -> Coverage:
    """Which good input records have at least one output, checking each output's row (card, ts)
    against the payment its headers name."""
    report = Coverage(outputs=len(outputs))
    seen: Counter[tuple[int, int]] = Counter()
    for record in outputs:
        source = source_of(record)
        if source is None or source[0] != topic or (source[1], source[2]) not in good:
            if len(report.unexpected) < 1000:
                report.unexpected.append(f"{record.partition}/{record.offset} from {source}")
            continue
        position = (source[1], source[2])
        seen[position] += 1
        if seen[position] == 1:
            event = good[position].event
            row = record.json()
            assert event is not None
            if (row.get("card_id"), row.get("ts")) != (event["card_id"], event["ts"]):
                report.wrong.append(f"{position}: {row.get('card_id')}@{row.get('ts')}")
    report.duplicates = sum(n - 1 for n in seen.values())
    report.missing = sorted(set(good) - set(seen))
    return report


@dataclass
class DeadLetters:
    """The dead-letter topic against the spoiled records."""

    records: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)  # not a spoiled record, or the wrong reason


def dead_letters(records: list[Record], topic: str, bad: Mapping[tuple[int, int], Item]) -> DeadLetters:
    """Each spoiled record dead-lettered (at least once) with its reason, and nothing else."""
    report = DeadLetters(records=len(records))
    seen: Counter[tuple[int, int]] = Counter()
    for record in records:
        reason = record.headers.get("hydrant-reason", b"?").decode()
        report.by_reason[reason] += 1
        source = source_of(record)
        position = (source[1], source[2]) if source is not None and source[0] == topic else None
        item = bad.get(position) if position is not None else None
        if position is None or item is None or item.reason != reason:
            error = record.headers.get("hydrant-error", b"").decode(errors="replace")[:120]
            report.unexpected.append(f"{source} {reason}: {error}")
            continue
        seen[position] += 1
    report.duplicates = sum(n - 1 for n in seen.values())
    report.missing = [f"{p}/{o} {bad[p, o].reason}" for p, o in sorted(set(bad) - set(seen))]
    return report


def reference(
    pipeline: Path, payments: list[dict[str, Any]], at: int, where: Path
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per group, per key, the features at ``at`` from ``hydrant compute`` over the payments in
    production order (each key's order on its input partition)."""
    spec = load_pipeline(pipeline)
    path = where / "payments.parquet"
    pd.DataFrame(payments).to_parquet(path, index=False)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for group, gs in spec.features.items():
        frame, _ = compute(spec, {"payments": path}, read_table, ats=[at], groups=[group])
        names = gs.feature_names()
        rows = frame.to_dict("records")
        out[group] = {str(row["key"]): {n: plain(row[n]) for n in names} for row in rows}
        expected = {key_of(p, gs.key_fields) for p in payments} - {None}
        assert set(out[group]) == expected, f"{group}: compute's keys differ from the payments' keys"
    return out


def plain(value: Any) -> Any:
    """A plain Python value (numpy scalars unwrapped, NaN and NA as None)."""
    if value is None or value is pd.NA:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def same(online: Any, offline: Any) -> bool:
    """Counts, distinct counts and maxima exactly; sums and averages to :data:`FLOAT_REL` (the
    workers add a hop topic's events in the order they arrive)."""
    if online is None or offline is None:
        return online is None and offline is None
    if isinstance(online, float) or isinstance(offline, float):
        return math.isclose(float(online), float(offline), rel_tol=FLOAT_REL, abs_tol=1e-9)
    return bool(online == offline)


@dataclass
class Features:
    """The workers' answers against the reference."""

    differing: int = 0  # (worker, group, key) answers that differ, or that a worker did not give
    problems: list[str] = field(default_factory=list)
    #: Per group, per table partition of the key: [keys that differ, online - offline of the group's
    #: first count], from the first worker's answers (any worker answers any key).
    by_partition: dict[str, dict[int, list[int]]] = field(default_factory=dict)


def feature_problems(
    urls: list[str], truth: Mapping[str, Mapping[str, Mapping[str, Any]]], at: int
) -> Features:
    """Every key of every group from every worker (POST batches of 1,000) and each group's key set
    from a scan, against the reference."""
    report = Features()
    bad: set[tuple[str, str, str]] = set()

    def differs(url: str, group: str, key: str, problem: str, delta: int = 0) -> None:
        report.problems.append(f"{url} {group} {key}: {problem}")
        if (url, group, key) not in bad and url == urls[0] and key:
            cell = report.by_partition.setdefault(group, {}).setdefault(
                partition_for(key.encode(), 4), [0, 0]
            )
            cell[0] += 1
            cell[1] += delta
        bad.add((url, group, key))

    with httpx.Client(timeout=60) as client:
        for group, expected in truth.items():
            keys = sorted(expected)
            count = next(name for name in next(iter(expected.values())) if "_count_" in name)
            params: dict[str, str | int] = {"format": "json", "at": at, "columns": count, "limit": 1_000_000}
            try:
                scanned = client.get(f"{urls[0]}/tables/{group}", params=params)
                body = scanned.json() if scanned.status_code == 200 else None
            except httpx.HTTPError as exc:
                scanned, body = None, None
                differs("scan", group, "", repr(exc))
            got = {str(row["key"]) for row in body["rows"]} if body is not None else None
            if scanned is not None and body is None:
                differs("scan", group, "", f"HTTP {scanned.status_code} {scanned.text[:200]}")
            elif body is not None and (body.get("truncated") or body.get("skipped")):
                differs(
                    "scan", group, "", f"truncated {body.get('truncated')}, skipped {body.get('skipped')}"
                )
            elif got is not None and got != set(keys):
                missing, extra = sorted(set(keys) - got), sorted(got - set(keys))
                differs(
                    "scan",
                    group,
                    "",
                    f"{len(got)} keys, want {len(keys)}: missing {missing[:5]}, extra {extra[:5]}",
                )
            for url in urls:
                for i in range(0, len(keys), 1000):
                    batch = keys[i : i + 1000]
                    try:
                        answer = client.post(f"{url}/features/{group}", json={"keys": batch, "at": at})
                    except httpx.HTTPError as exc:
                        for key in batch:
                            differs(url, group, key, repr(exc))
                        continue
                    if answer.status_code != 200:
                        for key in batch:
                            differs(url, group, key, f"HTTP {answer.status_code} {answer.text[:200]}")
                        continue
                    for result in answer.json()["results"]:
                        key, want = result["key"], expected[result["key"]]
                        if not result.get("found") or "features" not in result:
                            differs(url, group, key, str(result), -int(want[count]))
                            continue
                        features = result["features"]
                        delta = int(features.get(count) or 0) - int(want[count])
                        for name, value in want.items():
                            if not same(features.get(name), value):
                                differs(
                                    url,
                                    group,
                                    key,
                                    f"{name}: online {features.get(name)!r}, offline {value!r}",
                                    delta,
                                )
    report.differing = len(bad)
    return report


def hop_gaps(
    bootstrap: str, hops: Mapping[str, tuple[str, ...]], topic: str, good: Mapping[tuple[int, int], Item]
) -> dict[str, int]:
    """Per hop topic (its key fields in ``hops``), how many good payments with that key have no record
    on it: the events the first stage never sent on."""
    out = {}
    for hop, fields in hops.items():
        expected = {
            p for p, item in good.items() if item.event is not None and key_of(item.event, fields) is not None
        }
        sources = {source_of(r) for r in asyncio.run(read_topic(bootstrap, hop))}
        out[hop] = len(expected - {(s[1], s[2]) for s in sources if s is not None and s[0] == topic})
    return out


def where_missing(
    bootstrap: str,
    group: str,
    hops: Mapping[str, tuple[str, ...]],
    topic: str,
    missing: list[tuple[int, int]],
) -> str:
    """For each payment without an output (at most 10), its records on each hop topic (partition and
    offset) and the group's committed offset of those partitions: where it stopped, and whether the
    group committed past it."""
    wanted = set(missing[:10])
    found: dict[tuple[int, int], list[tuple[str, int, int]]] = {m: [] for m in wanted}
    for hop in hops:
        for r in asyncio.run(read_topic(bootstrap, hop)):
            source = source_of(r)
            if source is not None and source[0] == topic and (source[1], source[2]) in wanted:
                found[(source[1], source[2])].append((hop, r.partition, r.offset))
    partitions = sorted({TopicPartition(hop, p) for places in found.values() for hop, p, _ in places})

    async def committed() -> dict[Any, Any]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            return dict(await admin.list_consumer_group_offsets(group, partitions=partitions))
        finally:
            await admin.close()

    try:
        offsets = {tp: meta.offset for tp, meta in asyncio.run(committed()).items()}
    except Exception as exc:  # what the report can say without them
        offsets = {}
        print(f"committed offsets unreadable: {exc!r}")
    lines = []
    for (partition, offset), places in sorted(found.items()):
        hops_text = ", ".join(
            f"{hop.rsplit('-by-', 1)[-1]} {p}@{o} (committed {offsets.get(TopicPartition(hop, p), '?')})"
            for hop, p, o in places
        )
        lines.append(f"  {partition}:{offset} -> {hops_text or 'no hop record'}")
    return "where the payments without an output stopped:\n" + "\n".join(lines)


def consumer_lag(workers: list[WorkerProcess], topics: set[str]) -> tuple[float, set[tuple[str, int]]]:
    """(summed lag, partitions reported) of ``topics`` over the workers' ``hydrant_consumer_lag``."""
    total, assigned = 0.0, set()
    for worker in workers:
        text = worker.get("/metrics").text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "hydrant_consumer_lag" and sample.labels.get("topic") in topics:
                    total += sample.value
                    assigned.add((sample.labels["topic"], int(sample.labels["partition"])))
    return total, assigned


NOTEWORTHY = ("ERROR", "WARNING", "Traceback", "No current assignment", "CRITICAL")
#: Noise of every rebalance, left out of the lines shown (still counted).
ROUTINE = ("dead letter", "Heartbeat failed for group", "OffsetCommit failed for group")


def log_lines(paths: list[Path], limit: int = 30) -> tuple[Counter[str], list[str]]:
    """Per pattern, how many lines of the workers' logs match (dead letters left out: they are the
    spoiled records), and the distinct messages among them (numbers masked, routine ones left out),
    each with how often and in which log first, at most ``limit``."""
    counts: Counter[str] = Counter()
    seen: dict[str, list[Any]] = {}
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if "dead letter" in line:
                continue
            hits = [p for p in NOTEWORTHY if p in line]
            if not hits:
                continue
            counts.update(hits)
            if any(r in line for r in ROUTINE):
                continue
            message = re.sub(r"\d+", "#", line.split(" ", 2)[-1])[:200]
            entry = seen.setdefault(message, [0, f"{path.stem}: {line[:300]}"])
            entry[0] += 1
    lines = [f"{n}x {first}" for n, first in seen.values()]
    return counts, lines[:limit]


def group_view(bootstrap: str, group: str, workers: Mapping[Path, bool]) -> str:
    """The consumer group as the broker describes it (state, members), each member named after the
    worker whose log shows it joining with that id (``workers``: log path -> still running)."""
    owners: dict[str, str] = {}
    for path, running in workers.items():
        text = path.read_text(errors="replace") if path.exists() else ""
        for member in re.findall(r"with member_id (\S+)", text):
            owners[member] = f"{path.stem}, {'running' if running else 'gone'}"

    async def describe() -> Any:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            return [r.to_object() for r in await admin.describe_consumer_groups([group])]
        finally:
            await admin.close()

    try:
        answers = asyncio.run(describe())
    except Exception as exc:  # a diagnostic: say why it is missing
        return f"group {group}: not described ({exc!r})"
    parts = []
    for answer in answers:
        for g in answer["groups"]:
            members = [
                f"{m['member_id'][-12:]} ({owners.get(m['member_id'], 'unknown')})" for m in g["members"]
            ]
            parts.append(
                f"group {g['group']}: state {g['state']}, error {g['error_code']}, members {members}"
            )
    return "; ".join(parts)


def readiness(workers: list[WorkerProcess]) -> list[str]:
    """Each worker's /readyz answer (why it is not ready), by log name."""
    out = []
    for worker in workers:
        try:
            answer = worker.get("/readyz")
            out.append(f"{worker.log_path.stem}: {answer.status_code} {answer.text[:300]}")
        except httpx.HTTPError as exc:
            out.append(f"{worker.log_path.stem}: {exc!r}")
    return out
