"""Storing a restore stream unchanged as an archive file, for backup software that restores
into a side directory (imsrestore ``--where DIR``, Bacula's ``where=DIR``, NetWorker's
relocated recover ``imsasm -r -m SRC=DST``): the administrator then restores exactly what is
wanted with ``imsrestore -f FILE NAME``.

Failure behaviour: the file is written as ``<name>.partial`` (created 0600 and exclusively,
never through a link; an existing partial, another run's or a failed one's, is never removed)
while the archive reader checks a copy of every byte in a thread; only a stream that passes
is linked to its name, never over an existing file.  A truncated or damaged stream raises
``ArchiveDamaged`` (exit 4) and stays as ``.partial`` (it may be all there is: ``imsrestore
-f`` restores what it holds); a target directory that is a link, someone else's, writable by
others or inside the store raises ``UsageError`` (exit 2); one that cannot be made or a file
that cannot be written raises ``DeviceError`` (exit 6).  A directory that has to be made is
made 0700: the file names every user it holds.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from pathlib import Path

from ims.archive import format as fmt
from ims.archive.reader import ArchiveReader, MemberDamaged, peek_header
from ims.errors import ArchiveDamaged, DeviceError, UsageError


def store_stream(fd: int, device_name: str, where: Path, names: tuple[str, ...],
                 blocking: int | None, keep_out_of: tuple[Path, ...] = ()) -> Path:
    """Store the stream unchanged in ``where``, named after the logical names and the
    backup's time and kind, so that a full backup and its incrementals stored in one
    directory sit side by side in order: ``<names>.<YYYYmmdd-HHMMSS>.<full|incr>.ims``, or
    ``...-2.ims``, ``-3`` ... when that name is taken (two streams of the same second, or
    names that read alike once ``/`` is ``_``): a stored stream is never replaced.

    ``where`` is made 0700 when missing; an existing one must be a directory (not a link)
    of this user or root that nobody else may write to, and none of it may lie inside
    ``keep_out_of`` (the store's partitions, the placeholder tree): ``UsageError``.  The
    stream is written as ``<name>.partial``, created 0600 and exclusively (an existing one,
    live or left by a failed run, is never removed: the next name is taken), and checked
    while it is written, by the archive reader on a copy of the bytes (headers, records,
    each message's SHA-256, the trailer's digest and counts).  Only a stream that passes is
    linked to its name (never over an existing file); a truncated or damaged one raises
    ``ArchiveDamaged`` (exit 4) and stays as ``.partial``: it may be all there is, and
    ``imsrestore -f`` restores what it holds.  A ``blocking`` factor other than the header's
    is refused before anything is written."""
    label = "_".join(n.strip("/").replace("/", "_") or "all" for n in names) or "all"
    dir_fd = _open_target(where, keep_out_of)
    try:
        with open(fd, "rb", closefd=False) as source:
            first = _read_input(source, 1 << 16, device_name)
            header = peek_header(first)
            if header is not None and blocking is not None and header.blocking_factor != blocking:
                raise ArchiveDamaged(f"{device_name}: wrong blocking factor: the archive was"
                                     f" written with -b {header.blocking_factor}, read with -b"
                                     f" {blocking}; nothing stored")
            stamp = time.strftime("%Y%m%d-%H%M%S",
                                  time.localtime(header.created if header else time.time()))
            kind = "incr" if header is not None and header.since is not None else "full"
            base = f"{label}.{stamp}.{kind}"
            out, partial = _create_partial(dir_fd, where, base)
            check = _StreamCheck(str(where / partial), blocking)
            try:
                chunk = first
                while chunk:
                    _write_all(out, chunk, where / partial)
                    check.feed(chunk)
                    chunk = _read_input(source, 1 << 20, device_name)
                try:
                    os.fsync(out)
                except OSError as exc:
                    raise DeviceError(f"{where / partial}: {exc.strerror}") from None
            finally:
                os.close(out)
                verdict = check.finish()
        if verdict is not None:
            if isinstance(verdict, ArchiveDamaged):
                raise ArchiveDamaged(f"{verdict}; kept under that name, not stored as"
                                     f" {partial.removesuffix('.partial')}")
            raise verdict
        name = _publish(dir_fd, where, partial, base)
    finally:
        os.close(dir_fd)
    return where / name


def _open_target(where: Path, keep_out_of: tuple[Path, ...]) -> int:
    """A descriptor of the target directory, made 0700 if missing; refused (``UsageError``)
    when it is a link or not a directory, belongs to someone else, may be written by others
    (they could swap the stored file before it is restored), or lies in ``keep_out_of``."""
    _refuse_inside(Path(os.path.realpath(where)), where, keep_out_of)     # before making it
    try:
        where.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"{where}: exists and is not a directory") from None
    except OSError as exc:
        raise DeviceError(f"{where}: cannot make the directory: {exc.strerror}") from None
    try:
        dir_fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UsageError(f"{where}: is a symbolic link or not a directory; give the"
                             " directory itself") from None
        raise DeviceError(f"{where}: {exc.strerror}") from None
    try:
        st = os.fstat(dir_fd)
        if st.st_uid not in (os.geteuid(), 0):
            raise UsageError(f"{where}: belongs to uid {st.st_uid}, not to this user: another"
                             " user could replace what is stored there; use a directory of"
                             " your own")
        if st.st_mode & 0o022:
            raise UsageError(f"{where}: others may write to it (mode {st.st_mode & 0o7777:04o}):"
                             " they could replace what is stored there; use a directory only"
                             " you can write to")
        _refuse_inside(Path(os.readlink(f"/proc/self/fd/{dir_fd}")), where, keep_out_of)
    except BaseException:
        os.close(dir_fd)
        raise
    return dir_fd


def _refuse_inside(real: Path, where: Path, keep_out_of: tuple[Path, ...]) -> None:
    for area in keep_out_of:
        area_real = Path(os.path.realpath(area))
        if real == area_real or area_real in real.parents:
            raise UsageError(f"{where}: lies inside {area}; store the stream outside the mail"
                             " store and the placeholder tree")


def _create_partial(dir_fd: int, where: Path, base: str) -> tuple[int, str]:
    """The first ``<base>[-N].ims.partial`` that can be created exclusively and whose final
    name is free; an existing partial (another run's, live or failed) is left alone."""
    for number in range(1, 1000):
        name = f"{base}{'' if number == 1 else f'-{number}'}.ims"
        if _exists(dir_fd, name):
            continue
        try:
            fd = os.open(name + ".partial", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        except FileExistsError:
            continue
        except OSError as exc:
            raise DeviceError(f"{where / (name + '.partial')}: cannot create: {exc.strerror}") from None
        os.fchmod(fd, 0o600)            # whatever the umask
        return fd, name + ".partial"
    raise UsageError(f"{where}: {base}.ims and 998 others like it exist; clean up the directory")


def _publish(dir_fd: int, where: Path, partial: str, base: str) -> str:
    """Link the checked partial to its final name, never over a file: when another run took
    the name meanwhile, the next free one.  Returns the name."""
    name = partial.removesuffix(".partial")
    number = 1
    while True:
        try:
            os.link(partial, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            break
        except FileExistsError:
            number += 1
            if number >= 1000:
                raise UsageError(f"{where}: no free name for {base}.ims; the checked stream is"
                                 f" kept as {where / partial}") from None
            name = f"{base}-{number}.ims"
        except OSError as exc:
            raise DeviceError(f"{where / name}: {exc.strerror}; the checked stream is kept as"
                              f" {where / partial}") from None
    try:
        os.unlink(partial, dir_fd=dir_fd)
        os.fsync(dir_fd)
    except OSError as exc:
        raise DeviceError(f"{where / partial}: {exc.strerror}") from None
    return name


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


def _read_input(source, count: int, device_name: str) -> bytes:
    try:
        return source.read(count)
    except OSError as exc:
        raise DeviceError(f"{device_name}: read failed: {exc.strerror}") from None


def _write_all(fd: int, data: bytes, path: Path) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError as exc:
        raise DeviceError(f"{path}: {exc.strerror}") from None


class _StreamCheck:
    """The archive reader in a thread, reading a pipe fed with every byte that is stored."""

    def __init__(self, name: str, blocking: int | None) -> None:
        self.name = name
        self.read_fd, self.write_fd = os.pipe()
        try:
            # fewer switches between the two threads; the default size is fine too
            fcntl.fcntl(self.write_fd, fcntl.F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass
        self.verdict: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(blocking,), daemon=True)
        self.thread.start()

    def _run(self, blocking: int | None) -> None:
        try:
            reader = ArchiveReader(self.read_fd, self.name, blocking)
            reader.read_header()
            damaged: ArchiveDamaged | None = None
            for member in reader.members():
                if member.invalid is not None:
                    damaged = damaged or ArchiveDamaged(f"{self.name}: {member.invalid}")
                elif member.kind == fmt.MESSAGE and member.typeflag == fmt.REGULAR:
                    try:
                        for _ in reader.iter_data(member):
                            pass
                    except MemberDamaged as exc:
                        damaged = damaged or exc     # aligned still: read on to the trailer
            if damaged is not None:
                raise damaged
        except BaseException as exc:    # noqa: BLE001 - handed to the main thread
            self.verdict = exc
        finally:
            # the feeder's writes now fail (EPIPE) instead of waiting for this reader
            os.close(self.read_fd)

    def feed(self, data: bytes) -> None:
        if self.write_fd < 0:
            return
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.write_fd, view):]
        except BrokenPipeError:
            self._close_feed()          # the check is over; its verdict is kept

    def _close_feed(self) -> None:
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def finish(self) -> BaseException | None:
        """None when the stream is a complete, valid archive; else what is wrong with it."""
        self._close_feed()              # end of stream for the reader
        self.thread.join()
        return self.verdict
