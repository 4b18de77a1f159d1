"""Reads a sequential archive stream in a child process, for restores.

A restore's costs are parsing headers, checking every message's SHA-256 and writing files.
``PrefetchReader`` forks a child that runs ``ArchiveReader`` over the stream — headers,
digests, the trailer — and hands members over in batches through a socketpair, with message
bytes in shared-memory slots; the parent only writes files.  It has the interface of
``ArchiveReader`` that the restore engine uses for a stream (``read_header``, ``members``,
``read_data``, ``header``, ``trailer``, ``seekable``), so the restore rules are not touched.

An archive file read in order is read the same way (``rewind``): the child reads it from
its first byte through the descriptor's file offset, which the parent then leaves alone (its
own ``ArchiveReader`` reads the file by offset only: ``pread``, to fetch a link's first copy
by the trailer's index).  The parent compares the header the child read with its own, and
the trailer the child verified with the one it located (``located_by``): a file that changed
between the two readings is damage (``ArchiveDamaged``), never a mix of two archives.

Messages and folder states are parsed, checked and decoded into records in the child; their
``Member.pax`` in the parent holds their kind only (the records carry every value).

A message larger than a slot is not pickled: its entry ends a batch, and its bytes follow
as ``chunk`` items, one slot each, ended by ``chunk_end`` with the digest's verdict.  The
parent collects them when the restore asks for the data (in memory up to
``limits.MESSAGE_IN_MEMORY``, else in a temporary file it maps) and drains them otherwise,
so no frame on the channel carries more than a batch's metadata.

Failure behaviour: the child's ``ArchiveDamaged``/``Incomplete``/``DeviceError`` are raised in
the parent where the sequential reader would raise them (``members``, or ``read_data`` in
the middle of a large message); a damaged message raises ``MemberDamaged`` from
``read_data``; a child that dies is an ``Incomplete`` stream.  The parent reaps the child
(its own pid) in ``close``.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Iterator

from ims.archive import format as fmt
from ims.archive import limits
from ims.archive.reader import (ArchiveReader, Incomplete, Member, MemberDamaged, ReaderDied,
                               decode_record, parse_json, spool)
from ims.archive.records import ArchiveHeader, TrailerRecord, shown
from ims.errors import ArchiveDamaged, DeviceError
from ims.helper import Channel, HelperProcess

SLOT_SIZE = 4 << 20        # the largest message sent whole; larger ones go in chunks
SLOTS = 3
BATCH_BYTES = 1 << 20
# As in the backup's reader (ims/readahead.py): a slot takes messages while they fit in its
# first SLOT_FILL bytes, a larger message goes alone, and the pages it touched above
# SLOT_FILL are released when the slot comes back, so each process keeps about
# SLOTS x SLOT_FILL of slot pages (3 slots of 8 MiB had grown to some 9 MiB in each).
SLOT_FILL = BATCH_BYTES
BATCH_ITEMS = 256
STALL_SECONDS = 0.2
LARGE = ("large",)      # a message's data ref: its bytes follow the batch in chunks
_DECODED_HERE = frozenset((fmt.MESSAGE, fmt.FOLDER))
_KIND_ONLY = {kind: {fmt.TYPE_KEY: kind} for kind in _DECODED_HERE}
_NO_PAYLOAD = frozenset((fmt.TRAILER, fmt.FOLDER))     # the trailer's is verified here
_ERRORS = {"Incomplete": Incomplete, "ArchiveDamaged": ArchiveDamaged, "DeviceError": DeviceError}


class PrefetchReader:
    seekable = False

    def __init__(self, fd: int, device_name: str, blocking_factor: int | None,
                 rewind: bool = False, located_by: ArchiveReader | None = None) -> None:
        """``rewind``: the archive is a file, read from its start (the parent's own reader
        may have read past its header); ``located_by``: the parent's reader of the same file,
        whose located trailer must be the one verified here."""
        self.device_name = device_name
        self.header: ArchiveHeader | None = None
        self.trailer: TrailerRecord | None = None     # verified; its index not kept
        self.located_by = located_by
        self.helper = HelperProcess(SLOTS, SLOT_SIZE)
        self.views = self.helper.views
        self.channel = self.helper.start(
            lambda channel: self._child(channel, fd, blocking_factor, rewind))
        self._data: dict[int, Any] = {}   # id(member) -> slot ref, LARGE or error
        self._slot: int | None = None
        self._chunks_pending = False      # a large message's chunks are next on the channel

    # -- parent ------------------------------------------------------------------------

    def _receive(self) -> Any:
        ok, item = self.channel.receive()
        if not ok:
            raise ReaderDied(f"{self.device_name}: the archive reader process (pid {self.helper.pid})"
                             " ended unexpectedly")
        return item

    def _raise(self, item: tuple) -> None:
        _, kind, message = item
        raise _ERRORS.get(kind, ArchiveDamaged)(message)

    def read_header(self) -> ArchiveHeader:
        item = self._receive()
        if item[0] == "error":
            self._raise(item)
        self.header = item[1]
        return self.header

    def members(self) -> Iterator[Member]:
        while True:
            item = self._receive()
            if item[0] == "error":
                self._release()
                self._raise(item)
            if item[0] == "end":
                self._release()
                self.trailer = item[1]
                if self.located_by is not None and self.trailer is not None:
                    self.located_by.check_trailer_text(self.trailer.trailer_offset, item[2])
                return
            _, slot, entries = item
            self._release()
            self._slot = slot
            for fields, payload, decoded, data in entries:
                member = Member(*fields)
                if payload is not None:         # a JSON member: parsed and decoded here
                    try:
                        member.body = parse_json(payload, self.device_name, member)
                    except ArchiveDamaged:
                        self._release()
                        raise
                if decoded is None:
                    decode_record(member)
                else:                           # a message: decoded (validated) in the child,
                    member.record, member.invalid = decoded   # alongside this one's writing
                if data is not None:
                    self._data[id(member)] = data
                    self._chunks_pending = data == LARGE
                yield member
                self._data.pop(id(member), None)
                if self._chunks_pending:        # not read by the restore: drained
                    self._drain()

    def _release(self) -> None:
        if self._slot is not None:
            self.channel.give_slot(self._slot)
            self._slot = None

    def read_data(self, member: Member) -> memoryview:
        ref = self._data.pop(id(member), None)
        if ref is None:
            raise ArchiveDamaged(f"{self.device_name}: {shown(member.name)}: no data")
        if ref == LARGE:
            if member.size > limits.MESSAGE_IN_MEMORY:
                return spool(self._chunk_items(), f"{self.device_name}: {shown(member.name)}")
            collected = bytearray()
            for chunk in self._chunk_items():
                collected += chunk
            return memoryview(collected)
        if isinstance(ref, str):
            raise MemberDamaged(ref)
        slot, start, length = ref
        return self.views[slot][start:start + length]

    def _drain(self) -> None:
        try:
            for _ in self._chunk_items():
                pass
        except MemberDamaged:
            pass                    # a message the restore did not ask for

    def _chunk_items(self) -> Iterator[memoryview]:
        """A large message's bytes as the child sends them; raises ``MemberDamaged`` after
        the last one when its digest did not match."""
        self._release()             # the batch before it is done with: the child needs slots
        while self._chunks_pending:
            item = self._receive()
            if item[0] == "error":
                self._chunks_pending = False
                self._raise(item)
            if item[0] == "chunk_end":
                self._chunks_pending = False
                if item[1] is not None:
                    raise MemberDamaged(item[1])
                return
            _, slot, length = item
            try:
                yield self.views[slot][:length]
            finally:
                self.channel.give_slot(slot)

    def close(self) -> None:
        self.helper.stop()

    # -- child -------------------------------------------------------------------------

    def _child(self, channel: Channel, fd: int, blocking_factor: int | None,
               rewind: bool) -> None:
        if rewind:
            try:
                os.lseek(fd, 0, os.SEEK_SET)
            except OSError as exc:
                channel.send(("error", "DeviceError",
                              f"{self.device_name}: cannot read from its start: {exc.strerror}"))
                return
        reader = ArchiveReader(fd, self.device_name, blocking_factor)
        # messages and folder states are parsed and decoded (validated) here, alongside the
        # parent's writing, which is the busier of the two (a folder state: 58 us to parse and
        # decode, 8 us to unpickle its record); users' JSON travels as text, parsed there
        reader.decode_kinds = _DECODED_HERE
        reader.json_kinds = frozenset((fmt.FOLDER,))
        # the trailer is verified here; its index would only travel to a parent that reads
        # in order and never looks anything up by it
        reader.keep_trailer_index = False
        free = list(range(SLOTS))
        lock = threading.Lock()
        batch: dict[str, Any] = {"slot": None, "used": 0, "entries": [], "waiting_since": None}
        done = threading.Event()

        touched = [0] * SLOTS

        def take_slot() -> int:
            slot = free.pop() if free else channel.take_slot()
            if touched[slot] > SLOT_FILL:
                self.helper.release_above(slot, SLOT_FILL)
                touched[slot] = SLOT_FILL
            return slot

        def flush() -> None:                       # with the lock held
            if batch["entries"]:
                channel.send(("batch", batch["slot"], batch["entries"]))
                batch["slot"], batch["used"], batch["entries"] = take_slot(), 0, []

        def flusher() -> None:
            # Members already read are handed over when the stream stalls (a slow tape, a
            # backup still producing it), so the parent writes them instead of waiting.
            while not done.wait(STALL_SECONDS):
                with lock:
                    since = batch["waiting_since"]
                    if since is not None and time.monotonic() - since >= STALL_SECONDS:
                        try:
                            flush()
                        except (OSError, EOFError):
                            return

        def wait_for_input(on: bool) -> None:
            # no lock: one assignment, and a flush the flusher makes meanwhile only hands
            # over complete entries (it takes the lock the batch is filled under)
            batch["waiting_since"] = time.monotonic() if on else None

        def send_chunks(member: Member) -> None:
            """A large message's bytes, a slot at a time, then the digest's verdict."""
            slot, used, verdict = None, 0, None
            try:
                for chunk in reader.iter_data(member):
                    if slot is not None and used + len(chunk) > SLOT_FILL:
                        with lock:
                            channel.send(("chunk", slot, used))
                        slot, used = None, 0
                    if slot is None:
                        with lock:
                            slot = take_slot()
                    self.views[slot][used:used + len(chunk)] = chunk
                    used += len(chunk)
                    touched[slot] = max(touched[slot], used)
            except MemberDamaged as exc:
                verdict = str(exc)
            with lock:
                if slot is not None:
                    channel.send(("chunk", slot, used))
                channel.send(("chunk_end", verdict))

        try:
            channel.send(("header", reader.read_header()))
            with lock:
                batch["slot"] = take_slot()
            threading.Thread(target=flusher, daemon=True).start()
            members = reader.members()
            while True:
                wait_for_input(True)
                member = next(members, None)
                if member is None:
                    break
                data = None
                data_ref: tuple | str | None = None
                large = False
                # an invalid message's data is never asked for: the reader skips it
                if member.kind == fmt.MESSAGE and member.typeflag == fmt.REGULAR \
                        and member.invalid is None:
                    if member.size > SLOT_SIZE:
                        large = True
                    else:
                        try:
                            data = reader.read_data(member)
                        except MemberDamaged as exc:
                            data_ref = str(exc)
                wait_for_input(False)
                with lock:
                    if large:
                        data_ref = LARGE
                    elif data is not None:
                        if batch["used"] and batch["used"] + len(data) > SLOT_FILL:
                            flush()
                        slot, used = batch["slot"], batch["used"]
                        self.views[slot][used:used + len(data)] = data
                        data_ref = (slot, used, len(data))
                        batch["used"] = used + len(data)
                        touched[slot] = max(touched[slot], batch["used"])
                    kind = member.kind
                    # a member decoded here travels with its kind alone for pax (one dict
                    # shared by a whole batch's pickle): the parent reads nothing else of it
                    pax = _KIND_ONLY[kind] if kind in _DECODED_HERE else member.pax
                    fields = (member.name, member.typeflag, member.size, member.mtime,
                              member.linkname, pax, member.offset, member.data_offset)
                    decoded = (member.record, member.invalid) if kind in _DECODED_HERE else None
                    payload = member.payload if kind not in _NO_PAYLOAD else None
                    batch["entries"].append((fields, payload, decoded, data_ref))
                    if (large or member.kind == fmt.TRAILER or batch["used"] >= BATCH_BYTES
                            or len(batch["entries"]) >= BATCH_ITEMS):
                        flush()
                if large:
                    send_chunks(member)
                if member.kind == fmt.TRAILER:
                    break
            done.set()
            with lock:
                flush()
                channel.send(("end", reader.trailer, reader.trailer_text_sha256))
        except (Incomplete, ArchiveDamaged, DeviceError) as exc:
            done.set()
            with lock:
                flush()
                channel.send(("error", type(exc).__name__, str(exc)))
