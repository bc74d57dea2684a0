"""Faust's table recovery, subclassed: the bulk restore of changelogs first, and the input streams
resumed after a rebalance without dropping records (two fixes to Faust).

Resuming the inputs. Faust ends every rebalance in ``Recovery._resume_streams`` (a rebalance with no
tables to recover) or ``Recovery.on_recovery_completed`` (after table recovery):

1. resume fetching the input partitions;
2. seek them to their committed offsets (a round trip per partition);
3. resume flow control — which *clears every stream queue*.

Records fetched between 1 and 3 are put into the stream queues and then thrown away, although the
consumer's position has moved past them: nothing fetches them again. Window state keeps the highest
applied offset per source partition, so when later records of that partition are applied, the
dropped ones are lost for good (taken for duplicates if they ever come back). A partition with no
committed offset yet is worse off: step 2 leaves its position where the dropped records took it.
Reliability scenario (a) lost a whole partition this way (a worker that joined after the previous
owner was killed before its first commit), and (b)/(c) lost a few hundred events.

:class:`HydrantRecovery` replaces that step (:meth:`HydrantRecovery._start_inputs`) with one that
positions every input partition while Faust still holds it paused — at its committed offset, or at
the beginning of the partition when the group has none (``auto_offset_reset=earliest``) — then clears
the queues, and only then lets the fetcher hand records of those partitions to the streams. Records
that reached the agent before the seek are delivered again from the committed offset and recognised
as duplicates by the window state.

The bulk restore. When Faust computes where the recovery of active partitions starts
(``Recovery._build_offsets``), :class:`HydrantRecovery` first reads their changelogs in large
fetches (app/kafka/changelog.py) and writes them straight into RocksDB (tables/restore.py), so Faust
then finds nothing (or only the newest records) left to read.

A recovery that cannot finish. Faust's ``Recovery._wait`` treats a step that timed out as if the
service had stopped: its loop ends for good, logged at debug level, and the inputs are never resumed
(the worker looks healthy and consumes nothing). :meth:`HydrantRecovery._wait` instead logs the step
at ERROR, counts it (``hydrant_recovery_failures_total``), makes the worker not ready with the reason
(``app.recovery_failure``: ``/readyz``, ``/status``), and runs the recovery again after a backoff;
after :data:`RETRIES` failures in a row it crashes the worker, so that its supervisor restarts it.

Faust builds its ``Recovery`` in ``TableManager.recovery``; :class:`HydrantTableManager` builds a
:class:`HydrantRecovery` there, and reaches Faust through the ``TableManager`` setting
(app/faust_ext/app.py ``faust_options``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, cast

from aiokafka import TopicPartition
from faust.tables.manager import TableManager
from faust.tables.recovery import RebalanceAgain, Recovery, ServiceStopped
from faust.types import TP, ConsumerT

from app.errors import HydrantError
from app.faust_ext.tables import FaustStateTable, report_stale
from app.kafka.changelog import restore
from app.metrics import RECOVERY_FAILURES
from tables.restore import write_fetch

if TYPE_CHECKING:
    from collections import Counter

    from app.faust_ext.app import HydrantApp

logger = logging.getLogger(__name__)

#: Failed recoveries in a row before the worker crashes (its supervisor restarts it).
RETRIES = 5
#: Seconds before retrying after the n-th failure in a row (the last value repeats).
BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 20.0)


class RecoveryFailed(HydrantError):
    """Table recovery failed :data:`RETRIES` times in a row; the worker stops."""


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
    consumer.positioned += 1  # what was fetched before is never delivered (app/faust_ext/consumer.py)


class HydrantRecovery(Recovery):
    """Faust's ``Recovery`` with the bulk restore ahead of active recovery and the inputs positioned
    before they resume (module docstring).
    Written against faust-streaming 0.15.3."""

    _failures = 0  # recoveries failed in a row

    async def _wait(self, coro: Any, timeout: Any = None) -> None:  # noqa: ASYNC109 (Faust's signature)
        """Faust's wait for a recovery step, except that a step that timed out is a failure
        (:meth:`_failed`), not the service stopping."""
        try:
            await super()._wait(coro, timeout=timeout)
        except ServiceStopped:
            if timeout is None or self.should_stop or self._crashed.is_set():
                raise
            step = getattr(coro, "__name__", None) or type(coro).__name__
            await self._failed(f"{step} did not finish within {float(timeout):g}s")

    async def _failed(self, reason: str) -> None:
        """Say why recovery failed (log, metric, readiness), then run it again after a backoff
        (RebalanceAgain makes Faust's loop start over once the signal is set), or crash the worker
        after :data:`RETRIES` failures in a row."""
        app = cast("HydrantApp", self.app)
        self._failures += 1
        RECOVERY_FAILURES.inc()
        if self._failures >= RETRIES:
            app.recovery_failure = (
                f"table recovery failed {self._failures} times in a row ({reason}): stopping"
            )
            logger.error("%s", app.recovery_failure)
            await self.crash(RecoveryFailed(app.recovery_failure))
            raise ServiceStopped()
        delay = BACKOFF_S[min(self._failures, len(BACKOFF_S)) - 1]
        app.recovery_failure = (
            f"table recovery failed ({reason}); retry {self._failures} of {RETRIES - 1} in {delay:g}s"
        )
        logger.error("%s", app.recovery_failure)
        await self.sleep(delay)
        self.signal_recovery_start.set()  # the same assignment, unless a rebalance set it meanwhile
        raise RebalanceAgain()

    def _recovered(self) -> None:
        """A recovery completed: readiness no longer reports a failure."""
        self._failures = 0
        cast("HydrantApp", self.app).recovery_failure = None

    async def _build_offsets(
        self, consumer: ConsumerT, tps: set[TP], destination: Counter[TP], title: str
    ) -> None:
        """Faust's computation of where recovery starts, after the bulk restore of active partitions."""
        if title == "active":  # standbys catch up in the background, after the worker is ready
            tables = {tp: self.tp_to_table[tp] for tp in tps if tp in self.tp_to_table}
            starts = {tp: destination.get(tp) for tp in tables}
            budget = 0.5 * float(self.app.conf.broker_request_timeout)
            ends = dict(self.active_highwaters)  # Faust's high watermark - 1: the last offset
            options = cast("HydrantApp", self.app).client_options

            restored = {tp: FaustStateTable(table) for tp, table in tables.items()}

            def apply(tp: Any, records: list[Any]) -> None:
                table = restored[tp]
                report_stale(table.name, tp.partition, write_fetch(table, tp.partition, records))

            for tp, offset in (await restore(options, starts, ends, budget, apply)).items():
                destination[tp] = offset
        await super()._build_offsets(consumer, tps, destination, title)

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        """Faust's end of table recovery, ending in :meth:`_start_inputs`."""
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
        await self._start_inputs(generation_id, standbys_ready=not self.app.assignor.assigned_standbys())

    async def _resume_streams(self, generation_id: int = 0) -> None:
        """Faust's end of a rebalance with no tables to recover, ending in :meth:`_start_inputs`."""
        await self.app.on_rebalance_complete.send()
        await self._start_inputs(generation_id, standbys_ready=True)

    async def _start_inputs(self, generation_id: int, standbys_ready: bool) -> None:
        """The end of a rebalance: the input partitions are positioned while still paused, then the
        stream queues cleared, then the partitions resumed (module docstring)."""
        app = cast(Any, self.app)
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
        self._recovered()
        self.log.info("Worker ready")


class HydrantTableManager(TableManager):
    """Faust's ``TableManager`` whose recovery service is a :class:`HydrantRecovery`.
    Written against faust-streaming 0.15.3."""

    @property
    def recovery(self) -> Recovery:
        """Recovery service used by this table manager: a :class:`HydrantRecovery`."""
        if self._recovery is None:
            self._recovery = HydrantRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery
