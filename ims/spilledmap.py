"""A map from a 64-bit integer to a byte string and a count, for the tables that hold one
entry per shared message still waiting for its other links: the backup's single-copy table
(``ims.singlecopy``), the restore's table of first copies (``ims.restore.firstcopies``) and a
chain restore's shared members (``ims.restore.chain``).  They grow with the store's shared
messages; as Python dicts they cost 200 to 350 bytes an entry (at 1,000,000 messages about
20 MiB in each process).

Here the key and the count live in one ``array('Q')`` of two words a slot (open addressing,
linear probing, at most three quarters full: 21 to 43 bytes an entry; with three words, the
key in two, it had been 32 to 64), and the byte strings in an unlinked temporary file
(``ims.tempspace``: no name, freed with the process), read back with one ``pread``
when looked up.  A key is exact: callers whose key is a hash store what it stands for in
the value and compare it.  Strings are appended and never rewritten; a removed entry's bytes
stay in the file (a few tens of bytes a shared message on disk, not in memory).  Without a
usable temporary directory the strings stay in memory, as they did before.

Failure behaviour: when the temporary file cannot grow (``$TMPDIR`` full), its contents are
read back and the map goes on in memory; a failed read of it is a ``DeviceError`` (not an
``OSError``, which callers take for a message's own); nothing is lost in silence.
"""

from __future__ import annotations

import os
from array import array

from ims import tempspace
from ims.errors import DeviceError

_WHAT = "the temporary file of the table of shared messages (in $TMPDIR)"
_EMPTY = 0                  # offset word of an empty slot (offsets are stored plus one)
_WIDTH = 2                  # words a slot: key, (offset + 1) << 24 | count
_COUNT_BITS = 24
_COUNT_MAX = (1 << _COUNT_BITS) - 1     # a larger count is kept at this (never reached:
                                        # counts are links of one inode)
_MASK64 = (1 << 64) - 1
_MIX = 0x9E3779B97F4A7C15   # spreads keys that differ in their low bits (inode numbers)


def _zeros(count: int) -> array:
    # by repetition: ``array("Q", bytes(n))`` holds a zeroed bytes object of the same size
    # beside the array while it is made
    return array("Q", [0]) * count


_EMPTY_SLOT = _zeros(_WIDTH)


