"""Archive devices: ``-`` (stdout), a regular file, or a tape/pipe/character device.

A regular file is written under ``<file>.partial`` and renamed over ``<file>`` only after the
trailer is written and fsynced, so an existing good archive is never replaced by a failed
one; the ``.partial`` file of a failed run is left for inspection (it has no trailer) and
named in the error.  Devices and pipes are written in place.

Failure behaviour: a device that cannot be opened raises ``DeviceError`` (exit 6); writing
to a terminal is refused with ``UsageError`` (exit 2); a ``.partial`` that another live run
is writing (it holds an flock on it) is refused with ``StoreLocked`` (exit 3).
"""

from __future__ import annotations

import fcntl
import os
import stat
import sys
from dataclasses import dataclass

from ims.errors import DeviceError, StoreLocked, UsageError


@dataclass
class OutputDevice:
    fd: int
    name: str
    final_path: str | None = None   # set for regular files: rename target
    temp_path: str | None = None

    @property
    def is_stdout(self) -> bool:
        return self.name == "-"

    def commit(self) -> None:
        """The archive is complete: put it in place (only if the file there is still ours)."""
        if self.final_path and self.temp_path:
            try:
                ours = os.stat(self.temp_path, follow_symlinks=False).st_ino == \
                    os.fstat(self.fd).st_ino
            except FileNotFoundError:
                ours = False
            if not ours:
                raise DeviceError(f"{self.temp_path}: removed or replaced by someone else while"
                                  " this run wrote it; the archive is not complete")
            os.replace(self.temp_path, self.final_path)
            directory = os.path.dirname(os.path.abspath(self.final_path))
            try:
                dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            except OSError:
                pass
        self.close()

    def close(self) -> None:
        if self.fd > 2:
            try:
                os.close(self.fd)
            except OSError:
                pass
        self.fd = -1


def open_output(name: str) -> OutputDevice:
    if name == "-":
        fd = sys.stdout.fileno()
        if os.isatty(fd):
            raise UsageError("refusing to write an archive to a terminal; use -f FILE or a pipe")
        return OutputDevice(fd, "-")
    try:
        st = os.stat(name)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise DeviceError(f"{name}: {exc.strerror}") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise DeviceError(f"{name}: is a directory")
    if st is not None and not stat.S_ISREG(st.st_mode):
        try:
            return OutputDevice(os.open(name, os.O_WRONLY), name)
        except OSError as exc:
            raise DeviceError(f"{name}: cannot open device: {exc.strerror}") from None
    temp = name + ".partial"
    _refuse_if_in_use(temp)
    try:
        # a stale .partial (a failed run's, or a link someone planted) is removed, never
        # followed, and the new one is ours alone: created exclusively, mode 0600
        os.unlink(temp)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise DeviceError(f"{temp}: cannot remove the stale partial file: {exc.strerror}") from None
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        os.fchmod(fd, 0o600)      # whatever the umask
        # held until the process ends: a second run to the same file sees it in use
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        raise DeviceError(f"{temp}: cannot create: {exc.strerror}") from None
    return OutputDevice(fd, name, final_path=name, temp_path=temp)


def _refuse_if_in_use(temp: str) -> None:
    """A ``.partial`` another live run is writing (it holds a lock on it) is never taken."""
    try:
        fd = os.open(temp, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return                  # absent, or a link: removed below without being followed
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise StoreLocked(f"{temp}: another run is writing this archive now; not taken"
                          " over") from None
    finally:
        os.close(fd)
