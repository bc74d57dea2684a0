"""app/kafka/batches.py on the real broker: records sent as whole record batches arrive in the order they
were added per partition, with their keys, values and headers, and a batch that fills up is split."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiokafka import AIOKafkaProducer

from app.kafka.batches import RecordBatches
from tests.support.broker import BrokerUnderTest
from tests.support.kafka import consume, create_topics

RECORDS = 300


def test_record_batches_arrive_in_order_and_split_when_full(broker: BrokerUnderTest) -> None:
    topic = f"batches-{uuid.uuid4().hex[:8]}"

    async def run() -> tuple[list[Any], list[Any]]:
        await create_topics(broker.bootstrap, [topic], partitions=2)
        # 16 KiB batches: ~70 records of ~220 bytes each, so each partition's 150 records need three
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, max_batch_size=16 * 1024)
        await producer.start()
        try:
            batches = RecordBatches()
            for i in range(RECORDS):
                headers = [("n", b"%d" % i)] if i % 3 == 0 else None
                batches.add(topic, i % 2, b"k%d" % i, b"v" * 200 + b"%d" % i, headers)
            sent = await batches.send(producer)
            metadata = await asyncio.gather(*(batch.future for batch in sent))
        finally:
            await producer.stop()
        assert not batches  # emptied
        return list(zip(sent, metadata, strict=True)), await consume(broker.bootstrap, topic, RECORDS)

    sent, records = asyncio.run(run())
    assert sum(batch.count for batch, _ in sent) == RECORDS
    assert sorted(sum(1 for batch, _ in sent if batch.partition == p) for p in (0, 1)) == [3, 3]
    for p in (0, 1):
        got = sorted((r for r in records if r.partition == p), key=lambda r: r.offset)
        wanted = list(range(p, RECORDS, 2))
        assert [r.key for r in got] == [b"k%d" % i for i in wanted]
        assert [r.value for r in got] == [b"v" * 200 + b"%d" % i for i in wanted]
        assert [r.headers for r in got] == [{"n": b"%d" % i} if i % 3 == 0 else {} for i in wanted]
        # a batch's future gives its base offset, and its count the offsets it took (the changelog's
        # persisted offset relies on this, tables/store.py)
        offset = got[0].offset
        for batch, meta in ((b, m) for b, m in sent if b.partition == p):
            assert meta.offset == offset
            offset += batch.count
        assert offset == got[-1].offset + 1
