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
        name, seen = found
        seen += 1
        if seen < st.st_nlink:
            self._first.set_count(st.st_ino, st.st_dev, seen)
        else:
            self._first.remove(st.st_ino, st.st_dev)    # every link is in the stream now
        return name

    def add(self, st: os.stat_result, name: bytes) -> None:
        """The inode's first copy is in the stream as ``name``."""
        if st.st_nlink > 1:
            self._first.put(st.st_ino, st.st_dev, name, 1)
