"""Writing a file the administrator named (``imsconfig -o FILE``, configutil's msg.conf).

Such commands run as root, often in directories other users can write to (``/tmp``), so:

- A regular file (or a new one) is replaced atomically: the text goes to a temporary file
  with a random name in the same directory, created exclusively and never through a link
  (``O_CREAT|O_EXCL|O_NOFOLLOW``), then renamed over the target; a rename replaces the
  name without following anything at it.  The temporary file is removed on failure.  Its
  mode and owner are the existing target's, else 0644 (these are configuration files).
- A target that exists and is not a regular file (``/dev/null``, a FIFO, a terminal) is
  written in place, opened without ``O_CREAT``; so is a file reached through a
  ``/proc/<pid>/fd`` link (``/dev/stdout``): that is a descriptor the caller set up, and
  replacing the file behind it would lose what the shell's ``>>`` asked for.
- A symbolic link is followed only when it is owned by root or by the effective uid (the
  rule of the kernel's ``protected_symlinks``): a link planted by another user names a file
  of the planter's choosing.  Otherwise the write is refused, naming the link.

Failure behaviour: every problem raises ``UsageError`` (exit 2) with one line naming the
file, or the link, at fault; nothing is left behind.
"""

from __future__ import annotations

import errno
import os
import re
import stat

from ims.errors import UsageError

NEW_FILE_MODE = 0o644
_MAX_LINKS = 40                      # as the kernel's own limit on a chain of links
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# an existing non-regular file: never created here, never made our controlling terminal
_IN_PLACE = os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC
_FD_LINK_DIR = re.compile(r"/proc/(self|thread-self|\d+)/fd")


def write_file(name: str, data: bytes) -> None:
    """Write ``data`` to the file ``name`` by the rules of the module docstring."""
    final, through_fd_link = _follow_links(name)
    try:
        st: os.stat_result | None = os.stat(name)      # what the kernel reaches through the links
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise UsageError(f"{name}: cannot write: {exc.strerror}") from None
    try:
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
        if st is not None and (through_fd_link or not stat.S_ISREG(st.st_mode)):
            _write_in_place(name, data, st)
        else:
            _replace(final, data, st)
    except OSError as exc:
        raise UsageError(f"{name}: cannot write: {exc.strerror or exc}") from None


def _follow_links(name: str) -> tuple[str, bool]:
    """The path the links of ``name`` lead to, checking each link's owner; and whether the
    chain went through a ``/proc/<pid>/fd`` link (whose target is an open descriptor, not
    necessarily a path: ``pipe:[1234]``)."""
    current = os.path.abspath(name)
    through_fd_link = False
    allowed = (0, os.geteuid())
    for _ in range(_MAX_LINKS):
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return current, through_fd_link
        except OSError as exc:
            raise UsageError(f"{name}: cannot write: {exc.strerror}") from None
        if not stat.S_ISLNK(st.st_mode):
            return current, through_fd_link
        if st.st_uid not in allowed:
            raise UsageError(f"{current}: a symbolic link owned by uid {st.st_uid}, neither"
                             f" root nor uid {os.geteuid()}; not followed, nothing written")
        directory = os.path.dirname(current)
        through_fd_link = through_fd_link or bool(_FD_LINK_DIR.fullmatch(directory))
        current = os.path.join(directory, os.readlink(current))
    raise UsageError(f"{name}: cannot write: {os.strerror(errno.ELOOP)}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_in_place(name: str, data: bytes, expected: os.stat_result) -> None:
    regular = stat.S_ISREG(expected.st_mode)
    fd = os.open(name, _IN_PLACE | (os.O_APPEND if regular else 0))
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (expected.st_dev, expected.st_ino):
            # swapped since it was looked at: not written at all rather than over a file
            raise OSError(errno.EAGAIN, "changed while being opened; nothing written")
        _write_all(fd, data)
    finally:
        os.close(fd)


def _replace(final: str, data: bytes, existing: os.stat_result | None) -> None:
    directory, base = os.path.split(final)
    mode = stat.S_IMODE(existing.st_mode) if existing else NEW_FILE_MODE
    for _ in range(10):               # a random name taken already: try another
        temp = os.path.join(directory, f".{base}.{os.urandom(6).hex()}.tmp")
        try:
            fd = os.open(temp, _NEW, 0o600)
            break
        except FileExistsError:
            continue
    else:
        raise OSError(errno.EEXIST, "no free temporary name")
    try:
        try:
            if existing is not None and os.geteuid() == 0:
                os.fchown(fd, existing.st_uid, existing.st_gid)   # keep the file's owner
            os.fchmod(fd, mode)                 # after fchown, which may clear set-id bits
            _write_all(fd, data)
            os.fsync(fd)                        # the rename must not publish an empty file
        finally:
            os.close(fd)
        os.replace(temp, final)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
