"""Storing a restore stream unchanged as an archive file, for backup software that restores
into a side directory (imsrestore ``--where DIR``, Bacula's ``where=DIR``, NetWorker's
relocated recover ``imsasm -r -m SRC=DST``): the administrator then restores exactly what is
wanted with ``imsrestore -f FILE NAME``.

Failure behaviour: the file is written as ``<name>.partial`` (created 0600 and exclusively,
never through a link; a stale one is removed first, never followed) while the archive reader
checks a copy of every byte in a thread; only a stream that passes is renamed to its name.
A truncated or damaged stream raises ``ArchiveDamaged`` (exit 4) and stays as ``.partial``
(it may be all there is: ``imsrestore -f`` restores what it holds); a directory or file
that cannot be made or written raises ``DeviceError`` (exit 6).  A directory that has to be
made is made 0700: the file names every user it holds.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

from ims.archive import format as fmt
from ims.archive.reader import ArchiveReader, MemberDamaged, peek_header
from ims.errors import ArchiveDamaged, DeviceError


def store_stream(fd: int, device_name: str, where: Path, names: tuple[str, ...],
                 blocking: int | None) -> Path:
    """--where DIR: store the stream unchanged in DIR, named after the logical name and the
    backup's time and kind, so that a full backup and its incrementals restored into one
    DIR sit side by side in order: ``<name>.<YYYYmmdd-HHMMSS>.<full|incr>.ims``.

    The stream holds every selected user's mail: it is written as ``<that>.partial``,
    created 0600 and exclusively, never through a link (a stale one is removed first), and
    checked while it is written, by the archive reader on a copy of the bytes (headers,
    records, each message's SHA-256, the trailer's digest and counts).  Only a stream that
    passes is renamed to its name; a truncated or damaged one raises ``ArchiveDamaged``
    (exit 4) and stays as ``.partial``: it may be all there is, and ``imsrestore -f``
    restores what it holds."""
    label = "_".join(n.strip("/").replace("/", "_") or "all" for n in names) or "all"
    try:
        where.mkdir(mode=0o700, parents=True, exist_ok=True)
        dir_fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise DeviceError(f"{where}: {exc.strerror}") from None
    try:
        with open(fd, "rb", closefd=False) as source:
            first = _read_input(source, 1 << 16, device_name)
            header = peek_header(first)
            stamp = time.strftime("%Y%m%d-%H%M%S",
                                  time.localtime(header.created if header else time.time()))
            kind = "incr" if header is not None and header.since is not None else "full"
            name = f"{label}.{stamp}.{kind}.ims"
            partial = where / (name + ".partial")
            out = _create_partial(dir_fd, partial)
            check = _StreamCheck(str(partial), blocking)
            try:
                chunk = first
                while chunk:
                    _write_all(out, chunk, partial)
                    check.feed(chunk)
                    chunk = _read_input(source, 1 << 20, device_name)
                try:
                    os.fsync(out)
                except OSError as exc:
                    raise DeviceError(f"{partial}: {exc.strerror}") from None
            finally:
                os.close(out)
                verdict = check.finish()
        if verdict is not None:
            if isinstance(verdict, ArchiveDamaged):
                raise ArchiveDamaged(f"{verdict}; kept under that name, not stored as {name}")
            raise verdict
        try:
            os.replace(partial.name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.fsync(dir_fd)
        except OSError as exc:
            raise DeviceError(f"{where / name}: {exc.strerror}") from None
    finally:
        os.close(dir_fd)
    return where / name


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


def _create_partial(dir_fd: int, partial: Path) -> int:
    try:
        try:
            os.unlink(partial.name, dir_fd=dir_fd)    # unlink never follows a link
        except FileNotFoundError:
            pass
        return os.open(partial.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                       | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    except OSError as exc:
        raise DeviceError(f"{partial}: cannot create: {exc.strerror}") from None


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
