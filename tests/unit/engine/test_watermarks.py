"""Lateness at a later stage is bounded by every upstream partition's progress (docs/features.md,
"Later stages"): app/engine/watermarks.py, and through the real StreamEngine passes a device group
(1 h window, R = 6) fed by two card partitions read one after the other, as after a backlog.
Before the change every event of the second partition older than the first's newest hour was late."""

from __future__ import annotations

from pathlib import Path

from aiokafka import TopicPartition

from app.engine.helpers import decode_shard, encode_shard
from app.engine.shards import Shard, ShardEvent
from app.engine.watermarks import UNKNOWN, Watermarks, stream_channels
from app.records.partitioning import partition_for
from app.records.source import stage_tag
from tests.support.engine import PARTITIONS, Record, pipeline_engine
from tests.unit.engine.test_routes import MINUTE, T0, Feeder, count, pay

DEVICES = """\
name: devices
streams:
  pay:
    topic: pay
    key: card
    time: ts
    fields: {card: str, device: str, ts: int}
features:
  device:
    key: device
    period: 10m
    aggregations: [{name: d, stream: pay, ops: [count], windows: [1h]}]
"""


def test_a_stage_is_held_back_by_its_slowest_channel_until_that_one_goes_idle() -> None:
    now = [0.0]
    channels = stream_channels([(0, ("card",)), (1, ("device",))], 2)
    tag = stage_tag(("card",))
    assert channels == {1: (b"%b:0" % tag, b"%b:1" % tag)}
    marks = Watermarks({"pay": channels}, idle_ms=60_000, clock=lambda: now[0])
    assert marks.stream("pay", 0, 5_000) == 5_000
    assert marks.stream("pay", 0, 4_000) == 5_000  # progress: the newest event time processed
    hop = [TopicPartition("hop", 0)]

    def at(second: float) -> None:  # a batch begins
        now[0] = second
        marks.begin(hop)

    at(0)
    assert marks.stage("hop", 0, "pay", 1, b"%b:0" % tag, 5_000) == UNKNOWN  # channel 1 not heard yet
    assert marks.stage("hop", 0, "pay", 1, b"%b:1" % tag, 2_000) == 2_000
    assert marks.stage("hop", 0, "pay", 1, b"%b:0" % tag, 9_000) == 2_000  # the least over the channels
    at(30)
    assert marks.stage("hop", 0, "pay", 1, b"%b:0" % tag, 9_200) == 2_000
    at(61)  # channel 1 sent nothing for 61 s while batches ran: it no longer holds the stage back
    assert marks.stage("hop", 0, "pay", 1, b"%b:0" % tag, 9_500) == 9_500
    assert marks.stage("hop", 0, "pay", 1, b"%b:1" % tag, 3_000) == 3_000  # heard again: counts again
    at(200)  # the worker itself paused (a recovery): silence it did not listen to is not idleness
    assert marks.stage("hop", 0, "pay", 1, b"%b:0" % tag, 9_900) == UNKNOWN
    at(201)
    marks.begin([])  # the partition moved away: forgotten; if it comes back it is held back again
    assert marks.stage("hop", 0, "pay", 1, b"%b:0" % tag, 9_950) == UNKNOWN


def two_partitions() -> tuple[str, str]:
    a = next(f"a{i}" for i in range(100) if partition_for(f"a{i}".encode(), PARTITIONS) == 0)
    b = next(f"b{i}" for i in range(100) if partition_for(f"b{i}".encode(), PARTITIONS) == 1)
    return a, b


def run_backlog(tmp_path: Path, idle_ms: int) -> tuple[Feeder, list[Record], list[Record]]:
    """Ten hours of payments of card A (partition 0) read and sent on, then the same ten hours of
    card B (partition 1): every event in order within its partition, devices shared."""
    spec = tmp_path / "devices.yaml"
    spec.write_text(DEVICES)
    engine = pipeline_engine(tmp_path / "state", spec, idle_ms=idle_ms)
    feeder = Feeder(engine)
    a, b = two_partitions()
    first = [pay(i, card=a, device=f"d{i % 3}", ts=T0 + i * 10 * MINUTE) for i in range(60)]
    second = [pay(i, card=b, device=f"d{i % 3}", ts=T0 + i * 10 * MINUTE + MINUTE) for i in range(60)]
    for records in (first, second):  # partition 0 all the way through first, in batches of 10
        hops = feeder.run(records)
        for i in range(0, len(hops), 10):
            feeder.run(hops[i : i + 10])
    return feeder, first, second


