"""Faust's aiokafka transport, subclassed: fetches that never lose a record across a rebalance, that
hand the stream topics' records to the intakes (app/faust_ext/intake.py), and exact end offsets.

- :class:`HydrantConsumerThread` (the thread that owns aiokafka's consumer): fetches wait at most
  HYDRANT_FETCH_MAX_WAIT_MS (Faust fixes 1,500 ms); each fetch drains a snapshot of Faust's active
  partitions (taken in the main loop), every other assigned partition paused in aiokafka itself
  (Faust's ``pause_partitions`` only edits a set that aiokafka reads when it drains, where an empty
  set means "all"), and says where each drained partition's position was before and after it
  (:class:`Fetched`: what tells a skipped record from a hole in the log); a partition's records that
  cannot be delivered are rewound (:meth:`HydrantConsumerThread.rewind`); end offsets are probed
  exactly (:func:`app.kafka.end_offsets.exact_end_offsets`: the bundled broker's ListOffsets answer is
  short, and Kafka's is the same as the probe's).
- :class:`HydrantConsumer`: after each fetch, the records of partitions that are not active now (a
  rebalance or a recovery paused them while the fetch waited), or fetched while the flow is stopped
  or a rebalance runs, are rewound, never dropped; then the intakes (``app.intakes``) take their
  topics' records before Faust turns the rest (changelogs) into messages. It commits what was applied
  before its partitions are revoked. docs/operations.md ("After a rebalance") says what this guarantees.
- :class:`HydrantTransport` creates the consumer; the app uses it as its consumer transport
  (app/faust_ext/app.py ``HydrantApp._new_transport``). Its producer is Faust's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, cast

from aiokafka import TopicPartition
from aiokafka.errors import ConsumerStoppedError
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP, ConsumerT

from app.kafka.end_offsets import exact_end_offsets
from app.kafka.tansu_group import use_on_tansu
from app.metrics import OFFSET_GAPS

if TYPE_CHECKING:
    from app.faust_ext.app import HydrantApp

logger = logging.getLogger(__name__)

#: Per partition: (offset to read again from, the position right after the records not delivered).
Rewinds = Mapping[TP, tuple[int, int]]


class Fetched(dict[Any, list[Any]]):
    """One fetch's records per partition (aiokafka's ``TopicPartition``, equal to Faust's ``TP``), with
    each drained partition's fetch position before the drain (``starts``) and after it (``ends``).
    Between a start and the first record, or between two records, lie only offsets the broker skipped
    (transaction markers, compacted or aborted records): aiokafka returns a partition's records from its
    position on, skipping nothing else."""

    def __init__(
        self, records: Mapping[Any, list[Any]], starts: dict[Any, int], ends: dict[Any, int]
    ) -> None:
        super().__init__(records)
        self.starts = starts
        self.ends = ends


def drain_starts(fetcher: Any, active: frozenset[TopicPartition]) -> dict[Any, int]:
    """Where the next drain of each active partition with buffered records starts."""
    starts = {}
    for tp, result in fetcher._records.items():
        partition_records = getattr(result, "_partition_records", None)  # a FetchResult (not an error)
        if tp in active and partition_records is not None:
            starts[tp] = partition_records.next_fetch_offset
    return starts


def positions(consumer: Any, tps: Any) -> dict[Any, int]:
    """The fetch position of each of ``tps`` now."""
    assignment = consumer._subscription.subscription.assignment
    out = {}
    for tp in tps:
        state = assignment.state_value(tp) if assignment is not None else None
        if state is not None and state.has_valid_position:
            out[tp] = state.position
    return out


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
        if cast("HydrantApp", self.app).broker_profile == "tansu":
            use_on_tansu()  # a leader leaving mid-rebalance stalls Tansu's groups (app/kafka/tansu_group.py)
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
        """Faust's fetch (aiokafka's ``fetched_records`` loop) over ``active_partitions``, a snapshot
        taken in the main loop (:meth:`HydrantConsumer._getmany`), the other partitions paused; a
        :class:`Fetched` with the drained partitions' positions before and after."""
        if active_partitions is None:  # a client-only app: every partition
            return await super()._fetch_records(consumer, cast(Any, None), timeout, max_records)
        active = frozenset(TopicPartition(tp.topic, tp.partition) for tp in active_partitions)
        if not active or not self.consumer.flow_active:  # aiokafka would read an empty set as "all"
            return {}
        fetcher = consumer._fetcher
        if consumer._closed or fetcher._closed:
            raise ConsumerStoppedError()
        hold_paused(consumer, active)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout or 0.0)
        with fetcher._subscriptions.fetch_context():
            while True:
                if fetcher._subscriptions.reassignment_in_progress:
                    await fetcher._subscriptions.wait_for_assignment()
                starts = drain_starts(fetcher, active)  # no await from here to the drain
                drained = await fetcher.fetched_records(active, timeout=0, max_records=max_records)
                if drained:
                    return Fetched(drained, starts, positions(consumer, drained))
                remaining = deadline - loop.time()
                if remaining <= 0 or fetcher._closed or not self.consumer.flow_active:
                    return {}
                waiter = fetcher._create_fetch_waiter()
                _, pending = await asyncio.wait([waiter], timeout=remaining)
                for future in pending:
                    future.cancel()
                if waiter.done() and not waiter.cancelled():
                    waiter.result()  # a fetch error (authorization), as aiokafka raises it

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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: How many times the inputs were positioned (app/faust_ext/recovery.py ``position_inputs``):
        #: records fetched before the last positioning are never delivered.
        self.positioned = 0
        self._fetch_epoch = 0  # ``positioned`` when the fetch being handed over began
        #: Per input partition: where its first drain since it was positioned started (app/faust_ext/
        #: intake.py); without a committed offset, a commit never passes an offset from there on not acked.
        self.floors: dict[TP, int] = {}
        self._through: dict[TP, int] = {}  # per partition: the last offset to commit computed
        self._blocked: set[tuple[TP, int]] = set()  # head gaps already reported

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return HydrantConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def deliverable(self, tp: TP, active: Any) -> bool:
        """Records of ``tp`` may be delivered now: the flow runs, the partition is active, and no
        rebalance runs unless ``tp`` is a changelog (a recovery reads those)."""
        changelog = self._is_changelog_tp(tp)
        return bool(
            self.flow_active
            and not self.should_stop
            and (active is None or tp in active or tp in self._buffered_partitions)
            and (changelog or (not self.app.rebalancing and self._fetch_epoch == self.positioned))
        )

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Faust's record of offsets holding nothing to read (commits move past them), from the
        committed offset on (Faust's own starts one past it), without yielding to the loop."""
        committed = self._committed_offset[tp]
        if committed is not None:
            offset_from = max(offset_from, committed)
        if offset_from <= offset_to:
            gaps = self._gap[tp]
            gaps.addi(offset_from, offset_to + 1)
            gaps.merge_overlaps()

    def _new_offset(self, tp: TP) -> int | None:
        """Faust's next offset to commit, never past an offset not acked (nor a hole) from the committed
        one on, or from the partition's floor when it has none: Faust checks neither (it lets the
        committed offset itself be passed over, and anything when none is committed)."""
        acked = self._acked[tp]
        bounds = [
            b for b in (self._committed_offset.get(tp), self.floors.get(tp), self._through.get(tp)) if b
        ]
        floor = max(bounds) if bounds else self.floors.get(tp)  # 0 is a floor too
        if acked and floor is not None:
            first = min(acked)
            gaps = self._gap.get(tp)
            if gaps:
                first = min([first, *(gap.begin for gap in gaps.overlap(0, max(acked) + 1))])
            if first > floor:
                self._head_gap(tp, floor, first)
                return None
        offset = super()._new_offset(tp)
        if offset is not None:  # Faust forgot the acks below it, whether or not the commit succeeds
            self._through[tp] = offset
        return offset

    def _head_gap(self, tp: TP, floor: int, first: int) -> None:
        if (tp, floor) in self._blocked:
            return
        self._blocked.add((tp, floor))
        OFFSET_GAPS.labels(tp.topic).inc()
        logger.error(
            "%s/%d: offsets %d..%d were never applied, yet later ones were: not committing past them "
            "(the partition's next owner reads them again)",
            tp.topic, tp.partition, floor, first - 1,
        )  # fmt: skip

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:  # noqa: ASYNC109 (Faust's)
        # A positioning while this fetch runs makes its records stale (Faust calls this once the flow
        # runs: a fetch that waited for a rebalance's end starts after it).
        self._fetch_epoch = self.positioned
        # A copy made here: the consumer thread must not iterate Faust's set while this loop edits it.
        snapshot = None if active_partitions is None else frozenset(active_partitions)
        return await self._thread.getmany(cast(Any, snapshot), timeout)

    async def on_partitions_revoked(self, revoked: Any) -> None:
        """Commit what was applied, then Faust's revoke (which forgets the partitions' acked offsets,
        so the next owner would read them again)."""
        try:
            await self.commit()
        except Exception as exc:  # a member that lost its generation cannot commit: fine, at least once
            logger.warning("commit before the revoke failed: %r", exc)
        for tp in revoked:
            self.floors.pop(tp, None)
            self._through.pop(tp, None)
        self._blocked = {(tp, floor) for tp, floor in self._blocked if tp not in revoked}
        await super().on_partitions_revoked(revoked)

    async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:  # noqa: ASYNC109 (Faust calls it so)
        self._fetch_epoch = -1  # no fetch handed over yet (_getmany sets it when one begins)
        fetched, active = await super()._wait_next_records(timeout)
        records = cast(dict[TP, list[Any]], fetched)
        if not records:
            return records, active
        ends: dict[Any, int] = getattr(records, "ends", {})
        starts: dict[Any, int] = getattr(records, "starts", {})
        rewinds: dict[TP, tuple[int, int]] = {}
        for tp in list(records):
            if not self.deliverable(tp, active):
                found = records.pop(tp)
                rewinds[tp] = (starts.get(tp, found[0].offset), ends.get(tp, found[-1].offset + 1))
        for intake in getattr(self.app, "intakes", ()):  # in the order they registered
            rewinds.update(await intake.hand_over(self, records, active))
        # Only now, the fetch taken: Faust's commit every so many acks (it awaits the broker).
        if self._commit_every is not None and self._n_acked >= self._commit_every:
            self._n_acked = 0
            await self.commit()
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
