"""The input path of the agents: fetched records of their topics go from Faust's consumer into a
buffer per agent (the streams' `process_events`, each lookup's `update_<lookup>`), taken in batches.

Faust hands each fetched record to the streams on its own: a Message object, a callback raced
against flow control (two tasks and an ``asyncio.wait`` per record), an Event, a queue put, and a
step of the stream's iterator; then a tracking call, sensor calls and an ack per record. Hydrant
processes records in batches anyway, so :class:`Intake` takes its topics' records out of each fetch
(``Consumer._wait_next_records``, app/faust_ext/consumer.py ``HydrantConsumer``, before Faust turns
them into messages) as they are: aiokafka's
``ConsumerRecord`` (``timestamp`` in milliseconds). It keeps Faust's bookkeeping for them, once per
partition or batch instead of once per record:

- the consumer's read offset per partition (lag, Faust's own duplicate check) and its end offset;
- offset gaps: where the broker has nothing (transaction markers, compaction: offsets a drain
  skipped over) commits move past them; a drain that starts past the end of the last one taken means
  records were skipped: an error, never committed past, the partition read again
  (:meth:`Intake._skipped`); so is a drain passing over offsets of a hop or re-key topic, which
  Hydrant writes without transactions (:meth:`Intake._hole_again`);
- records it cannot take (the partition is not active any more, or after a gap) go back to the
  consumer, which rewinds their partition to them (app/faust_ext/consumer.py);
- pending work and acks: a batch taken is one entry of the consumer's unacked set (so a rebalance
  or a shutdown waits for it), and its acks (once its batch is delivered) fill the consumer's acked
  offsets as Faust's ``Consumer.ack`` would, so offsets are committed only behind delivered batches;
- flow control: records are handed out only while the flow is active, and the buffer is registered
  with ``app.flow_control`` so that it is cleared where Faust clears the stream queues (the end of a
  rebalance, after the inputs were positioned: app/faust_ext/recovery.py).

Records of other topics (changelogs) go through Faust's path unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from faust.types import TP
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

from app.metrics import OFFSET_GAPS

logger = logging.getLogger(__name__)

ROOM_POLL_S = 0.1  # how often a fetch loop waiting for room checks that the flow is still active


class Pending:
    """A taken batch, as the consumer's set of unacked messages holds it (Faust's ``wait_empty``
    waits until that set is empty, and reads ``acked`` and ``refcount`` of its members)."""

    __slots__ = ("__weakref__", "acked", "refcount")

    def __init__(self, size: int) -> None:
        self.acked = False
        self.refcount = size

    def __repr__(self) -> str:
        return f"<batch of {self.refcount} records, {'acked' if self.acked else 'pending'}>"


class Taken(list[Any]):
    """Records handed out together, with their offsets per partition (the consumer's TPs, in
    batch order) and their entry in the consumer's unacked set."""

    __slots__ = ("offsets", "pending")

    def __init__(self, records: Iterable[Any]) -> None:
        super().__init__(records)
        self.pending = Pending(len(self))
        offsets: dict[tuple[str, int], list[int]] = {}
        for record in self:
            key = (record.topic, record.partition)
            found = offsets.get(key)
            if found is None:
                offsets[key] = [record.offset]
            else:
                found.append(record.offset)
        self.offsets: dict[TP, list[int]] = {TP(*key): found for key, found in offsets.items()}


