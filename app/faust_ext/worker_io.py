"""The running Faust worker as the engine's :class:`app.engine.batch.WorkerIO` (faust-streaming
0.15.3): stop flag, producers, consumer assignment and metadata, crash."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from faust.types import TP

from app.faust_ext.live_metrics import processed_offset


class FaustWorkerIO:
    """``app``'s consumer and producer, read when the engine asks (they exist once the worker runs)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    @property
    def should_stop(self) -> bool:
        return bool(self.app.should_stop)

    @property
    def producer(self) -> Any:
        return self.app.producer

    @property
    def kafka_producer(self) -> Any:
        return self.app.producer._ensure_producer()  # Faust's started AIOKafkaProducer

    def assignment(self) -> set[Any]:
        return set(self.app.consumer.assignment())

    def topic_partitions(self, topic: str) -> int | None:
        count = self.app.consumer.topic_partitions(topic)
        return None if count is None else int(count)

    async def crash(self, exc: BaseException) -> None:
        await self.app.crash(exc)

    def ready(self) -> bool:
        app = self.app
        return bool(app.tables.recovery.completed.is_set() and not app.in_recovery and not app.rebalancing)

    def committed(self, topic: str, partition: int) -> int | None:
        offset = self.app.consumer._committed_offset.get(TP(topic, partition))  # Faust keeps them private
        return None if offset is None else int(offset)

    def behind(self, topics: Collection[str]) -> bool:
        """Whether an assigned partition of ``topics`` holds records not processed yet (lag)."""
        consumer = self.app.consumer
        for tp in consumer.assignment():
            if tp.topic not in topics:
                continue
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            read = processed_offset(self.app, tp)
            position = read + 1 if read is not None else consumer._committed_offset.get(tp) or 0
            if highwater > position:
                return True
        return False
