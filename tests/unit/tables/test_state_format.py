"""The stored form of a key's state (tables/state_format.py, tables/key_state.py; docs/state-format.md):
reloads, the per-op bucket layout, and records of earlier formats or layouts."""

from __future__ import annotations

import math
import random
from typing import Any

import orjson
import pytest

from tables.plans import GroupPlan
from tables.state_format import value_hash
from tests.support.window_state import (
    BASE,
    MINUTE,
    SPEND,
    Worker,
    buckets_of,
    group,
    s1,
    s2,
)


def test_flushed_state_reloads_the_same_and_keeps_going() -> None:
    plan, _ = group(
        "1m",
        SPEND,
        "{name: words, stream: s1, field: word, ops: [distinct, first, last, min, max], windows: [5m]}",
    )
    rng = random.Random(7)
    events = [
        s1("u", BASE + rng.randrange(0, 50 * MINUTE), rng.uniform(-5, 5), word=f"w{rng.randrange(400)}")
        for _ in range(800)
    ]
    one, batches = Worker(plan), Worker(plan)
    one.run(events)  # everything in one batch
    for start in range(0, 800, 37):  # batches of 37, each written and reloaded
        batches.run(events[start : start + 37], start=start)
        batches.flush()
    for at in range(BASE + 45 * MINUTE, BASE + 52 * MINUTE, 20_000):
        assert batches.read("u", at) == one.read("u", at)
    one.flush()

    def without_head_offsets(table: dict[bytes, bytes]) -> dict[bytes, Any]:
        # The head's offsets are persisted only when the head is rewritten: they may differ.
        decoded = {k: orjson.loads(v) for k, v in table.items()}
        for k, v in decoded.items():
            if k.endswith(b"\x00"):
                v.pop("o", None)
        return decoded

    assert without_head_offsets(one.table) == without_head_offsets(batches.table)


# -- bucket layout: each aggregation keeps only the fields its ops read ------------------------------

ALL_OPS = "[count, sum, avg, min, max, stddev, first, last, distinct]"


def test_a_bucket_keeps_only_the_fields_its_ops_read() -> None:
    plan, _ = group(
        "1m",
        "{name: spend, stream: s1, field: x, ops: [count, sum, avg, min, max, stddev], windows: [5m]}",
        "{name: clicks, stream: s2, ops: [count], windows: [5m]}",
        "{name: words, stream: s1, field: word, ops: [first, last, distinct], windows: [5m]}",
    )
    worker = Worker(plan)
    worker.run([s1("u", BASE, 2.5, word="a"), s2("u", BASE + 1), s1("u", BASE + 2, 1.5, word="b")])
    worker.flush()
    (bucket,) = buckets_of(worker, "u")
    hashes = [value_hash("a"), value_hash("b")]
    states, layout, offsets, newest = bucket
    assert newest == BASE + 2  # the newest event time among those that added a value
    assert layout == plan.tag == "=" + "".join(a.ident for a in plan.aggregations)  # who is where
    assert [format(a.mask, "x") for a in plan.aggregations] == ["83f", "1", "7c1"]  # canonical fields
    assert offsets == {"s1:0": 2, "s2:0": 1}
    spend, clicks, words = states
    assert spend[:2] == [2, 4.0] and spend[4:6] == [1.5, 2.5]  # count, sum, mean, m2, min, max, shift
    assert len(spend) == 7 and spend[6] == 2.5
    assert clicks == [1]
    assert words == [2, BASE, "a", BASE + 2, "b", hashes]
    assert worker.read("u", BASE + 2) == {
        "spend_count_5m": 2,
        "spend_sum_5m": 4.0,
        "spend_avg_5m": 2.0,
        "spend_min_5m": 1.5,
        "spend_max_5m": 2.5,
        "spend_stddev_5m": pytest.approx(math.sqrt(0.5)),
        "clicks_count_5m": 1,
        "words_first_5m": "a",
        "words_last_5m": "b",
        "words_distinct_5m": 2,
    }


@pytest.mark.parametrize("layouts", [False, True])
def test_buckets_of_earlier_formats_are_read_and_rewritten(layouts: bool) -> None:
    """Earlier, a bucket record was a JSON object {"o": offsets, "a": states, "l": layout}; before
    bucket layouts, every aggregation kept all twelve fields and records had no "l"."""
    full, _ = group("1m", f"{{name: spend, stream: s1, field: x, ops: {ALL_OPS}, windows: [5m]}}")
    some, _ = group("1m", "{name: spend, stream: s1, field: x, ops: [count, max, last], windows: [5m]}")
    rng = random.Random(3)
    events = [s1("u", BASE + rng.randrange(4 * MINUTE), rng.uniform(0, 9)) for _ in range(30)]
    earlier = Worker(full)
    earlier.run(events[:20])
    earlier.flush()
    for k, v in earlier.table.items():
        record = orjson.loads(v)
        if isinstance(record, list):  # a bucket: [states, layout, offsets, newest event time]
            states, _, offsets, _ = record
            assert len(states[0]) == 12  # all twelve fields: the first format, once the layout is gone
            masks = ",".join(format(a.mask, "x") for a in full.aggregations)  # layouts before identities
            old = {"o": offsets, "a": states, "l": masks} if layouts else {"o": offsets, "a": states}
            earlier.table[k] = orjson.dumps(old)
    upgraded = Worker(some, table=dict(earlier.table))
    direct = Worker(some)
    direct.run(events[:20])
    direct.flush()
    at = BASE + 4 * MINUTE
    assert upgraded.read("u", at) == direct.read("u", at)
    upgraded.run(events[20:], start=20)
    direct.run(events[20:], start=20)
    upgraded.flush()
    direct.flush()
    assert upgraded.read("u", at) == direct.read("u", at)
    assert upgraded.table == direct.table  # every bucket the events touched was rewritten in the new layout


