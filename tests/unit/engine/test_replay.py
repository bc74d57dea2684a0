"""app/engine/replay.py's Replayer across rebalances, on plain objects (no broker, no Faust): workers
over RdictTables whose changelogs are one shared producer's records (a worker taking a partition over
recovers it from them), and a history of the shop's orders and clicks read in small chunks. A step
under way when the partitions are revoked writes nothing; a partition resumes from its table's
progress record on the same or another worker; the state ends as an uninterrupted replay leaves it
(each event applied once); `running` and /pipeline name only the jobs a worker runs."""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.api.context import ApiContext
from app.api.pipeline import replay_progress
from app.api.placement import Placement
from app.config.routing import hop_topic
from app.config.spec import load_pipeline
from app.engine import replay
from app.engine.batch import StreamEngine, stream_routes
from app.engine.helpers import HelperPool
from app.engine.replay import Replayer
from app.engine.shards import BatchWork
from app.metrics import REPLAY_LEFT
from app.records.partitioning import partition_for
from app.records.source import hop_headers
from tables.registry import StateTables
from tables.replay import JOB_KEY, ReplayJob, incomplete_features
from tests.conftest import SHOP
from tests.support.engine import GROUP_ID, PARTITIONS, T0, FakeIO, FakeKafkaProducer, Record
from tests.support.tables import RdictTable

PIPELINE = load_pipeline(SHOP)
#: The aggregations replayed: as if `failed` and `clicks` had just been added or changed.
REPLAYED = ("failed", "clicks")
CHUNK = 150  # records a history read gives at most: many steps per partition, a yield inside each


def replaying() -> dict[str, list[str]]:
    plan = BatchWork(PIPELINE, GROUP_ID).plans["user"]
    return {"user": [a.ident for a in plan.aggregations if a.name in REPLAYED]}


def history(seed: int = 5, count: int = 4_000) -> dict[str, list[Record]]:
    """Shop orders and clicks of 40 users over 20 h, each on its key's partition, by
    ``"topic:partition"``, offsets from 0."""
    rng = random.Random(seed)
    out: dict[str, list[Record]] = {}
    for n in range(count):
        user = f"u{rng.randrange(40)}"
        ts = T0 + n * 20 * 3_600_000 // count
        if rng.random() < 0.6:
            topic = "orders"
            value = {"user_id": user, "order_id": f"o{n}", "product": "p", "amount": rng.uniform(1, 99),
                     "status": rng.choice(["paid", "failed"]), "ts": ts}  # fmt: skip
        else:
            topic, value = "clicks", {"user_id": user, "page": "/", "ts": ts}
        partition = partition_for(user.encode(), PARTITIONS)
        records = out.setdefault(f"{topic}:{partition}", [])
        records.append(Record(topic, partition, len(records), user.encode(), orjson.dumps(value), ts))
    return out


class FakeHistory:
    """app/kafka/history.py's History over ``records``: at most CHUNK records per read; ``gate``
    (when set) holds a read until it is set; ``on_read`` runs as a read returns."""

    def __init__(self, records: Mapping[str, list[Record]]) -> None:
        self.records = records
        self.chunk = CHUNK
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.on_read: Callable[[], None] | None = None

    async def bounds(self, names: list[str]) -> tuple[dict[str, int], dict[str, int]]:
        return {n: 0 for n in names}, {n: len(self.records.get(n, ())) for n in names}

    async def read(self, positions: Mapping[str, int], max_records: int) -> list[Any]:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        out: list[Any] = []
        for name, at in positions.items():
            out += self.records.get(name, [])[at : at + min(max_records, self.chunk) - len(out)]
        if self.on_read is not None:
            self.on_read()
        return out

    async def stop(self) -> None:
        pass


class HeldTable(RdictTable):
    """An RdictTable active here only for the partitions of ``held`` (shared by a worker's tables)."""

    def __init__(self, root: Path, name: str, held: set[int]) -> None:
        super().__init__(root, name)
        self.held = held

    def serves(self, partition: int) -> bool:
        return partition in self.held


class Io:
    """The running worker as the replay sees it: ready or not (a rebalance, a recovery)."""

    def __init__(self, producer: FakeKafkaProducer) -> None:
        self.kafka_producer = producer
        self.is_ready = True

    def ready(self) -> bool:
        return self.is_ready

    def committed(self, topic: str, partition: int) -> int | None:
        return 1 << 40  # every history record was processed before the change

    def topic_partitions(self, topic: str) -> int | None:
        return PARTITIONS


