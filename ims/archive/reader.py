"""Reads an archive stream (docs/archive-format.md): members in order, or by offset when the
archive is a seekable file.

Sequential reading checks every header checksum, the header member first (format, version,
blocking factor), each message's SHA-256 and size when its data is read, and at the end the
trailer (its offset, digest, counts) and the end-of-archive blocks.  Reading by offset (a
user's or a folder's extent, taken from the trailer's index) checks headers and message
digests only.

Failure behaviour: ``ArchiveDamaged`` (exit 4) for a bad header, a wrong blocking factor, a
stream that ends before a valid trailer (``Incomplete``, which says at which offset), or a
bad trailer; ``MemberDamaged`` for one message whose bytes do not match its SHA-256 — the
stream stays aligned, so the caller may skip that message and go on.  No size claimed by
the archive is trusted for allocation: data is read in bounded chunks, pax headers and JSON
members are capped (``ims.archive.limits``, the writer's limits too), a message over
``MESSAGE_IN_MEMORY`` is handed over as a mapping of a file (the archive, or a temporary
copy of a stream), and names are never used as file system paths here.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import stat
import weakref
from dataclasses import dataclass, replace
from typing import Any, BinaryIO, Callable, Iterable, Iterator

from ims import tempspace
from ims.archive import format as fmt
from ims.archive import limits
from ims.archive.records import (ArchiveHeader, FolderRecord, MessageRecord, RecordError,
                                 TrailerRecord, UserRecord, shown, valid_link_target)
from ims.errors import ArchiveDamaged, DeviceError, UsageError

_CHUNK = 1 << 20
_TRAILER_CHUNK = 256 << 10     # the trailer's text is parsed this much at a time


class Incomplete(ArchiveDamaged):
    """The stream ends before a valid trailer."""


class ReaderDied(Incomplete):
    """The process reading the archive for us ended without an answer (killed, out of
    memory): unlike a stream cut short, nothing says the data stopped there."""


class MemberDamaged(ArchiveDamaged):
    """One member's data does not match its digest or size; reading can go on."""


@dataclass(slots=True)
class Member:
    name: str
    typeflag: bytes
    size: int
    mtime: int
    linkname: str
    pax: dict[str, str]
    offset: int                       # first header block
    data_offset: int = 0
    body: Any = None                  # parsed JSON of metadata members
    payload: bytes | None = None      # their JSON text, when left unparsed (``json_kinds``)
    record: Any = None                # its typed record (ims.archive.records), once decoded
    invalid: str | None = None        # why the record could not be decoded

    @property
    def kind(self) -> str:
        return self.pax.get(fmt.TYPE_KEY, "")

    @property
    def is_link(self) -> bool:
        return self.typeflag == fmt.HARDLINK


class EndOfArchive(fmt.FormatError):
    """An all-zero block where a member header should be."""


