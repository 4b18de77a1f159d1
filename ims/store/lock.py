"""Dovecot's ``dovecot-uidlist.lock`` dotlock, taken the way Dovecot takes it.

The lock file holds ``<pid>:<hostname>``; it is written complete under a temporary name in
the folder's ``tmp/`` and hard-linked to its name (as Dovecot does), so a run killed or out
of space never leaves an empty lock.  A lock whose pid is a dead process on this host and
that is at least 2 s old is stale and is removed (Dovecot does the same), as is one that
names no holder and is older than Dovecot's stale timeout (2 minutes); a lock of a live
process, or of another host, is never broken: the caller waits
up to ``timeout`` seconds, then gets ``StoreLocked`` (exit 3).  Release removes the file only
if it is still ours (same inode), so a lock broken and retaken by someone else survives.

Keep holds short: Dovecot's deliveries and IMAP sessions wait while it is held, and give up
after about two minutes.
"""

from __future__ import annotations

import errno
import os
import stat
import socket
import time
from pathlib import Path

from ims.errors import StoreLocked
from ims.signals import held

_hostname: str | None = None


def hostname() -> str:
    """This host's name as staged and lock file names carry it, asked once a process (a
    system call each time, on every folder and control file a restore writes)."""
    global _hostname
    if _hostname is None:
        _hostname = socket.gethostname()
    return _hostname

LOCK_NAME = "dovecot-uidlist.lock"
STALE_DEAD_PID_AGE = 2.0
STALE_UNKNOWN_AGE = 120.0     # Dovecot's dotlock stale timeout for dovecot-uidlist.lock
DEFAULT_TIMEOUT = 60.0


class FolderLock:
    def __init__(self, folder_dir: Path, timeout: float = DEFAULT_TIMEOUT,
                 name: str = LOCK_NAME, shown: Path | None = None) -> None:
        # ``name``: Dovecot takes other files' dotlocks the same way (``subscriptions.lock``);
        # ``shown``: the folder as messages name it, when ``folder_dir`` is a descriptor's
        # /proc/self/fd path
        self.path = folder_dir / name
        self.shown = (shown or folder_dir) / name
        self.timeout = timeout
        self.inode: int | None = None

    def acquire(self) -> None:
        try:
            self._acquire()
        except BaseException:
            # an interrupt held off while the lock was made arrives as soon as it is made:
            # the caller never learns it has it, so it goes here
            self.release()
            raise

    def _acquire(self) -> None:
        me = f"{os.getpid()}:{hostname()}".encode()
        deadline = time.monotonic() + self.timeout
        delay = 0.01
        while True:
            with held():
                if self._try_create(me):
                    return
            if self._remove_if_stale():
                continue
            if time.monotonic() >= deadline:
                raise StoreLocked(f"{self.shown}: held by {self._holder()} for more than"
                                  f" {self.timeout:.0f} s; store locked") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def _try_create(self, content: bytes) -> bool:
        """Create the lock complete, as Dovecot does: written under a temporary name in the
        folder's ``tmp/``, then hard-linked to its name, so that no run killed (or out of
        space) between create and write leaves an empty lock behind.  ``tmp/`` is opened
        without following a link (the mail user owns it)."""
        folder_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:
                tmp_fd = os.open("tmp", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                 | os.O_CLOEXEC, dir_fd=folder_fd)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    return self._create_in_place(content)   # no usable tmp/: in place
                raise
            try:
                return self._link_into_place(content, folder_fd, tmp_fd)
            finally:
                os.close(tmp_fd)
        finally:
            os.close(folder_fd)

    def _link_into_place(self, content: bytes, folder_fd: int, tmp_fd: int) -> bool:
        temp = f"ims-restore.{os.getpid()}.lock.{hostname()}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(temp, flags, 0o600, dir_fd=tmp_fd)
        except FileExistsError:
            os.unlink(temp, dir_fd=tmp_fd)    # our own pid's: a lock attempt interrupted earlier
            fd = os.open(temp, flags, 0o600, dir_fd=tmp_fd)
        try:
            try:
                self._own(fd)
                if os.write(fd, content) != len(content):
                    raise OSError(errno.ENOSPC, "short write of the lock file")
                inode = os.fstat(fd).st_ino
            finally:
                os.close(fd)
            try:
                os.link(temp, self.path.name, src_dir_fd=tmp_fd, dst_dir_fd=folder_fd,
                        follow_symlinks=False)
            except FileExistsError:
                return False
            self.inode = inode
            return True
        finally:
            try:
                os.unlink(temp, dir_fd=tmp_fd)
            except FileNotFoundError:
                pass

    def _own(self, fd: int) -> None:
        """The lock belongs to the folder's owner: Dovecot, running as the mail user, reads
        the holder and watches the file (inotify) while it waits."""
        if os.geteuid() == 0:
            st = os.stat(self.path.parent)
            os.fchown(fd, st.st_uid, st.st_gid)

    def _create_in_place(self, content: bytes) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return False
        try:
            self._own(fd)
            if os.write(fd, content) != len(content):
                raise OSError(errno.ENOSPC, "short write of the lock file")
            self.inode = os.fstat(fd).st_ino
        except BaseException:
            os.close(fd)
            os.unlink(self.path)
            raise
        os.close(fd)
        return True

    def _read_holder(self) -> tuple[os.stat_result, str]:
        """The lock file's status and content: a regular file only, never through a link,
        never blocking (a FIFO planted there), at most 256 bytes."""
        fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file", str(self.shown))
            return st, os.read(fd, 256).decode("utf-8", "replace").strip()
        finally:
            os.close(fd)

    def _holder(self) -> str:
        try:
            return self._read_holder()[1] or "an unknown process"
        except OSError:
            return "an unknown process (the lock is not a regular file)"

    def _remove_if_stale(self) -> bool:
        try:
            st, content = self._read_holder()
            pid, _, host = content.partition(":")
        except FileNotFoundError:
            return True
        except OSError:
            return False
        age = time.time() - st.st_mtime
        if not pid.isdigit():
            # no holder recorded (a lock cut short by a crash, or not ours): Dovecot takes
            # such a lock over once it is older than its stale timeout, and so do we
            return age >= STALE_UNKNOWN_AGE and self._unlink_if_same(st.st_ino)
        if host != hostname():
            return False
        if age < STALE_DEAD_PID_AGE or process_alive(int(pid)):
            return False
        return self._unlink_if_same(st.st_ino)

    def _unlink_if_same(self, inode: int) -> bool:
        """Remove the lock if it is still the file judged stale; True either way (retry)."""
        try:
            if os.lstat(self.path).st_ino == inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        return True

    def release(self) -> None:
        if self.inode is None:
            return
        with held():
            self._release()

    def _release(self) -> None:
        try:
            if os.lstat(self.path).st_ino == self.inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.inode = None

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
