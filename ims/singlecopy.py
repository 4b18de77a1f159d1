"""The backup's single-copy table: which shared inodes are already in the stream, and under
which member name.

A message file with several links (a delivery to several users, stored once by LMTP) is
archived once; every later link to the same inode becomes a hard-link member naming the
first copy.  The table is the one part of the store reader that grows with the store, so
it is kept small:

- an inode's entry is dropped once as many links were seen as the inode has (``st_nlink``
  at each sight): no further copy of it can come, and most shared inodes have two links;
- the entries are kept in an ``ims.spilledmap.SpilledMap``: a 64-bit mix of the inode and
  device numbers and the links seen in an array (21 to 43 bytes an inode), the inode and
  device themselves with the member name in an unlinked temporary file, compared on every
  lookup.  Two inodes whose mix is the same take one entry in turn: the later links of the
  one it no longer holds are archived as data, which loses nothing.

An entry also holds its file's size and modification time: a file that has the inode
number of one already in the table but not its size and time is a new file (the old one's
links were all deleted during the backup, and the file system gave the number again), archived
as data.  Keyed by the inode alone it had been archived as a link to the old message.

Dropping an entry early never loses mail: a link seen after it (one made during the backup,
so that ``st_nlink`` grew) is archived as data again, like any message.
"""

from __future__ import annotations

import os

from ims.spilledmap import SpilledMap


class LinkTable:
    def __init__(self) -> None:
        # mix of inode and device -> (inode, device, size, time, member name of its first
        # copy), and the links seen so far
        self._first = SpilledMap()

    def __len__(self) -> int:
        return len(self._first)

    def first_copy(self, st: os.stat_result) -> bytes | None:
        """The member name of the inode's copy already in the stream, or None; counts this
        sight as one of its links."""
        key = _key(st)
        found = self._first.get(key)
        if found is None:
            return None
        value, seen = found
        if value[:_IDENTITY] != _identity(st):
            return None                 # another inode of the same mix
        if value[_IDENTITY:_STAMP] != _stamp(st):
            # the inode number was freed (every link deleted) and given to a new file
            # during the backup: another message, archived as data like any new one
            self._first.remove(key)
            return None
        name = value[_STAMP:]
        seen += 1
        if seen < st.st_nlink:
            self._first.set_count(key, seen)
        else:
            self._first.remove(key)     # every link is in the stream now
        return name

    def add(self, st: os.stat_result, name: bytes) -> None:
        """The inode's first copy is in the stream as ``name``."""
        if st.st_nlink > 1:
            self._first.put(_key(st), _identity(st) + _stamp(st) + name, 1)


_IDENTITY = 16
_STAMP = 32                 # the identity, then the stamp
_MASK64 = (1 << 64) - 1


def _key(st: os.stat_result) -> int:
    """The inode and device in 64 bits: on one device the inode numbers themselves (distinct),
    across devices mixed (rarely the same; ``_identity`` tells them apart)."""
    return (st.st_ino ^ (st.st_dev * 0x9E3779B97F4A7C15)) & _MASK64


def _identity(st: os.stat_result) -> bytes:
    return (st.st_ino & _MASK64).to_bytes(8, "big") + (st.st_dev & _MASK64).to_bytes(8, "big")


def _stamp(st: os.stat_result) -> bytes:
    """What the links of one inode share and a new file given the same inode number after
    the old one was deleted does not, short of the same size and the same nanosecond."""
    return st.st_size.to_bytes(8, "big") + (st.st_mtime_ns & _MASK64).to_bytes(8, "big")