def parse_member(read: Callable[[int], bytes], start: int) -> tuple[Member, list[bytes]]:
    """The one member parser: reads a member's (pax and) ustar headers through ``read``
    (``read(n)`` returns the next n bytes of the stream) and returns the member, with
    ``data_offset`` set, and the header bytes read (for the running digest).

    Raises ``EndOfArchive`` at an all-zero block, ``fmt.FormatError`` for anything else
    malformed; the sequential reader, the reader by offset and ``peek_header`` all use it."""
    block = read(fmt.BLOCK)
    if block == fmt.ZEROS:
        raise EndOfArchive("end-of-archive block")
    header_bytes = [block]
    data_offset = start + fmt.BLOCK
    pax: dict[str, str] = {}
    try:
        typeflag, size, mtime = fmt.parse_header_fast(block)
        if typeflag == fmt.PAX:
            if size > limits.MAX_PAX_PAYLOAD:
                raise fmt.FormatError(f"pax header of {size} bytes is over the limit of"
                                      f" {limits.MAX_PAX_PAYLOAD}")
            raw = read(size + (-size % fmt.BLOCK))
            header_bytes.append(raw)
            pax = fmt.parse_pax(raw[:size])
            block = read(fmt.BLOCK)
            header_bytes.append(block)
            data_offset += len(raw) + fmt.BLOCK
            typeflag, size, mtime = fmt.parse_header_fast(block)
            if typeflag == fmt.PAX:
                raise fmt.FormatError("two pax headers in a row")
        if "size" in pax:
            size = int(pax["size"])
        if "mtime" in pax:
            mtime = int(pax["mtime"])
    except ValueError as exc:
        raise fmt.FormatError(str(exc)) from None
    if "path" in pax and (typeflag != fmt.HARDLINK or "linkpath" in pax):
        name, linkname = pax["path"], pax.get("linkpath", "")
    else:
        name, linkname = fmt.header_names(block)
        name = pax.get("path", name)
        linkname = pax.get("linkpath", linkname)
    if size < 0:
        raise fmt.FormatError("negative size")
    if size > limits.MAX_MESSAGE_SIZE:
        # no member is that large: the size field is damaged, and with it where the next
        # member starts
        raise fmt.FormatError(f"a size of {size} bytes is over the limit of"
                              f" {limits.MAX_MESSAGE_SIZE}; nothing after it can be read"
                              " (the archive is incomplete from here)")
    if typeflag == fmt.HARDLINK and size:
        # the writer gives links no data; readers by offset and in order must agree on
        # where the next member starts
        raise fmt.FormatError(f"hard link with {size} bytes of data")
    return Member(name, typeflag, size, mtime, linkname, pax, start, data_offset), header_bytes


def decode_record(member: Member) -> None:
    """Attach the member's typed record (``member.record``), or say why it is invalid
    (``member.invalid``); JSON members need ``body`` parsed first."""
    try:
        kind = member.kind
        if kind == fmt.MESSAGE:     # ``where`` made only for an error: this runs a message
            if member.typeflag not in (fmt.REGULAR, fmt.HARDLINK):
                raise RecordError(f"{_where(member)}: member type {member.typeflag!r} is not"
                                  " a message")
            if member.is_link and not valid_link_target(member.linkname):
                raise RecordError(f"{_where(member)}: link target {member.linkname!r} is not"
                                  " a member name")
            member.record = MessageRecord.decode(member.pax, member.name, member.size,
                                                 member.mtime, member.is_link)
        elif kind == fmt.USER:
            member.record = UserRecord.decode(member.body, _where(member))
        elif kind == fmt.FOLDER:
            member.record = FolderRecord.decode(member.body, _where(member))
    except RecordError as exc:
        member.invalid = str(exc)


def _where(member: Member) -> str:
    return f"{shown(member.name)} at byte {member.offset}"


@dataclass
class ReadStats:
    members: int = 0
    messages: int = 0
    links: int = 0
    folders: int = 0


