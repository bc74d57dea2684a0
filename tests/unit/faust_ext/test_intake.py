"""app/faust_ext/intake.py: the batch path from Faust's fetch loop to the stream agent.

The consumer is Hydrant's (app/faust_ext/consumer.py ``HydrantConsumer``, Faust's real one
underneath; never started: no broker), so the bookkeeping the intake fills in is read back by Faust's
own code: ``_new_offset`` (what a commit would write) and the unacked set that ``wait_empty`` waits
on. Only Faust's fetch under it (``_wait_next_records``) is scripted, and its end offsets, which
would ask the broker. The end-to-end path on a real broker is covered by every
integration and reliability test, which all run through the intake.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar, cast

import pytest
from aiokafka.structs import ConsumerRecord
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from app.faust_ext.app import HydrantApp
from app.faust_ext.consumer import Fetched, HydrantConsumer, HydrantTransport
from app.faust_ext.intake import Intake
from app.metrics import OFFSET_GAPS

INPUT = "orders"
LOOKUP = "merchants"  # a compacted topic
HOP = "shop-stream-orders-by-merchant_id-repartition"  # a hop topic: Hydrant writes it, no offset empty
T = TypeVar("T")


def record(topic: str, partition: int, offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(topic, partition, offset, 1_000 + offset, 0, b"k", b"{}", None, 1, 2, ())


def fetch(
    *records: ConsumerRecord[bytes, bytes],
    starts: dict[TP, int] | None = None,
    ends: dict[TP, int] | None = None,
) -> Fetched:
    """One fetch as Hydrant's consumer thread returns it: each partition's records in offset order,
    drained from ``starts`` (default: the first record) to ``ends`` (default: after the last)."""
    out: dict[TP, list[ConsumerRecord[bytes, bytes]]] = {}
    for r in records:
        out.setdefault(TP(r.topic, r.partition), []).append(r)
    first = {tp: found[0].offset for tp, found in out.items()} | (starts or {})
    after = {tp: found[-1].offset + 1 for tp, found in out.items()} | (ends or {})
    return Fetched(out, first, after)


class ScriptedFetch(faust_aiokafka.Consumer):
    """Faust's consumer whose fetch (``_wait_next_records``) returns the app's scripted fetches."""

    async def _wait_next_records(self, timeout: float) -> tuple[dict[TP, list[Any]], set[TP] | None]:
        app = cast("ScriptedApp", self.app)
        self._fetch_epoch = cast(HydrantConsumer, self).positioned  # as HydrantConsumer._getmany does
        fetched = app.fetches.pop(0) if app.fetches else {}
        if callable(fetched):  # what happens while the fetch waits, then its records
            fetched = fetched()
        return fetched, app.active


class ScriptedConsumer(HydrantConsumer, ScriptedFetch):
    """Hydrant's consumer over the scripted fetch: HydrantConsumer's ``super()`` is ScriptedFetch."""


class ScriptedTransport(HydrantTransport):
    Consumer = ScriptedConsumer


class ScriptedApp(HydrantApp):
    consumer_transport = ScriptedTransport
    fetches: list[Any]  # each a fetch's records, or a callable returning them
    active: set[TP] | None = None  # the consumer's active partitions (None: every partition)


class Setup:
    """A Hydrant app whose consumer's fetches are scripted, and an intake registered on it."""

    def __init__(self, fetches: list[dict[TP, list[Any]]], max_buffered: int = 100) -> None:
        self.loop = asyncio.new_event_loop()  # the app's flow control binds to the loop of its creation
        asyncio.set_event_loop(self.loop)
        self.app = ScriptedApp(
            "test-intake", broker="kafka://127.0.0.1:1", store="memory://", autodiscover=False, loop=self.loop
        )
        self.app.topics._acking_topics.update(
            (INPUT, LOOKUP, HOP)
        )  # as the conductor does for subscribed topics
        self.app.fetches = self.fetches = fetches
        self.consumer = consumer = self.app.consumer
        assert isinstance(consumer, ScriptedConsumer)
        self.gaps: list[tuple[TP, int, int]] = []

        add_gap = consumer._add_gap

        async def recorded_gap(tp: TP, start: int, end: int) -> None:
            self.gaps.append((tp, start, end))
            await add_gap(tp, start, end)

        consumer._add_gap = recorded_gap
        consumer.highwater = lambda tp: 1_000  # the broker's end offset
        self.rewinds: list[dict[TP, tuple[int, int]]] = []

        async def recorded_rewind(rewinds: dict[TP, tuple[int, int]]) -> list[TP]:
            self.rewinds.append(dict(rewinds))  # what the consumer thread would seek back (aiokafka)
            return list(rewinds)

        consumer._thread.rewind = recorded_rewind  # type: ignore[method-assign]
        self.intake = Intake(self.app, [INPUT, LOOKUP, HOP], max_buffered, strict=[HOP])
        assert self.app.intakes == [self.intake]
        self.app.flow_control.resume()  # as at the end of the worker's first rebalance

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run the test's coroutine on the app's loop (once per test)."""
        try:
            return self.loop.run_until_complete(coroutine)
        finally:
            asyncio.set_event_loop(None)
            self.loop.close()

    async def drain(self) -> list[tuple[TP, Any]]:
        """One pass of Faust's fetch loop: what it still receives as messages."""
        return [pair async for pair in self.consumer.getmany(timeout=1.0)]

    def pending(self) -> Iterator[Any]:
        return iter(self.consumer._unacked_messages)


