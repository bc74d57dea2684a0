"""A global lookup's replica on one worker: every row of the lookup in one RocksDB, and per lookup
topic partition the next offset to read, written in the same batch as the rows they cover."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import rocksdict

_POSITIONS = "positions"  # the column family of the next offsets


def _options() -> rocksdict.Options:
    options = rocksdict.Options(raw_mode=True)
    options.create_if_missing(True)
    options.create_missing_column_families(True)
    return options


class LookupReplica:
    """All rows of one lookup (key -> orjson row), read by joins through :attr:`db`."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db: Any = rocksdict.Rdict(
            str(path), options=_options(), column_families={_POSITIONS: _options()}
        )
        self._positions = self.db.get_column_family_handle(_POSITIONS)

    def positions(self) -> dict[int, int]:
        """Per lookup topic partition, the next offset to read (absent: from the beginning)."""
        family = self.db.get_column_family(_POSITIONS)
        try:
            return {int(p): int(o) for p, o in family.items()}
        finally:
            del family

    def apply(self, rows: Iterable[tuple[bytes, bytes | None]], positions: dict[int, int]) -> None:
        """Upsert (value) or delete (None) ``rows`` in order, and move the positions, atomically."""
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, value in rows:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        for partition, offset in positions.items():
            batch.put(b"%d" % partition, b"%d" % offset, self._positions)
        self.db.write(batch)

    def close(self) -> None:
        """Release the database (its lock) for another instance."""
        del self._positions
        self.db.close()
