"""app/intake.py: the batch path from Faust's fetch loop to the stream agent.

The consumer here is a stand-in with Faust's bookkeeping fields (read offsets, acks, tracking) and a
scripted ``getmany``; flow control is mode's real FlowControlEvent. The end-to-end path on a real
broker is covered by every integration and reliability test, which all run through the intake.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP
from mode.utils.queues import FlowControlEvent

from app.intake import Intake

INPUT = "orders"


class Consumer:
    """Faust's consumer fields the intake reads and writes, and fetches scripted per call."""

    def __init__(self, fetches: list[list[tuple[TP, Any]]]) -> None:
        self.fetches = fetches
        self._read_offset: dict[TP, int | None] = {}
        self._commit_every: int | None = None
        self._n_acked = 0
        self.gaps: list[tuple[TP, int, int]] = []
        self.tracked: list[Any] = []
        self.acked: list[Any] = []
        self.flow_active = True
        self.should_stop = False

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        for tp, message in self.fetches.pop(0) if self.fetches else []:
            yield tp, message

    async def _add_gap(self, tp: TP, start: int, end: int) -> None:
        self.gaps.append((tp, start, end))

    def track_message(self, message: Any) -> None:
        self.tracked.append(message)

    def ack(self, message: Any) -> None:
        self.acked.append(message)


def record(topic: str, partition: int, offset: int) -> tuple[TP, Any]:
    tp = TP(topic, partition)
    return tp, SimpleNamespace(tp=tp, topic=topic, partition=partition, offset=offset)


def setup(fetches: list[list[tuple[TP, Any]]], max_buffered: int = 100) -> tuple[Intake, Consumer, Any]:
    flow = FlowControlEvent(initially_suspended=False)
    consumer = Consumer(fetches)
    app = SimpleNamespace(
        flow_control=flow,
        consumer=consumer,
        topics=SimpleNamespace(acks_enabled_for=lambda topic: True),
    )
    intake = Intake(app, [INPUT], max_buffered)
    intake.install(consumer)
    return intake, consumer, app


async def drain(consumer: Consumer) -> list[tuple[TP, Any]]:
    """One pass of Faust's fetch loop: what it still receives."""
    return [pair async for pair in consumer.getmany(timeout=1.0)]


def test_stream_records_are_buffered_and_the_rest_passes_through() -> None:
    fetch = [record(INPUT, 0, 0), record("users", 0, 0), record(INPUT, 1, 5), record(INPUT, 0, 1)]
    intake, consumer, _ = setup([fetch])

    async def run() -> tuple[list[Any], list[Any]]:
        passed = await drain(consumer)
        return passed, await intake.take(10, within=0.01)

    passed, batch = asyncio.run(run())
    assert [tp.topic for tp, _ in passed] == ["users"]
    assert [(m.partition, m.offset) for m in batch] == [(0, 0), (1, 5), (0, 1)]
    assert consumer.tracked == batch  # tracked when taken, so a rebalance waits for them
    assert consumer._read_offset == {TP(INPUT, 0): 1, TP(INPUT, 1): 5}


def test_take_returns_at_most_max_and_keeps_the_rest_in_order() -> None:
    intake, consumer, _ = setup([[record(INPUT, 0, n) for n in range(7)]])

    async def run() -> list[list[int]]:
        await drain(consumer)
        return [[m.offset for m in await intake.take(3, within=0.01)] for _ in range(3)]

    assert asyncio.run(run()) == [[0, 1, 2], [3, 4, 5], [6]]


def test_already_read_offsets_are_dropped_and_gaps_recorded() -> None:
    intake, consumer, _ = setup([[record(INPUT, 0, 4), record(INPUT, 0, 3), record(INPUT, 0, 9)]])
    consumer._read_offset[TP(INPUT, 0)] = 4

    async def run() -> list[int]:
        await drain(consumer)
        return [m.offset for m in await intake.take(10, within=0.01)]

    assert asyncio.run(run()) == [4, 9]
    assert consumer.gaps == [(TP(INPUT, 0), 5, 9)]


def test_nothing_is_handed_out_while_flow_is_suspended_and_resume_clears_the_buffer() -> None:
    intake, consumer, app = setup([[record(INPUT, 0, 0)], [record(INPUT, 0, 1)]])

    async def run() -> list[int]:
        await drain(consumer)
        app.flow_control.suspend()  # a rebalance starts
        waiting = asyncio.ensure_future(intake.take(10, within=0.01))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        app.flow_control.resume()  # ... ends: inputs positioned, stale records dropped
        assert len(intake) == 0
        await drain(consumer)  # refetched from the committed offset
        return [m.offset for m in await waiting]

    assert asyncio.run(run()) == [1]


def test_fetching_waits_for_room_but_not_during_a_rebalance() -> None:
    intake, consumer, app = setup([[record(INPUT, 0, n) for n in range(5)]], max_buffered=3)

    async def run() -> None:
        fetching = asyncio.ensure_future(drain(consumer))
        await asyncio.sleep(0.05)
        assert not fetching.done()  # 5 buffered >= 3: the fetch loop waits
        await intake.take(4, within=0.01)
        await asyncio.wait_for(fetching, 1)  # room again

        consumer.fetches.append([record(INPUT, 0, n) for n in range(5, 10)])
        app.flow_control.suspend()
        await asyncio.wait_for(drain(consumer), 1)  # suspended: recovery must be able to fetch

    asyncio.run(run())


def test_ack_acks_every_record_of_the_batch() -> None:
    intake, consumer, _ = setup([[record(INPUT, 0, n) for n in range(3)]])

    async def run() -> list[Any]:
        await drain(consumer)
        batch = await intake.take(10, within=0.01)
        intake.ack(batch)
        return batch

    assert consumer.acked == asyncio.run(run())


@pytest.mark.parametrize("within", [0.0, 0.05])
def test_take_waits_up_to_within_for_a_fuller_batch(within: float) -> None:
    intake, consumer, _ = setup([[record(INPUT, 0, 0)], [record(INPUT, 0, 1)]])

    async def run() -> list[int]:
        await drain(consumer)
        taking = asyncio.ensure_future(intake.take(10, within=within))
        await asyncio.sleep(0.01)
        await drain(consumer)
        return [m.offset for m in await taking]

    assert asyncio.run(run()) == ([0] if within == 0.0 else [0, 1])
