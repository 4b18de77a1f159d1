"""Where the first copy of each shared message went in this run, for the hard links to it
that are still to come (``ims.restore.engine``).

A first copy placed in the folder in progress is kept as its writer's handle (the folder may
still move it: into place, or to a live folder Dovecot created meanwhile).  Once that folder
is committed, ``settle`` packs each one into bytes that say where the file is
(``StoreWriter.pack_restored``) and keeps them in an ``ims.spilledmap.SpilledMap``, keyed by
a 64-bit hash of the member name; the name itself is stored with the place and compared on
every lookup, so two names with the same hash never take each other's file (the later one
settled takes the entry, and the earlier one's links find nothing: their bytes are fetched
by the index from a file, or named in a references file from a pipe).  An entry costs 21 to 43
bytes of memory whatever the store, instead of a folder writer kept alive and three Python
objects.

A link looks its first copy up three times (is it there, where is it, one sight more): the
last settled entry read is kept, so the table's file is read once a link, not three times.

Each entry also counts its sights (the first copy, then each link placed to it, ``sighted``)
in the map's own count, so that the engine can forget it after its last link without a
dict of names beside it (at 1,000,000 messages that dict had held some 10 MiB).
"""

from __future__ import annotations

import hashlib
from typing import Callable

from ims.spilledmap import SpilledMap
from ims.store.base import RestoredFile


def _key(encoded: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(encoded, digest_size=8).digest(), "big")


class FirstCopies:
    def __init__(self, pack: Callable[[RestoredFile], bytes],
                 unpack: Callable[[bytes], RestoredFile]) -> None:
        self._pack, self._unpack = pack, unpack
        self._open: dict[str, RestoredFile] = {}    # placed in the folder in progress
        self._open_sights: dict[str, int] = {}      # of those, sights above one
        self._settled = SpilledMap()
        # the last settled lookup: (name, its entry or None); dropped on every change
        self._last: tuple[str, tuple[int, bytes, int] | None] | None = None

    def __len__(self) -> int:
        return len(self._open) + len(self._settled)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def _settled_entry(self, name: str) -> tuple[int, bytes, int] | None:
        """(key, packed place, sights) of a settled first copy, or None (also when the key
        is another name's: two names of one hash)."""
        last = self._last
        if last is not None and last[0] == name:
            return last[1]
        entry = self._find_settled(name)
        self._last = (name, entry)
        return entry

    def _find_settled(self, name: str) -> tuple[int, bytes, int] | None:
        encoded = name.encode("utf-8", "surrogateescape")
        key = _key(encoded)
        stored = self._settled.get(key)
        if stored is None:
            return None
        value, sights = stored
        length = int.from_bytes(value[:4], "big")
        if value[4:4 + length] != encoded:
            return None
        return key, value[4 + length:], sights

    def get(self, name: str) -> RestoredFile | None:
        found = self._open.get(name)
        if found is not None:
            return found
        entry = self._settled_entry(name)
        return None if entry is None else self._unpack(entry[1])

    def __getitem__(self, name: str) -> RestoredFile:
        found = self.get(name)
        if found is None:
            raise KeyError(name)
        return found

    def __setitem__(self, name: str, restored: RestoredFile) -> None:
        self._open[name] = restored

    def setdefault(self, name: str, restored: RestoredFile) -> None:
        if name not in self:
            self._open[name] = restored

    def sighted(self, name: str, links: int) -> None:
        """One more link to the first copy ``name`` is placed: counted with the first copy
        itself as one sight, and the name forgotten once the sights reach ``links`` (the
        inode's link count when the backup saw it).  A name not remembered: nothing."""
        if name in self._open:
            sights = self._open_sights.get(name, 1) + 1
            if sights < links:
                self._open_sights[name] = sights
            else:
                del self._open[name]
                self._open_sights.pop(name, None)
            return
        entry = self._settled_entry(name)
        if entry is None:
            return
        key, _, sights = entry
        self._last = None
        if sights + 1 < links:
            self._settled.set_count(key, sights + 1)
        else:
            self._settled.remove(key)

    def settle(self) -> None:
        """The folder in progress is committed or discarded: its first copies are where
        they stay (a discarded one is gone, and a link to it fails as to any missing file)."""
        self._last = None
        for name, restored in self._open.items():
            encoded = name.encode("utf-8", "surrogateescape")
            self._settled.put(_key(encoded), len(encoded).to_bytes(4, "big") + encoded
                              + self._pack(restored), self._open_sights.get(name, 1))
        self._open.clear()
        self._open_sights.clear()
