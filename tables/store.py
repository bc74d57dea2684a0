"""Table construction and the event context Faust's tables route by."""

from __future__ import annotations

import weakref
from typing import Any

from faust.streams import _current_event


def raw_table(app: Any, name: str, partitions: int, help_text: str) -> Any:
    """A RocksDB-backed Faust Table whose keys and values are raw bytes (Hydrant encodes them).

    Faust derives a table's serializers from ``key_type``/``value_type`` and falls back to JSON,
    which would quote the UTF-8 keys; raw keys keep changelog keys equal to the Kafka record keys,
    so routing by key hashes the same bytes producers use. The serializers must be set before the
    table's store and changelog topic are first used, which happens only when the worker starts.
    """
    table = app.Table(name, partitions=partitions, key_type=bytes, value_type=bytes, help=help_text)
    table.key_serializer = "raw"
    table.value_serializer = "raw"
    return table


def act_for(event: Any) -> None:
    """Make ``event`` Faust's current event.

    Faust picks the RocksDB partition a table reads and the changelog partition it writes from the
    current event. A batch loop over ``take_events`` must set it for each event before touching a
    table, as Faust's own per-event iteration does.
    """
    _current_event.set(weakref.ref(event))