class ArchiveReader:
    def __init__(self, fd: int, device_name: str, blocking_factor: int | None) -> None:
        """``blocking_factor`` None: the one the archive's header records (as GNU tar finds
        it); a number: must be the header's, else ``ArchiveDamaged``."""
        self.fd = fd
        self.device_name = device_name
        self.blocking_factor = blocking_factor
        st = os.fstat(fd)
        # read by offset only when the archive starts at the file's first byte (offsets in
        # the archive count from its start); a file entered elsewhere is read as a stream
        self.seekable = stat.S_ISREG(st.st_mode) and os.lseek(fd, 0, os.SEEK_CUR) == 0
        self.file_size = st.st_size if self.seekable else None
        # 1 MiB: larger buffers were not faster (reads from a file, a pipe or a tape are
        # whole records) and count in the memory of every restore
        self.stream: BinaryIO = open(fd, "rb", buffering=1 << 20, closefd=False)
        self.offset = 0
        self.digest = hashlib.sha256()
        self.header: ArchiveHeader | None = None
        self.trailer: TrailerRecord | None = None
        self.stats = ReadStats()
        # which members ``members`` decodes into records (the prefetching child leaves the
        # JSON ones to its parent, to balance the work of the two processes)
        self.decode_kinds = frozenset((fmt.USER, fmt.FOLDER, fmt.MESSAGE))
        # which JSON members ``members`` parses; the others keep their text in ``payload``
        # (the prefetching child hands text, not objects of any depth, to its parent)
        self.json_kinds = frozenset((fmt.USER, fmt.FOLDER, fmt.HEADER))
        self._pending = 0           # unread data bytes (with padding) of the current member
        self._pending_digest = False
        # whether the trailer verified at the end of ``members`` keeps its index (the
        # prefetching child's parent has no use for it)
        self.keep_trailer_index = True
        # the trailer ``locate_trailer`` last decoded, while its caller holds it: (offset, the
        # SHA-256 of its text, the record); the one verified in order shares its index
        self._located: tuple[int, str, weakref.ref[TrailerRecord]] | None = None
        # (offset, SHA-256 of its text) of every trailer ``locate_trailer`` found: each must
        # be the one another reader verifies in order (``check_trailer_text``)
        self.located_texts: set[tuple[int, str]] = set()
        # the SHA-256 of the text of the trailer verified at the end of ``members``
        self.trailer_text_sha256: str | None = None

    def read_by_offset_only(self) -> None:
        """From now on this reader only reads by offset (``pread``): its 1 MiB read buffer
        is freed, and the descriptor's file offset is left to another reader (the
        prefetching child, which reads the file in order)."""
        self.stream = open(self.fd, "rb", buffering=0, closefd=False)

    # -- raw reading -----------------------------------------------------------------

    def _read(self, count: int) -> bytes:
        try:
            data = self.stream.read(count)
        except OSError as exc:
            raise DeviceError(f"{self.device_name}: read failed: {exc.strerror}") from None
        if len(data) < count:
            raise Incomplete(f"{self.device_name}: the archive ends at byte {self.offset + len(data)}"
                             " before its trailer: it is incomplete")
        self.offset += count
        return data

    def _read_into(self, view: memoryview) -> None:
        got = 0
        while got < len(view):
            try:
                count = self.stream.readinto(view[got:])
            except OSError as exc:
                raise DeviceError(f"{self.device_name}: read failed: {exc.strerror}") from None
            if not count:
                raise Incomplete(f"{self.device_name}: the archive ends at byte"
                                 f" {self.offset + got} before its trailer: it is incomplete")
            got += count
        self.offset += got

    def _pread(self, count: int, position: int) -> bytes:
        try:
            return os.pread(self.fd, count, position)
        except OSError as exc:
            raise DeviceError(f"{self.device_name}: read failed at byte {position}:"
                              f" {exc.strerror}") from None

    def _where(self, member: Member) -> str:
        return f"{self.device_name}: {shown(member.name)} at byte {member.offset}"

    def _skip(self, count: int, digest: bool) -> None:
        if self.seekable and not digest and count > _CHUNK:
            if self.file_size is not None and self.offset + count > self.file_size:
                raise Incomplete(f"{self.device_name}: the archive ends at byte"
                                 f" {self.file_size} inside a member: it is incomplete")
            self.stream.seek(count, os.SEEK_CUR)
            self.offset += count
            return
        while count:
            chunk = self._read(min(count, _CHUNK))
            if digest:
                self.digest.update(chunk)
            count -= len(chunk)

    # -- members ---------------------------------------------------------------------

    def _next_member(self) -> Member:
        if self._pending:
            self._skip(self._pending, self._pending_digest)
            self._pending = 0
        start = self.offset
        try:
            member, header_bytes = parse_member(self._read, start)
        except EndOfArchive:
            raise Incomplete(f"{self.device_name}: end-of-archive blocks at byte {start}"
                             " without a trailer: the archive is incomplete") from None
        except fmt.FormatError as exc:
            raise ArchiveDamaged(f"{self.device_name}: damaged header at byte {start}: {exc}") from None
        is_message_data = member.kind == fmt.MESSAGE and member.typeflag == fmt.REGULAR
        if member.kind != fmt.TRAILER:
            self.digest.update(b"".join(header_bytes))
        size = member.size
        self._pending = size + (-size % fmt.BLOCK)
        self._pending_digest = not is_message_data and member.kind != fmt.TRAILER
        self.stats.members += 1
        return member

    def read_json(self, member: Member) -> Any:
        member.body = parse_json(self.read_payload(member), self.device_name, member)
        return member.body

    def read_payload(self, member: Member) -> bytes:
        """A JSON member's text (its digest taken), unparsed."""
        if member.size > limits.MAX_JSON_MEMBER:
            raise ArchiveDamaged(f"{self._where(member)}:"
                                 f" metadata of {member.size} bytes is over the limit of"
                                 f" {limits.MAX_JSON_MEMBER}")
        digest = self._pending_digest
        raw = self._read(self._pending)
        if digest:
            self.digest.update(raw)
        self._pending = 0
        member.payload = raw[:member.size]
        return member.payload

    def read_data(self, member: Member) -> bytes | memoryview:
        """The whole data of a message member, checked against IMS.size and IMS.sha256; over
        ``MESSAGE_IN_MEMORY`` a read-only mapping of the archive file or of a spooled copy."""
        if member.size > limits.MESSAGE_IN_MEMORY:
            if not self.seekable:
                return spool(self.iter_data(member), self._where(member))
            padded = self._pending
            self._pending = 0
            self._skip(padded, digest=False)        # Incomplete when the file is shorter
            view = self._mapped(member)
            self._check(member, hashlib.sha256(view).hexdigest())
            return view
        if member.size > _CHUNK:
            # read once into its own buffer: chunks joined had held the message twice
            padded = self._pending
            self._pending = 0
            buffer = bytearray(member.size)
            self._read_into(memoryview(buffer))
            self._read(padded - member.size)
            self._check(member, hashlib.sha256(buffer).hexdigest())
            return memoryview(buffer)
        padded = self._pending
        self._pending = 0
        block = self._read(padded)          # data and padding in one read
        data = memoryview(block)[:member.size]
        self._check(member, hashlib.sha256(data).hexdigest())
        return data

    def _payload_chunks(self, member: Member) -> Iterator[bytes]:
        """A member's data in chunks from the stream, its padding skipped after the last;
        no digest (the trailer's own text is not in the running digest)."""
        padded = self._pending
        self._pending = 0
        left = member.size
        while left:
            chunk = self._read(min(left, _TRAILER_CHUNK))
            left -= len(chunk)
            yield chunk
        self._read(padded - member.size)

    def iter_data(self, member: Member) -> Iterator[bytes]:
        """The data in chunks; the digest is checked after the last chunk (MemberDamaged)."""
        size = member.size
        padded = self._pending
        self._pending = 0
        digest = hashlib.sha256()
        left = size
        while left:
            chunk = self._read(min(left, _CHUNK))
            digest.update(chunk)
            left -= len(chunk)
            yield chunk
        self._read(padded - size)
        self._check(member, digest.hexdigest())

    def _mapped(self, member: Member) -> memoryview:
        """The member's data mapped from the archive file.  (The file must not shrink while
        the mapping is in use: a page past its end would raise SIGBUS.)"""
        start, size = member.data_offset, member.size
        if start + size > os.fstat(self.fd).st_size:
            raise Incomplete(f"{self._where(member)}: the archive ends inside it")
        base = start - start % mmap.ALLOCATIONGRANULARITY
        mapping = mmap.mmap(self.fd, start - base + size, access=mmap.ACCESS_READ, offset=base)
        return memoryview(mapping)[start - base:]

    def _check(self, member: Member, sha: str) -> None:
        if member.pax.get(fmt.SHA256_KEY) != sha:
            raise MemberDamaged(f"{self._where(member)}:"
                                " SHA-256 mismatch, the message is damaged")
        if member.pax.get(fmt.SIZE_KEY) != str(member.size):
            raise MemberDamaged(f"{self._where(member)}:"
                                " size does not match IMS.size")

    # -- sequential reading ----------------------------------------------------------

    def read_header(self) -> ArchiveHeader:
        member = self._next_member()
        if member.kind != fmt.HEADER or member.typeflag != fmt.REGULAR:
            raise ArchiveDamaged(f"{self.device_name}: not an imsbackup archive (first member"
                                 f" is {member.name!r})")
        self.header = decode_header(self.read_json(member), self.device_name,
                                    self.blocking_factor)
        self.blocking_factor = self.header.blocking_factor
        return self.header

    def members(self) -> Iterator[Member]:
        """Every member after the header, up to and including a verified trailer.

        JSON members come with ``body`` parsed; message data is left for the caller to read
        (``read_data``/``iter_data``) or is skipped when the caller moves on."""
        while True:
            # the digest over the members before the trailer: the running one, unless the
            # data skipped before the next header is digested (a copy was taken for every
            # member, 140,000 in the bench store's archive, to be used once)
            digest_before = self.digest.copy() if self._pending and self._pending_digest \
                else self.digest
            member = self._next_member()
            kind = member.kind
            if kind == fmt.TRAILER:
                self._finish(member, digest_before)
                yield member
                return
            if kind in (fmt.USER, fmt.FOLDER, fmt.HEADER):
                if kind in self.json_kinds:
                    self.read_json(member)
                else:
                    self.read_payload(member)
                if kind == fmt.FOLDER:
                    self.stats.folders += 1
            elif kind == fmt.MESSAGE:
                if member.is_link:
                    self.stats.links += 1
                elif member.typeflag == fmt.REGULAR:
                    self.stats.messages += 1
            if kind in self.decode_kinds:
                decode_record(member)
            yield member

    def _finish(self, member: Member, digest_before: Any) -> None:
        if member.size > limits.MAX_JSON_MEMBER:
            raise ArchiveDamaged(f"{self._where(member)}:"
                                 f" metadata of {member.size} bytes is over the limit of"
                                 f" {limits.MAX_JSON_MEMBER}")
        located = self._located[2]() if self._located is not None and \
            self._located[0] == member.offset else None
        text = hashlib.sha256()

        def hashed(chunks: Iterator[bytes]) -> Iterator[bytes]:
            for chunk in chunks:
                text.update(chunk)
                yield chunk
        # a trailer already located holds the index: this one is checked entry by entry and
        # shares it when the two texts are the same (two copies at 1,000,000 messages: 10 MiB)
        trailer = TrailerRecord.decode_stream(
            hashed(self._payload_chunks(member)),
            f"{self.device_name}: the trailer at byte {member.offset}",
            keep_index=self.keep_trailer_index and located is None)
        self.trailer_text_sha256 = text.hexdigest()
        # every trailer located must be this one (the located index is then shared)
        self.check_trailer_text(member.offset, self.trailer_text_sha256)
        if located is not None:
            trailer = replace(trailer, folders=located.folders, users=located.users)
        member.body = trailer.raw
        problems = []
        if trailer.trailer_offset != member.offset:
            problems.append("its offset does not match")
        if trailer.digest != "sha256:" + digest_before.hexdigest():
            problems.append("the digest over the members does not match")
        counts = trailer.counts
        if (counts.get("messages"), counts.get("links"), counts.get("folders")) != (
                self.stats.messages, self.stats.links, self.stats.folders):
            problems.append("its counts do not match the members read")
        if problems:
            raise ArchiveDamaged(f"{self.device_name}: the trailer at byte {member.offset} is"
                                 f" not valid: {'; '.join(problems)}")
        if self._read(2 * fmt.BLOCK) != fmt.END_OF_ARCHIVE:
            raise ArchiveDamaged(f"{self.device_name}: no end-of-archive blocks after the trailer")
        # the stream is whole records (docs/archive-format.md §1, §6): one cut in the last
        # record's padding is cut short too
        record = fmt.BLOCK * (self.blocking_factor or fmt.DEFAULT_BLOCKING_FACTOR)
        padding = self._read(-self.offset % record)
        if padding.count(0) != len(padding):
            raise ArchiveDamaged(f"{self.device_name}: the padding of the last record is not"
                                 " NUL bytes")
        self.trailer = trailer

    # -- random access (seekable archives) -------------------------------------------

    def require_seekable(self, purpose: str) -> None:
        """``UsageError`` unless the archive can be read out of order, saying what to do:
        a tape is copied to a file record by record, with the record size it was written
        with (read from its header when no -b was given), a pipe is saved to a file."""
        if self.seekable:
            return
        mode = os.fstat(self.fd).st_mode
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            if self.blocking_factor is None:
                self.read_header()
            record = fmt.BLOCK * (self.blocking_factor or fmt.DEFAULT_BLOCKING_FACTOR)
            raise UsageError(f"{self.device_name}: {purpose} needs the archive as a file, and a"
                             " tape or other device is read only in order; rewind it and copy"
                             " the archive to a"
                             f" file first: dd if={self.device_name} of=FILE bs={record},"
                             " then use -f FILE")
        raise UsageError(f"{self.device_name}: {purpose} needs the archive as a file, and a pipe"
                         " is read only in order; save the stream to a file first, then use"
                         " -f FILE")

    def locate_trailer(self, keep_index: bool = True,
                       keep_users: bool | None = None) -> TrailerRecord | None:
        """The trailer of a seekable archive, found from the end; None when there is none.
        Raises ``RecordError`` when it is there but its values are not valid.  Without
        ``keep_index`` every entry is checked and none kept, the users' entries apart with
        ``keep_users`` (``TrailerRecord.decode_stream``)."""
        if not self.seekable or not self.file_size:
            return None
        name = fmt.TRAILER_NAME.encode() + b"\0"
        # the trailer's header lies at most its JSON, the end blocks and a record from the end
        reach = limits.MAX_JSON_MEMBER + 3 * fmt.BLOCK + fmt.BLOCK * fmt.MAX_BLOCKING_FACTOR
        end = self.file_size - self.file_size % fmt.BLOCK
        while end > 0 and self.file_size - end <= reach:
            # a fixed window: a trailer of many megabytes is walked back over in steps, not
            # read whole (the name sits at a block's start, so no window cuts it)
            start = max(0, end - _TRAILER_CHUNK, self.file_size - reach)
            start -= start % fmt.BLOCK
            data = self._pread(end - start, start)
            position = len(data)
            while (position := data.rfind(name, 0, position)) >= 0:
                if position % fmt.BLOCK == 0:
                    member = self._member_by_name_block(start + position)
                    if member is not None and member.kind == fmt.TRAILER:
                        trailer = self._trailer_at(member, keep_index, keep_users)
                        if trailer is not None:
                            return trailer
            if start <= 0 or start == end:
                return None
            end = start
        return None

    def check_trailer_text(self, offset: int, text_sha256: str | None) -> None:
        """``ArchiveDamaged`` when any trailer this reader located (to check NAMEs, to fetch
        a link's first copy) is not the one another reader of the same file verified in
        order (at ``offset``, with a text of SHA-256 ``text_sha256``): the file changed while
        it was read, and what was fetched may be another archive's."""
        for located in self.located_texts:
            if located != (offset, text_sha256):
                raise ArchiveDamaged(f"{self.device_name}: the trailer at byte {located[0]}"
                                     " changed while the archive was read")

    def _trailer_at(self, member: Member, keep_index: bool = True,
                    keep_users: bool | None = None) -> TrailerRecord | None:
        """The trailer member's record, its text read in chunks (``decode_stream``); None
        when its text is not JSON (the search goes on)."""
        if member.size > limits.MAX_JSON_MEMBER:
            return None

        text = hashlib.sha256()

        def chunks() -> Iterator[bytes]:
            position, left = member.data_offset, member.size
            while left:
                chunk = self._pread(min(left, _TRAILER_CHUNK), position)
                if not chunk:
                    return
                position += len(chunk)
                left -= len(chunk)
                text.update(chunk)
                yield chunk
        try:
            trailer = TrailerRecord.decode_stream(
                chunks(), f"{self.device_name}: the trailer at byte {member.offset}", keep_index,
                keep_users)
        except RecordError:
            raise
        except ArchiveDamaged:
            return None
        self.located_texts.add((member.offset, text.hexdigest()))
        if keep_index:      # a trailer without its index is never shared
            self._located = (member.offset, text.hexdigest(), weakref.ref(trailer))
        return trailer

    def _member_by_name_block(self, offset: int) -> Member | None:
        """The member whose ustar header (found by its name) is at ``offset``: steps back to
        its pax header when there is one."""
        for back in range(1, 5):
            candidate = offset - back * fmt.BLOCK
            if candidate < 0:
                break
            try:
                earlier = fmt.parse_header_fast(self._pread(fmt.BLOCK, candidate))
            except fmt.FormatError:
                continue
            if earlier[0] == fmt.PAX:
                return self.member_at(candidate)
            break
        return self.member_at(offset)

    def member_at(self, offset: int) -> Member | None:
        """Parse the member whose (pax or ustar) header starts at ``offset``; None when
        there is no valid header there."""
        position = offset

        def read(count: int) -> bytes:
            nonlocal position
            data = self._pread(count, position)
            if len(data) < count:
                raise fmt.FormatError("the archive ends inside a header")
            position += count
            return data

        try:
            member, _ = parse_member(read, offset)
        except fmt.FormatError:
            return None
        return member

    def _json_at(self, member: Member) -> Any:
        if member.size > limits.MAX_JSON_MEMBER:
            return None
        try:
            return parse_json(self._pread(member.size, member.data_offset), self.device_name,
                              member)
        except ArchiveDamaged:
            return None

    def json_at(self, member: Member) -> Any:
        if member.size > limits.MAX_JSON_MEMBER:
            raise ArchiveDamaged(f"{self._where(member)}:"
                                 f" metadata of {member.size} bytes is over the limit of"
                                 f" {limits.MAX_JSON_MEMBER}")
        body = self._json_at(member)
        if not isinstance(body, dict):
            raise ArchiveDamaged(f"{self._where(member)}:"
                                 " metadata is not valid JSON")
        member.body = body
        return body

    def data_at(self, member: Member) -> bytes | memoryview:
        """A message member's data read by offset, checked against its digest (a mapping of
        the archive over ``MESSAGE_IN_MEMORY``)."""
        if member.size > limits.MESSAGE_IN_MEMORY:
            view = self._mapped(member)
            self._check(member, hashlib.sha256(view).hexdigest())
            return view
        parts = []
        position, left = member.data_offset, member.size
        while left:
            chunk = self._pread(min(left, _CHUNK), position)
            if not chunk:
                raise Incomplete(f"{self._where(member)}: the archive ends inside it")
            parts.append(chunk)
            position += len(chunk)
            left -= len(chunk)
        data = b"".join(parts)
        self._check(member, hashlib.sha256(data).hexdigest())
        return data

    def members_between(self, start: int, end: int) -> Iterator[Member]:
        """The members of one folder's extent [start, end) from the trailer's index, by
        offset, records decoded: its state member, then that folder's message members,
        the last ending at ``end``.  The digest is not checked on this path, so anything
        else there (members moved, the index damaged) is ``ArchiveDamaged``: a message
        missing from its folder would otherwise pass for one expunged during the backup."""
        position = start
        prefix: str | None = None       # the folder's member names start with it
        while position < end:
            member = self.member_at(position)
            if member is None:
                raise ArchiveDamaged(f"{self.device_name}: damaged header at byte {position}")
            if prefix is None:
                if member.kind != fmt.FOLDER or not member.name.endswith("/" + fmt.FOLDER_MEMBER):
                    raise ArchiveDamaged(f"{self._where(member)}: not the folder state the"
                                         " trailer's index places there")
                prefix = member.name[:-len(fmt.FOLDER_MEMBER)]
                self.json_at(member)
            elif member.kind != fmt.MESSAGE or not member.name.startswith(prefix):
                raise ArchiveDamaged(f"{self._where(member)}: not a message of the folder"
                                     f" {shown(prefix.rstrip('/'))} whose extent the trailer's"
                                     " index says it is in")
            decode_record(member)
            yield member
            data_size = 0 if member.is_link else member.size
            position = member.data_offset + data_size + (-data_size % fmt.BLOCK)
        if position != end:
            raise ArchiveDamaged(f"{self.device_name}: the folder {shown(str(prefix))} ends at"
                                 f" byte {position}, the trailer's index says at {end}")


