"""Unnamed temporary files, for the tables and lists a run keeps out of memory (the
trailer's index, the tables of shared messages, a large message from a stream).

The directory is the one Python's ``tempfile`` would choose, tried in the same order:
``$TMPDIR``, ``$TEMP``, ``$TMP``, then ``/tmp``, ``/var/tmp``, ``/usr/tmp``, then the
current directory.  A file is opened with ``O_TMPFILE`` (it never has a name, and its space
is freed when its last descriptor closes, also when the process dies); where the file system
lacks it, it is created exclusively (``O_EXCL|O_NOFOLLOW``, mode 0600) under a random name
and unlinked at once; a byte is written to it, so a directory on a full file system is
passed over, as ``tempfile``'s probe does.  ``tempfile`` itself is not imported: with ``shutil`` and ``random``,
which it imports, it cost every process some 0.65 MiB.

Failure behaviour: ``unnamed_file`` raises the ``OSError`` of the last directory tried when
none takes a file; callers keep their data in memory then, or report a ``DeviceError``.
"""

from __future__ import annotations

import errno
import os

_CREATE = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# errors that say "this file system has no O_TMPFILE", not "this directory will not do"
_NO_TMPFILE = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)
_last_used: str | None = None     # named in error messages


def candidates() -> list[str]:
    """The directories tried, in order."""
    found = [os.environ[name] for name in ("TMPDIR", "TEMP", "TMP") if os.environ.get(name)]
    found += ["/tmp", "/var/tmp", "/usr/tmp"]
    try:
        found.append(os.getcwd())
    except OSError:
        found.append(os.curdir)
    return found


def temp_dir() -> str:
    """The directory of the last file made, else the first candidate: for messages."""
    return _last_used if _last_used is not None else candidates()[0]


def unnamed_file(prefix: str = "ims-") -> int:
    """A descriptor of a new, empty, unnamed file open for reading and writing, in the
    first candidate directory that takes one (tried again at each call, as the environment
    may have changed)."""
    global _last_used
    last: OSError | None = None
    for directory in candidates():
        try:
            fd = _open_in(directory, prefix)
        except OSError as exc:
            last = exc
            continue
        _last_used = directory
        return fd
    assert last is not None
    raise last


def _open_in(directory: str, prefix: str) -> int:
    fd = _create_in(directory, prefix)
    try:
        # a full file system still makes the inode: a byte written tells (as tempfile's
        # probe does), and the next directory is tried
        os.pwrite(fd, b"\0", 0)
        os.ftruncate(fd, 0)
    except OSError:
        os.close(fd)
        raise
    return fd


def _create_in(directory: str, prefix: str) -> int:
    flag = getattr(os, "O_TMPFILE", 0)
    if flag:
        try:
            return os.open(directory, flag | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno not in _NO_TMPFILE:
                raise
    for _ in range(100):
        path = os.path.join(directory, f"{prefix}{os.urandom(6).hex()}")
        try:
            fd = os.open(path, _CREATE, 0o600)
        except FileExistsError:
            continue
        try:
            os.unlink(path)
        except OSError:
            os.close(fd)
            raise
        return fd
    raise FileExistsError(errno.EEXIST, "no free temporary name", directory)
