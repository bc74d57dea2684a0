"""The input path of the stream agent: fetched records go from Faust's consumer into one buffer that
the agent takes in batches.

Faust hands each fetched record to the streams on its own: a callback raced against flow control
(two tasks and an ``asyncio.wait`` per record), an Event, a queue put, and a step of the stream's
iterator. A profile of the shop pipeline put ~40 % of the worker's time there. Hydrant processes
records in batches anyway, so :class:`Intake` takes its topics' records out of the consumer's fetch
loop (``Consumer.getmany``) in bulk and keeps Faust's bookkeeping for them:

- the consumer's read offset per partition (lag, Faust's own duplicate check);
- offset gaps, so commits can move past them;
- tracking (``track_message`` when the agent takes a record) and acks (``consumer.ack`` once its
  batch is delivered), so offsets are committed only behind delivered batches and a rebalance waits
  for the batch in flight;
- flow control: records are handed out only while the flow is active, and the buffer is registered
  with ``app.flow_control`` so that it is cleared where Faust clears the stream queues (the end of a
  rebalance, after the inputs were positioned: app/rebalance.py).

Records of other topics (changelogs, lookup topics) go through Faust's path unchanged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

ROOM_POLL_S = 0.1  # how often a fetch loop waiting for room checks that the flow is still active


class Intake:
    """A bounded buffer of fetched records of ``topics``, taken in batches by one agent."""

    def __init__(self, app: Any, topics: Iterable[str], max_buffered: int) -> None:
        self.app = app
        self.topics = frozenset(topics)
        self.max_buffered = max_buffered
        self._buffer: list[Any] = []
        #: Highest offset per partition whose batch was delivered (consumer lag counts from here: the
        #: fetch position runs up to ``max_buffered`` records, or a whole fetch, ahead of it).
        self.done: dict[Any, int] = {}
        self._arrived = asyncio.Event()  # records were added
        self._room = asyncio.Event()  # the buffer is below max_buffered
        self._room.set()
        app.flow_control.manage_queue(self)
        # Installed on the consumer when the app creates it (app/main.py HydrantApp), before any
        # fetch: Faust's fetch loop binds ``getmany`` once, when it starts.
        app.intakes = [*getattr(app, "intakes", []), self]

    def __len__(self) -> int:
        return len(self._buffer)

    def clear(self) -> None:
        """Drop every buffered record (flow control calls this when a rebalance ends; the inputs
        were just positioned at their committed offsets, so the records will be fetched again)."""
        self._buffer.clear()
        self.done.clear()
        self._room.set()

    def install(self, consumer: Any) -> None:
        """Take this intake's records out of ``consumer``'s fetch loop (before its fetcher starts)."""
        fetch = consumer.getmany

        async def getmany(timeout: float) -> AsyncIterator[tuple[Any, Any]]:  # noqa: ASYNC109 (Faust calls it so)
            async for tp, message in fetch(timeout):
                if tp.topic in self.topics:
                    await self._accept(consumer, tp, message)
                else:
                    yield tp, message
            self._arrived.set()
            # Back-pressure: stop fetching while the agent is behind, but never while the flow is
            # suspended: a rebalance's table recovery reads changelogs through this same loop.
            while len(self._buffer) >= self.max_buffered and self._flowing(consumer):
                self._room.clear()
                try:
                    await asyncio.wait_for(self._room.wait(), ROOM_POLL_S)
                except TimeoutError:
                    pass

        consumer.getmany = getmany

    def _flowing(self, consumer: Any) -> bool:
        return bool(consumer.flow_active and self.app.flow_control.is_active() and not consumer.should_stop)

    async def _accept(self, consumer: Any, tp: Any, message: Any) -> None:
        """What Faust's fetch loop does for a record before delivery, then buffer it."""
        offset = message.offset
        read = consumer._read_offset.get(tp)
        if read is not None and offset < read:
            return  # already read (Faust drops these too)
        if read and offset - read > 1 and self.app.topics.acks_enabled_for(tp.topic):
            await consumer._add_gap(tp, read + 1, offset)
        commit_every = consumer._commit_every
        if commit_every is not None and consumer._n_acked >= commit_every:
            consumer._n_acked = 0
            await consumer.commit()
        consumer._read_offset[tp] = offset
        self._buffer.append(message)

    async def take(self, max_: int, within: float) -> list[Any]:
        """The next batch: up to ``max_`` records, waiting at most ``within`` seconds for more once
        the first is there. Only while the flow is active; each record is tracked as pending ack."""
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

    def _hand_out(self, max_: int) -> list[Any]:
        batch = self._buffer[:max_]
        del self._buffer[:max_]
        if len(self._buffer) < self.max_buffered:
            self._room.set()
        track = self.app.consumer.track_message
        for message in batch:
            track(message)
        return batch

    def take_ready(self, max_: int) -> list[Any]:
        """Up to ``max_`` records that are already here, without waiting (none while the flow is
        suspended); each is tracked as pending ack."""
        if not self._buffer or not self.app.flow_control.is_active():
            return []
        return self._hand_out(max_)

    def ack(self, batch: Iterable[Any]) -> None:
        """Let the consumer commit past ``batch`` (every record of it delivered)."""
        ack = self.app.consumer.ack
        done = self.done
        for message in batch:
            ack(message)
            if message.offset > done.get(message.tp, -1):
                done[message.tp] = message.offset
