"""How far every upstream partition of a stage has progressed in event time (docs/features.md, "Late
rule"): the bound that lateness and bucket expiry at a later stage must not pass.

A partition of a stream's first stage progresses to the newest event time of the records it processed
(read from the stream topic at home, or re-keyed to it). Each record sent on to a later stage carries
its sender's progress as of that record (``hydrant-watermark``): at the first stage the partition's,
at a later stage that stage's. The sender is a *channel*: a partition of an
earlier stage of the same stream (the last step of the record's route). Records of one channel reach a
stage partition in order, so per stage partition the latest mark of each channel is its sender's bound,
and the stage's progress is the least over its channels. A channel that has sent nothing to the partition for
``idle_ms`` (wall clock; one never heard from: since the partition was first seen here) stops holding
it back. Kept in memory: after a restart, a rebalance or a pause of the worker the stage is held back
until its channels speak again or go idle, so that is only ever more lenient.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from app.records.source import stage_tag

#: The progress of a channel not heard from yet: holds its stage back without bound.
UNKNOWN = -(2**53)
PAUSE_S = 1.0  # a pause of the worker's own at least this long (and past the idle time) forgets channels


@dataclass
class _Stage:
    """One stage partition's channels: each one's newest mark and when it was last heard from."""

    expected: tuple[bytes, ...]
    created: float
    marks: dict[bytes, int] = field(default_factory=dict)
    heard: dict[bytes, float] = field(default_factory=dict)
    active: list[bytes] = field(default_factory=list)  # not idle, as of the batch


class Watermarks:
    """Progress per partition of each stream's first stage and per later stage partition."""

    def __init__(
        self,
        channels: dict[str, dict[int, tuple[bytes, ...]]],
        idle_ms: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        #: per stream, per stage index: the channels that can send to that stage
        self._channels = channels
        self._idle_s = idle_ms / 1000
        self._clock = clock
        self._streams: dict[tuple[str, int], int] = {}  # (stream, partition) -> newest event time
        self._stages: dict[tuple[str, int], _Stage] = {}  # (hop topic, partition)
        self._now = clock()

    def begin(self, assigned: Collection[Any] = ()) -> None:
        """A new batch, of a worker holding ``assigned`` (topic partitions): which channels are idle is
        decided once per batch. A stage partition not assigned here is forgotten (if it comes back, it
        is held back again until its channels speak), and so is every one after a pause of the worker's
        own longer than the idle time (a recovery, a rebalance): silence it did not listen to is not
        idleness."""
        now = self._clock()
        idle = self._idle_s
        if now - self._now > max(idle, PAUSE_S):
            self._stages.clear()
        self._now = now
        held = {(tp.topic, tp.partition) for tp in assigned}
        for slot in [slot for slot in self._stages if slot not in held]:
            del self._stages[slot]
        for stage in self._stages.values():
            created = stage.created
            stage.active = [c for c in stage.expected if now - stage.heard.get(c, created) <= idle]

    def stream(self, stream: str, partition: int, time_ms: int) -> int:
        """A record of ``stream`` at home on ``partition`` of its first stage (from the stream topic or
        re-keyed) at event time ``time_ms``: that partition's progress as of it."""
        slot = (stream, partition)
        known = self._streams.get(slot, UNKNOWN)
        if time_ms > known:
            self._streams[slot] = known = time_ms
        return known

    def stage(
        self, topic: str, partition: int, stream: str, index: int, channel: bytes, mark: int | None
    ) -> int | None:
        """A record on ``partition`` of hop ``topic``, of ``stream`` at stage ``index``, sent by
        ``channel`` with its progress ``mark`` (None: a record of an earlier release): the stage
        partition's progress as of it (None: nothing holds it back)."""
        slot = (topic, partition)
        stage = self._stages.get(slot)
        if stage is None:
            expected = self._channels.get(stream, {}).get(index, ())
            stage = self._stages[slot] = _Stage(expected, self._now, active=list(expected))
        if channel not in stage.heard and channel not in stage.expected:
            stage.expected += (channel,)  # a sender the spec did not foresee (another release's)
        stage.heard[channel] = self._now
        if channel not in stage.active:
            stage.active.append(channel)
        if mark is not None:  # the sender's bound now: it only falls when one of its own senders resumes
            stage.marks[channel] = mark
        marks = stage.marks
        return min((marks.get(c, UNKNOWN) for c in stage.active), default=None)


def stream_channels(
    stages: Iterable[tuple[int, tuple[str, ...]]], partitions: int
) -> dict[int, tuple[bytes, ...]]:
    """Per stage index of one stream (its stages: index and key fields, in order), the channels that can
    send to it: every partition of every earlier stage (``tag:partition``, app/records/source.py)."""
    out: dict[int, tuple[bytes, ...]] = {}
    earlier: list[bytes] = []
    for index, key in stages:
        if index:
            out[index] = tuple(earlier)
        tag = stage_tag(key)
        earlier += [b"%b:%d" % (tag, p) for p in range(partitions)]
    return out