def test_stream_records_are_buffered_and_the_rest_passes_through() -> None:
    s = Setup([fetch(record(INPUT, 0, 0), record("users", 0, 0), record(INPUT, 1, 5), record(INPUT, 0, 1))])

    async def run() -> tuple[list[Any], list[Any]]:
        passed = await s.drain()
        return passed, await s.intake.take(10, within=0.01)

    passed, batch = s.run(run())
    assert [(tp.topic, m.offset) for tp, m in passed] == [("users", 0)]  # as Faust's messages
    assert [(m.partition, m.offset) for m in batch] == [(0, 0), (0, 1), (1, 5)]
    assert all(isinstance(m, ConsumerRecord) for m in batch)  # aiokafka's records, not Faust messages
    assert s.consumer._read_offset == {TP(INPUT, 0): 1, TP(INPUT, 1): 5}
    ends = s.app.monitor.tp_end_offsets  # Faust's lag figures, as for the records it delivers itself
    assert ends[TP(INPUT, 0)] == ends[TP(INPUT, 1)] == 1_000


def test_take_returns_at_most_max_and_keeps_the_rest_in_order() -> None:
    s = Setup([fetch(*(record(INPUT, 0, n) for n in range(7)))])

    async def run() -> list[list[int]]:
        await s.drain()
        return [[m.offset for m in await s.intake.take(3, within=0.01)] for _ in range(3)]

    assert s.run(run()) == [[0, 1, 2], [3, 4, 5], [6]]


