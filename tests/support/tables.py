"""A :class:`tables.store.StateTable` over plain rocksdict databases in a directory: what the
engine and API tests run on instead of Faust's tables."""

from __future__ import annotations

from pathlib import Path

import rocksdict

OFFSET_KEY = b"__offset__"


class RdictTable:
    """Table ``name`` whose partition p is the RocksDB database ``root/name-p`` (raw mode), all
    served here; persisted offsets are kept in :attr:`offsets`."""

    def __init__(self, root: Path, name: str, description: str = "") -> None:
        self.name = name
        self.root = root
        self.dbs: dict[int, rocksdict.Rdict] = {}
        self.offsets: dict[int, int] = {}

    @property
    def changelog(self) -> str:
        return f"{self.name}-changelog"

    @property
    def offset_key(self) -> bytes:
        return OFFSET_KEY

    def db(self, partition: int) -> rocksdict.Rdict:
        if partition not in self.dbs:
            path = self.root / f"{self.name}-{partition}"
            self.dbs[partition] = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))
        return self.dbs[partition]

    def serves(self, partition: int) -> bool:
        return True

    def persist(self, partition: int, offset: int) -> None:
        self.offsets[partition] = offset

    def persisted(self, partition: int) -> int | None:
        return self.offsets.get(partition)

    def close(self) -> None:
        for db in self.dbs.values():
            db.close()
        self.dbs.clear()
