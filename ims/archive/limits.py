"""The archive's size limits: one set, enforced by the writer and checked by every reader
(sequential, by offset, prefetching), so that nothing is written that a restore refuses
(docs/archive-format.md §9, docs/reliability.md "Archive limits").

Read these as ``limits.NAME`` at the time of use, never copied at import: a test lowers one
and both sides must follow.

Failure behaviour: the writer raises ``LimitExceeded`` (an ``ArchiveDamaged``, exit 4: the
archive being written cannot be completed) naming the folder, user or message, before any
byte of that member is written; a reader reports a member over a limit as damaged.
"""

from __future__ import annotations

from ims.errors import ArchiveDamaged

# A JSON member (header, user, folder state, trailer) is parsed whole.  A folder state lists
# every message of its folder (about 80 bytes each): 1 GiB is some thirteen million messages;
# a reader needs about five times the member's size in memory to parse and check it.
MAX_JSON_MEMBER = 1 << 30

# Nesting of a JSON member: the writer's are at most four levels deep.  A deeper one (only
# damage or malice makes it) would exhaust Python's recursion when parsed, shown or handed
# between processes.
MAX_JSON_DEPTH = 32

# A pax extended header: paths, keywords and the IMS.* records of one member (kilobytes).
MAX_PAX_PAYLOAD = 1 << 20

# One message.  The format has no limit of its own (pax ``size`` above 8 GiB - 1); this one
# bounds what a damaged or hostile size can make a restore try to read or spool, and lies far
# above any size a mail system delivers.
MAX_MESSAGE_SIZE = 64 << 30

# A message up to this size reaches the store writer as bytes in memory; a larger one as a
# read-only mapping of a file: the archive itself when it is a file, else a temporary copy
# in $TMPDIR (so a restore from a pipe needs that much room there, for one message at a time).
MESSAGE_IN_MEMORY = 64 << 20


class LimitExceeded(ArchiveDamaged):
    """A member the writer will not write, because a reader would refuse it."""


def size_text(count: int) -> str:
    """``count`` bytes, with the binary unit an administrator reads at a glance."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if count >= 1 << shift:
            return f"{count} bytes ({count / (1 << shift):.1f} {unit})"
    return f"{count} bytes"
