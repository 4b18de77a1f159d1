"""Reading the store's small control files (``dovecot-uidlist``, ``dovecot-keywords``,
``dovecot.index``, ``subscriptions``) as root, safely: the mail user owns the directories
and can plant a link (to a root-only file, to ``/dev/zero``) or a FIFO under those names.

Failure behaviour: ``FileNotFoundError`` when the file is absent; ``OSError`` with ``ELOOP``
for a link and ``EINVAL`` for anything that is not a regular file (never followed, never
blocking); ``EFBIG`` past ``limit`` bytes.  Callers name the file and skip what depends on it.
``follow_links=True`` is for the administrator's own files (the configuration), which may
be links of the administrator's; the rest holds for them too.
"""

from __future__ import annotations

import errno
import os
import stat

_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_regular(name: str | os.PathLike[str], dir_fd: int | None = None,
                 follow_links: bool = False) -> int:
    """An fd of a regular file, opened without following a link (unless ``follow_links``)
    or blocking on a FIFO."""
    fd = os.open(name, _FLAGS & ~os.O_NOFOLLOW if follow_links else _FLAGS, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fsdecode(name))
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(name: str | os.PathLike[str], dir_fd: int | None = None,
                 limit: int = 1 << 30, follow_links: bool = False) -> bytes:
    """The whole content of a regular file (see ``open_regular``), at most ``limit`` bytes."""
    fd = open_regular(name, dir_fd, follow_links)
    try:
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return b"".join(chunks)
            total += len(chunk)
            if total > limit:
                raise OSError(errno.EFBIG, f"larger than {limit} bytes", os.fsdecode(name))
            chunks.append(chunk)
    finally:
        os.close(fd)