def _with_mask_layouts(table: dict[bytes, bytes], plan: GroupPlan) -> dict[bytes, bytes]:
    """``table`` with its buckets' layouts as written before layouts named aggregations (hex masks)."""
    masks = ",".join(format(a.mask, "x") for a in plan.aggregations)
    out = {}
    for k, v in table.items():
        record = orjson.loads(v)
        if isinstance(record, list):
            record[1] = masks
        out[k] = orjson.dumps(record)
    return out


def test_an_op_added_later_leaves_older_buckets_out_of_its_aggregation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An op added to an aggregation changes its definition: the state stored under the old one is not
    its state (its replay rebuilds it, docs/operations.md). Buckets whose layouts are hex masks (before
    layouts named aggregations) convert by position; lacking the new op's fields, they are left out too,
    with a warning."""
    before, _ = group("1m", "{name: spend, stream: s1, field: x, ops: [count], windows: [5m]}")
    after, _ = group("1m", "{name: spend, stream: s1, field: x, ops: [count, max], windows: [5m]}")
    old = Worker(before)
    old.run([s1("u", BASE, 5.0), s1("u", BASE + 1, 7.0)])  # bucket 0: count only
    old.flush()
    for table in (dict(old.table), _with_mask_layouts(old.table, before)):
        new = Worker(after, table=table)
        new.run([s1("u", BASE + MINUTE, 3.0)], start=2)  # bucket 1, with max
        assert new.read("u", BASE + MINUTE) == {"spend_count_5m": 1, "spend_max_5m": 3.0}
    assert "aggregation 'spend': buckets written before its ops ['max'] were added" in caplog.text


def test_aggregations_keep_their_state_by_identity_when_others_change() -> None:
    """Removing an aggregation before others, changing one's `where` and adding one: the unchanged ones
    read the state stored under their identity (not their position), the changed one starts empty, the
    removed one's state is dropped when its buckets are rewritten."""
    before, _ = group(
        "1m",
        "{name: gone, stream: s1, field: x, ops: [sum], windows: [5m]}",
        "{name: spend, stream: s1, field: x, ops: [count, max], windows: [5m]}",
        "{name: big, stream: s1, field: x, ops: [count], where: 'x > 4', windows: [5m]}",
    )
    after, _ = group(
        "1m",
        "{name: spend, stream: s1, field: x, ops: [count, max], windows: [5m]}",
        "{name: big, stream: s1, field: x, ops: [count], where: 'x > 6', windows: [5m]}",
        "{name: fresh, stream: s1, field: x, ops: [min], windows: [5m]}",
    )
    assert before.aggregations[1].ident == after.aggregations[0].ident
    assert before.aggregations[2].ident != after.aggregations[1].ident
    old = Worker(before)
    old.run([s1("u", BASE, 5.0), s1("u", BASE + 1, 7.0)])
    old.flush()
    new = Worker(after, table=dict(old.table))
    assert new.read("u", BASE) == {
        "spend_count_5m": 2,
        "spend_max_5m": 7.0,
        "big_count_5m": 0,  # its `where` changed: the old count is not its
        "fresh_min_5m": None,
    }
    new.run([s1("u", BASE + 2, 8.0)], start=2)
    new.flush()
    assert new.read("u", BASE + 2) == {
        "spend_count_5m": 3,
        "spend_max_5m": 8.0,
        "big_count_5m": 1,
        "fresh_min_5m": 8.0,
    }
    (bucket,) = buckets_of(new, "u")
    assert bucket[1] == after.tag and len(bucket[0]) == 3  # rewritten: `gone` dropped


def test_the_new_ops_added_to_state_written_before_them() -> None:
    """State written before last_n, top_k and percentile existed (twelve canonical fields at most)
    still reads: an aggregation given one of them leaves its older buckets out until they expire,
    like any added op, and the other aggregations keep answering from them."""
    before, _ = group(
        "1m",
        "{name: spend, stream: s1, field: x, ops: [count, max], windows: [5m]}",
        "{name: words, stream: s1, field: word, ops: [count], windows: [5m]}",
    )
    after, _ = group(
        "1m",
        "{name: spend, stream: s1, field: x, ops: [count, max, percentile], quantiles: [0.5], windows: [5m]}",
        "{name: words, stream: s1, field: word, ops: [count, last_n, top_k], n: 2, k: 2, windows: [5m]}",
    )
    old = Worker(before)
    old.run([s1("u", BASE, 5.0, word="a"), s1("u", BASE + 1, 7.0, word="b")])  # bucket 0
    old.flush()
    new = Worker(after, table=dict(old.table))
    assert new.read("u", BASE) == {
        "spend_count_5m": 0,  # the whole aggregation leaves bucket 0 out (it lacks `values`)
        "spend_max_5m": None,
        "spend_p50_5m": None,
        "words_count_5m": 0,
        "words_last2_5m": [],
        "words_top2_5m": [],
    }
    new.run([s1("u", BASE + MINUTE, 3.0, word="c")], start=2)  # bucket 1, in the new layout
    new.flush()
    got = new.read("u", BASE + MINUTE)
    assert (
        got["spend_p50_5m"] == 3.0 and got["words_last2_5m"] == ["c"] and got["words_top2_5m"] == [["c", 1]]
    )