class Worker:
    """One worker: its tables (partitions of ``held`` active), its replay, its view of the worker."""

    def __init__(self, root: Path, records: Mapping[str, list[Record]], producer: FakeKafkaProducer) -> None:
        self.held: set[int] = set()
        self.tables = StateTables.build(PIPELINE, lambda name, text: HeldTable(root, name, self.held), {})
        self.io = Io(producer)
        self.history = FakeHistory(records)
        self.done: list[tuple[str, int]] = []
        work = BatchWork(PIPELINE, GROUP_ID, replaying())

        async def on_done(group: str, partition: int, aggregations: list[str]) -> None:
            self.done.append((group, partition))

        self.replayer = Replayer(
            PIPELINE, work, stream_routes(PIPELINE, GROUP_ID, work), self.tables, self.history,
            PARTITIONS, 0.25, 0, on_done,
        )  # fmt: skip

    @property
    def table(self) -> RdictTable:
        return self.tables.features["user"]  # type: ignore[return-value]

    def job(self, partition: int) -> ReplayJob | None:
        raw = self.table.db(partition).get(JOB_KEY)
        return ReplayJob.decode(raw) if raw is not None else None

    def take(self, partition: int, changelog: list[Any]) -> None:
        """Assigned ``partition``: its database recovered from the changelog (every record sent)."""
        db = self.table.db(partition)
        for key in list(db.keys()):
            del db[key]
        read = 0
        for sent in changelog:
            if sent.topic == self.table.changelog and sent.partition == partition:
                if sent.value is None:
                    del db[sent.key]
                else:
                    db[sent.key] = sent.value
                read += 1
        if read:
            self.table.persist(partition, read - 1)  # the last changelog offset applied
        self.held.add(partition)

    async def steps(self, count: int) -> None:
        for _ in range(count):
            await self.replayer.step(self.io)

    async def finish(self) -> None:
        """Step until every job held here is done."""
        for _ in range(1_000):
            await self.replayer.step(self.io)
            if all((job := self.job(p)) is not None and job.done for p in self.held):
                return
        raise AssertionError("the replay did not finish")

    def close(self) -> None:
        for table in self.tables.all().values():
            table.close()  # type: ignore[attr-defined]


def state_of(worker: Worker, partition: int) -> dict[bytes, Any]:
    """A partition's records, the job's as its fields but when it began."""
    out: dict[bytes, Any] = {}
    for key, value in worker.table.db(partition).items():
        if key == JOB_KEY:
            job = orjson.loads(value)
            job.pop("since")
            out[key] = job
        elif key != worker.table.offset_key:
            out[key] = value
    return out


@pytest.fixture
def reference(tmp_path: Path) -> dict[int, dict[bytes, Any]]:
    """Each partition's state after an uninterrupted replay of the whole history."""
    worker = Worker(tmp_path / "reference", history(), FakeKafkaProducer())
    worker.held.update(range(PARTITIONS))
    try:
        asyncio.run(worker.finish())
        return {p: state_of(worker, p) for p in range(PARTITIONS)}
    finally:
        worker.close()


