"""Writes an archive stream: blocking, members, the running digest and the trailer.

``RecordSink`` turns appended bytes into whole records of 512 x blocking factor bytes on a
file descriptor (a file, a pipe or a tape).  ``ArchiveWriter`` adds members in the order the
format requires and keeps, per folder, the extent the trailer's index records.

Failure behaviour: any write error (ENOSPC, EIO, EPIPE...) raises ``DeviceError`` naming the
device; the writer is then dead and ``finish`` is never reached, so a stream cut short has
no trailer.  A member over a limit of ``ims.archive.limits`` (which every reader checks)
raises ``LimitExceeded`` naming it, before any of its bytes are written.  A regular file is
fsynced in ``close``; nothing is fsynced for pipes or tapes.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
from typing import Any

from ims.archive import format as fmt
from ims.archive import limits
from ims.archive.spill import SpilledList, json_text
from ims.errors import DeviceError

_FLUSH_AT = 1 << 20
_PIPE_SIZE = 1 << 20
_IOV_MAX = 1024         # Linux's limit of pieces per writev
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class RecordSink:
    """Appended pieces are queued as they are (a message's bytes as a view of the reader's
    shared slot, not copied) and written with ``writev``, whole records at a time; the
    few bytes past the last whole record are kept as a copy.  ``settle`` writes what it can
    before the caller reuses memory it queued a view of."""

    def __init__(self, fd: int, blocking_factor: int, device_name: str) -> None:
        self.fd = fd
        self.record_size = fmt.BLOCK * blocking_factor
        self.device_name = device_name
        self.parts: list[bytes | bytearray | memoryview] = []
        self.queued = 0   # bytes in ``parts``
        self.written = 0  # bytes handed to the device so far
        self.failed = False
        mode = os.fstat(fd).st_mode
        self.is_regular = stat.S_ISREG(mode)
        if stat.S_ISFIFO(mode):
            try:  # fewer wake-ups of writer and reader
                fcntl.fcntl(fd, F_SETPIPE_SZ, _PIPE_SIZE)
            except OSError:
                pass
        self.flush_at = max(_FLUSH_AT // self.record_size, 1) * self.record_size

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` by reference: the caller leaves it unchanged until ``settle`` (or a
        later write) has written it."""
        self.parts.append(data)
        self.queued += len(data)
        if self.queued >= self.flush_at or len(self.parts) >= _IOV_MAX:
            self.settle()

    def write_member(self, headers: bytes, data: bytes | memoryview, padding: bytes,
                     length: int) -> None:
        """``write`` of a message's three pieces at once (``length`` bytes in all): once per
        message, so one call instead of three."""
        parts = self.parts
        parts += (headers, data, padding)
        self.queued += length
        if self.queued >= self.flush_at or len(parts) >= _IOV_MAX:
            self.settle()

    def settle(self) -> None:
        """Write every whole record queued; keep the rest as a copy of its own."""
        self._flush(self.queued - self.queued % self.record_size)

    def _flush(self, count: int) -> None:
        parts = self.parts
        left = self.queued - count
        kept: list[bytes | bytearray | memoryview] = []
        while left > 0:        # split off the bytes past ``count``
            last = parts.pop()
            if len(last) <= left:
                kept.append(last)
                left -= len(last)
            else:
                cut = len(last) - left
                parts.append(memoryview(last)[:cut])
                kept.append(memoryview(last)[cut:])
                left = 0
        tail = b"".join(reversed(kept))
        try:
            _write_all(self.fd, parts)
        except OSError as exc:
            self.failed = True
            raise DeviceError(f"{self.device_name}: write failed: {exc.strerror or exc}") from None
        self.written += count
        self.parts = [tail] if tail else []
        self.queued = len(tail)

    def close(self) -> None:
        """Pad to a whole record, write everything out, fsync a regular file."""
        self.write(b"\0" * (-self.queued % self.record_size))
        self._flush(self.queued)
        if self.is_regular:
            try:
                os.fsync(self.fd)
            except OSError as exc:
                self.failed = True
                raise DeviceError(f"{self.device_name}: fsync failed: {exc.strerror}") from None