class SpilledMap:
    def __init__(self, capacity: int = 1024) -> None:
        bits = 4
        while 1 << bits < capacity:
            bits += 1
        self._bits = bits
        self._size = size = 1 << bits
        self._slots = _zeros(_WIDTH * size)
        self._count = 0
        self._memory: bytearray | None = None
        self._end = 0
        try:
            self._fd = tempspace.unnamed_file("ims-links-")
        except OSError:
            self._fd = -1
            self._memory = bytearray()

    def __len__(self) -> int:
        return self._count

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _home(self, key: int) -> int:
        # Fibonacci hashing: the product's top bits, which every bit of the key reaches
        return ((key * _MIX) & _MASK64) >> (64 - self._bits)

    def _find(self, key: int) -> int:
        """The slot holding the key, or the empty slot where it would go."""
        slots = self._slots
        mask = self._size - 1
        index = self._home(key)
        while True:
            base = index * _WIDTH
            if slots[base + 1] == _EMPTY:
                return index
            if slots[base] == key:
                return index
            index = (index + 1) & mask

    def get(self, key: int) -> tuple[bytes, int] | None:
        """(the bytes, the count) stored under the key, or None."""
        base = self._find(key) * _WIDTH
        packed = self._slots[base + 1]
        if packed == _EMPTY:
            return None
        return self._read((packed >> _COUNT_BITS) - 1), packed & _COUNT_MAX

    def put(self, key: int, value: bytes, count: int = 1) -> None:
        """Store ``value`` and ``count`` under the key (replacing what it had)."""
        if 4 * (self._count + 1) > 3 * self._size:      # at most three quarters full
            self._grow()
        base = self._find(key) * _WIDTH
        slots = self._slots
        if slots[base + 1] == _EMPTY:
            self._count += 1
        slots[base] = key
        slots[base + 1] = (self._write(value) + 1) << _COUNT_BITS | min(count, _COUNT_MAX)

    def set_count(self, key: int, count: int) -> None:
        base = self._find(key) * _WIDTH
        packed = self._slots[base + 1]
        if packed == _EMPTY:
            raise KeyError(key)
        self._slots[base + 1] = packed >> _COUNT_BITS << _COUNT_BITS | min(count, _COUNT_MAX)

    def remove(self, key: int) -> None:
        """Forget the key (nothing when it is not there).  Backward-shift deletion: the
        entries after it in its run move up, so no probe ever stops early."""
        slots = self._slots
        mask = self._size - 1
        hole = self._find(key)
        if slots[hole * _WIDTH + 1] == _EMPTY:
            return
        self._count -= 1
        index = hole
        while True:
            index = (index + 1) & mask
            base = index * _WIDTH
            if slots[base + 1] == _EMPTY:
                break
            home = self._home(slots[base])
            # the entry may fill the hole unless its home lies after the hole, up to it
            if (index > hole and (home <= hole or home > index)) or \
                    (index < hole and home <= hole and home > index):
                slots[hole * _WIDTH:hole * _WIDTH + _WIDTH] = slots[base:base + _WIDTH]
                hole = index
        base = hole * _WIDTH
        slots[base:base + _WIDTH] = _EMPTY_SLOT

    def _grow(self) -> None:
        """Twice the slots.  With the temporary file, the old array is written past the
        strings' end and freed before the new one is made, then read back a chunk at a time:
        the old and the new array are never held together (at 1,000,000 messages the moment
        of doubling had been the table's peak: 2 + 4 MiB, and a 4 MiB zeroed ``bytes`` for
        the new array's contents on top)."""
        old: array | None = self._slots
        old_size = self._size
        dumped = self._memory is None and self._dump(old)
        if dumped:
            old = None
            self._slots = _zeros(0)
        self._bits += 1
        self._size = old_size * 2
        self._slots = _zeros(_WIDTH * self._size)
        if old is not None:
            self._reinsert(old)
            return
        chunk_slots = 4096
        for first in range(0, old_size, chunk_slots):
            count = min(chunk_slots, old_size - first)
            data = self._pread_exact(8 * _WIDTH * count, self._end + 8 * _WIDTH * first)
            chunk = array("Q")
            chunk.frombytes(data)
            self._reinsert(chunk)

    def _reinsert(self, old: array) -> None:
        slots = self._slots
        for base in range(0, len(old), _WIDTH):
            if old[base + 1] != _EMPTY:
                new = self._find(old[base]) * _WIDTH
                slots[new:new + _WIDTH] = old[base:base + _WIDTH]

    def _dump(self, slots: array) -> bool:
        """The slots written past the strings' end (the next string overwrites them); False
        when the file refuses them (the grow then holds both arrays, as without a file)."""
        data = memoryview(slots).cast("B")
        try:
            written = 0
            while written < len(data):
                written += os.pwrite(self._fd, data[written:], self._end + written)
        except OSError:
            return False
        finally:
            data.release()
        return True

    def _pread_exact(self, count: int, offset: int) -> bytes:
        data = self._pread(count, offset)
        while len(data) < count:
            more = self._pread(count - len(data), offset + len(data))
            if not more:
                raise DeviceError(f"{_WHAT}: it ends at byte {offset + len(data)}, before"
                                  f" {offset + count}")
            data += more
        return data

    def _write(self, value: bytes) -> int:
        """Append a length-prefixed string; its offset."""
        offset = self._end
        record = len(value).to_bytes(4, "big") + value
        if self._memory is None:
            try:
                written = os.pwrite(self._fd, record, offset)
                while written < len(record):
                    written += os.pwrite(self._fd, record[written:], offset + written)
            except OSError:
                self._to_memory()
        if self._memory is not None:
            self._memory += record
        self._end += len(record)
        return offset

    def _to_memory(self) -> None:
        """The temporary file cannot grow (``$TMPDIR`` full, a quota, an I/O error): what
        it holds is read back and the table goes on in memory, as without a temporary
        directory; a run never fails or skips mail for its bookkeeping's sake."""
        memory = bytearray()
        while len(memory) < self._end:
            chunk = self._pread(min(1 << 20, self._end - len(memory)), len(memory))
            if not chunk:
                raise DeviceError(f"{_WHAT}: it ends at byte {len(memory)} of {self._end}")
            memory += chunk
        self._memory = memory
        self.close()
        self._fd = -1

    def _read(self, offset: int) -> bytes:
        if self._memory is not None:
            length = int.from_bytes(self._memory[offset:offset + 4], "big")
            return bytes(self._memory[offset + 4:offset + 4 + length])
        head = self._pread(4096, offset)
        if len(head) < 4:
            head = self._pread_exact(4, offset)
        length = int.from_bytes(head[:4], "big")
        if len(head) >= 4 + length:
            return head[4:4 + length]
        # a short read is never taken for the value: the rest is read to its end, or fails
        return head[4:] + self._pread_exact(4 + length - len(head), offset + len(head))

    def _pread(self, count: int, offset: int) -> bytes:
        try:
            return os.pread(self._fd, count, offset)
        except OSError as exc:
            raise DeviceError(f"{_WHAT}: read failed: {exc.strerror}") from None
