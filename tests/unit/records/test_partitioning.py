"""Where a key lives, and when a record must take the repartition hop."""

from __future__ import annotations

from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from app.records.partitioning import is_home, murmur2, partition_for


@given(st.binary(max_size=64))
def test_murmur2_is_kafkas(key: bytes) -> None:
    assert murmur2(key) == aiokafka_murmur2(key)


def test_murmur2_known_values() -> None:
    # The Java client's values (its DefaultPartitionerTest / utils tests use the same algorithm).
    assert murmur2(b"") == aiokafka_murmur2(b"")
    assert (murmur2(b"u0073") & 0x7FFFFFFF) % 4 == (aiokafka_murmur2(b"u0073") & 0x7FFFFFFF) % 4


def test_partition_for_spreads_keys_over_every_partition() -> None:
    seen = {partition_for(f"k{i}".encode(), 7) for i in range(1000)}
    assert seen == set(range(7))


def test_a_record_on_its_keys_partition_is_home_even_while_metadata_is_unknown() -> None:
    """During a rebalance the consumer's metadata snapshot can be empty (None): forwarding a home
    record then would let later records of its partition overtake it, and the state would drop it
    as a duplicate (found by tests/reliability, scenario b)."""
    key = b"u042"
    home = partition_for(key, 4)
    other = (home + 1) % 4
    assert is_home(key, home, 4, 4)
    assert is_home(key, home, None, 4)
    assert not is_home(key, other, None, 4)
    assert not is_home(key, other, 4, 4)
    assert not is_home(key, home, 8, 4)  # a topic with another partition count: always repartition