def _write_all(fd: int, parts: list[bytes | bytearray | memoryview]) -> None:
    """Write every part, in order, ``_IOV_MAX`` at a time, resuming after a short write."""
    first = 0
    while True:
        while first < len(parts) and not len(parts[first]):
            first += 1          # writev of nothing but empty pieces would return 0
        if first == len(parts):
            return
        try:
            count = os.writev(fd, parts[first:first + _IOV_MAX])
        except InterruptedError:
            continue
        if count == 0:
            raise OSError(errno.EIO, "device accepted no data")
        while count:
            length = len(parts[first])
            if count >= length:
                count -= length
                first += 1
            else:
                parts[first] = memoryview(parts[first])[count:]
                count = 0


class ArchiveWriter:
    """Adds members to a stream and writes the trailer (docs/archive-format.md)."""

    def __init__(self, sink: RecordSink) -> None:
        self.sink = sink
        self.offset = 0  # logical stream offset of the next member
        self.digest = hashlib.sha256()
        # the trailer's index grows with the store: kept as JSON text out of memory
        self.index = SpilledList()
        self.user_index = SpilledList()
        self._folder: dict[str, Any] | None = None
        self._large_left = 0
        self._large_size = 0

    # Header blocks and non-message data feed the running digest; message data does not
    # (each message carries its own SHA-256 in its header, which the digest covers).
    def _emit(self, data: bytes, digest: bool) -> None:
        if digest:
            self.digest.update(data)
        self.sink.write(data)
        self.offset += len(data)

    def add_json(self, name: str, kind: str, body: dict[str, Any], mtime: int) -> None:
        payload = json_text(body)
        if len(payload) > limits.MAX_JSON_MEMBER:
            raise limits.LimitExceeded(
                f"{_describe(kind, name, body)}: its {kind} member would hold"
                f" {limits.size_text(len(payload))} of JSON, more than the"
                f" {limits.MAX_JSON_MEMBER} bytes a reader accepts; the archive is incomplete"
                " (no trailer)")
        if kind == fmt.USER:
            # a user member ends the folder before it: the index's extent must not hold it
            # (a reader by offset refuses an extent with anything but the folder's members)
            self.end_folder()
        headers = fmt.member_headers(name, len(payload), mtime, fmt.REGULAR,
                                     [(fmt.TYPE_KEY, kind)], uid=0, gid=0)
        self._emit(headers + payload + fmt.padding(len(payload)), digest=True)

    def begin_folder(self, name: str, state: dict[str, Any], mtime: int) -> None:
        self.end_folder()
        extent = {"partition": state["partition"], "user": state["user"],
                  "folder": state["folder"], "offset": self.offset, "messages": 0}
        self.add_json(name, fmt.FOLDER, state, mtime)
        # only now: a folder refused by a limit leaves the writer as it was, with nothing of
        # it in the stream or the index
        self._folder = extent

    def end_folder(self) -> None:
        if self._folder is not None:
            self._folder["end"] = self.offset
            self.index.append(self._folder)
            self._folder = None

    def settle(self) -> None:
        """Write out the queued bytes of views (message data) the caller is about to reuse."""
        self.sink.settle()

    def add_message(self, name: bytes, data: bytes | memoryview, mtime: int, encoded: bytes,
                    uid: int, gid: int) -> None:
        """A message member with data; ``encoded`` is its pax payload (format.message_records).
        ``data`` is written later, by reference: memory it views is reused only after
        ``settle``."""
        size = len(data)
        _check_message_size(name, size)
        headers = fmt.member_headers(name, size, mtime, fmt.REGULAR, encoded=encoded,
                                     uid=uid, gid=gid)
        self.digest.update(headers)
        length = len(headers) + size + (-size % fmt.BLOCK)
        self.sink.write_member(headers, data, fmt.ZEROS[:-size % fmt.BLOCK], length)
        self.offset += length
        if self._folder is not None:
            self._folder["messages"] += 1

    def begin_large_message(self, name: bytes, size: int, mtime: int, encoded: bytes,
                            uid: int, gid: int) -> None:
        """Start a message whose bytes arrive in pieces (``add_large_chunk``)."""
        _check_message_size(name, size)
        headers = fmt.member_headers(name, size, mtime, fmt.REGULAR, encoded=encoded,
                                     uid=uid, gid=gid)
        self._emit(headers, digest=True)
        self._large_left = size
        self._large_size = size

    def add_large_chunk(self, data: bytes | memoryview) -> None:
        data = data[:self._large_left]
        self.sink.write(data)
        self._large_left -= len(data)

    def end_large_message(self) -> bool:
        """Finish the member; False when fewer bytes came than announced (zeros fill in)."""
        complete = self._large_left == 0
        if self._large_left:
            self.sink.write(b"\0" * self._large_left)
        pad = fmt.padding(self._large_size)
        self.sink.write(pad)
        self.offset += self._large_size + len(pad)
        self._large_left = self._large_size = 0
        if self._folder is not None:
            self._folder["messages"] += 1
        return complete

    def add_link(self, name: bytes, target: bytes, mtime: int, encoded: bytes,
                 uid: int, gid: int) -> None:
        headers = fmt.member_headers(name, 0, mtime, fmt.HARDLINK, linkname=target,
                                     encoded=encoded, uid=uid, gid=gid)
        self._emit(headers, digest=True)
        if self._folder is not None:
            self._folder["messages"] += 1

    def finish(self, trailer: dict[str, Any], mtime: int) -> None:
        """Write the trailer (digest + index), the end-of-archive blocks, and flush."""
        self.end_folder()
        body = dict(trailer)
        body["digest"] = "sha256:" + self.digest.hexdigest()
        body["trailer_offset"] = self.offset
        try:
            self._add_trailer(body, mtime)
        finally:
            self.index.close()
            self.user_index.close()
        self._emit(fmt.END_OF_ARCHIVE, digest=False)
        self.sink.close()

    def _add_trailer(self, body: dict[str, Any], mtime: int) -> None:
        """The trailer member: ``body`` then ``index`` and ``users`` (in that order, the
        text ``add_json`` would write), the two lists streamed from their spill files."""
        head = json_text(body)[:-1]             # without its closing brace
        parts: list[bytes | SpilledList] = [head, b',"index":', self.index, b',"users":',
                                            self.user_index, b"}"]
        size = sum(len(p) if isinstance(p, bytes) else p.size for p in parts)
        if size > limits.MAX_JSON_MEMBER:
            raise limits.LimitExceeded(
                f"the trailer (an index of {len(self.index)} folders): its trailer member would"
                f" hold {limits.size_text(size)} of JSON, more than the"
                f" {limits.MAX_JSON_MEMBER} bytes a reader accepts; the archive is incomplete"
                " (no trailer)")
        self._emit(fmt.member_headers(fmt.TRAILER_NAME, size, mtime, fmt.REGULAR,
                                      [(fmt.TYPE_KEY, fmt.TRAILER)], uid=0, gid=0), digest=True)
        for part in parts:
            for chunk in ([part] if isinstance(part, bytes) else part.chunks()):
                self._emit(chunk, digest=True)
        self._emit(fmt.padding(size), digest=True)


def _describe(kind: str, name: str, body: dict[str, Any]) -> str:
    if kind == fmt.FOLDER:
        return f"folder {body.get('partition')}/{body.get('user')}/{body.get('folder')}"
    if kind == fmt.USER:
        return f"user {body.get('partition')}/{body.get('user')}"
    return name


def _check_message_size(name: bytes, size: int) -> None:
    if size > limits.MAX_MESSAGE_SIZE:
        raise limits.LimitExceeded(
            f"message {name.decode('utf-8', 'replace')}: {limits.size_text(size)}, more than"
            f" the {limits.MAX_MESSAGE_SIZE} bytes a reader accepts; the archive is incomplete"
            " (no trailer)")