def test_a_step_under_way_when_the_partitions_are_revoked_writes_nothing_and_the_same_worker_resumes(
    tmp_path: Path, reference: dict[int, dict[bytes, Any]]
) -> None:
    producer = FakeKafkaProducer()
    worker = Worker(tmp_path / "a", history(), producer)
    worker.held.update(range(PARTITIONS))

    async def scenario() -> None:
        await worker.steps(3)
        assert worker.replayer.running()
        # A read under way as the rebalance begins: revoked() waits for the step, which writes nothing.
        worker.history.gate, worker.history.entered = asyncio.Event(), asyncio.Event()
        step = asyncio.ensure_future(worker.replayer.step(worker.io))
        await worker.history.entered.wait()
        worker.io.is_ready = False  # Faust: rebalancing
        revoked = asyncio.ensure_future(worker.replayer.revoked())
        await asyncio.sleep(0.05)
        assert not revoked.done()
        sent, before = len(producer.sent), {p: state_of(worker, p) for p in range(PARTITIONS)}
        worker.history.gate.set()
        worker.history.gate = None
        await asyncio.wait_for(asyncio.gather(step, revoked), 5)
        assert len(producer.sent) == sent
        assert {p: state_of(worker, p) for p in range(PARTITIONS)} == before
        assert worker.replayer.running() == set()
        assert not worker.replayer.wants_turn(worker.io)

        # The revocation lands inside the next step's apply loop (at its first yield), after its read.
        worker.replayer.assigned()
        worker.io.is_ready = True
        late: list[asyncio.Future[None]] = []
        worker.history.on_read = lambda: late.append(asyncio.ensure_future(worker.replayer.revoked()))
        sent, before = len(producer.sent), {p: state_of(worker, p) for p in range(PARTITIONS)}
        await worker.replayer.step(worker.io)
        worker.history.on_read = None
        await asyncio.wait_for(late[0], 5)
        assert len(producer.sent) == sent
        assert {p: state_of(worker, p) for p in range(PARTITIONS)} == before

        # Given back to the same worker: it resumes from the records in its tables, and finishes.
        worker.replayer.assigned()
        assert worker.replayer.wants_turn(worker.io)
        await worker.finish()

    try:
        asyncio.run(scenario())
        assert {p: state_of(worker, p) for p in range(PARTITIONS)} == reference
        assert sorted(worker.done) == [("user", p) for p in range(PARTITIONS)]
    finally:
        worker.close()