def in_window(records: list[Record], device: int, at: int) -> int:
    """The reference: payments of device ``device`` in the 1 h window at ``at`` (buckets of 10 min)."""
    period = 10 * MINUTE
    return sum(
        1
        for i, r in enumerate(records)
        if i % 3 == device and at // period - 6 < r.timestamp // period <= at // period
    )


def test_events_in_order_within_their_partition_are_never_late_however_far_apart_partitions_are(
    tmp_path: Path,
) -> None:
    feeder, first, second = run_backlog(tmp_path, idle_ms=60_000)
    try:
        assert feeder.io.producer.sent == []  # no dead letter
        for at in (T0 + 60 * 10 * MINUTE, T0 + 58 * 10 * MINUTE + 5 * MINUTE):
            for d in range(3):
                want = in_window(first, d, at) + in_window(second, d, at)
                assert want > 0 and count(feeder.engine, "device", f"d{d}", at) == want
    finally:
        feeder.engine.close()


def test_a_partition_silent_past_the_idle_time_no_longer_holds_the_stage_back(tmp_path: Path) -> None:
    """With no idle time, partition 1 (not read while partition 0's records went through) does not
    hold the device stage back: the devices' floors follow partition 0 to its newest hour, and
    partition 1's events at or below them are late, exactly those."""
    feeder, first, second = run_backlog(tmp_path, idle_ms=0)
    try:
        dead = [s for s in feeder.io.producer.sent if dict(s.headers)["hydrant-reason"] == b"late"]
        period = 10 * MINUTE
        newest = {d: max(r.timestamp for i, r in enumerate(first) if i % 3 == d) // period for d in range(3)}
        expected = [r for i, r in enumerate(second) if r.timestamp // period <= newest[i % 3] - 6]
        assert sorted(s.value for s in dead) == sorted(r.value for r in expected)
        assert len(expected) > 40
    finally:
        feeder.engine.close()


def test_a_redelivered_event_whose_bucket_expired_since_is_a_duplicate_not_late(tmp_path: Path) -> None:
    """The offsets of an expiring bucket go into its key's head (the worker reads the buckets a batch
    may expire), so an event applied there and delivered again after the bucket expired is still
    recognised. Before, it was dead-lettered as late (its output had gone out already)."""
    spec = tmp_path / "devices.yaml"
    spec.write_text(DEVICES)
    engine = pipeline_engine(tmp_path / "state", spec, idle_ms=0)
    feeder = Feeder(engine)
    try:
        a, b = two_partitions()
        feeder.run(feeder.run([pay(0, card=a, device="d0", ts=T0 - 10 * MINUTE)]))
        feeder.run(feeder.run([pay(1, card=a, device="d0", ts=T0)]))  # a new bucket: the head is written
        (b_hop,) = feeder.run([pay(0, card=b, device="d0", ts=T0 + 5 * MINUTE)])
        feeder.run([b_hop])  # same bucket: only the bucket records partition 1's offset
        feeder.run(feeder.run([pay(2, card=a, device="d0", ts=T0 + 3 * 60 * MINUTE)]))  # expires it
        before = engine.contents()
        feeder.run([b_hop])  # partition 1's record delivered again
        assert feeder.io.producer.sent == []  # no dead letter
        assert engine.contents() == before
    finally:
        engine.close()


def test_a_shard_run_by_a_helper_process_gets_each_events_bound() -> None:
    """Shards of a batch may run in helper processes: the stage's bound travels with each event (it
    did not at first, and the backlog's merchant and device stages then judged lateness unbounded)."""
    event = ShardEvent("pay", ("d0", T0, {"device": "d0"}), "pay:0>AbCd:1", 7, 1, "d0", b"{}", T0 - 60_000)
    (back,) = decode_shard(encode_shard(Shard([event]))).events
    assert back == event and back.mark == T0 - 60_000