def test_a_drain_starting_past_the_last_one_taken_is_a_skip_never_committed_past(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tp = TP(INPUT, 0)
    before = OFFSET_GAPS.labels(INPUT)._value.get()
    s = Setup(
        [fetch(*(record(INPUT, 0, n) for n in range(5))), fetch(record(INPUT, 0, 9), record(INPUT, 0, 10))]
    )

    async def run() -> list[int]:
        await s.drain()
        await s.drain()  # records 5..8 were fetched and lost somewhere: the position is at 9
        return [m.offset for m in await s.intake.take(10, within=0.01)]

    assert s.run(run()) == [0, 1, 2, 3, 4]  # 9 and 10 are not taken
    assert s.gaps == []  # nothing for Faust's commit to move past
    assert s.rewinds == [{tp: (5, 11)}]  # read again from 5 (the position was 11)
    assert s.consumer._read_offset[tp] == 4
    assert OFFSET_GAPS.labels(INPUT)._value.get() == before + 1
    errors = [r.message for r in caplog.records if r.levelname == "ERROR"]
    assert any("offsets 5..8 were not delivered" in m for m in errors)


def test_a_skip_met_again_from_its_first_offset_means_the_broker_has_nothing_there(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tp = TP(INPUT, 0)
    again = [record(INPUT, 0, 7), record(INPUT, 0, 8)]  # read again from 5, the position jumps to 7
    s = Setup([fetch(*(record(INPUT, 0, n) for n in range(5))), fetch(*again), fetch(*again)])

    async def run() -> list[int]:
        for _ in range(3):
            await s.drain()
        return [m.offset for m in await s.intake.take(10, within=0.01)]

    assert s.run(run()) == [0, 1, 2, 3, 4, 7, 8]
    assert s.rewinds == [{tp: (5, 9)}]
    assert s.gaps == [(tp, 5, 6)]
    warned = [r.message for r in caplog.records if r.levelname == "WARNING"]
    assert any("the broker holds no records at 5..6" in m for m in warned)


def test_offsets_a_drain_passed_over_are_the_broker_s_holes_and_committed_past(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Transaction markers (or compacted records) at 0, 3..4 and 7: aiokafka skips them in the drain.
    tp = TP(INPUT, 0)
    s = Setup([fetch(record(INPUT, 0, 1), record(INPUT, 0, 2), record(INPUT, 0, 5), record(INPUT, 0, 6),
                     starts={tp: 0}, ends={tp: 8}),
               fetch(record(INPUT, 0, 8), record(INPUT, 0, 9))])  # fmt: skip

    async def run() -> list[int]:
        await s.drain()
        await s.drain()  # starts where the first ended: nothing was skipped
        batch = await s.intake.take(10, within=0.01)
        s.intake.ack(batch)
        return [m.offset for m in batch]

    assert s.run(run()) == [1, 2, 5, 6, 8, 9]
    assert s.gaps == [(tp, 0, 0), (tp, 3, 4), (tp, 7, 7)]
    assert s.rewinds == []
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "WARNING")]
    assert s.consumer._new_offset(tp) == 10  # committed past every hole


def test_already_read_offsets_are_dropped() -> None:
    s = Setup([fetch(record(INPUT, 0, 3), record(INPUT, 0, 4), record(INPUT, 0, 9), record(INPUT, 0, 10))])
    s.consumer._read_offset[TP(INPUT, 0)] = 4  # read up to 4 before a rebalance; 5..8: nothing there

    async def run() -> list[int]:
        await s.drain()
        return [m.offset for m in await s.intake.take(10, within=0.01)]

    assert s.run(run()) == [4, 9, 10]
    assert s.gaps == [(TP(INPUT, 0), 5, 8)]


def test_records_of_a_partition_paused_while_the_fetch_waited_are_rewound_not_dropped() -> None:
    s = Setup([fetch(record(INPUT, 0, 0), record(INPUT, 1, 5), record(INPUT, 1, 6), record(LOOKUP, 2, 3),
                     starts={TP(INPUT, 1): 4}, ends={TP(INPUT, 1): 8})])  # fmt: skip
    s.app.active = {TP(INPUT, 0)}  # a recovery paused the rest (Faust's set, read after the fetch)

    async def run() -> list[tuple[int, int]]:
        passed = await s.drain()
        assert passed == []  # nothing reaches Faust's own path either
        return [(m.partition, m.offset) for m in await s.intake.take(10, within=0.01)]

    assert s.run(run()) == [(0, 0)]
    assert s.rewinds == [{TP(INPUT, 1): (4, 8), TP(LOOKUP, 2): (3, 4)}]  # back to where each drain began
    assert s.consumer._read_offset.get(TP(INPUT, 1)) is None


def test_records_fetched_while_the_flow_is_stopped_are_rewound() -> None:
    s = Setup([fetch(record(INPUT, 0, 0), record("changelog", 0, 7))])

    async def run() -> None:
        s.consumer.stop_flow()  # a rebalance began while the fetch waited
        assert await s.drain() == []

    s.run(run())
    assert s.rewinds == [{TP(INPUT, 0): (0, 1), TP("changelog", 0): (7, 8)}]
    assert len(s.intake) == 0


def test_during_a_rebalance_only_changelog_records_are_delivered() -> None:
    changelog = "test-intake-user-changelog"
    s = Setup([fetch(record(INPUT, 0, 0), record(changelog, 0, 7))])
    s.app.tables._changelogs[changelog] = cast(Any, object())  # a table's changelog topic
    s.app.rebalancing = True  # assigned, not yet recovered: the fetch loop runs for the changelogs

    async def run() -> list[tuple[str, int]]:
        return [(tp.topic, m.offset) for tp, m in await s.drain()]

    assert s.run(run()) == [(changelog, 7)]  # to Faust's recovery
    assert s.rewinds == [{TP(INPUT, 0): (0, 1)}]
    assert len(s.intake) == 0


def test_a_batch_is_pending_until_acked_and_then_committable_past_gaps() -> None:
    tp = TP(LOOKUP, 0)  # a compacted topic: 3..4 compacted away
    s = Setup([fetch(*(record(LOOKUP, 0, n) for n in (0, 1, 2, 5, 6)), record(LOOKUP, 1, 0))])

    async def run() -> None:
        await s.drain()
        first = await s.intake.take(2, within=0.01)
        second = await s.intake.take(10, within=0.01)
        assert sorted(p.refcount for p in s.pending()) == [2, 4]  # Faust's wait_empty waits for both
        assert s.consumer._new_offset(tp) is None  # nothing acked: nothing to commit
        s.intake.ack(first)  # the agent acks batches in the order taken
        assert s.consumer._new_offset(tp) == 2
        assert [p.refcount for p in s.pending()] == [4]
        s.intake.ack(second)
        assert list(s.pending()) == []
        assert s.consumer._new_offset(tp) == 7  # past the gap 3..4
        assert s.consumer._new_offset(TP(LOOKUP, 1)) == 1
        assert s.intake.done == {tp: 6, TP(LOOKUP, 1): 0}  # lag counts from here
        assert s.consumer._n_acked == 6

    s.run(run())


def test_offsets_below_the_committed_one_are_not_acked_again() -> None:
    tp = TP(INPUT, 0)
    s = Setup([fetch(*(record(INPUT, 0, n) for n in range(4)))])

    async def run() -> None:
        await s.drain()
        batch = await s.intake.take(10, within=0.01)
        s.consumer._committed_offset[tp] = 2  # committed meanwhile (a rebalance's seek, another ack)
        s.intake.ack(batch)

    s.run(run())
    assert sorted(s.consumer._acked[tp]) == [2, 3]


def test_nothing_is_handed_out_while_flow_is_suspended_and_resume_clears_the_buffer() -> None:
    s = Setup([fetch(record(INPUT, 0, 0)), fetch(record(INPUT, 0, 1))])

    async def run() -> list[int]:
        await s.drain()
        s.app.flow_control.suspend()  # a rebalance starts
        waiting = asyncio.ensure_future(s.intake.take(10, within=0.01))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        s.app.flow_control.resume()  # ... ends: inputs positioned, stale records dropped
        assert len(s.intake) == 0
        await s.drain()  # refetched from the committed offset
        return [m.offset for m in await waiting]

    assert s.run(run()) == [1]


def test_fetching_waits_for_room_but_not_during_a_rebalance() -> None:
    s = Setup([fetch(*(record(INPUT, 0, n) for n in range(5)))], max_buffered=3)

    async def run() -> None:
        fetching = asyncio.ensure_future(s.drain())
        await asyncio.sleep(0.05)
        assert not fetching.done()  # 5 buffered >= 3: the fetch loop waits
        await s.intake.take(4, within=0.01)
        await asyncio.wait_for(fetching, 1)  # room again

        s.fetches.append(fetch(*(record(INPUT, 0, n) for n in range(5, 10))))
        s.app.flow_control.suspend()
        await asyncio.wait_for(s.drain(), 1)  # suspended: recovery must be able to fetch

    s.run(run())


@pytest.mark.parametrize("within", [0.0, 0.05])
def test_take_waits_up_to_within_for_a_fuller_batch(within: float) -> None:
    s = Setup([fetch(record(INPUT, 0, 0)), fetch(record(INPUT, 0, 1))])

    async def run() -> list[int]:
        await s.drain()
        taking = asyncio.ensure_future(s.intake.take(10, within=within))
        await asyncio.sleep(0.01)
        await s.drain()
        return [m.offset for m in await taking]

    assert s.run(run()) == ([0] if within == 0.0 else [0, 1])


def rebalance(s: Setup, positions: dict[TP, int]) -> None:
    """What the end of a rebalance does to the intake and the consumer (app/faust_ext/recovery.py):
    the inputs positioned (at their committed offsets), then the stream queues cleared."""
    for tp, offset in positions.items():
        s.consumer._read_offset[tp] = offset
        s.consumer._committed_offset[tp] = offset
    s.consumer.positioned += 1
    s.app.flow_control.resume()


def test_records_fetched_before_the_inputs_were_positioned_are_never_delivered() -> None:
    # The fetch began, the rebalance ended meanwhile (positions reset to 3), then its records came.
    tp = TP(INPUT, 0)
    s = Setup([])

    def stale() -> Fetched:
        rebalance(s, {tp: 3})
        return fetch(*(record(INPUT, 0, n) for n in range(6, 9)))

    s.fetches += [stale, fetch(*(record(INPUT, 0, n) for n in range(3, 9)))]

    async def run() -> list[int]:
        await s.drain()
        assert len(s.intake) == 0
        await s.drain()  # from the position the rebalance set
        return [m.offset for m in await s.intake.take(10, within=0.01)]

    assert s.run(run()) == [3, 4, 5, 6, 7, 8]
    assert s.rewinds == [{tp: (6, 9)}]  # sought back only if nothing moved the position since


def test_a_commit_every_so_many_acks_comes_after_the_whole_fetch_is_taken() -> None:
    # Faust's commit every `broker_commit_every` acks awaits the broker: it comes once every intake
    # has taken its records of the fetch, so that nothing the fetch read is buffered after an await
    # (during which the end of a rebalance could clear the intake and position the partitions).
    tp, other = TP(INPUT, 0), TP(INPUT, 1)
    s = Setup([fetch(record(INPUT, 0, 6), record(INPUT, 0, 7), record(INPUT, 1, 0)),
               fetch(*(record(INPUT, 0, n) for n in range(3, 8)))])  # fmt: skip
    buffered: list[int] = []

    async def commit(*args: Any, **kwargs: Any) -> bool:
        buffered.append(len(s.intake))
        rebalance(s, {tp: 3, other: 0})
        return False

    s.consumer.commit = commit  # type: ignore[method-assign]
    s.consumer._n_acked = s.consumer._commit_every  # the next fetch commits

    async def run() -> list[int]:
        await s.drain()
        assert len(s.intake) == 0  # cleared by the rebalance, with everything the fetch read
        await s.drain()
        return [m.offset for m in await s.intake.take(10, within=0.01)]

    assert s.run(run()) == [3, 4, 5, 6, 7]
    assert buffered == [3]
    assert s.consumer._n_acked == 0


@pytest.mark.parametrize(
    ("committed", "floor", "acked", "faust"),
    [(31, None, [32, 33], 34), (None, 0, [3, 4], 5), (None, 7, [8, 9], 10)],
    ids=["past-the-committed-offset", "none-committed-from-0", "none-committed-from-7"],
)
def test_a_commit_never_passes_an_offset_not_acked(
    committed: int | None, floor: int | None, acked: list[int], faust: int, caplog: pytest.LogCaptureFixture
) -> None:
    tp = TP(INPUT, 0)
    s = Setup([])
    before = OFFSET_GAPS.labels(INPUT)._value.get()

    async def run() -> tuple[int | None, int | None]:
        s.consumer._committed_offset[tp] = committed
        if floor is not None:
            s.consumer.floors[tp] = floor
        s.consumer._acked[tp].extend(acked)
        s.consumer._acked_index[tp].update(acked)
        ours = s.consumer._new_offset(tp)
        return ours, faust_aiokafka.Consumer._new_offset(s.consumer, tp)

    ours, theirs = s.run(run())
    assert ours is None
    assert theirs == faust  # what Faust alone would have committed
    lowest = committed if committed is not None else floor
    errors = [r.message for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [
        f"{INPUT}/0: offsets {lowest}..{acked[0] - 1} were never applied, yet later ones were: "
        "not committing past them (the partition's next owner reads them again)"
    ]
    assert OFFSET_GAPS.labels(INPUT)._value.get() == before + 1


def test_a_commit_moves_over_a_hole_at_the_committed_offset() -> None:
    # A transaction marker (or a compacted record) at the committed offset 5: the drain from 5 starts with 6.
    tp = TP(INPUT, 0)
    s = Setup([fetch(record(INPUT, 0, 6), record(INPUT, 0, 7), starts={tp: 5})])

    async def run() -> int | None:
        s.consumer._committed_offset[tp] = 5
        s.consumer._read_offset[tp] = 5  # as Faust's seek to the committed offset sets it
        await s.drain()
        s.intake.ack(await s.intake.take(10, within=0.01))
        return s.consumer._new_offset(tp)

    assert s.run(run()) == 8


def test_a_hop_topic_drain_passing_over_offsets_is_read_again_from_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Three workers write one hop partition: the broker showed a later write (6..7) before 3..5.
    tp = TP(HOP, 0)
    before = OFFSET_GAPS.labels(HOP)._value.get()
    s = Setup(
        [
            fetch(*(record(HOP, 0, n) for n in (0, 1, 2, 6, 7))),
            fetch(*(record(HOP, 0, n) for n in range(3, 9))),
        ]
    )

    async def run() -> list[int]:
        await s.drain()
        await s.drain()  # read again from 3: now there
        batch = await s.intake.take(10, within=0.01)
        s.intake.ack(batch)
        return [m.offset for m in batch]

    assert s.run(run()) == list(range(9))
    assert s.rewinds == [{tp: (3, 8)}]  # taken up to the hole, read again from it
    assert s.gaps == []
    assert s.consumer._new_offset(tp) == 9
    assert OFFSET_GAPS.labels(HOP)._value.get() == before + 1
    errors = [r.message for r in caplog.records if r.levelname == "ERROR"]
    assert any("passed over offsets 3..5 of a topic without empty offsets" in m for m in errors)


def test_a_hole_met_again_in_a_hop_topic_is_committed_past(caplog: pytest.LogCaptureFixture) -> None:
    tp = TP(HOP, 0)
    again = [record(HOP, 0, 6), record(HOP, 0, 7)]
    s = Setup([fetch(*(record(HOP, 0, n) for n in (0, 1, 2, 6, 7))), fetch(*again, starts={tp: 3})])

    async def run() -> list[int]:
        await s.drain()
        await s.drain()
        batch = await s.intake.take(10, within=0.01)
        s.intake.ack(batch)
        return [m.offset for m in batch]

    assert s.run(run()) == [0, 1, 2, 6, 7]
    assert s.gaps == [(tp, 3, 5)]
    assert s.consumer._new_offset(tp) == 8
    warned = [r.message for r in caplog.records if r.levelname == "WARNING"]
    assert any("passes over 3..5 once more" in m for m in warned)
