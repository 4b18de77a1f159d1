"""The backup's single-copy table: which shared inodes are already in the stream, and under
which member name.

A message file with several links (a delivery to several users, stored once by LMTP) is
archived once; every later link to the same inode becomes a hard-link member naming the
first copy.  The table is the one part of the store reader that grows with the store, so
it is kept small:

- an inode's entry is dropped once as many links were seen as the inode has (``st_nlink``
  at each sight): no further copy of it can come, and most shared inodes have two links;
- keys are one int (device and inode), names the member name's bytes; a count is kept only
  for inodes of more than two links.

Dropping an entry early never loses mail: a link seen after it (one made during the backup,
so that ``st_nlink`` grew) is archived as data again, like any message.
"""

from __future__ import annotations

import os


class LinkTable:
    def __init__(self) -> None:
        self._first: dict[int, bytes] = {}     # inode -> member name of its first copy
        self._seen: dict[int, int] = {}        # inode -> links seen, for st_nlink > 2

    def __len__(self) -> int:
        return len(self._first)

    def first_copy(self, st: os.stat_result) -> bytes | None:
        """The member name of the inode's copy already in the stream, or None; counts this
        sight as one of its links."""
        key = (st.st_dev << 64) | st.st_ino
        name = self._first.get(key)
        if name is None:
            return None
        seen = self._seen.pop(key, 1) + 1
        if seen < st.st_nlink:
            self._seen[key] = seen
        else:
            del self._first[key]            # every link is in the stream now
        return name

    def add(self, st: os.stat_result, name: bytes) -> None:
        """The inode's first copy is in the stream as ``name``."""
        if st.st_nlink > 1:
            self._first[(st.st_dev << 64) | st.st_ino] = name