class Intake:
    """A bounded buffer of fetched records of ``topics``, taken in batches by one agent."""

    def __init__(
        self, app: Any, topics: Iterable[str], max_buffered: int, strict: Iterable[str] = ()
    ) -> None:
        self.app = app
        self.topics = frozenset(topics)
        #: topics whose offsets are never empty (Hydrant's hop and re-key topics: no transactions, no
        #: compaction): a hole in a drain is records not yet visible, read again (:meth:`_hole_again`)
        self.strict = frozenset(strict)
        self._holes: dict[Any, tuple[int, int]] = {}  # per partition: the last hole met, read again
        self.max_buffered = max_buffered
        #: Per partition, the fetch position after the last drain taken (unknown after :meth:`clear`).
        self._next: dict[Any, int] = {}
        self._skips: dict[Any, tuple[int, int]] = {}  # per partition: the last skip met, read again
        self._buffer: list[Any] = []
        #: Highest offset per partition whose batch was delivered (consumer lag counts from here: the
        #: fetch position runs up to ``max_buffered`` records, or a whole fetch, ahead of it).
        self.done: dict[Any, int] = {}
        self._arrived = asyncio.Event()  # records were added
        self._room = asyncio.Event()  # the buffer is below max_buffered
        self._room.set()
        app.flow_control.manage_queue(self)
        # The app's consumer (app/faust_ext/consumer.py HydrantConsumer) hands every fetch to the
        # intakes registered here, in this order.
        app.intakes = [*getattr(app, "intakes", []), self]

    def __len__(self) -> int:
        return len(self._buffer)

    def clear(self) -> None:
        """Drop every buffered record (flow control calls this when a rebalance ends; the inputs
        were just positioned at their committed offsets, so the records will be fetched again)."""
        self._buffer.clear()
        self.done.clear()
        self._next.clear()  # the partitions are positioned anew
        self._room.set()

    async def hand_over(self, consumer: Any, records: Any, active: Any) -> dict[Any, tuple[int, int]]:
        """Take this intake's records out of one fetch of ``consumer`` (``records``, the partitions
        Faust fetched for ``active``; a :class:`~app.faust_ext.consumer.Fetched` says where each
        drain started and ended), before Faust turns them into messages; then hold the fetch loop
        while the buffer is full. Returns, per partition whose records it did not take (no longer
        deliverable, or a skip), the offset to read again from and the position after the fetch:
        the consumer rewinds them (app/faust_ext/consumer.py)."""
        starts: dict[Any, int] = getattr(records, "starts", {})
        ends: dict[Any, int] = getattr(records, "ends", {})
        refused: dict[Any, tuple[int, int]] = {}
        mine = [tp for tp in records if tp.topic in self.topics]
        for tp in mine:
            fetched = records.pop(tp)
            start = starts.get(tp, fetched[0].offset)
            end = ends.get(tp, fetched[-1].offset + 1)
            if not consumer.deliverable(tp, active):
                refused[tp] = (start, end)
                continue
            again = await self._accept(consumer, tp, fetched, start, end)
            if again is not None:
                refused[tp] = (again, end)
        if mine:
            self._arrived.set()
        # Back-pressure: stop fetching while the agent is behind, but never while the flow is
        # suspended: a rebalance's table recovery reads changelogs through this same loop.
        while len(self._buffer) >= self.max_buffered and self._flowing(consumer):
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), ROOM_POLL_S)
            except TimeoutError:
                pass
        return refused

    def _flowing(self, consumer: Any) -> bool:
        return bool(consumer.flow_active and self.app.flow_control.is_active() and not consumer.should_stop)

    async def _accept(self, consumer: Any, tp: Any, records: list[Any], start: int, end: int) -> int | None:
        """What Faust's fetch loop does for a partition's records drained from position ``start``
        (to ``end``) before delivery, then buffer them. Returns None, or the offset to read again
        from when the drain started past the end of the last one taken (:meth:`_skipped`): then
        nothing is taken."""
        expected = self._next.get(tp)
        if (
            expected is not None
            and start > expected
            and not await self._skipped(consumer, tp, expected, start)
        ):
            return expected
        read = consumer._read_offset.get(tp)
        if read is not None and records[0].offset < read:
            records = [r for r in records if r.offset >= read]  # already read (Faust drops these too)
        self._next[tp] = end
        if expected is None:  # the first drain since the partition was positioned
            consumer.floors[tp] = start
        if not records:
            return None
        again = None
        if self.app.topics.acks_enabled_for(tp.topic):
            # Offsets between the start and the records, or between two records, hold nothing to read
            # (transaction markers, compacted or aborted records): commits may move past them.
            # From the first unread: after a positioning the read offset is the one sought to (Faust's
            # seek sets the next offset to read there), otherwise the last record taken.
            if read is not None and expected is None:
                read -= 1
            previous = start - 1 if read is None else max(start - 1, read)
            last = records[-1].offset
            if last - previous != len(records) or end != last + 1:  # else contiguous: no hole to walk
                holes = []
                for offset in [*(r.offset for r in records), end]:  # the end: past a trailing marker
                    if offset - previous > 1:
                        holes.append((previous + 1, offset - 1))
                    previous = offset
                if holes and tp.topic in self.strict and not self._hole_again(tp, holes[0]):
                    again = holes[0][0]  # taken up to the hole, read again from it
                    records = [r for r in records if r.offset < again]
                    holes = []
                    self._next[tp] = again
                for first, upto in holes:
                    await consumer._add_gap(tp, first, upto)
        if not records:
            return again
        consumer._read_offset[tp] = records[-1].offset
        consumer.app.monitor.track_tp_end_offset(tp, consumer.highwater(tp))
        self._buffer.extend(records)
        return again

    def _hole_again(self, tp: Any, hole: tuple[int, int]) -> bool:
        """A drain of ``tp``, a topic Hydrant writes without transactions (a hop or re-key topic, where
        no offset is empty), passed over offsets ``hole``: they were not there to read (a broker may show
        a later write of another producer first). An error, said loudly, the partition read again from
        the hole (False); unless the same hole was met reading again (True: nothing there, committed past)."""
        if self._holes.get(tp) == hole:
            del self._holes[tp]
            logger.warning(
                "%s/%d: reading again from %d passes over %d..%d once more: the broker holds no records "
                "there; committing past them",
                tp.topic, tp.partition, hole[0], hole[0], hole[1],
            )  # fmt: skip
            return True
        self._holes[tp] = hole
        OFFSET_GAPS.labels(tp.topic).inc()
        logger.error(
            "%s/%d: a fetch passed over offsets %d..%d of a topic without empty offsets: not committing "
            "past them, reading the partition again from %d",
            tp.topic, tp.partition, hole[0], hole[1], hole[0],
        )  # fmt: skip
        return False

    async def _skipped(self, consumer: Any, tp: Any, first: int, start: int) -> bool:
        """A drain of ``tp`` started at ``start``, past ``first``, the end of the last drain taken:
        offsets ``first`` .. ``start - 1`` were fetched and never delivered. An error, said loudly,
        and the partition is read again from ``first`` (False); unless reading again from there
        started at ``start`` once more (True: the broker has nothing there any more, e.g. records
        deleted by retention; the commit may move past them)."""
        if self._skips.get(tp) == (first, start):
            del self._skips[tp]
            logger.warning(
                "%s/%d: reading again from %d starts at %d: the broker holds no records at %d..%d "
                "(deleted by retention?); committing past them",
                tp.topic, tp.partition, first, start, first, start - 1,
            )  # fmt: skip
            await consumer._add_gap(tp, first, start - 1)
            return True
        self._skips[tp] = (first, start)
        OFFSET_GAPS.labels(tp.topic).inc()
        logger.error(
            "%s/%d: a fetch started at offset %d where the last one taken ended at %d: offsets %d..%d "
            "were not delivered; not committing past them, reading the partition again from %d",
            tp.topic, tp.partition, start, first, first, start - 1, first,
        )  # fmt: skip
        return False

    async def take(self, max_: int, within: float) -> Taken:
        """The next batch: up to ``max_`` records, waiting at most ``within`` seconds for more once
        the first is there. Only while the flow is active; the batch is pending until acked."""
        flow = self.app.flow_control
        deadline: float | None = None
        while True:
            await flow.acquire()
            if self._buffer and deadline is None:
                deadline = time.monotonic() + within
            if deadline is not None and (len(self._buffer) >= max_ or time.monotonic() >= deadline):
                if flow.is_active() and self._buffer:
                    break
                deadline = None
                continue
            self._arrived.clear()
            try:
                await asyncio.wait_for(
                    self._arrived.wait(), None if deadline is None else max(0.0, deadline - time.monotonic())
                )
            except TimeoutError:
                pass
        return self._hand_out(max_)

    def _hand_out(self, max_: int) -> Taken:
        batch = Taken(self._buffer[:max_])
        del self._buffer[:max_]
        if len(self._buffer) < self.max_buffered:
            self._room.set()
        self.app.consumer._unacked_messages.add(batch.pending)
        return batch

    def take_ready(self, max_: int) -> Taken:
        """Up to ``max_`` records that are already here, without waiting (none while the flow is
        suspended); the batch is pending until acked."""
        if not self._buffer or not self.app.flow_control.is_active():
            return Taken(())
        return self._hand_out(max_)

    def ack(self, batch: Taken) -> None:
        """Let the consumer commit past ``batch`` (every record of it delivered): Faust's
        ``Consumer.ack`` for each record, a partition at a time."""
        consumer = self.app.consumer
        done = self.done
        with ack_lock:
            for tp, offsets in batch.offsets.items():
                last = max(offsets)
                if last > done.get(tp, -1):
                    done[tp] = last
                if not self.app.topics.acks_enabled_for(tp.topic):
                    continue
                committed = consumer._committed_offset[tp]
                index = consumer._acked_index[tp]
                new = [o for o in offsets if (committed is None or o >= committed) and o not in index]
                index.update(new)
                consumer._acked[tp].extend(new)
                consumer._n_acked += len(new)
            batch.pending.acked = True
            consumer._unacked_messages.discard(batch.pending)
            notify(consumer._waiting_for_ack)