def test_a_partition_moved_mid_replay_resumes_on_the_next_worker_and_back_from_its_table(
    tmp_path: Path, reference: dict[int, dict[bytes, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.engine.replay")
    producer = FakeKafkaProducer()  # one broker: both workers' changelog records
    records = history()
    a, b = Worker(tmp_path / "a", records, producer), Worker(tmp_path / "b", records, producer)

    async def scenario() -> None:
        for p in range(PARTITIONS):
            a.take(p, producer.sent)
        await a.steps(3)  # partition 0 under way (the first unfinished job steps)
        job = a.job(0)
        assert job is not None and 0 < job.replayed and not job.done
        # b joins: every partition revoked from a, which keeps 1 and 3; 0 and 2 move to b.
        a.io.is_ready = False
        await a.replayer.revoked()
        a.held.difference_update({0, 2})
        a.replayer.assigned()
        a.io.is_ready = True
        b.take(0, producer.sent)
        b.take(2, producer.sent)
        b.replayer.assigned()
        await b.steps(2)
        moved = b.job(0)
        assert moved is not None and not moved.done and moved.since == job.since  # resumed, not begun again
        assert moved.replayed == job.replayed + 2 * CHUNK
        await a.steps(2)
        # a stale job in a's memory would now be behind b's: 0 comes back to a, which reads b's record.
        b.io.is_ready = False
        await b.replayer.revoked()
        b.held.discard(0)
        b.replayer.assigned()
        b.io.is_ready = True
        a.io.is_ready = False
        await a.replayer.revoked()
        a.take(0, producer.sent)
        a.replayer.assigned()
        a.io.is_ready = True
        await a.finish()
        await b.finish()

    try:
        asyncio.run(scenario())
        for p in range(PARTITIONS):
            owner = b if p == 2 else a
            assert state_of(owner, p) == reference[p], p
        # Each partition's replay began once (on a) and read each history record once over the moves.
        began = [
            r.getMessage()
            for r in caplog.records
            if re.search(r"partition \d+: \d+ records \(", r.getMessage())
        ]
        assert len(began) == PARTITIONS, began
        assert any("partition 0 resumed" in r.getMessage() for r in caplog.records)
        assert sum(a.job(p).replayed for p in (0, 1, 3)) + b.job(2).replayed == sum(  # type: ignore[union-attr]
            len(r) for r in records.values()
        )
    finally:
        a.close()
        b.close()


def test_running_and_pipeline_name_only_the_jobs_a_worker_runs(tmp_path: Path) -> None:
    producer = FakeKafkaProducer()
    worker = Worker(tmp_path / "a", history(), producer)
    worker.held.update({0, 1})
    ctx = ApiContext(
        PIPELINE, GROUP_ID, PARTITIONS, worker.tables, Held(),
        replays_running=worker.replayer.running,
    )  # fmt: skip

    def running() -> dict[str, bool]:
        return {p: s["running"] for p, s in replay_progress(ctx)["user"]["partitions"].items()}

    async def scenario() -> None:
        await worker.steps(1)
        assert worker.replayer.running() == {("user", 0, JOB_KEY), ("user", 1, JOB_KEY)}
        assert running() == {"0": True, "1": True}
        assert REPLAY_LEFT.labels("user")._value.get() > 0
        worker.io.is_ready = False  # a rebalance began: its revocation comes next
        assert running() == {"0": False, "1": False}
        await worker.replayer.revoked()  # the partitions are held until the assignment: not run
        assert running() == {"0": False, "1": False}
        assert REPLAY_LEFT.labels("user")._value.get() == 0  # /status: nothing left to replay here
        worker.replayer.assigned()  # recovering: still not run
        assert running() == {"0": False, "1": False}
        worker.io.is_ready = True
        await worker.steps(1)
        assert running() == {"0": True, "1": True}
        await worker.finish()
        assert running() == {"0": False, "1": False}
        assert all(s["done"] for s in replay_progress(ctx)["user"]["partitions"].values())
        await worker.replayer.close()  # the loop stopped
        assert worker.replayer.running() == set()

    try:
        asyncio.run(scenario())
    finally:
        worker.close()


def test_a_partition_starved_by_a_busier_one_is_not_taken_for_one_without_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader hands out a busy partition's records first, a full step each time, for more steps
    than a partition may give nothing before its end is taken as reached: the other one is still read
    to its end."""
    monkeypatch.setattr(replay, "STEP_RECORDS", 10)
    records = history()
    busy, starved = "orders:0", "clicks:0"
    assert len(records[busy]) > (replay.IDLE_STEPS + 5) * 10
    worker = Worker(tmp_path / "a", {busy: records[busy], starved: records[starved]}, FakeKafkaProducer())
    worker.history.chunk = 10
    worker.held.add(0)
    try:
        asyncio.run(worker.finish())
        job = worker.job(0)
        assert job is not None and job.done
        assert job.at[starved] == job.end[starved] == len(records[starved])
        assert job.replayed == len(records[busy]) + len(records[starved])
    finally:
        worker.close()


class Held(Placement):
    """The placement of a worker that holds every partition, its tables' own databases."""

    def holds(self, table: Any, partition: int) -> bool:
        return bool(table.serves(partition))

    def database(self, table: Any, partition: int) -> Any:
        return table.db(partition)


class ReadyIO(FakeIO):
    """FakeIO with what the replay asks of the worker: ready or not, committed offsets, lag."""

    def __init__(self, topics: Any, producer: FakeKafkaProducer) -> None:
        super().__init__(topics)
        self.kafka_producer = producer
        self.is_ready = False

    def ready(self) -> bool:
        return self.is_ready

    def committed(self, topic: str, partition: int) -> int | None:
        return 1 << 40

    def behind(self, topics: Any) -> bool:
        return False


class Silent:
    """A source whose events never come (the inputs are idle after a rebalance)."""

    async def take(self, max_: int, within: float) -> Any:
        await asyncio.Event().wait()

    def take_ready(self, max_: int) -> Any:
        return ()

    def ack(self, batch: Any) -> None:
        pass


def test_the_stream_loop_gives_a_replay_its_turn_after_a_rebalance_without_waiting_for_events(
    tmp_path: Path,
) -> None:
    """The loop came round while the worker was not ready (a rebalance, a recovery) and no event
    arrives afterwards: the replay still resumes once the worker is ready."""
    producer = FakeKafkaProducer()
    worker = Worker(tmp_path / "a", history(), producer)
    worker.held.update(range(PARTITIONS))
    work = BatchWork(PIPELINE, GROUP_ID, replaying())
    routes = stream_routes(PIPELINE, GROUP_ID, work)
    engine = StreamEngine(
        work, routes, worker.tables, HelperPool(0, SHOP), PARTITIONS, 100, replay=worker.replayer
    )
    io = ReadyIO(routes, producer)

    async def scenario() -> None:
        loop = asyncio.ensure_future(engine.run(io, Silent()))
        await asyncio.sleep(0.3)  # the loop waits for events: the worker is not ready
        io.is_ready = True
        for _ in range(300):
            await asyncio.sleep(0.05)
            if all((job := worker.job(p)) is not None and job.done for p in range(PARTITIONS)):
                break
        io.stop = True
        await asyncio.wait_for(loop, 5)
        assert io.crashed == []

    try:
        asyncio.run(scenario())
        assert all((job := worker.job(p)) is not None and job.done for p in range(PARTITIONS))
    finally:
        worker.close()


#: The shop with a new group on a key no group used before: its events reach it through a new hop topic.
PRODUCTS = """\
  product:
    key: product
    period: 10m
    aggregations:
      - {name: sold, stream: orders, field: amount, ops: [count, sum], windows: [1h, lifetime]}
"""


def test_a_new_group_on_a_new_key_is_incomplete_until_its_window_has_passed(tmp_path: Path) -> None:
    """The product group's hop topic begins at the deploy (offset 0), so replaying it applies none of
    the orders before: its features stay incomplete after the replay, a window until it has passed
    since the replay began, the lifetime one for good; the user group, fed by the orders topic from
    offset 0, is complete once replayed."""
    path = tmp_path / "pipeline.yaml"
    path.write_text(SHOP.read_text().replace("\noutputs:", "\n" + PRODUCTS + "outputs:", 1))
    pipeline = load_pipeline(path)
    plans = BatchWork(pipeline, GROUP_ID).plans
    work = BatchWork(
        pipeline,
        GROUP_ID,
        {
            "user": [a.ident for a in plans["user"].aggregations if a.name in REPLAYED],
            "product": [a.ident for a in plans["product"].aggregations],
        },
    )
    routes = stream_routes(pipeline, GROUP_ID, work)
    hop = hop_topic(GROUP_ID, "orders", ("product",))
    assert routes[hop].stage == 1
    records = history()
    # The orders since the deploy (the last 40 of each partition) as the first stage sent them on.
    for p in range(PARTITIONS):
        for order in records[f"orders:{p}"][-40:]:
            value = {**orjson.loads(order.value), "product": f"p{order.offset % 9}"}
            product = value["product"].encode()
            q = partition_for(product, PARTITIONS)
            sent = records.setdefault(f"{hop}:{q}", [])
            headers = tuple(hop_headers(order, False, 0, ("user_id",), b"{}", order.timestamp))
            sent.append(Record(hop, q, len(sent), product, orjson.dumps(value), order.timestamp, headers))
    assert all(f"{hop}:{q}" in records for q in range(PARTITIONS))
    held = set(range(PARTITIONS))
    tables = StateTables.build(pipeline, lambda name, text: HeldTable(tmp_path, name, held), {})
    io = Io(FakeKafkaProducer())

    async def on_done(group: str, partition: int, aggregations: list[str]) -> None:
        pass

    replayer = Replayer(pipeline, work, routes, tables, FakeHistory(records), PARTITIONS, 0.25, 0, on_done)

    def jobs(group: str) -> list[ReplayJob]:
        raws = [tables.features[group].db(p).get(JOB_KEY) for p in range(PARTITIONS)]
        return [ReplayJob.decode(raw) for raw in raws if raw is not None]

    async def finish() -> None:
        for _ in range(1_000):
            await replayer.step(io)
            done = [*jobs("user"), *jobs("product")]
            if len(done) == 2 * PARTITIONS and all(job.done for job in done):
                return
        raise AssertionError("the replay did not finish")

    try:
        asyncio.run(finish())
        plan = work.plans["product"]
        hour, lifetime = ["sold_count_1h", "sold_sum_1h"], ["sold_count_lifetime", "sold_sum_lifetime"]
        for job in jobs("product"):
            assert job.replayed > 0 and all(offset == 0 for offset in job.start.values())
            assert not job.whole_history
            assert incomplete_features(plan, job, job.since) == hour + lifetime
            assert incomplete_features(plan, job, job.since + 3_600_000 - 1) == hour + lifetime
            assert incomplete_features(plan, job, job.since + 3_600_000) == lifetime
            assert incomplete_features(plan, job, job.since + 1000 * 3_600_000) == lifetime
        for job in jobs("user"):
            assert job.whole_history
            assert incomplete_features(work.plans["user"], job, job.since) == []
    finally:
        for table in tables.all().values():
            table.close()  # type: ignore[attr-defined]