_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def parse_json(raw: bytes, device_name: str, member: Member) -> dict[str, Any]:
    """A JSON member's object; ``ArchiveDamaged`` naming it when the text is not JSON, not
    an object, or nested deeper than ``limits.MAX_JSON_DEPTH``.

    The depth is judged from the brackets alone (each pass removes the innermost pairs; C
    speed, where walking a folder state of millions of entries would add a third to its
    cost).  Brackets inside strings can make it look shallower than it is: parsing may
    then still run out of recursion, which is caught too (``RecursionError`` is not a
    ``ValueError``); the records kept whole check their depth exactly (records.py)."""
    where = f"{device_name}: {shown(member.name)} at byte {member.offset}"
    brackets = raw.translate(None, _NOT_BRACKETS)
    for _ in range(limits.MAX_JSON_DEPTH + 1):
        inner_removed = brackets.replace(b"[]", b"").replace(b"{}", b"")
        if len(inner_removed) == len(brackets):
            break
        brackets = inner_removed
    else:
        raise ArchiveDamaged(f"{where}: metadata nested deeper than {limits.MAX_JSON_DEPTH}"
                             " levels")
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ArchiveDamaged(f"{where}: metadata is not valid JSON") from None
    if not isinstance(body, dict):
        raise ArchiveDamaged(f"{where}: metadata is not an object")
    return body


