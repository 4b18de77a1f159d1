"""Reads the store ahead of the archive writer, in a child process.

The backup's costs are the SHA-256 of every message, the file system calls and the Python
work of building headers.  A thread does not help (measured: the reader's own Python work
holds the GIL, and the run got slower), so a forked child lists folders, opens, reads and
hashes messages on the second core while the parent builds headers and writes the one
single-copy stream (one stream, so more processes may feed it, but only one writes it).

The child (``ims.helper``) walks the scope in stream order and queues items: ``UserItem``,
then per folder to read a ``FolderItem``, ``Batch``es of that folder's messages and
``FolderDone``.  The queue goes over a socketpair as one length-prefixed pickle (a list of
items) every BATCH_BYTES of message data or BATCH_MESSAGES messages, so the items of many
small folders travel together (a message per folder had cost more than the folder's
listing).  In an incremental, the folders in which nothing changed since the date are
decided in the child before the ``UserItem`` and travel in it (name and identity): nothing
else is sent, listed or opened for them.  Message data is read straight into a few fixed
shared-memory slots, one read per message; a slot is filled by several batches, across
folders, and the last batch to use it gives it back once the parent has written it out
(the parent writes from the slot, with writev), so memory stays about ``SLOTS x SLOT_FILL``
whatever the store's size (a larger message touches up to SLOT_SIZE for a moment) and the
parent may fall three slots behind before the child waits.  The SHA-256 (the largest single cost) is made by whichever process
has time: the child leaves it to the parent while the parent has given back every slot it
was handed, and makes it itself otherwise.  Single copy is decided in the child (it owns
the table of inodes already read, in stream order), so a message whose data is already in
the stream is not read again.  A message larger than a slot is hashed in a first pass, then
sent in slot-sized chunks.

Failure behaviour: per-message problems become outcomes (vanished, skipped); an unexpected
exception in the child is sent as a ``Failure`` and raised in the parent as InternalError; a
child that dies makes the parent raise HelperDied (exit 4).  ``stop()`` kills and reaps the child (its own pid
only).  The child never touches the parent's stdout (the archive may go there) and leaves
with ``os._exit``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Iterator

from ims.archive.records import (NEXT_UID_MAX, UID_MAX, UIDVALIDITY_MAX, valid_folder, valid_key,
                                 valid_keyword, valid_user)
from ims.errors import HelperDied, InternalError
from ims.helper import Channel, HelperProcess
from ims.names import Scope, select_folders
from ims.singlecopy import LinkTable
from ims.store.base import FolderState, MessageEntry, StoreReader, UserInfo

SLOT_SIZE = 4 << 20        # also the largest message sent whole; larger ones go in chunks
SLOTS = 4
# What the child has read is handed over (one pickle, one send) when its data reaches
# BATCH_BYTES or it holds BATCH_MESSAGES messages and listed entries: items of many small
# folders travel together, and a slot may be filled by several hand-overs before it is given
# back; the parent can be up to three slots behind before the child waits.
BATCH_BYTES = 1 << 20
BATCH_MESSAGES = 1024
# A slot takes messages while they fit in its first SLOT_FILL bytes; a larger message goes
# alone in a slot (whole up to SLOT_SIZE, in SLOT_FILL chunks above).  The slots' pages count
# in both processes' memory once touched, so the pages above SLOT_FILL that a larger message
# touched are given back to the system when its slot comes back (``_reclaim``): ordinary
# mail keeps SLOTS x SLOT_FILL resident.  Measured on the benchmark store: 3 slots filled to
# 2 MiB or more (a message could cross the mark) grew to 12 MiB of slot pages in each
# process; 3 slots of 1 MiB made the run 25 % slower (the parent's slack is too short); 4 of
# 1 MiB keep the speed of 3 of 2 MiB.
SLOT_FILL = 1 << 20


@dataclass
class UserItem:
    partition: str
    user: str
    group: str
    info: UserInfo | None
    folders: list[str]
    excluded: list[str]
    error: str | None = None
    # incremental: (folder, identity) of each folder unchanged since the date, in the order
    # of ``folders``; no FolderItem follows for them
    unchanged: list[tuple[str, int | None]] = field(default_factory=list)


# On the wire, messages and outcomes are plain tuples: pickling dataclasses cost more than
# the SHA-256 of every message on the benchmark store (measured: 0.26 s against 0.02 s for
# 132,000 entries).
#
# A listed message: (key, uid or None, flags, keywords tuple, info, is_new)
KEY, UID, FLAGS, KEYWORDS, INFO, IS_NEW = range(6)


_GUID = re.compile(r"[0-9a-fA-F]{32}\Z")
CANNOT_HOLD = "a name the archive cannot hold (a control character, '/', ':' or a leading dot)"


def fit_to_archive(state: FolderState, where: str) -> list[str]:
    """Make a listed folder state one the archive holds (the checks of ims.archive.records):
    the mail user owns ``dovecot-uidlist`` and ``dovecot-keywords``, and Dovecot leaves odd
    ones after a crash.  A value that does not fit is dropped with a note (a message keeps
    its bytes and comes back without its UID, as Dovecot would give it a new one); a message
    whose name does not fit is left out and returned, to be named among the skipped."""
    notes = state.notes
    if state.uidvalidity is not None and not 1 <= state.uidvalidity <= UIDVALIDITY_MAX:
        notes.append(f"{where}: UIDVALIDITY {state.uidvalidity} is out of range; archived"
                     " without one (a restore gives the folder a new one)")
        state.uidvalidity = None
    if state.guid is not None and not _GUID.match(state.guid):
        notes.append(f"{where}: GUID {state.guid[:40]!r} is not 32 hex digits; archived without it")
        state.guid = None
    if any(name and not valid_keyword(name) for name in state.keywords):
        notes.append(f"{where}: dovecot-keywords names that are not IMAP keywords are left out:"
                     f" {[k for k in state.keywords if k and not valid_keyword(k)]!r}")
        state.keywords = [name if valid_keyword(name) else "" for name in state.keywords]
        for entry in state.messages:
            entry.keywords = tuple(k for k in entry.keywords if valid_keyword(k))
    refused: list[str] = []
    kept: list[MessageEntry] = []
    used: set[int] = set()
    dropped = 0
    for entry in state.messages:
        if not valid_key(entry.key):
            refused.append(entry.key)
            continue
        if entry.uid is not None and (not 1 <= entry.uid <= UID_MAX or entry.uid in used):
            entry.uid = None
            dropped += 1
        elif entry.uid is not None:
            used.add(entry.uid)
        kept.append(entry)
    if dropped:
        notes.append(f"{where}: {dropped} dovecot-uidlist UID(s) out of range or listed twice;"
                     " those messages are archived without a UID")
    state.messages = kept
    state.next_uid = min(max(state.next_uid, max(used, default=0) + 1), NEXT_UID_MAX)
    return refused


def _read_whole(fd: int, buffer: memoryview, size: int) -> int:
    """Read a file of ``size`` bytes (its fstat) from its start into ``buffer``, which holds
    one byte more to see a file that grew; the count read.  A short read is not the end:
    the next one returns the rest, or raises the error that cut it.  A read that returns
    ``size`` bytes is the whole message (one system call, the common case): an error could
    only cut bytes after it, and a file that grew fills the extra byte."""
    count = 0
    while count < size:
        got = os.preadv(fd, [buffer[count:]], count)
        if got == 0:
            break
        count += got
    return count


def _read_grown(fd: int, view: memoryview, used: int, size: int) -> int:
    """A file that grew since its fstat (not a Maildir message's habit): read again whole
    when it fits in the slot, else ``OSError`` (named among the skipped: the next backup
    takes it).  Never archived cut at the slot's end, as it had been."""
    now = os.fstat(fd).st_size
    if used + now + 1 <= len(view):
        count = _read_whole(fd, view[used:used + now + 1], now)
        if count == now:
            return count
    raise OSError(errno.EAGAIN, f"it grew from {size} to {now} bytes while being read;"
                                " not archived")


def wire_entry(entry: MessageEntry) -> tuple:
    return (entry.key, entry.uid, entry.flags, entry.keywords, entry.info, entry.is_new)


@dataclass
class FolderItem:
    """A folder's state as listed (``messages`` are wire entries), or why it is missing."""

    logical: str
    partition: str
    user: str
    folder: str
    state: FolderState | None       # without its messages: they travel in ``messages``
    messages: list[tuple] = field(default_factory=list)
    error: str | None = None
    identity: int | None = None     # follows the folder through a rename (chain restores)
    refused: list[str] = field(default_factory=list)   # message names the archive cannot hold
    vanished: bool = False          # deleted (over IMAP) after the user's folders were listed


# An outcome: (kind, index, entry, mtime, uid, gid, size, start, length, sha256, link_target,
# reason, nlink).  ``kind``: ``data`` (bytes in the batch's slot at start/length), ``link`` (the
# inode is already in the stream as ``link_target``), ``large`` (header facts of a message
# whose bytes follow as ``chunk`` outcomes, ended by ``large_end``), ``vanished``,
# ``skipped``.  ``index`` is the position in the folder's message list; ``entry`` is a wire
# entry sent again only when a rename changed it since the listing.
(O_KIND, O_INDEX, O_ENTRY, O_MTIME, O_UID, O_GID, O_SIZE, O_START, O_LENGTH, O_SHA256,
 O_LINK_TARGET, O_REASON, O_NLINK) = range(13)


def outcome(kind: str, index: int, entry: tuple | None = None, mtime: int = 0, uid: int = 0,
            gid: int = 0, size: int = 0, start: int = 0, length: int = 0,
            sha256: str | None = None, link_target: bytes | None = None,
            reason: str = "", nlink: int = 1) -> tuple:
    return (kind, index, entry, mtime, uid, gid, size, start, length, sha256, link_target,
            reason, nlink)


@dataclass
class Batch:
    """Outcomes of one folder's messages, their data in ``slot``.  Several batches share a
    slot; the last one to use it has ``release`` set: once it is written the parent gives
    the slot back.  ``sha256`` of a ``data`` outcome is None when the child left the hash
    to the parent (``StoreReadAhead._parent_idle``)."""

    slot: int | None
    outcomes: list[tuple] = field(default_factory=list)
    release: bool = False


@dataclass
class FolderDone:
    pass


@dataclass
class Failure:
    message: str


class StoreReadAhead:
    def __init__(self, store: StoreReader, scope: Scope, exclusions: list[str],
                 since: float | None, link_min: int, full_copies: bool) -> None:
        self.store = store
        self.scope = scope
        self.exclusions = exclusions
        self.since = since
        self.link_min = max(link_min, 1)
        self.track_links = not full_copies
        self.helper = HelperProcess(SLOTS, SLOT_SIZE)
        self.views = self.helper.views
        self.links = LinkTable()
        self.channel: Channel | None = None
        # child side: items not yet handed over, the slot being filled and how far
        self._pending: list[object] = []
        self._pending_count = 0
        self._free = list(range(SLOTS))
        self._fill: int | None = None
        self._used = 0
        self._unsent = 0            # bytes of the slot not yet handed over
        self._touched = [0] * SLOTS  # how far into each slot pages may be resident
        self._hash_here = True      # whether the child hashes what it reads next

    # -- parent side -----------------------------------------------------------------

    def start(self) -> None:
        def body(channel: Channel) -> None:
            self.channel = channel
            self._child_main()
        self.channel = self.helper.start(body)

    def __iter__(self) -> Iterator[object]:
        assert self.channel is not None
        while True:
            ok, message = self.channel.receive()
            if not ok:
                raise HelperDied(f"the store reader process (pid {self.helper.pid}) ended"
                                 " unexpectedly; the archive is incomplete (no trailer)")
            if message is None:
                return
            if isinstance(message, Failure):
                raise InternalError(f"the store reader failed: {message.message};"
                                    " the archive is incomplete (no trailer)")
            yield from message

    def view(self, slot: int) -> memoryview:
        return self.views[slot]

    def release(self, slot: int | None) -> None:
        if slot is not None and self.channel is not None:
            self.channel.give_slot(slot)

    def stop(self) -> None:
        self.helper.stop()
        self.channel = None

    # -- child side ------------------------------------------------------------------

    def _put(self, item: object) -> None:
        """Queue an item; ``_hand_over`` sends the queue."""
        self._pending.append(item)

    def _hand_over(self) -> None:
        """Send the queued items as one message, and decide who hashes what is read next."""
        if self._pending:
            assert self.channel is not None
            self.channel.send(self._pending)
            self._pending = []
        self._pending_count = self._unsent = 0
        self._hash_here = not self._parent_idle()

    def _parent_idle(self) -> bool:
        """False when the parent holds every slot but the one being filled (the child is
        about to wait for it): the child then hashes what it reads next; otherwise the
        parent, which keeps up, is left the hashing.  Hashing is the largest single cost,
        and the process that would wait for the other takes it: the two stay busy together
        (measured: handing the hash to the child as soon as the parent had fallen one
        slot, or one hand-over, behind left the child too much of it, and the run slower)."""
        if self.channel is None:
            return False
        for slot in self.channel.slots_returned():
            self._free.append(self._reclaim(slot))
        return len(self._free) + (self._fill is not None) >= 2
    def _take_slot(self) -> int:
        assert self.channel is not None
        return self._reclaim(self.channel.take_slot())

    def _reclaim(self, slot: int) -> int:
        """A slot given back: the pages a larger message touched above SLOT_FILL are
        released, so slot memory stays about SLOT_FILL a slot after a large message."""
        if self._touched[slot] > SLOT_FILL:
            self.helper.release_above(slot, SLOT_FILL)
            self._touched[slot] = SLOT_FILL
        return slot

    def _child_main(self) -> None:
        try:
            for user_scope in self.scope.users:
                self._read_user(user_scope)
            self._hand_over()
            assert self.channel is not None
            self.channel.send(None)
        except (BrokenPipeError, ConnectionResetError, EOFError):
            raise
        except BaseException as exc:
            assert self.channel is not None
            self.channel.send(Failure(f"{type(exc).__name__}: {exc}"))
            raise

    def _slot(self) -> int:
        if self._free:
            return self._free.pop()
        return self._take_slot()

    def _read_user(self, user_scope) -> None:
        partition, user, group = user_scope.partition, user_scope.user, user_scope.group
        if not valid_user(user):
            self._put(UserItem(partition, user, group, None, [], [], CANNOT_HOLD))
            return
        try:
            info = self.store.user_info(partition, user)
            all_folders = self.store.folders(partition, user)
        except FileNotFoundError:
            self._put(UserItem(partition, user, group, None, [], [],
                               "user vanished during the backup"))
            return
        except OSError as exc:
            self._put(UserItem(partition, user, group, None, [], [], exc.strerror or str(exc)))
            return
        refused = self.store.refused_links(partition, user)
        refused += [(f, CANNOT_HOLD) for f in all_folders if not valid_folder(f)]
        all_folders = [f for f in all_folders if valid_folder(f)]
        folders, excluded = select_folders(user_scope, all_folders, self.exclusions)
        unchanged, to_read = self._split_unchanged(partition, user, folders)
        self._put(UserItem(partition, user, group, info, folders, excluded,
                           unchanged=unchanged))
        # an incremental of an unchanged store reads no message: without this count its
        # items would all travel in one message at the end (measured: 9 MiB more in the
        # parent for 19,000 folders)
        self._pending_count += 1 + len(folders) + len(unchanged)
        if self._pending_count >= BATCH_MESSAGES:
            self._hand_over()
        for folder, why in refused:
            # named among the skipped items: the run exits 1, never silently short
            self._put(FolderItem(f"/{partition}/{group}/{user}/{folder}", partition, user,
                                 folder, None, error=why))
        for folder in to_read:
            self._read_folder(partition, user, group, folder)

    def _split_unchanged(self, partition: str, user: str, folders: list[str]
                         ) -> tuple[list[tuple[str, int | None]], list[str]]:
        """(unchanged folders with their identity, folders to read).  In an incremental a
        folder whose ``cur/`` and ``new/`` did not change since the date has the state the
        previous backup of the chain recorded: it is not listed, and costs the check alone
        (this is what makes an incremental of an unchanged store cheap)."""
        if self.since is None:
            return [], folders
        unchanged: list[tuple[str, int | None]] = []
        to_read: list[str] = []
        for folder in folders:
            try:
                same, identity = self.store.unchanged_since(partition, user, folder, self.since)
            except OSError:
                same, identity = False, None    # read: the read names what is wrong
            if same:
                unchanged.append((folder, identity))
            else:
                to_read.append(folder)
        return unchanged, to_read

    def _read_folder(self, partition: str, user: str, group: str, folder: str) -> None:
        logical = f"/{partition}/{group}/{user}/{folder}"
        try:
            reader = self.store.open_folder(partition, user, folder)
        except FileNotFoundError:
            # deleted over IMAP since the user's folders were listed: like an expunged
            # message, counted, not a skip (the backup is complete for what exists)
            self._put(FolderItem(logical, partition, user, folder, None, vanished=True))
            return
        except OSError as exc:
            self._put(FolderItem(logical, partition, user, folder, None,
                                 error=exc.strerror or str(exc)))
            return
        try:
            state = reader.state
            refused = fit_to_archive(state, f"{partition}/{user}/{folder}")
            listed = [wire_entry(m) for m in state.messages]
            self._put(FolderItem(logical, partition, user, folder, FolderState(
                state.name, state.uidvalidity, state.next_uid, state.guid,
                [k for k in state.keywords if k], [], state.notes, state.highest_modseq,
                state.problems), listed, identity=reader.identity, refused=refused))
            self._pending_count += len(listed)
            self._read_messages(reader, f"{partition}/{user}/{folder}/")
            self._put(FolderDone())
        finally:
            reader.close()

    def _read_messages(self, reader, prefix: str) -> None:
        """The folder's messages as ``Batch``es: data read into the slot being filled
        (``_fill``, kept from folder to folder), handed over every BATCH_BYTES or
        BATCH_MESSAGES."""
        since = self.since
        track_links = self.track_links
        link_min = self.link_min
        links = self.links
        view = self.views[self._fill] if self._fill is not None else None
        batch: list[tuple] = []

        def queue(release: bool = False) -> None:
            nonlocal batch
            if batch or release:
                self._put(Batch(self._fill, batch, release))
                self._pending_count += len(batch)
                batch = []
            if release:
                assert self._fill is not None
                self._touched[self._fill] = max(self._touched[self._fill], self._used)
                self._fill, self._used = None, 0

        for index, entry in enumerate(reader.state.messages):
            if self._unsent >= BATCH_BYTES or self._pending_count + len(batch) >= BATCH_MESSAGES:
                queue()
                self._hand_over()
            location = entry.location
            try:
                opened = reader.open_message(entry)
            except OSError as exc:
                batch.append(outcome("skipped", index, reason=exc.strerror or str(exc)))
                continue
            if opened is None:
                batch.append(outcome("vanished", index))
                continue
            fd, st = opened
            changed = wire_entry(entry) if entry.location != location else None
            try:
                if since is not None and st.st_ctime < since:
                    continue
                mtime = int(st.st_mtime)
                shared = track_links and st.st_nlink >= link_min
                if shared:
                    target = links.first_copy(st)
                    if target is not None:
                        batch.append(("link", index, changed, mtime, st.st_uid, st.st_gid,
                                      st.st_size, 0, 0, None, target, "", st.st_nlink))
                        continue
                size = st.st_size
                if size >= SLOT_SIZE - 1:
                    queue(release=self._fill is not None)
                    self._hand_over()
                    view = None
                    self._send_large(fd, index, changed, st, mtime)
                else:
                    used = self._used
                    if self._fill is None or (used and used + size + 1 > SLOT_FILL):
                        if self._fill is not None:
                            queue(release=True)
                            self._hand_over()
                        self._fill = self._slot()
                        view = self.views[self._fill]
                        used = 0
                    assert view is not None
                    count = _read_whole(fd, view[used:used + size + 1], size)
                    if count > size:
                        count = _read_grown(fd, view, used, size)
                    elif count < size:
                        # a read error after the first bytes comes as a short read, and the
                        # error itself only on the next call: never archive a message short
                        raise OSError(errno.EIO, f"read {count} of its {size} bytes")
                    batch.append(("data", index, changed, mtime, st.st_uid, st.st_gid, count,
                                  used, count,
                                  hashlib.sha256(view[used:used + count]).hexdigest()
                                  if self._hash_here else None,
                                  None, "", st.st_nlink))
                    self._used = used + count
                    self._unsent += count
                if shared:
                    links.add(st, (prefix + entry.key).encode(
                        "utf-8", "surrogateescape"))
            except OSError as exc:
                batch.append(outcome("skipped", index, reason=exc.strerror or str(exc)))
            finally:
                os.close(fd)
        queue()

    def _send_large(self, fd: int, index: int, changed: tuple | None,
                    st: os.stat_result, mtime: int) -> None:
        """A message larger than a slot: hashed in a first pass, then sent in SLOT_FILL
        chunks, each in a slot of its own (nothing else is queued meanwhile)."""
        size = st.st_size
        digest = hashlib.sha256()
        position = 0
        while position < size:
            chunk = os.pread(fd, min(1 << 20, size - position), position)
            if not chunk:
                break
            digest.update(chunk)
            position += len(chunk)
        if position != size:
            raise OSError(errno.EIO, f"read {position} of its {size} bytes")
        if os.fstat(fd).st_size != size:
            raise OSError(errno.EAGAIN, f"its size changed from {size} bytes while being read;"
                                        " not archived")
        self._put(Batch(None, [outcome("large", index, changed, mtime, st.st_uid, st.st_gid,
                                       size, sha256=digest.hexdigest(),
                                       nlink=st.st_nlink)]))
        self._hand_over()
        position = 0
        while position < size:
            slot = self._slot()
            try:
                count = os.preadv(fd, [self.views[slot][:min(SLOT_FILL, size - position)]],
                                  position)
            except OSError:
                count = 0       # the member is already announced: it ends short, and is named
            if count <= 0:
                self._free.append(slot)
                break
            self._put(Batch(slot, [outcome("chunk", index, start=0, length=count)], True))
            self._hand_over()
            position += count
        ended = [outcome("large_end", index, length=position)]
        now = os.fstat(fd).st_size
        if now > size:      # (one that shrank is named by the writer: it came short)
            ended.append(outcome("skipped", index, reason=f"it grew from {size} to {now} bytes"
                                 " while being read: the archived copy holds its first"
                                 f" {size} bytes"))
        self._put(Batch(None, ended))
