"""Faust's aiokafka transport, subclassed: fetches that never lose a record across a rebalance, that
hand the stream topics' records to the intakes (app/faust_ext/intake.py), and exact end offsets.

- :class:`HydrantConsumerThread` (the thread that owns aiokafka's consumer): fetches wait at most
  HYDRANT_FETCH_MAX_WAIT_MS (Faust fixes 1,500 ms); each fetch drains a snapshot of Faust's active
  partitions, every other assigned partition paused in aiokafka itself (Faust's ``pause_partitions``
  only edits a set that aiokafka reads when it drains, where an empty set means "all"); a partition's
  records that cannot be delivered are rewound (:meth:`HydrantConsumerThread.rewind`); end offsets
  are probed exactly (:func:`app.kafka.end_offsets.exact_end_offsets`: the bundled broker's
  ListOffsets answer is short, and Kafka's is the same as the probe's).
- :class:`HydrantConsumer`: after each fetch, the records of partitions that are not active now (a
  rebalance or a recovery paused them while the fetch waited), or fetched while the flow is stopped,
  are rewound, never dropped; then the intakes (``app.intakes``) take their topics' records before
  Faust turns the rest (changelogs) into messages. docs/reliability.md says what this guarantees.
- :class:`HydrantTransport` creates the consumer; the app uses it as its consumer transport
  (app/faust_ext/app.py ``HydrantApp._new_transport``). Its producer is Faust's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, cast

from aiokafka import TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP, ConsumerT

from app.kafka.end_offsets import exact_end_offsets

if TYPE_CHECKING:
    from app.faust_ext.app import HydrantApp

logger = logging.getLogger(__name__)

#: Per partition: (offset of the first record not delivered, the position right after the last).
Rewinds = Mapping[TP, tuple[int, int]]


def hold_paused(consumer: Any, active: frozenset[TopicPartition]) -> None:
    """Pause in aiokafka every assigned partition outside ``active`` and resume those in it (aiokafka
    then neither fetches nor returns a paused partition's records, and keeps its position)."""
    assigned = consumer.assignment()
    paused = consumer.paused()
    stop = [tp for tp in assigned if tp not in active and tp not in paused]
    go = [tp for tp in paused if tp in active]
    if stop:
        consumer.pause(*stop)
    if go:
        consumer.resume(*go)


def rewind_positions(consumer: Any, rewinds: Rewinds) -> list[TP]:
    """Seek each partition of ``rewinds`` back to its first undelivered offset, if its position is still
    right after those records (a seek since, by a recovery or a rebalance, wins). Returns those sought."""
    assignment = consumer._subscription.subscription
    assignment = assignment.assignment if assignment is not None else None
    sought = []
    for tp, (first, after) in rewinds.items():
        ktp = TopicPartition(tp.topic, tp.partition)
        state = assignment.state_value(ktp) if assignment is not None else None
        if state is None:  # revoked: its next owner starts from the committed offset
            continue
        if state.has_valid_position and state.position == after:
            consumer.seek(ktp, first)
            sought.append(tp)
    return sought


class HydrantConsumerThread(AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread with Hydrant's fetch wait, paused partitions held in aiokafka,
    rewinds and exact end offsets (module docstring).
    Written against faust-streaming 0.15.3 and aiokafka 0.14.0."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Faust passes fetch_max_wait_ms=1500; aiokafka hands this attribute to its fetcher on start.
        consumer._fetch_max_wait_ms = cast("HydrantApp", self.app).fetch_max_wait_ms
        return consumer

    async def _fetch_records(
        self,
        consumer: Any,
        active_partitions: Any,
        timeout: float | None = None,  # noqa: ASYNC109 (Faust's signature)
        max_records: int | None = None,
    ) -> Any:
        """Faust's fetch, over a snapshot of the active partitions taken now, the others paused."""
        if active_partitions is None:  # a client-only app: every partition
            return await super()._fetch_records(consumer, cast(Any, None), timeout, max_records)
        active = frozenset(TopicPartition(tp.topic, tp.partition) for tp in active_partitions)
        if not active:  # aiokafka would read an empty set as "every partition"
            return {}
        hold_paused(consumer, active)
        return await super()._fetch_records(consumer, cast(Any, active), timeout, max_records)

    async def rewind(self, rewinds: Rewinds) -> list[TP]:
        """:func:`rewind_positions` in the consumer's thread (where aiokafka's state lives)."""
        sought = await self.call_thread(cast(Any, rewind_positions), self._ensure_consumer(), rewinds)
        return cast(list[TP], sought)

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        approx = await super()._highwaters(partitions)
        if self.consumer.in_transaction:
            return approx
        return await exact_end_offsets(cast("HydrantApp", self.app).client_options, approx)


class HydrantConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer whose fetches rewind what they cannot deliver and hand the intakes'
    records over (``app.intakes``); its thread is a :class:`HydrantConsumerThread`.
    Written against faust-streaming 0.15.3."""

    _thread: HydrantConsumerThread

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return HydrantConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def deliverable(self, tp: TP, active: Any) -> bool:
        """Records of ``tp`` may be delivered now: the flow runs and the partition is active."""
        return bool(
            self.flow_active
            and not self.should_stop
            and (active is None or tp in active or tp in self._buffered_partitions)
        )

    async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:  # noqa: ASYNC109 (Faust calls it so)
        fetched, active = await super()._wait_next_records(timeout)
        records = cast(dict[TP, list[Any]], fetched)
        if not records:
            return records, active
        rewinds: dict[TP, tuple[int, int]] = {}
        for tp in list(records):
            if not self.deliverable(tp, active):
                found = records.pop(tp)
                rewinds[tp] = (found[0].offset, found[-1].offset + 1)
        for intake in getattr(self.app, "intakes", ()):  # in the order they registered
            rewinds.update(await intake.hand_over(self, records, active))
        if rewinds and not self.should_stop:
            sought = await self._thread.rewind(rewinds)
            if sought:
                logger.debug(
                    "rewound %s", ", ".join(f"{tp.topic}/{tp.partition} to {rewinds[tp][0]}" for tp in sought)
                )
        return records, active


class HydrantTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport creating :class:`HydrantConsumer` consumers.
    Written against faust-streaming 0.15.3."""

    Consumer: ClassVar[type[ConsumerT]] = HydrantConsumer