def spool(chunks: Iterable[bytes], what: str) -> memoryview:
    """``chunks`` as a read-only mapping of an unlinked temporary file in $TMPDIR: a message
    too large to hold in memory, from a stream.  The file's space is freed with the mapping."""
    fd = -1
    try:
        fd = tempspace.unnamed_file("ims-message-")
        size = 0
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                written = os.write(fd, view)
                view = view[written:]
                size += written
        if not size:
            return memoryview(b"")
        mapping = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise DeviceError(f"{what}: cannot hold the message in {tempspace.temp_dir()}:"
                          f" {exc.strerror or exc}") from None
    finally:
        if fd >= 0:
            os.close(fd)
    return memoryview(mapping)


def decode_header(body: dict[str, Any], device_name: str,
                  blocking_factor: int | None) -> ArchiveHeader:
    """The header member's checks (format, version, the blocking factor when one was given)
    and its record."""
    if body.get("format") != fmt.FORMAT_NAME:
        raise ArchiveDamaged(f"{device_name}: not an imsbackup archive")
    version = body.get("version")
    if type(version) is not int or version not in fmt.READABLE_VERSIONS:
        raise ArchiveDamaged(f"{device_name}: archive format version {version!r} is not"
                             " supported (this reader reads versions "
                             f"{', '.join(map(str, fmt.READABLE_VERSIONS))})")
    header = ArchiveHeader.decode(body, f"{device_name}: the archive header")
    if blocking_factor is not None and header.blocking_factor != blocking_factor:
        raise ArchiveDamaged(f"{device_name}: wrong blocking factor: the archive was"
                             f" written with -b {header.blocking_factor}, read with -b"
                             f" {blocking_factor}")
    return header


def peek_header(data: bytes) -> ArchiveHeader | None:
    """The header record from the first bytes of a stream, or None."""
    position = 0

    def read(count: int) -> bytes:
        nonlocal position
        chunk = data[position:position + count]
        if len(chunk) < count:
            raise fmt.FormatError("short")
        position += count
        return chunk

    try:
        member, _ = parse_member(read, 0)
        if member.kind != fmt.HEADER:
            return None
        body = parse_json(read(member.size), "the archive", member)
        if body.get("format") != fmt.FORMAT_NAME:
            return None
        return ArchiveHeader.decode(body, "the archive header")
    except (fmt.FormatError, ArchiveDamaged):
        return None
