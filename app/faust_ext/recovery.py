"""Resuming the input streams after a rebalance without dropping records (a fix to Faust).

Faust (faust-streaming 0.11) ends every rebalance in ``Recovery._resume_streams``:

1. resume fetching the input partitions;
2. seek them to their committed offsets (a round trip per partition);
3. resume flow control — which *clears every stream queue*

(``Recovery.on_recovery_completed``, or ``_resume_streams`` when there are no tables).

Records fetched between 1 and 3 are put into the stream queues and then thrown away, although the
consumer's position has moved past them: nothing fetches them again. Window state keeps the highest
applied offset per source partition, so when later records of that partition are applied, the
dropped ones are lost for good (taken for duplicates if they ever come back). A partition with no
committed offset yet is worse off: step 2 leaves its position where the dropped records took it.
Reliability scenario (a) lost a whole partition this way (a worker that joined after the previous
owner was killed before its first commit), and (b)/(c) lost a few hundred events.

:func:`install` replaces that step with one that positions every input partition while Faust still
holds it paused — at its committed offset, or at the beginning of the partition when the group has
none (``auto_offset_reset=earliest``) — then clears the queues, and only then lets the fetcher hand
records of those partitions to the streams. Records that reached the agent before the seek are
delivered again from the committed offset and recognised as duplicates by the window state.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import TopicPartition

logger = logging.getLogger(__name__)


async def position_inputs(consumer: Any, inputs: set[Any]) -> None:
    """Seek every partition to its committed offset, and ``inputs`` without one to their beginning."""
    await consumer.perform_seek()
    # Faust keeps a committed offset of 0 as None too: both mean "read from the start".
    uncommitted = sorted(tp for tp in inputs if not consumer._committed_offset.get(tp))
    if uncommitted:
        logger.info(
            "no committed offset for %s: reading from the beginning",
            ", ".join(f"{tp.topic}/{tp.partition}" for tp in uncommitted),
        )
        await consumer._thread.seek_to_beginning(
            *(TopicPartition(tp.topic, tp.partition) for tp in uncommitted)
        )
        for tp in uncommitted:
            consumer._read_offset[tp] = None


async def start_inputs(self: Any, generation_id: int, standbys_ready: bool) -> None:
    """The end of a rebalance, for Faust's ``Recovery``: the input partitions are positioned while
    still paused, then the stream queues cleared, then the partitions resumed (module docstring)."""
    app = self.app
    consumer = app.consumer
    if app.consumer_generation_id != generation_id:
        self.log.warning("Recovery rebalancing again")
        return
    inputs = {tp for tp in consumer.assignment() if not self._is_changelog_tp(tp)}
    if inputs:
        self.log.info("Seek stream partitions to committed offsets.")
        await self._wait(position_inputs(consumer, inputs), timeout=app.conf.broker_request_timeout)
        if app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again")
            return
    app.flow_control.resume()  # clears the stream queues; nothing of ``inputs`` has reached them yet
    consumer.resume_partitions(inputs)
    self.completed.set()
    consumer.resume_flow()
    await app._fetcher.maybe_start()
    self.tables.on_actives_ready()
    if standbys_ready:
        self.tables.on_standbys_ready()
    app.on_rebalance_end()
    self.log.info("Worker ready")


async def on_recovery_completed(self: Any, generation_id: int = 0) -> None:
    """``Recovery.on_recovery_completed`` (after table recovery) ending in :func:`start_inputs`."""
    self.log.info("Restore complete!")
    await self.app.on_rebalance_complete.send()
    self._set_recovery_ended()
    callbacks = [
        asyncio.ensure_future(
            table.on_recovery_completed(self.actives_for_table[table], self.standbys_for_table[table])
        )
        for table in self.tables.values()
    ]
    if callbacks:
        await asyncio.wait(callbacks)
    await start_inputs(self, generation_id, standbys_ready=not self.app.assignor.assigned_standbys())


async def resume_streams(self: Any, generation_id: int = 0) -> None:
    """``Recovery._resume_streams`` (a rebalance with no tables to recover) ending in :func:`start_inputs`."""
    await self.app.on_rebalance_complete.send()
    await start_inputs(self, generation_id, standbys_ready=True)


def install() -> None:
    """Make Faust's recovery end every rebalance with :func:`start_inputs`."""
    from faust.tables.recovery import Recovery

    Recovery.on_recovery_completed = on_recovery_completed  # type: ignore[method-assign]
    Recovery._resume_streams = resume_streams  # type: ignore[method-assign]
