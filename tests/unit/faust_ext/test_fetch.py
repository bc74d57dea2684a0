"""app/faust_ext/consumer.py: what a fetch returns around a pause, and rewinds, on a real aiokafka
consumer against the real broker (aiokafka's fetcher is what the mechanism is about).

Faust passes its own set of active partitions to aiokafka, which reads it when it drains its buffer,
not when the fetch starts, and reads an empty set as "every partition". Hydrant's consumer thread
gives aiokafka a snapshot and pauses every other partition in aiokafka itself."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.types import TP

from app.faust_ext.consumer import hold_paused, rewind_positions
from tests.support.broker import BrokerUnderTest
from tests.support.kafka import create_topics

pytestmark = pytest.mark.integration


@pytest.fixture
async def consumer(broker: BrokerUnderTest, uid: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A started consumer on partitions 0 and 1 of an empty topic, positioned at 0."""
    topic = f"fetch-{uid}"
    await create_topics(broker.bootstrap, [topic], partitions=2)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=50
    )
    await consumer.start()
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    for tp in tps:
        await consumer.position(tp)
    try:
        yield consumer
    finally:
        await consumer.stop()


async def send(broker: BrokerUnderTest, topic: str, partition: int, n: int) -> None:
    """``n`` records to ``partition``, in one batch (so one fetch returns them all)."""
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=50)
    await producer.start()
    try:
        sent = [await producer.send(topic, f"{i}".encode(), partition=partition) for i in range(n)]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def test_faust_s_live_set_emptied_during_a_fetch_lets_paused_partitions_through(
    consumer: AIOKafkaConsumer, broker: BrokerUnderTest
) -> None:
    # What Faust does (the mechanism of issue 31): the set object, read when the fetch drains.
    topic = next(iter(consumer.assignment())).topic
    active = {TopicPartition(topic, 0)}
    fetching = asyncio.ensure_future(consumer._fetcher.fetched_records(active, timeout=10))
    await asyncio.sleep(0.3)
    active.clear()
    await send(broker, topic, 1, 3)  # only the paused partition gets records
    drained = await asyncio.wait_for(fetching, 15)
    assert [r.offset for r in drained[TopicPartition(topic, 1)]] == [0, 1, 2]  # a "paused" partition


async def test_a_snapshot_with_the_rest_paused_in_aiokafka_returns_nothing_of_paused_partitions(
    consumer: AIOKafkaConsumer, broker: BrokerUnderTest
) -> None:
    topic = next(iter(consumer.assignment())).topic
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    active = {p0}
    snapshot = frozenset(active)
    hold_paused(consumer, snapshot)  # what HydrantConsumerThread._fetch_records does first
    assert consumer.paused() == {p1}
    fetching = asyncio.ensure_future(consumer._fetcher.fetched_records(snapshot, timeout=10))
    await asyncio.sleep(0.3)
    active.clear()  # Faust pauses everything while the fetch waits: the snapshot does not change
    await send(broker, topic, 1, 3)
    await send(broker, topic, 0, 2)
    drained = await asyncio.wait_for(fetching, 15)
    assert p1 not in drained
    assert [r.offset for r in drained[p0]] == [0, 1]
    assert await consumer.position(p1) == 0  # aiokafka kept the paused partition's position

    hold_paused(consumer, frozenset({p0, p1}))  # resumed: its records come, from 0
    assert consumer.paused() == set()
    got: list[int] = []
    for _ in range(50):
        got += [r.offset for r in (await consumer._fetcher.fetched_records({p1}, timeout=0.2)).get(p1, [])]
        if len(got) >= 3:
            break
    assert got == [0, 1, 2]


async def test_rewind_seeks_back_only_where_the_position_is_still_after_the_records(
    consumer: AIOKafkaConsumer, broker: BrokerUnderTest
) -> None:
    topic = next(iter(consumer.assignment())).topic
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    await send(broker, topic, 0, 5)
    await send(broker, topic, 1, 5)
    taken: dict[TopicPartition, list[int]] = {p0: [], p1: []}
    for _ in range(50):
        for tp, records in (await consumer.getmany(timeout_ms=200)).items():
            taken[tp] += [r.offset for r in records]
        if all(len(v) == 5 for v in taken.values()):
            break
    assert taken == {p0: [0, 1, 2, 3, 4], p1: [0, 1, 2, 3, 4]}

    consumer.seek(p1, 1)  # a recovery positioned partition 1 since the fetch: its seek wins
    sought = rewind_positions(consumer, {TP(topic, 0): (2, 5), TP(topic, 1): (3, 5), TP(topic, 7): (0, 1)})
    assert sought == [TP(topic, 0)]  # partition 7 is not assigned here: left to its owner
    assert await consumer.position(p0) == 2
    assert await consumer.position(p1) == 1
    again: dict[TopicPartition, list[int]] = {p0: [], p1: []}
    for _ in range(50):
        for tp, records in (await consumer.getmany(timeout_ms=200)).items():
            again[tp] += [r.offset for r in records]
        if len(again[p0]) == 3 and len(again[p1]) == 4:
            break
    assert again == {p0: [2, 3, 4], p1: [1, 2, 3, 4]}
