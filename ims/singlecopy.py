"""The backup's single-copy table: which shared inodes are already in the stream, and under
which member name.

A message file with several links (a delivery to several users, stored once by LMTP) is
archived once; every later link to the same inode becomes a hard-link member naming the
first copy.  The table is the one part of the store reader that grows with the store, so
it is kept small:

- an inode's entry is dropped once as many links were seen as the inode has (``st_nlink``
  at each sight): no further copy of it can come, and most shared inodes have two links;
- the entries are kept in an ``ims.spilledmap.SpilledMap``: the inode, device and links
  seen in an array (64 bytes an inode), the member names in an unlinked temporary file.

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
        # inode, device -> member name of its first copy, and the links seen so far
        self._first = SpilledMap()

    def __len__(self) -> int:
        return len(self._first)

    def first_copy(self, st: os.stat_result) -> bytes | None:
        """The member name of the inode's copy already in the stream, or None; counts this
        sight as one of its links."""
        found = self._first.get(st.st_ino, st.st_dev)
        if found is None:
            return None
        value, seen = found
        if value[:_STAMP] != _stamp(st):
            # the inode number was freed (every link deleted) and given to a new file
            # during the backup: another message, archived as data like any new one
            self._first.remove(st.st_ino, st.st_dev)
            return None
        name = value[_STAMP:]
        seen += 1
        if seen < st.st_nlink:
            self._first.set_count(st.st_ino, st.st_dev, seen)
        else:
            self._first.remove(st.st_ino, st.st_dev)    # every link is in the stream now
        return name

    def add(self, st: os.stat_result, name: bytes) -> None:
        """The inode's first copy is in the stream as ``name``."""
        if st.st_nlink > 1:
            self._first.put(st.st_ino, st.st_dev, _stamp(st) + name, 1)


_STAMP = 16


def _stamp(st: os.stat_result) -> bytes:
    """What the links of one inode share and a new file given the same inode number after
    the old one was deleted does not, short of the same size and the same nanosecond."""
    return st.st_size.to_bytes(8, "big") + (st.st_mtime_ns & (2**64 - 1)).to_bytes(8, "big")
