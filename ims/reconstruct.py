"""reconstruct: check a Dovecot Maildir store, and repair what is safe to repair.

What it is for: a store put back from files that were not all copied at one instant (the
index files at one time, the Maildirs at another), or changed behind Dovecot's back, can
hold uidlists, message files and index files that disagree.  ``check`` lists every problem
with its folder and what to do; ``repair`` fixes what is safe to fix, under Dovecot's
locks, while Dovecot keeps running, says what it did, then checks again.

The repair rules: no message file is ever deleted (a second file under one base name is
renamed and gets a UID of its own); UIDVALIDITY and UIDs are kept wherever possible, so
clients' caches stay valid, and a repair says when they are not (a folder without a
UIDVALIDITY, or sharing its user's other folder's, gets a new one: its clients resync);
``dovecot-uidlist`` is only replaced as a whole (temporary file + rename) under
``dovecot-uidlist.lock``, as Dovecot does; index files that disagree with the uidlist are
removed (Dovecot rebuilds them) after the uidlist's next UID has been raised above every
UID they handed out, and the folder's modseq is seeded above anything a client can have
cached, as imsrestore does for a folder restored whole.  Only what a killed imsrestore of
this host left (its pid dead) and locks of dead processes are removed.

The index files are read, never written: ``dovecot.index`` (header and records) and the
transaction logs after it give the UIDVALIDITY, the next UID, and each UID the index holds
with its system flags (``read_index``).  That tells an expunged message's uidlist line,
which Dovecot keeps until it compacts the file (a notice), from a message whose file went
missing behind Dovecot's back (a problem).  With ``restored`` (``reconstruct -m``, after a
file-level restore) an index must match the uidlist and the files exactly (the same UIDs,
the same flags), else it goes.

Safety: the store belongs to the mail user and the command runs as root, so every directory
below a partition is opened level by level with ``O_NOFOLLOW`` (``open_dir_under``) and
every file is read, created, renamed, chowned or removed relative to a directory so opened;
a symbolic link met is refused and named, never followed.  Control files are read with
``read_regular`` (never through a link, never blocking on a FIFO).

Failure behaviour: per-folder problems (an unreadable file, a link, EIO) become findings of
that folder and the run goes on; ``StoreLocked`` of one folder is recorded in
``Report.locked`` (exit 3) and the run goes on with the next; ``UnknownName``,
``ConfigError`` and ``UsageError`` from resolving the names end the run before anything is
read (exit 2).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import stat
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ims.config import Config
from ims.errors import ExitCode, StoreLocked, most_serious
from ims.names import UserScope, in_folder, resolve
from ims.restore.session import open_store
from ims.signals import held
from ims.store import modseq as dovecot_modseq
from ims.store.files import open_regular, read_regular
from ims.store.lock import STALE_DEAD_PID_AGE, STALE_UNKNOWN_AGE, FolderLock, process_alive
from ims.store.maildir import INBOX, MaildirStore, dirname_to_folder, parse_keywords_file
from ims.store.maildir_write import (INDEX_FILES, Owner, UnsafePath, anchored, open_dir_under,
                                     open_levels, open_subdir, replace_file)
from ims.store.subscriptions import parse_subscriptions

PROBLEM = "problem"
NOTICE = "notice"

UID_MAX = 2**32 - 2                 # the last UID Dovecot hands out
UIDLIST = "dovecot-uidlist"
KEYWORDS = "dovecot-keywords"
MAILDIRFOLDER = "maildirfolder"
SUBSCRIPTIONS = "subscriptions"
QUOTA_FILE = "maildirsize"
QUOTA_LOCK = "maildirsize.lock"
COUNTER = "dovecot-uidvalidity"
LIST_INDEX_FILES = ("dovecot.list.index", "dovecot.list.index.log", "dovecot.list.index.log.2")
SUBS = ("cur", "new", "tmp")

_SYSTEM_FLAGS = "DFPRST"
# Maildir info letters -> mail_index_record flag bits (MAIL_ANSWERED 1, FLAGGED 2, DELETED 4,
# SEEN 8, DRAFT 16); 'P' (passed) has no IMAP flag and no bit
_FLAG_BITS = {"R": 0x01, "F": 0x02, "T": 0x04, "S": 0x08, "D": 0x10}
_DIRTY = 0x80
_SHOWN_UIDS = 5                     # UIDs named in one finding; the rest are counted


# -- what a run finds and does ----------------------------------------------------------------

@dataclass
class Finding:
    """One thing found: ``level`` problem (changes the exit code) or notice (a legal state
    worth knowing); ``kind`` a stable identifier (docs/disaster-recovery.md lists them)."""

    level: str
    kind: str
    partition: str
    user: str
    folder: str | None          # None: the user as a whole (Maildir root files)
    path: str
    detail: str
    advice: str = ""

    def name(self) -> str:
        """The logical name that selects this folder (or user) for reconstruct."""
        base = f"/{self.partition}/user/{self.user}"
        return base if self.folder is None else f"{base}/{self.folder}"

    def to_json(self) -> dict[str, object]:
        return {"level": self.level, "kind": self.kind, "partition": self.partition,
                "user": self.user, "folder": self.folder, "name": self.name(),
                "path": self.path, "detail": self.detail, "advice": self.advice}

    def key(self) -> tuple[str, str, str, str | None]:
        return (self.kind, self.partition, self.user, self.folder)


@dataclass
class Action:
    """One repair done: where, for which kind of problem, and what it did."""

    path: str
    kind: str
    text: str

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "kind": self.kind, "action": self.text}


@dataclass
class Options:
    repair: bool = False
    restored: bool = False          # -m: after a file-level restore (strict index check)
    recursive: bool = False         # -r: a named folder's subfolders too
    lock_timeout: float = 60.0
    uid_margin: int | None = None   # --uid-margin: raise every next UID, replace every index
    owner: Owner | None = None      # local.store.uid/gid


@dataclass
class Report:
    options: Options
    users: int = 0
    folders: int = 0
    new_messages: int = 0
    found: list[Finding] = field(default_factory=list)       # the first check
    actions: list[Action] = field(default_factory=list)
    remaining: list[Finding] = field(default_factory=list)   # repair: the check after it
    locked: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def problems(self) -> list[Finding]:
        """What needs attention: found (check), or still there after the repair."""
        listed = self.remaining if self.options.repair else self.found
        return [f for f in listed if f.level == PROBLEM]

    def notices(self) -> list[Finding]:
        listed = self.remaining if self.options.repair else self.found
        return [f for f in listed if f.level == NOTICE]

    def exit_code(self) -> int:
        codes = [int(ExitCode.OK)]
        if self.problems():
            codes.append(int(ExitCode.SKIPPED))
        if self.locked:
            codes.append(int(ExitCode.LOCKED))
        return most_serious(*codes)


# -- dovecot-uidlist, line by line --------------------------------------------------------------

@dataclass
class UidlistLine:
    uid: int
    base: str
    rest: str           # everything after "<uid> ": extension fields and ":<base>"


@dataclass
class UidlistFile:
    header: list[str]
    uidvalidity: int | None
    next_uid: int
    lines: list[UidlistLine]
    bad: list[str]

    @property
    def effective_next(self) -> int:
        """Dovecot's reading: its header N lags, the last line's UID + 1 counts too."""
        last = self.lines[-1].uid if self.lines else 0
        return max(self.next_uid, last + 1)


class UidlistUnreadable(ValueError):
    pass


def parse_uidlist(data: bytes) -> UidlistFile:
    """Every line of a version-3 uidlist in file order (``ims.store.uidlist`` keeps one UID
    per base name, which hides exactly the duplicates this module looks for)."""
    text = data.decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    lines.pop()                     # after the last newline: nothing, or an append in progress
    if not lines:
        raise UidlistUnreadable("empty")
    header = lines[0].split()
    if not header or header[0] != "3":
        raise UidlistUnreadable(f"not version 3 (header {lines[0][:30]!r})")
    uidvalidity: int | None = None
    next_uid = 1
    for item in header[1:]:
        key, value = item[:1], item[1:]
        if key in ("V", "N"):
            if not value.isdigit():
                raise UidlistUnreadable(f"bad header field {item!r}")
            if key == "V":
                uidvalidity = int(value) or None
            else:
                next_uid = int(value)
    parsed: list[UidlistLine] = []
    bad: list[str] = []
    for line in lines[1:]:
        line = line.rstrip("\r")
        space = line.find(" ")
        head = line[:space]
        # "<uid> [extension fields] :<file name>": the name starts after the first " :" and
        # may be a whole file name (base, then ":2,<flags>"); its base is what identifies it
        marker = line.find(" :", max(space - 1, 0))
        base = line[marker + 2:].partition(":")[0] if marker >= 0 else ""
        if space <= 0 or marker < 0 or not head.isdigit() or not base \
                or not 1 <= int(head) <= UID_MAX:
            bad.append(line)
            continue
        parsed.append(UidlistLine(int(head), base, line[space + 1:]))
    return UidlistFile(header, uidvalidity, next_uid, parsed, bad)


def uidlist_text(old: UidlistFile, uidvalidity: int | None, next_uid: int,
                 lines: list[UidlistLine]) -> str:
    """The file with V and N replaced, every other header field kept, lines as given."""
    fields = [f for f in old.header[1:] if f[:1] not in ("V", "N")]
    head = ["3"] + ([f"V{uidvalidity}"] if uidvalidity else []) + [f"N{next_uid}"] + fields
    return "\n".join([" ".join(head)] + [f"{line.uid} {line.rest}" for line in lines]) + "\n"


# -- Dovecot's index: header, records and the transaction log after them -----------------------

# struct mail_index_header (src/lib-index/mail-index.h, the same in 2.3 and 2.4): offsets of
# the fields read here; all in the byte order compat_flags bit 0 names.
_IX_MAJOR = 7
_IX_COMPAT, _IX_INDEXID, _IX_UIDVALIDITY, _IX_NEXT_UID = 12, 16, 24, 28
_IX_MESSAGES, _IX_LOG_SEQ, _IX_LOG_HEAD = 32, 60, 68
_IX_MIN_BASE = 72
# mail_transaction_type values (mail-transaction-log.h)
_T_MASK = 0x0FFFFFFF
_T_EXTERNAL = 0x10000000
_T_APPEND = 0x00000002
_T_FLAG_UPDATE = 0x00000004
_T_HEADER_UPDATE = 0x00000020
_T_BOUNDARY = 0x00080000
_T_EXPUNGE = 0x00000001 | 0x0000CD90           # with MAIL_TRANSACTION_EXPUNGE_PROT
_T_EXPUNGE_GUID = 0x00002000 | 0x0000CD90
_INDEX_LIMIT = 512 << 20


class _IndexUnknown(ValueError):
    """A file this reader does not understand: the index is not judged."""


@dataclass
class IndexView:
    """What a folder's index files say.  ``uids`` (UID -> the record's flag byte) is None
    when the records could not be followed to the end of the log; ``conflict`` names why the
    files cannot come from one instant (another index's log, log files missing)."""

    present: bool = False
    readable: bool = True
    uidvalidity: int | None = None
    next_uid: int = 1
    uids: dict[int, int] | None = None
    conflict: str | None = None
    why_unreadable: str = ""

    @property
    def built(self) -> bool:
        """False for a log Dovecot has not synced the folder into yet (a seeded one)."""
        return self.present and self.readable and (
            self.uidvalidity is not None or self.next_uid > 1 or bool(self.uids))


def _offset_size(raw: bytes, at: int) -> int:
    # mail_index_offset_to_uint32: 4 bytes of 7 bits, most significant first, high bits set
    b0, b1, b2, b3 = raw[at], raw[at + 1], raw[at + 2], raw[at + 3]
    if not b0 & b1 & b2 & b3 & 0x80:
        return 0
    return ((b3 & 0x7F) << 2) | ((b2 & 0x7F) << 9) | ((b1 & 0x7F) << 16) | ((b0 & 0x7F) << 23)


def _read_index_file(folder_fd: int, name: str) -> bytes | None:
    try:
        return read_regular(name, folder_fd, limit=_INDEX_LIMIT)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _IndexUnknown(f"{name}: {exc.strerror or exc}") from None


@dataclass
class _Log:
    data: bytes
    order: str
    hdr_size: int
    indexid: int
    seq: int
    prev_seq: int


def _parse_log(data: bytes, name: str) -> _Log:
    if len(data) < 24 or data[0] != 1:
        raise _IndexUnknown(f"{name}: not a transaction log this reader knows")
    # format 1.2+ says its byte order; older files are in the host's (Dovecot's own rule)
    if data[1] >= 2 and len(data) > 32:
        order = "<" if data[32] & 1 else ">"
    else:
        order = "<" if struct.pack("=H", 1) == b"\x01\x00" else ">"
    hdr_size, indexid, seq, prev_seq = struct.unpack_from(order + "HIII", data, 2)
    if hdr_size < 24 or hdr_size > len(data):
        raise _IndexUnknown(f"{name}: header size {hdr_size}")
    return _Log(data, order, hdr_size, indexid, seq, prev_seq)


class _IndexState:
    """The base header and the records, as Dovecot's map holds them while replaying."""

    def __init__(self, header: bytes, order: str, uids: dict[int, int]) -> None:
        self.header = bytearray(header.ljust(_IX_MIN_BASE, b"\0"))
        self.order = order
        self.uids = uids

    def u32(self, offset: int) -> int:
        return struct.unpack_from(self.order + "I", self.header, offset)[0]

    def set_u32(self, offset: int, value: int) -> None:
        struct.pack_into(self.order + "I", self.header, offset, value)

    def apply(self, log: _Log, start: int) -> None:
        data, order = log.data, log.order
        pos = max(start, log.hdr_size)
        end = len(data)
        u32 = struct.Struct(order + "I")
        while pos + 8 <= end:
            size = _offset_size(data, pos)
            if size < 8 or pos + size > end:
                return                  # a record being written, or garbage: the end
            kind_raw = u32.unpack_from(data, pos + 4)[0]
            kind = kind_raw & _T_MASK
            body = data[pos + 8:pos + size]
            if kind == _T_BOUNDARY and len(body) >= 4:
                if pos + u32.unpack_from(body, 0)[0] > end:
                    return              # a transaction not written completely yet
            elif kind == _T_APPEND:
                self._appends(body)
            elif kind == _T_FLAG_UPDATE:
                self._flag_updates(body)
            elif kind == _T_HEADER_UPDATE:
                self._header_updates(body)
            elif kind in (_T_EXPUNGE, _T_EXPUNGE_GUID) and kind_raw & _T_EXTERNAL:
                # without EXTERNAL an expunge is a request the backend has not carried out
                self._expunges(body, kind == _T_EXPUNGE)
            pos += size

    def _appends(self, body: bytes) -> None:
        record = struct.Struct(self.order + "IB")
        next_uid = self.u32(_IX_NEXT_UID)
        for at in range(0, len(body) - 7, 8):      # struct mail_index_record, 8 bytes
            uid, flags = record.unpack_from(body, at)
            self.uids[uid] = flags
            if uid >= next_uid:
                next_uid = uid + 1
        self.set_u32(_IX_NEXT_UID, next_uid)

    def _flag_updates(self, body: bytes) -> None:
        update = struct.Struct(self.order + "IIBB")
        for at in range(0, len(body) - 11, 12):    # uid1, uid2, add, remove, modseq, pad
            uid1, uid2, add, remove = update.unpack_from(body, at)
            for uid in self._in_range(uid1, uid2):
                self.uids[uid] = (self.uids[uid] & ~remove) | add

    def _expunges(self, body: bytes, ranges: bool) -> None:
        if ranges:
            pairs = struct.Struct(self.order + "II")
            for at in range(0, len(body) - 7, 8):
                uid1, uid2 = pairs.unpack_from(body, at)
                for uid in self._in_range(uid1, uid2):
                    del self.uids[uid]
        else:
            for at in range(0, len(body) - 19, 20):  # uid and a 128-bit GUID
                self.uids.pop(struct.unpack_from(self.order + "I", body, at)[0], None)

    def _in_range(self, uid1: int, uid2: int) -> list[int]:
        if uid2 - uid1 < len(self.uids):
            return [uid for uid in range(uid1, uid2 + 1) if uid in self.uids]
        return [uid for uid in self.uids if uid1 <= uid <= uid2]

    def _header_updates(self, body: bytes) -> None:
        at = 0
        while at + 4 <= len(body):
            offset, size = struct.unpack_from(self.order + "HH", body, at)
            chunk = body[at + 4:at + 4 + size]
            if offset + len(chunk) <= len(self.header):
                self.header[offset:offset + len(chunk)] = chunk
            at += 4 + size
            at += -at % 4


def read_index(folder_fd: int) -> IndexView:
    """The folder's index as Dovecot would map it: ``dovecot.index``, then the records of
    ``dovecot.index.log.2`` and ``dovecot.index.log`` after the index's log position.
    Never raises for files it cannot read or does not know (``readable`` False)."""
    view = IndexView()
    try:
        index = _read_index_file(folder_fd, dovecot_modseq.INDEX_NAME)
        logs: list[_Log] = []
        for name in ("dovecot.index.log.2", dovecot_modseq.LOG_NAME):
            data = _read_index_file(folder_fd, name)
            if data is not None:
                logs.append(_parse_log(data, name))
        view.present = index is not None or bool(logs)
        if not view.present:
            return view
        logs.sort(key=lambda log: log.seq)
        if index is not None:
            state, seq, head = _parse_index(index)
            indexid = struct.unpack_from(state.order + "I", index, _IX_INDEXID)[0]
            # an older .log.2 of an index Dovecot recreated may linger; only the logs from
            # the index's position on must be this index's
            chain = [log for log in logs if log.seq >= seq]
            if any(log.indexid != indexid for log in chain):
                view.conflict = "the transaction log belongs to another index (another instant)"
            elif logs and not chain:
                view.conflict = "the index is newer than its transaction log"
            elif chain and chain[0].seq != seq:
                view.conflict = "transaction log files between the index and its log are missing"
            for n, log in enumerate(chain if view.conflict is None else []):
                if n and log.prev_seq != chain[n - 1].seq:
                    view.conflict = "the transaction log files do not follow each other"
                    break
                state.apply(log, head if n == 0 else 0)
        else:
            # no dovecot.index yet: Dovecot maps the folder from its logs, oldest first
            state = _IndexState(b"", logs[0].order, {})
            state.set_u32(_IX_NEXT_UID, 1)
            if logs[0].prev_seq != 0 and len(logs) == 1:
                raise _IndexUnknown("a transaction log without its index or predecessor")
            for n, log in enumerate(logs):
                if n and log.prev_seq != logs[n - 1].seq:
                    view.conflict = "the transaction log files do not follow each other"
                    break
                state.apply(log, 0)
        view.uidvalidity = state.u32(_IX_UIDVALIDITY) or None
        view.next_uid = max(state.u32(_IX_NEXT_UID), 1)
        view.uids = None if view.conflict else state.uids
    except (_IndexUnknown, struct.error) as exc:
        view.readable = False
        view.why_unreadable = str(exc) or "truncated"
    return view


def _parse_index(data: bytes) -> tuple[_IndexState, int, int]:
    if len(data) < _IX_MIN_BASE or data[0] != _IX_MAJOR:
        raise _IndexUnknown("dovecot.index: not an index this reader knows")
    order = "<" if data[_IX_COMPAT] & 1 else ">"
    base_size, header_size, record_size = struct.unpack_from(order + "HII", data, 2)
    messages = struct.unpack_from(order + "I", data, _IX_MESSAGES)[0]
    if not _IX_MIN_BASE <= base_size <= header_size <= len(data) or record_size < 5 \
            or header_size + messages * record_size > len(data):
        raise _IndexUnknown("dovecot.index: truncated or damaged")
    record = struct.Struct(order + "IB")
    uids: dict[int, int] = {}
    for n in range(messages):
        uid, flags = record.unpack_from(data, header_size + n * record_size)
        uids[uid] = flags
    seq = struct.unpack_from(order + "I", data, _IX_LOG_SEQ)[0]
    head = struct.unpack_from(order + "I", data, _IX_LOG_HEAD)[0]
    return _IndexState(data[:base_size], order, uids), seq, head


# -- locks and what a killed restore left -------------------------------------------------------

_STAGED = re.compile(r"\.?ims-restore\.(\d+)\.[^.]+\.(.+)")
_STAGED_TEMP = re.compile(r"\..+\.ims-restore\.(\d+)\.(.+)")


@dataclass
class _LockState:
    name: str
    stale: bool
    description: str
    inode: int


def _judge_lock(dir_fd: int, name: str) -> _LockState | None:
    """A dotlock (``<pid>:<host>``), judged by Dovecot's rules (ims.store.lock): stale when
    its pid is a dead process of this host and it is 2 s old, or it names no holder and is
    2 minutes old.  None when it is gone; OSError for a link or a non-file."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                 dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        content = os.read(fd, 256).decode("utf-8", "replace").strip()
    finally:
        os.close(fd)
    pid, _, host = content.partition(":")
    age = max(0.0, time.time() - st.st_mtime)
    if not pid.isdigit():
        if age >= STALE_UNKNOWN_AGE:
            return _LockState(name, True, f"names no holder and is {age:.0f} s old", st.st_ino)
        return _LockState(name, False, f"names no holder ({age:.0f} s old; taken over at"
                          f" {STALE_UNKNOWN_AGE:.0f} s)", st.st_ino)
    if host != socket.gethostname():
        return _LockState(name, False, f"held by pid {pid} of host {host!r}: left alone"
                          " (that host's processes cannot be seen from here)", st.st_ino)
    if int(pid) == os.getpid() or process_alive(int(pid)) or age < STALE_DEAD_PID_AGE:
        return _LockState(name, False, f"held by pid {pid}, which is running", st.st_ino)
    return _LockState(name, True, f"held by pid {pid}, which is no longer running", st.st_ino)


def _staged_owner(name: str) -> tuple[int, str] | None:
    """(pid, host) of a name imsrestore stages (ims-restore.<pid>.<n>.<host>, its aside
    directories and its control-file temporaries); None for any other name."""
    match = _STAGED.fullmatch(name) or _STAGED_TEMP.fullmatch(name)
    return (int(match.group(1)), match.group(2)) if match else None


def _unlink_if_same(dir_fd: int, name: str, inode: int) -> bool:
    try:
        if os.lstat(name, dir_fd=dir_fd).st_ino != inode:
            return False
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def _remove_staged(dir_fd: int, name: str) -> None:
    st = os.lstat(name, dir_fd=dir_fd)
    if stat.S_ISDIR(st.st_mode):
        # by descriptors, never through a link inside it
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


# -- one folder ---------------------------------------------------------------------------------

@dataclass
class _Place:
    """A folder (or, for user-level findings, the user) and how findings name it."""

    partition: str
    user: str
    folder: str | None
    path: Path

    def finding(self, level: str, kind: str, detail: str, advice: str = "") -> Finding:
        return Finding(level, kind, self.partition, self.user, self.folder, str(self.path),
                       detail, advice)

    def name(self) -> str:
        return self.finding(PROBLEM, "", "").name()


@dataclass
class _Odd:
    """A file or directory whose owner or mode is not the store's."""

    sub: str            # "" for the folder directory itself or a file in it
    name: str           # "" for a directory opened as ``sub``
    inode: int
    owner: bool
    mode: int | None    # the mode it should get, when its mode is wrong
    shown: str


@dataclass
class _Snapshot:
    missing: list[str] = field(default_factory=list)     # cur new tmp maildirfolder
    files: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    not_files: list[str] = field(default_factory=list)
    uidlist: UidlistFile | None = None
    uidlist_error: str | None = None
    keywords: list[str] = field(default_factory=list)
    index: IndexView = field(default_factory=IndexView)
    odd: list[_Odd] = field(default_factory=list)
    locks: list[_LockState] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    staged: list[tuple[str, str, int, str]] = field(default_factory=list)  # sub, name, pid, host


@dataclass
class _Plan:
    renames: list[tuple[str, str, str]] = field(default_factory=list)   # sub, old, new name
    lines: list[UidlistLine] = field(default_factory=list)
    next_uid: int = 1
    new_uidvalidity: bool = False
    uidvalidity: int | None = None      # for a uidlist that is started anew
    rewrite: bool = False
    drop_index: str | None = None
    notes: list[tuple[str, str]] = field(default_factory=list)          # kind, what was done
    new_files: int = 0


@dataclass
class _Policy:
    owner: Owner
    dir_mode: int           # what a directory of this Maildir may have (the Maildir's own)

    @property
    def file_mode(self) -> int:
        # Dovecot gives a new file its folder directory's permissions without the x bits
        return self.dir_mode & 0o666


def _check_mode(st: os.stat_result, policy: _Policy, is_dir: bool,
                exempt_mode: bool = False) -> tuple[bool, int | None]:
    wrong_owner = (st.st_uid, st.st_gid) != (policy.owner.uid, policy.owner.gid)
    if exempt_mode:
        return wrong_owner, None
    allowed = (policy.dir_mode | 0o700) if is_dir else (policy.file_mode | 0o600)
    needed = 0o700 if is_dir else 0o600
    mode = st.st_mode & 0o777
    if mode & ~allowed or needed & ~mode:
        return wrong_owner, (mode & allowed) | needed
    return wrong_owner, None


def _info_flags(info: str) -> tuple[int, str]:
    """(index flag bits, keyword letters) of a file name's ``2,...`` part."""
    if not info.startswith("2,"):
        return 0, ""
    bits = 0
    letters = []
    for letter in info[2:]:
        if letter in _FLAG_BITS:
            bits |= _FLAG_BITS[letter]
        elif "a" <= letter <= "z":
            letters.append(letter)
    return bits, "".join(letters)


def snapshot(folder_fd: int, is_inbox: bool, policy: _Policy) -> _Snapshot:
    """Everything the checks look at, read without any lock: the index first, then the
    uidlist, then the listing (Dovecot writes a new message's file, then its uidlist line,
    then its index record: read in that order a delivery in progress looks like new mail,
    never like a lost message)."""
    snap = _Snapshot()
    snap.index = read_index(folder_fd)
    try:
        snap.uidlist = parse_uidlist(read_regular(UIDLIST, folder_fd))
    except FileNotFoundError:
        pass
    except UidlistUnreadable as exc:
        snap.uidlist_error = str(exc)
    except OSError as exc:
        snap.uidlist_error = _why(exc)
    try:
        snap.keywords = parse_keywords_file(
            read_regular(KEYWORDS, folder_fd, limit=1 << 20).decode("utf-8", "replace"))
    except FileNotFoundError:
        pass
    except OSError as exc:
        snap.errors.append(f"{KEYWORDS}: {_why(exc)}")
    st = os.fstat(folder_fd)
    owner_wrong, mode = _check_mode(st, policy, True)
    if owner_wrong or mode is not None:
        snap.odd.append(_Odd("", "", st.st_ino, owner_wrong, mode, "."))
    sub_fds: dict[str, int] = {}
    try:
        for sub in SUBS:
            try:
                sub_fds[sub] = open_subdir(folder_fd, sub, sub)
            except FileNotFoundError:
                snap.missing.append(f"{sub}/")
        if not is_inbox:
            try:
                os.lstat(MAILDIRFOLDER, dir_fd=folder_fd)
            except FileNotFoundError:
                snap.missing.append(MAILDIRFOLDER)
        for sub in ("new", "cur"):
            if sub in sub_fds:
                _list_sub(snap, sub, sub_fds[sub], policy)
        _settle_listing(snap, sub_fds)
        if "tmp" in sub_fds:
            _scan_staged(snap, "tmp", sub_fds["tmp"])
            st = os.fstat(sub_fds["tmp"])
            owner_wrong, mode = _check_mode(st, policy, True)
            if owner_wrong or mode is not None:
                snap.odd.append(_Odd("tmp", "", st.st_ino, owner_wrong, mode, "tmp/"))
    finally:
        for fd in sub_fds.values():
            os.close(fd)
    _scan_folder_dir(snap, folder_fd, is_inbox, policy)
    return snap


def _list_sub(snap: _Snapshot, sub: str, sub_fd: int, policy: _Policy) -> None:
    st = os.fstat(sub_fd)
    owner_wrong, mode = _check_mode(st, policy, True)
    if owner_wrong or mode is not None:
        snap.odd.append(_Odd(sub, "", st.st_ino, owner_wrong, mode, f"{sub}/"))
    with os.scandir(sub_fd) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                est = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue        # renamed meanwhile (a flag change): the uidlist check relists
            if not stat.S_ISREG(est.st_mode):
                what = "a symbolic link" if stat.S_ISLNK(est.st_mode) else "not a regular file"
                snap.not_files.append(f"{sub}/{entry.name} ({what})")
                continue
            snap.files.setdefault(entry.name.partition(":")[0], []).append((sub, entry.name))
            owner_wrong, mode = _check_mode(est, policy, False)
            if owner_wrong or mode is not None:
                snap.odd.append(_Odd(sub, entry.name, est.st_ino, owner_wrong, mode,
                                     f"{sub}/{entry.name}"))


def _settle_listing(snap: _Snapshot, sub_fds: dict[str, int]) -> None:
    """A file renamed while its directory is read (a flag change, new/ -> cur/) may be
    missed, or seen under both names: a listed base name without a file is looked for once
    more, and a base name seen twice is kept only under the names that still exist."""
    listed = snap.uidlist.lines if snap.uidlist else []
    if any(line.base not in snap.files for line in listed):
        for sub in ("new", "cur"):
            if sub not in sub_fds:
                continue
            for name in os.listdir(sub_fds[sub]):
                base = name.partition(":")[0]
                if not name.startswith(".") and base not in snap.files:
                    snap.files[base] = [(sub, name)]
    for base, places in list(snap.files.items()):
        if len(places) > 1:
            still = [(sub, name) for sub, name in places if _exists(sub_fds[sub], name)]
            snap.files[base] = still or places[:1]


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def _scan_staged(snap: _Snapshot, sub: str, dir_fd: int) -> None:
    for name in os.listdir(dir_fd):
        owner = _staged_owner(name)
        if owner is not None:
            snap.staged.append((sub, name, owner[0], owner[1]))


def _scan_folder_dir(snap: _Snapshot, folder_fd: int, is_inbox: bool, policy: _Policy) -> None:
    with os.scandir(folder_fd) as entries:
        for entry in entries:
            name = entry.name
            staged = _staged_owner(name)
            if staged is not None and entry.is_file(follow_symlinks=False):
                # only a file (a control file's temporary) is a restore's leftover here
                snap.staged.append(("", name, staged[0], staged[1]))
                continue
            try:
                est = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue        # a lock released, a temporary file renamed: Dovecot at work
            if name.endswith(".lock"):
                try:
                    judged = _judge_lock(folder_fd, name)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    snap.errors.append(f"{name}: {_why(exc)}")
                    continue
                if judged is not None:
                    snap.locks.append(judged)
                continue
            if not stat.S_ISREG(est.st_mode) or (is_inbox and name.startswith(".")):
                continue                # folders of the INBOX, cur/ new/ tmp/, odd entries
            # Dovecot makes the uidvalidity marker 0444: its owner counts, not its mode
            marker = name.startswith(COUNTER + ".")
            owner_wrong, mode = _check_mode(est, policy, False, exempt_mode=marker)
            if owner_wrong or mode is not None:
                snap.odd.append(_Odd("", name, est.st_ino, owner_wrong, mode, name))


def _why(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "a symbolic link (not followed)"
    if exc.errno == errno.EINVAL:
        return "not a regular file"
    return exc.strerror or str(exc)


def _uid_list(uids: list[int]) -> str:
    """``UID 7`` or ``UIDs 3, 4 and 9 more``."""
    shown = ", ".join(str(u) for u in uids[:_SHOWN_UIDS])
    more = f" and {len(uids) - _SHOWN_UIDS} more" if len(uids) > _SHOWN_UIDS else ""
    return f"UID {shown}" if len(uids) == 1 else f"UIDs {shown}{more}"


def _are(uids: list[int]) -> str:
    return "is" if len(uids) == 1 else "are"


@dataclass
class _Context:
    """What a folder's analysis needs from outside the folder."""

    restored: bool
    uid_margin: int | None
    duplicate_of: str | None        # the user's folder that has this folder's UIDVALIDITY


def analyse(place: _Place, snap: _Snapshot, ctx: _Context) -> tuple[list[Finding], _Plan]:
    """The findings of one folder and the plan that repairs what can be repaired.  Pure:
    reads only the snapshot, so a repair analyses again under the lock and acts on that."""
    found: list[Finding] = []
    plan = _Plan()
    name = place.name()

    def problem(kind: str, detail: str, advice: str) -> None:
        found.append(place.finding(PROBLEM, kind, detail, advice))

    def notice(kind: str, detail: str, advice: str = "") -> None:
        found.append(place.finding(NOTICE, kind, detail, advice))

    fix = f"reconstruct {name}"
    if snap.missing:
        problem("structure", f"missing {', '.join(snap.missing)}",
                f"{fix} creates them (mail in a folder without cur/ is invisible to IMAP)")
    for entry in snap.not_files:
        problem("not-a-file", f"{entry} among the messages",
                "not followed, not changed: replace it by the file it stands for, or move it"
                " out of the folder")
    _analyse_locks(snap, found, place, fix)
    keyword_letters = {chr(97 + i) for i, k in enumerate(snap.keywords) if k}
    unnamed: dict[str, int] = {}
    index = snap.index
    uidlist = snap.uidlist

    # two files under one base name: the one in cur/ (then the first by name) keeps it
    files: dict[str, tuple[str, str]] = {}          # base name -> (sub, file name)
    for base, places in sorted(snap.files.items()):
        for sub, filename in places:
            for letter in _info_flags(filename.partition(":")[2])[1]:
                if letter not in keyword_letters:
                    unnamed[letter] = unnamed.get(letter, 0) + 1
        ordered = sorted(places, key=lambda p: (p[0] != "cur", p[1]))
        files[base] = ordered[0]
        for sub, filename in ordered[1:]:
            plan.renames.append((sub, filename, ""))
    if unnamed:
        letters = ", ".join(f"{letter} ({n} files)" for letter, n in sorted(unnamed.items()))
        problem("keyword-unnamed", f"keyword letters {letters} are used by message files but"
                f" {KEYWORDS} names no keyword for them: Dovecot ignores them",
                f"not repaired (the names are not known): add '<n> NAME' lines to {KEYWORDS}"
                " (letter a is 0) while holding dovecot-uidlist.lock, if the names are known")

    if uidlist is None and snap.uidlist_error is None:
        if index.built and index.uidvalidity is not None and not index.conflict:
            # Dovecot would take the index's UIDVALIDITY and give the files new UIDs above
            # its next UID: written down now, under the lock, so nothing can reuse a UID
            problem("uidlist-missing", f"{UIDLIST} is gone; the index knew UIDVALIDITY"
                    f" {index.uidvalidity} and UIDs up to {index.next_uid - 1}: the"
                    f" {len(files)} message files come back under new UIDs",
                    f"{fix} starts a uidlist with that UIDVALIDITY and next UID {index.next_uid}"
                    " (no UID is handed out twice); Dovecot gives the messages new UIDs and"
                    " clients see them as new mail")
            plan.rewrite = True
            plan.uidvalidity = index.uidvalidity
            plan.next_uid = index.next_uid
        elif files:
            notice("new-messages", f"no {UIDLIST} yet (a folder Dovecot has not opened):"
                   " Dovecot starts one when it first opens the folder")
        _rename_targets(plan, snap, place, found, [], plan.next_uid)
        return found, plan
    if uidlist is None:
        problem("uidlist-unreadable", f"{UIDLIST}: {snap.uidlist_error}",
                f"not repaired: move {UIDLIST} aside by hand; Dovecot then writes a new one"
                " with a new UIDVALIDITY (clients resync the folder)")
        return found, plan

    if uidlist.bad:
        problem("uidlist-bad-line", f"{len(uidlist.bad)} unreadable lines in {UIDLIST}"
                f" (first: {uidlist.bad[0][:60]!r})",
                f"{fix} drops them; their messages get new UIDs from Dovecot")
        plan.rewrite = True
    if uidlist.uidvalidity is None:
        problem("uidvalidity-missing", f"{UIDLIST} has no UIDVALIDITY (or 0)",
                f"{fix} gives the folder a new UIDVALIDITY (clients resync it)")
        plan.new_uidvalidity = plan.rewrite = True
        plan.drop_index = "the folder's UIDVALIDITY changes"
    elif ctx.duplicate_of is not None:
        problem("uidvalidity-duplicate", f"UIDVALIDITY {uidlist.uidvalidity} is also the one"
                f" of folder {ctx.duplicate_of!r} of this user",
                f"{fix} gives this folder a new UIDVALIDITY (clients resync it); the"
                " other folder keeps its own")
        plan.new_uidvalidity = plan.rewrite = True
        plan.drop_index = "the folder's UIDVALIDITY changes"

    # one line per base name (the first), one base name per UID (the first line keeps it)
    kept: list[UidlistLine] = []
    seen_bases: set[str] = set()
    dup_names: list[str] = []
    for line in uidlist.lines:
        if line.base in seen_bases:
            dup_names.append(line.base)
            continue
        seen_bases.add(line.base)
        kept.append(line)
    if dup_names:
        problem("name-duplicate", f"{len(dup_names)} base names listed twice in {UIDLIST}"
                f" (first: {dup_names[0]})", f"{fix} keeps the first line of each")
        plan.rewrite = True
    by_uid: dict[int, UidlistLine] = {}
    renumber: list[UidlistLine] = []
    for line in kept:
        if line.uid in by_uid:
            renumber.append(line)
        else:
            by_uid[line.uid] = line
    missing = sorted(line.uid for line in by_uid.values() if line.base not in files)
    expunged: list[int] = []
    lost: list[int] = []
    for uid in missing:
        # the index followed this UID and no longer holds it: Dovecot expunged it and keeps
        # its line until it compacts the uidlist
        if index.built and index.uids is not None and uid < index.next_uid \
                and uid not in index.uids:
            expunged.append(uid)
        else:
            lost.append(uid)
    if lost:
        problem("file-missing", f"{_uid_list(lost)} {_are(lost)} listed without a message"
                " file (the mail is gone)",
                f"restore the mail from a backup if it is wanted (imsrestore), else {fix}"
                " drops the lines: Dovecot then reports the messages expunged")
        plan.rewrite = True
    if expunged:
        notice("expunged-lines", f"{len(expunged)} lines of expunged messages, kept by"
               " Dovecot until it compacts the uidlist")
    dup_renumber = [line for line in renumber if line.base in files]
    if renumber:
        twice = sorted({line.uid for line in renumber})
        problem("uid-duplicate", f"{_uid_list(twice)} {_are(twice)} listed for more than one"
                " message",
                f"{fix} keeps the first line of each UID; the other messages get new UIDs"
                " above every UID used (clients see them as new mail)")
        plan.rewrite = True
        plan.drop_index = "a UID is given to another message"
    first_ids = {id(line) for line in by_uid.values()}
    unique = [line for line in kept if id(line) in first_ids]
    if any(a.uid >= b.uid for a, b in zip(unique, unique[1:])):
        problem("uid-order", f"the lines of {UIDLIST} are not in UID order",
                f"{fix} rewrites them in order (UIDs unchanged)")
        plan.rewrite = True

    # a line dropped (unreadable, or a name listed twice) may carry a UID clients saw: it
    # is never handed out again
    dropped = [int(b.split(" ", 1)[0]) for b in uidlist.bad if b.split(" ", 1)[0].isdigit()]
    used_max = max([line.uid for line in uidlist.lines] + [u for u in dropped if u <= UID_MAX]
                   + [0])
    dovecot_next = uidlist.effective_next
    index_next = index.next_uid if index.present and index.readable else 1
    if index_next > max(dovecot_next, used_max + 1):
        problem("next-uid", f"the index has handed out UIDs up to {index_next - 1}, the"
                f" uidlist's next UID is {dovecot_next}: those UIDs could be handed out again",
                f"{fix} raises the uidlist's next UID to {index_next}")
        plan.rewrite = True
    elif dovecot_next <= used_max:
        problem("next-uid", f"the uidlist's next UID {dovecot_next} is at or below UID"
                f" {used_max}, which it lists", f"{fix} raises it to {used_max + 1}")
        plan.rewrite = True
    next_uid = max(dovecot_next, used_max + 1, index_next)
    if ctx.uid_margin is not None:
        next_uid = min(next_uid + ctx.uid_margin, UID_MAX + 1)
        plan.rewrite = True
        plan.drop_index = "--uid-margin: the folder's modseq starts above the clock"

    final = [line for line in by_uid.values() if line.base in files]
    for line in dup_renumber:
        if next_uid > UID_MAX:
            problem("uid-space", f"no UID left for {line.base}", "restore it into another"
                    " folder (imsrestore -n)")
            break
        final.append(UidlistLine(next_uid, line.base, line.rest))
        plan.notes.append(("uid-duplicate", f"{line.base}: UID {line.uid} -> {next_uid}"))
        next_uid += 1
    next_uid = _rename_targets(plan, snap, place, found, final, next_uid)
    plan.lines = sorted(final, key=lambda line: line.uid)
    plan.next_uid = next_uid
    if plan.renames:
        plan.rewrite = True

    if uidlist.uidvalidity is not None and not plan.new_uidvalidity:
        stale = _index_disagreement(index, uidlist, files, ctx.restored, index_next)
        if stale:
            problem("index-stale", f"the index files disagree with the uidlist: {stale}",
                    (f"reconstruct -m {name}" if ctx.restored else fix)
                    + " removes dovecot.index* (Dovecot rebuilds them; the folder's modseq is"
                    " seeded above the clock, so QRESYNC clients resync)")
            plan.drop_index = plan.drop_index or stale
    if ctx.restored and not index.present and uidlist.uidvalidity is not None \
            and plan.drop_index is None:
        # restored without its index: Dovecot would count its modseqs from 1 again
        problem("index-missing", "no index files: Dovecot would count this folder's modseqs"
                " from 1 again, below what QRESYNC clients cached",
                f"reconstruct -m {name} seeds the modseq above the clock (Dovecot builds the"
                " index on top of it)")
        plan.drop_index = "restored without index files"
    if not index.readable:
        notice("index-unknown", f"the index files are not read: {index.why_unreadable}")
    plan.new_files = sum(1 for b in files if b not in seen_bases)
    if plan.new_files:
        notice("new-messages", f"{plan.new_files} message files without a uidlist line (new"
               " mail: Dovecot gives them UIDs at its next sync)")
    if snap.odd:
        _ownership_finding(place, snap.odd, found, fix)
    return found, plan


def _rename_targets(plan: _Plan, snap: _Snapshot, place: _Place, found: list[Finding],
                    final: list[UidlistLine], next_uid: int) -> int:
    """Second files under one base name: a new base name each, and the next UIDs."""
    if not plan.renames:
        return next_uid
    targets: list[tuple[str, str, str]] = []
    for sub, filename, _ in plan.renames:
        base, colon, info = filename.partition(":")
        head, comma, tail = base.partition(",")
        # the marker goes before ",S=..,W=..", so Dovecot still reads the sizes
        new_base = f"{head}.dup{next_uid}{comma}{tail}"
        targets.append((sub, filename, new_base + colon + info))
        if snap.uidlist is not None:
            final.append(UidlistLine(next_uid, new_base, f":{new_base}"))
        plan.notes.append(("file-duplicate", f"{sub}/{filename} renamed to {new_base}"
                           + (f", UID {next_uid}" if snap.uidlist is not None else "")))
        next_uid += 1
    plan.renames = targets
    found.append(place.finding(
        PROBLEM, "file-duplicate", f"{len(targets)} message files share a base name with"
        f" another file of the folder (first: {targets[0][0]}/{targets[0][1]})",
        f"reconstruct {place.name()} renames each second file to a"
        " base name of its own, with a new UID (never deleted: remove unwanted copies over"
        " IMAP)"))
    return next_uid


def _index_disagreement(index: IndexView, uidlist: UidlistFile,
                        files: dict[str, tuple[str, str]], restored: bool,
                        index_next: int) -> str | None:
    """Why the folder's index cannot stay, or None.  Always: another UIDVALIDITY, files of
    different instants, messages the index saw expunged whose files are back (Dovecot would
    give them new UIDs).  After a restore (``restored``): any other UID or flag difference."""
    if not index.present or not index.readable or not index.built:
        return None
    if index.conflict:
        return index.conflict
    if index.uidvalidity is not None and index.uidvalidity != uidlist.uidvalidity:
        return (f"the index has UIDVALIDITY {index.uidvalidity}, the uidlist"
                f" {uidlist.uidvalidity}")
    if index.uids is None:
        return None
    on_disk: dict[int, int] = {}
    for line in uidlist.lines:
        place = files.get(line.base)
        if place is not None and line.uid not in on_disk:       # the first line of a UID
            on_disk[line.uid] = _info_flags(place[1].partition(":")[2])[0]
    back = sorted(uid for uid in on_disk if uid < index_next and uid not in index.uids)
    if back:
        return (f"{_uid_list(back)} expunged in the index, and the files are back (Dovecot"
                " would give them new UIDs)")
    if not restored:
        return None
    gone = sorted(uid for uid in index.uids if uid not in on_disk)
    if gone:
        return f"the index holds {_uid_list(gone)}, whose files are not there"
    unknown = sorted(uid for uid in on_disk if uid not in index.uids)
    if unknown:
        return f"the index does not hold {_uid_list(unknown)}, which the uidlist lists"
    flagged = sorted(uid for uid, bits in on_disk.items()
                     if not index.uids[uid] & _DIRTY and index.uids[uid] & 0x1F != bits)
    if flagged:
        return f"the index has other flags for {_uid_list(flagged)} than the files"
    return None


def _analyse_locks(snap: _Snapshot, found: list[Finding], place: _Place, fix: str) -> None:
    for lock in snap.locks:
        if lock.stale:
            found.append(place.finding(PROBLEM, "stale-lock", f"{lock.name} {lock.description}",
                                       f"{fix} removes it (as Dovecot would)"))
        else:
            found.append(place.finding(NOTICE, "lock-held", f"{lock.name} {lock.description}"))
    for error in snap.errors:
        found.append(place.finding(PROBLEM, "unreadable", error,
                                   "not followed, not changed: remove or replace it by hand"))
    here = socket.gethostname()
    for sub, name, pid, host in snap.staged:
        where = f"{sub}/{name}" if sub else name
        if host == here and pid != os.getpid() and not process_alive(pid):
            found.append(place.finding(PROBLEM, "staged-leftover", f"{where}: left by"
                                       f" imsrestore pid {pid}, killed (not in the store)",
                                       f"{fix} removes it (a rerun of the restore brings"
                                       " its mail)"))
        else:
            state = "running" if host == here else f"of host {host!r}"
            found.append(place.finding(NOTICE, "staged-in-use", f"{where}: imsrestore pid"
                                       f" {pid} {state}: left alone"))


def _ownership_finding(place: _Place, odd: list[_Odd], found: list[Finding], fix: str) -> None:
    owners = [o for o in odd if o.owner]
    modes = [o for o in odd if o.mode is not None]
    parts = []
    if owners:
        parts.append(f"{len(owners)} not owned by the store's owner (first: {owners[0].shown})")
    if modes:
        parts.append(f"{len(modes)} with another mode than the Maildir's (first:"
                     f" {modes[0].shown})")
    found.append(place.finding(PROBLEM, "owner-mode", "; ".join(parts),
                               f"{fix} gives them the store owner and the Maildir's mode"))


# -- repairing one folder -----------------------------------------------------------------------

def _fix_structure(folder_fd: int, shown: Path, is_inbox: bool, owner: Owner) -> list[str]:
    made = []
    for sub in SUBS:
        try:
            os.close(open_subdir(folder_fd, sub, shown / sub))
        except FileNotFoundError:
            os.close(open_subdir(folder_fd, sub, shown / sub, owner))
            made.append(f"{sub}/")
    if not is_inbox:
        try:
            fd = os.open(MAILDIRFOLDER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=folder_fd)
        except FileExistsError:
            pass
        else:
            owner.apply(fd)
            os.close(fd)
            made.append(MAILDIRFOLDER)
    return made


def _fix_ownership(folder_fd: int, odd: list[_Odd], owner: Owner) -> int:
    """Owner and mode of each file found wrong, through a descriptor opened without
    following links, and only if it is still the file that was looked at."""
    fixed = 0
    for item in odd:
        fd = -1
        try:
            if item.sub and item.name:
                sub_fd = open_subdir(folder_fd, item.sub, item.sub)
                try:
                    fd = open_regular(item.name, sub_fd)
                finally:
                    os.close(sub_fd)
            elif item.sub:
                fd = open_subdir(folder_fd, item.sub, item.sub)
            elif item.name:
                fd = open_regular(item.name, folder_fd)
            else:
                fd = os.dup(folder_fd)
            if os.fstat(fd).st_ino != item.inode:
                continue
            if item.owner and os.geteuid() == 0:
                os.fchown(fd, owner.uid, owner.gid)
            if item.mode is not None:
                os.fchmod(fd, item.mode)
            fixed += 1
        except FileNotFoundError:
            continue
        finally:
            if fd >= 0:
                os.close(fd)
    return fixed


def replace_index(folder_fd: int, owner: Owner) -> str:
    """Remove the folder's index files and seed its modseq above the highest it reached and
    above the clock (``restored_modseq``), so QRESYNC clients resynchronise; Dovecot builds
    a new index on top of the seed.  Returns what was done."""
    highest = dovecot_modseq.read_highest_modseq(folder_fd)
    value = dovecot_modseq.restored_modseq(highest, time.time())
    removed: list[str] = []
    for attempt in range(2):
        removed += _remove_files(folder_fd, INDEX_FILES)
        what = f"removed {', '.join(removed)} (Dovecot rebuilds them); " if removed else ""
        try:
            dovecot_modseq.seed_modseq(folder_fd, value, owner.uid, owner.gid)
            return f"{what}modseq seeded at {value}"
        except FileExistsError:
            continue        # Dovecot opened the folder in between: once more
    return (f"{what}the modseq could not be seeded (Dovecot kept reopening the folder):"
            " QRESYNC clients may keep stale flags")


def _remove_files(dir_fd: int, names: tuple[str, ...]) -> list[str]:
    removed = []
    for name in names:
        try:
            os.unlink(name, dir_fd=dir_fd)
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed


# -- users: folders, UIDVALIDITY counter, subscriptions, quota --------------------------------

@dataclass
class _Folder:
    name: str
    dirname: str        # "" for INBOX (the Maildir root)


def list_folders(maildir_fd: int) -> tuple[list[_Folder], list[str]]:
    """INBOX, then every ``.name`` directory of the Maildir by name (folders missing cur/
    included: they are what the structure check is for); and the links refused."""
    folders = [_Folder(INBOX, "")]
    refused: list[str] = []
    others: list[_Folder] = []
    for name in os.listdir(maildir_fd):
        # a directory here is a folder whatever its name: imsrestore builds folders aside
        # in tmp/ or above the Maildir, never here (``ims-restore/123/1/host`` is a name a
        # user may give a folder over IMAP)
        if not name.startswith(".") or name in (".", ".."):
            continue
        try:
            st = os.lstat(name, dir_fd=maildir_fd)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            refused.append(name)
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue
        try:
            folder = dirname_to_folder(name)
        except ValueError:
            folder = name[1:].replace(".", "/")     # a store kept with :UTF-8
        others.append(_Folder(folder, name))
    return folders + sorted(others, key=lambda f: f.name), refused


def read_counter(maildir_fd: int) -> int | None:
    """The last UIDVALIDITY Dovecot handed out for this user: ``dovecot-uidvalidity`` (8 hex
    digits) and its ``dovecot-uidvalidity.<hex>`` markers; None when there are none."""
    values = []
    try:
        text = read_regular(COUNTER, maildir_fd, limit=64).decode("ascii", "replace")
        if len(text) == 8:
            values.append(int(text, 16))
    except (OSError, ValueError):
        pass            # absent, a link, a FIFO, a directory: as if there were none
    values += _markers(maildir_fd)
    return max(values) if values else None


def _markers(maildir_fd: int) -> list[int]:
    found = []
    for name in os.listdir(maildir_fd):
        if name.startswith(COUNTER + "."):
            try:
                found.append(int(name[len(COUNTER) + 1:], 16))
            except ValueError:
                pass
    return found


def _counter_oddity(maildir_fd: int) -> str | None:
    """What the counter's name holds when it is not a regular file; None when all is well."""
    try:
        st = os.lstat(COUNTER, dir_fd=maildir_fd)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if stat.S_ISDIR(st.st_mode):
        return "a directory"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    return None


def write_counter(maildir_fd: int, value: int, owner: Owner) -> None:
    """Set the counter as Dovecot moves it: the highest marker renamed to the new value
    (Dovecot's next folder gets value + 1), then the 8-digit file."""
    for _ in range(10):
        markers = _markers(maildir_fd)
        if not markers:
            fd = os.open(f"{COUNTER}.{value:08x}", os.O_WRONLY | os.O_CREAT | os.O_EXCL
                         | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444, dir_fd=maildir_fd)
            owner.apply(fd)
            os.close(fd)
            break
        try:
            os.rename(f"{COUNTER}.{max(markers):08x}", f"{COUNTER}.{value:08x}",
                      src_dir_fd=maildir_fd, dst_dir_fd=maildir_fd)
            break
        except FileNotFoundError:
            continue            # Dovecot moved it meanwhile: look again
    replace_file(maildir_fd, COUNTER, f"{value:08x}", owner)


class _Uidvalidities:
    """A user's UIDVALIDITYs and the way new ones are handed out: above the counter and
    every folder's, the counter moved with them (so Dovecot never hands one out again)."""

    def __init__(self, maildir_fd: int, used: dict[str, int | None], owner: Owner) -> None:
        self.fd = maildir_fd
        self.used = used
        self.owner = owner

    def allocate(self, folder: str) -> int:
        taken = {v for v in self.used.values() if v}
        start = max([read_counter(self.fd) or 0] + list(taken))
        value = start + 1 if start else int(time.time())
        while value in taken:
            value += 1
        write_counter(self.fd, value, self.owner)
        self.used[folder] = value
        return value


def quota_usage(maildir_fd: int, folders: list[_Folder],
                skip: Callable[[str], bool] = lambda name: False) -> tuple[int, int]:
    """(bytes, messages) of the user's mail as Maildir++ quota counts it: every file of
    new/ and cur/, its size from ``,S=`` in its name, else from the file."""
    total = count = 0
    for folder in folders:
        if skip(folder.name):
            continue
        for sub in ("new", "cur"):
            parts = [folder.dirname, sub] if folder.dirname else [sub]
            try:
                fd = _open_levels(maildir_fd, parts)
            except OSError:
                continue                # missing, or a link: the folder's own check names it
            try:
                with os.scandir(fd) as entries:
                    for entry in entries:
                        if entry.name.startswith("."):
                            continue
                        size = _name_size(entry.name)
                        if size is None:
                            try:
                                st = entry.stat(follow_symlinks=False)
                            except FileNotFoundError:
                                continue
                            if not stat.S_ISREG(st.st_mode):
                                continue
                            size = st.st_size
                        total += size
                        count += 1
            finally:
                os.close(fd)
    return total, count


def _open_levels(dir_fd: int, parts: list[str]) -> int:
    return open_levels(os.dup(dir_fd), parts, Path())


def _name_size(name: str) -> int | None:
    match = re.search(r",S=(\d+)(?=[,:]|$)", name.partition(":")[0])
    return int(match.group(1)) if match else None


def parse_maildirsize(text: str) -> tuple[str, int, int] | None:
    """(limits line, bytes, messages) of a ``maildirsize``; None when it cannot be read."""
    lines = text.split("\n")
    if not lines or (len(lines) == 1 and not lines[0]):
        return None
    total = count = 0
    for line in lines[1:]:
        if not line.strip():
            continue
        fields = line.split()
        try:
            total += int(fields[0])
            count += int(fields[1]) if len(fields) > 1 else 0
        except ValueError:
            return None
    return lines[0], total, count


# -- the run ------------------------------------------------------------------------------------

class Reconstruct:
    """One run over the selected users and folders: ``check`` (read only), then, with
    ``Options.repair``, ``repair`` and a second check whose problems are what remains."""

    def __init__(self, store: MaildirStore, scopes: list[UserScope], options: Options) -> None:
        self.store = store
        self.scopes = scopes
        self.options = options
        self.report = Report(options)
        self._counting = True
        # (partition, user, folder) with a problem in the first check: what a repair visits
        self._needs: set[tuple[str, str, str | None]] = set()

    def run(self) -> Report:
        started = time.monotonic()
        self.report.found = self._pass(repair=False)
        self._counting = False
        self._needs = {(f.partition, f.user, f.folder) for f in self.report.found
                       if f.level == PROBLEM}
        if self.options.repair:
            self._pass(repair=True)
            # what a repair leaves is what a check finds now (without --uid-margin, which
            # acts on every folder once)
            margin, self.options.uid_margin = self.options.uid_margin, None
            self.report.remaining = self._pass(repair=False)
            self.options.uid_margin = margin
        self.report.seconds = time.monotonic() - started
        return self.report

    # -- one pass over every user

    def _pass(self, repair: bool) -> list[Finding]:
        found: list[Finding] = []
        counting = self._counting
        for scope in self.scopes:
            if counting:
                self.report.users += 1
            found.extend(self._user(scope, repair, counting))
        return found

    def _user(self, scope: UserScope, repair: bool, counting: bool) -> list[Finding]:
        partition, user = scope.partition, scope.user
        root = self.store.partition_dirs[partition]
        maildir = self.store.maildir(partition, user)
        parts = maildir.relative_to(root).parts
        user_place = _Place(partition, user, None, maildir)
        try:
            maildir_fd = open_dir_under(root, parts)
        except FileNotFoundError:
            return []                   # gone since the names were resolved
        except OSError as exc:
            return [user_place.finding(PROBLEM, "link", _why_path(exc, maildir),
                                       "not followed: reconstruct does not check through"
                                       " links (a restore writes nothing through them either)")]
        try:
            return self._user_open(scope, maildir_fd, root, parts, user_place, repair, counting)
        finally:
            os.close(maildir_fd)

    def _user_open(self, scope: UserScope, maildir_fd: int, root: Path, parts: tuple[str, ...],
                   user_place: _Place, repair: bool, counting: bool) -> list[Finding]:
        st = os.fstat(maildir_fd)
        owner = self.options.owner or Owner(st.st_uid, st.st_gid)
        policy = _Policy(owner, st.st_mode & 0o777)
        folders, refused = list_folders(maildir_fd)
        whole_user = scope.folders is None
        found: list[Finding] = []
        for name in refused:
            found.append(user_place.finding(PROBLEM, "link", f"{name} is a symbolic link",
                                            "not followed: reconstruct does not check"
                                            " through links"))
        used = {f.name: self._folder_uidvalidity(maildir_fd, f) for f in folders}
        duplicates = _duplicate_uidvalidities(folders, used)
        counter = _Uidvalidities(maildir_fd, used, owner)
        if whole_user:
            found.extend(self._staged_beside_maildir(root, parts, user_place, repair))
        selected = [f for f in folders if self._selected(scope, f.name)]
        user_index_dropped = False
        for folder in selected:
            place = _Place(user_place.partition, user_place.user, folder.name,
                           user_place.path / folder.dirname if folder.dirname else user_place.path)
            ctx = _Context(self.options.restored, self.options.uid_margin,
                           duplicates.get(folder.name))
            if repair:
                wanted = (place.partition, place.user, folder.name) in self._needs
                if wanted or self.options.uid_margin is not None:
                    user_index_dropped |= self._repair_folder(maildir_fd, folder, place, ctx,
                                                              policy, counter)
            else:
                found.extend(self._check_folder(maildir_fd, folder, place, ctx, policy,
                                                counting))
        if whole_user:
            found.extend(self._user_files(maildir_fd, folders, used, user_place, owner, repair,
                                          user_index_dropped))
        return found

    def _selected(self, scope: UserScope, folder: str) -> bool:
        if scope.folders is None:
            return True
        return any(folder == wanted or (self.options.recursive and in_folder(folder, wanted))
                   for wanted in scope.folders)

    def _folder_uidvalidity(self, maildir_fd: int, folder: _Folder) -> int | None:
        try:
            fd = _open_levels(maildir_fd, [folder.dirname] if folder.dirname else [])
        except (OSError, UnsafePath):
            return None
        try:
            return parse_uidlist(read_regular(UIDLIST, fd)).uidvalidity
        except (OSError, UidlistUnreadable):
            return None
        finally:
            os.close(fd)

    # -- a folder

    def _open_folder(self, maildir_fd: int, folder: _Folder) -> int:
        return _open_levels(maildir_fd, [folder.dirname] if folder.dirname else [])

    def _check_folder(self, maildir_fd: int, folder: _Folder, place: _Place, ctx: _Context,
                      policy: _Policy, counting: bool) -> list[Finding]:
        try:
            fd = self._open_folder(maildir_fd, folder)
        except FileNotFoundError:
            return []
        except OSError as exc:
            return [place.finding(PROBLEM, "link", _why_path(exc, place.path),
                                  "not followed: reconstruct does not check through links")]
        try:
            found, new_files = self._analysed(fd, folder, place, ctx, policy)
            # a file missing may be an expunge in progress (Dovecot unlinks the file, then
            # writes the expunge to its index): look once more, keep what both looks found
            if any(f.kind == "file-missing" for f in found):
                time.sleep(0.05)
                again, new_files = self._analysed(fd, folder, place, ctx, policy)
                first = {f.key() for f in found}
                found = [f for f in again if f.level == NOTICE or f.key() in first]
        finally:
            os.close(fd)
        if counting:
            self.report.folders += 1
            self.report.new_messages += new_files
        return found

    def _analysed(self, fd: int, folder: _Folder, place: _Place, ctx: _Context,
                  policy: _Policy) -> tuple[list[Finding], int]:
        try:
            snap = snapshot(fd, folder.dirname == "", policy)
        except OSError as exc:
            return [place.finding(PROBLEM, "link" if isinstance(exc, UnsafePath) else
                                  "unreadable", _why_path(exc, place.path),
                                  "not followed, not changed: check the folder by hand")], 0
        found, plan = analyse(place, snap, ctx)
        return found, plan.new_files

    def _repair_folder(self, maildir_fd: int, folder: _Folder, place: _Place, ctx: _Context,
                       policy: _Policy, counter: _Uidvalidities) -> bool:
        """Repair one folder; True when its index files were removed."""
        try:
            fd = self._open_folder(maildir_fd, folder)
        except OSError:
            return False                # named by the check; nothing is done through links
        try:
            return self._repair_open(fd, folder, place, ctx, policy, counter)
        except StoreLocked as exc:
            self.report.locked.append(str(exc))
            return False
        except OSError as exc:
            self.report.actions.append(Action(str(place.path), "error",
                                              f"not repaired: {_why_path(exc, place.path)}"))
            return False
        finally:
            os.close(fd)

    def _act(self, place: _Place, kind: str, text: str) -> None:
        self.report.actions.append(Action(str(place.path), kind, text))

    def _repair_open(self, fd: int, folder: _Folder, place: _Place, ctx: _Context,
                     policy: _Policy, counter: _Uidvalidities) -> bool:
        owner = policy.owner
        is_inbox = folder.dirname == ""
        made = _fix_structure(fd, place.path, is_inbox, owner)
        if made:
            self._act(place, "structure", f"created {', '.join(made)}")
        first = snapshot(fd, is_inbox, policy)
        for lock in first.locks:
            if lock.stale and _unlink_if_same(fd, lock.name, lock.inode):
                self._act(place, "stale-lock", f"removed {lock.name} ({lock.description})")
        here = socket.gethostname()
        for sub, name, pid, host in first.staged:
            if host == here and pid != os.getpid() and not process_alive(pid):
                dir_fd = open_subdir(fd, sub, place.path / sub) if sub else os.dup(fd)
                try:
                    _remove_staged(dir_fd, name)
                except FileNotFoundError:
                    pass
                finally:
                    os.close(dir_fd)
                self._act(place, "staged-leftover",
                          f"removed {sub + '/' if sub else ''}{name} (imsrestore pid {pid})")
        dropped = False
        lock = FolderLock(anchored(fd), self.options.lock_timeout, shown=place.path)
        lock.acquire()
        try:
            snap = snapshot(fd, is_inbox, policy)
            _, plan = analyse(place, snap, ctx)
            dropped = self._apply(fd, place, snap, plan, owner, counter, folder.name)
        finally:
            lock.release()
        if snap.odd:
            fixed = _fix_ownership(fd, snap.odd, owner)
            self._act(place, "owner-mode", f"{fixed} files and directories given owner"
                      f" {owner.uid}:{owner.gid} and the Maildir's mode")
        return dropped

    def _apply(self, fd: int, place: _Place, snap: _Snapshot, plan: _Plan, owner: Owner,
               counter: _Uidvalidities, folder: str) -> bool:
        # Ctrl-C and SIGTERM wait until the folder is consistent again: an index removed
        # and not seeded, or a file renamed without its line, would outlive the run
        with held():
            return self._apply_held(fd, place, snap, plan, owner, counter, folder)

    def _apply_held(self, fd: int, place: _Place, snap: _Snapshot, plan: _Plan, owner: Owner,
                    counter: _Uidvalidities, folder: str) -> bool:
        """Carry out a plan under the folder's lock: renames, then the index, then the uidlist
        (so Dovecot never pairs the new uidlist with the old index)."""
        for sub, old, new in plan.renames:
            sub_fd = open_subdir(fd, sub, place.path / sub)
            try:
                # never over an existing file: a taken name fails and the file stays
                os.link(old, new, src_dir_fd=sub_fd, dst_dir_fd=sub_fd, follow_symlinks=False)
                os.unlink(old, dir_fd=sub_fd)
            finally:
                os.close(sub_fd)
        for kind, text in plan.notes:
            self._act(place, kind, text)
        if not plan.rewrite and plan.drop_index is None:
            return False
        uidlist = snap.uidlist or UidlistFile(["3"], plan.uidvalidity, 1, [], [])
        uidvalidity = uidlist.uidvalidity
        if plan.new_uidvalidity:
            uidvalidity = counter.allocate(folder)
            self._act(place, "uidvalidity", f"new UIDVALIDITY {uidvalidity}"
                      + (f" (was {uidlist.uidvalidity})" if uidlist.uidvalidity else "")
                      + ": clients resync this folder")
        if plan.drop_index is not None:
            self._act(place, "index", f"{replace_index(fd, owner)} ({plan.drop_index})")
        if plan.rewrite:
            text = uidlist_text(uidlist, uidvalidity, plan.next_uid, plan.lines)
            replace_file(fd, UIDLIST, text, owner)
            dropped_lines = len(uidlist.lines) + len(uidlist.bad) - len(plan.lines) + len(
                [n for n in plan.notes if n[0] == "file-duplicate"])
            self._act(place, "uidlist", f"{UIDLIST} rewritten: {len(plan.lines)} lines in UID"
                      f" order, next UID {plan.next_uid}"
                      + (f", {dropped_lines} lines dropped" if dropped_lines > 0 else "")
                      + (", UIDVALIDITY and every kept UID unchanged"
                         if not plan.new_uidvalidity else ""))
        return plan.drop_index is not None

    # -- the user's own files

    def _staged_beside_maildir(self, root: Path, parts: tuple[str, ...], place: _Place,
                               repair: bool) -> list[Finding]:
        """A killed restore of a whole INBOX builds it beside the Maildir."""
        try:
            parent_fd = open_dir_under(root, parts[:-1])
        except OSError:
            return []
        found = []
        here = socket.gethostname()
        try:
            for name in os.listdir(parent_fd):
                owner = _staged_owner(name) if name.startswith(".ims-restore.") else None
                if owner is None:
                    continue
                pid, host = owner
                shown = place.path.parent / name
                if host == here and pid != os.getpid() and not process_alive(pid):
                    if repair:
                        try:
                            _remove_staged(parent_fd, name)
                        except FileNotFoundError:
                            continue
                        self.report.actions.append(Action(str(shown), "staged-leftover",
                                                          f"removed (imsrestore pid {pid})"))
                    else:
                        found.append(Finding(PROBLEM, "staged-leftover", place.partition,
                                             place.user, None, str(shown), f"left by"
                                             f" imsrestore pid {pid}, killed",
                                             f"reconstruct {place.name()}"
                                             " removes it"))
                elif not repair:
                    found.append(Finding(NOTICE, "staged-in-use", place.partition, place.user,
                                         None, str(shown), f"imsrestore pid {pid} of {host!r}"
                                         " is running, or runs on another host: left alone"))
        finally:
            os.close(parent_fd)
        return found

    def _user_files(self, maildir_fd: int, folders: list[_Folder], used: dict[str, int | None],
                    place: _Place, owner: Owner, repair: bool, index_dropped: bool
                    ) -> list[Finding]:
        found: list[Finding] = []
        fix = f"reconstruct {place.name()}"
        # the counter Dovecot hands the next folder's UIDVALIDITY from
        counter = read_counter(maildir_fd)
        highest = max([v for v in used.values() if v] + [0])
        odd = _counter_oddity(maildir_fd)
        if odd is not None:
            # a link, a FIFO or a directory under the counter's name: named, never followed,
            # never replaced (Dovecot cannot use it either); the other users go on
            found.append(place.finding(
                PROBLEM, "uidvalidity-counter", f"{COUNTER} is {odd}; Dovecot cannot keep its"
                " UIDVALIDITY counter there", f"remove it (Dovecot writes a new one), then run"
                f" {fix}"))
        elif counter is not None and counter < highest:
            if repair:
                write_counter(maildir_fd, highest, owner)
                self._act(place, "uidvalidity-counter", f"{COUNTER} raised from"
                          f" {counter:08x} to {highest:08x}")
            else:
                found.append(place.finding(
                    PROBLEM, "uidvalidity-counter", f"{COUNTER} is at {counter} but a folder"
                    f" has UIDVALIDITY {highest}: Dovecot could give a new folder the"
                    " UIDVALIDITY of an existing one", f"{fix} raises it to {highest}"))
        # the mailbox list index caches every folder's status: it goes with a folder index
        if repair and index_dropped:
            removed = _remove_files(maildir_fd, LIST_INDEX_FILES)
            if removed:
                self._act(place, "index", f"removed {', '.join(removed)} (the mailbox"
                          " list index; Dovecot rebuilds it)")
        found.extend(self._subscriptions(maildir_fd, folders, place))
        found.extend(self._quota(maildir_fd, folders, place, owner, repair, fix))
        return found

    def _subscriptions(self, maildir_fd: int, folders: list[_Folder],
                       place: _Place) -> list[Finding]:
        try:
            text = read_regular(SUBSCRIPTIONS, maildir_fd, limit=64 << 20).decode(
                "utf-8", "surrogateescape")
        except FileNotFoundError:
            return []
        except OSError as exc:
            return [place.finding(PROBLEM, "unreadable", f"{SUBSCRIPTIONS}: {_why(exc)}",
                                  "not followed, not changed: replace it by a regular file")]
        names = {f.name for f in folders}
        absent = [n for n in parse_subscriptions(text)
                  if n not in names and not any(in_folder(f, n) for f in names)]
        if not absent:
            return []
        # RFC 3501 6.3.6: a server must not drop a subscription because its mailbox is gone
        return [place.finding(NOTICE, "subscription-missing-folder",
                              f"subscribed to {len(absent)} folders that do not exist"
                              f" ({', '.join(absent[:5])})",
                              "left as they are (IMAP keeps them); unsubscribe over IMAP, or"
                              " restore the folders")]

    def _quota(self, maildir_fd: int, folders: list[_Folder], place: _Place, owner: Owner,
               repair: bool, fix: str) -> list[Finding]:
        try:
            text = read_regular(QUOTA_FILE, maildir_fd, limit=1 << 20).decode("utf-8", "replace")
        except FileNotFoundError:
            return []
        except OSError as exc:
            return [place.finding(PROBLEM, "unreadable", f"{QUOTA_FILE}: {_why(exc)}",
                                  "not followed, not changed: remove it by hand (Dovecot"
                                  " recalculates it)")]
        parsed = parse_maildirsize(text)
        actual = quota_usage(maildir_fd, folders)
        # a quota configuration may leave Trash out: that count matches too
        without_trash = quota_usage(maildir_fd, folders, lambda n: in_folder(n, "Trash"))
        if parsed is not None and (parsed[1], parsed[2]) in (actual, without_trash):
            return []
        if not repair:
            said = "cannot be read" if parsed is None else \
                f"says {parsed[1]} bytes in {parsed[2]} messages"
            return [place.finding(PROBLEM, "quota", f"{QUOTA_FILE} {said}; the mail is"
                                  f" {actual[0]} bytes in {actual[1]} messages",
                                  f"{fix} recounts it (keeping its limits line)")]
        limits = parsed[0] if parsed is not None else text.split("\n", 1)[0]
        with FolderLock(anchored(maildir_fd), self.options.lock_timeout, name=QUOTA_LOCK,
                        shown=place.path):
            replace_file(maildir_fd, QUOTA_FILE, f"{limits}\n{actual[0]} {actual[1]}\n", owner)
        self._act(place, "quota", f"{QUOTA_FILE} recounted: {actual[0]} bytes in {actual[1]}"
                  " messages (run 'doveadm quota recalc' if Dovecot's quota rules leave"
                  " folders out)")
        return []


def _duplicate_uidvalidities(folders: list[_Folder], used: dict[str, int | None]
                             ) -> dict[str, str]:
    """Folder -> the earlier folder (INBOX first, then by name) with its UIDVALIDITY."""
    first: dict[int, str] = {}
    later: dict[str, str] = {}
    for folder in folders:
        value = used.get(folder.name)
        if not value:
            continue
        if value in first:
            later[folder.name] = first[value]
        else:
            first[value] = folder.name
    return later


def _why_path(exc: OSError, path: Path) -> str:
    if isinstance(exc, UnsafePath):
        return str(exc)
    return f"{path}: {_why(exc)}"


def configured_owner(config: Config) -> Owner | None:
    uid, gid = config.msg.get("local.store.uid"), config.msg.get("local.store.gid")
    if uid and gid and uid.isdigit() and gid.isdigit():
        return Owner(int(uid), int(gid))
    return None


def reconstruct(config: Config, names: list[str], options: Options,
                folder_encoding: str = "UTF-8") -> Report:
    """Resolve the names (all of them, before anything is read) and run."""
    store = open_store(config)          # ConfigError for a bad layout
    scope = resolve(names, config, store, folder_encoding)
    if options.owner is None:
        options.owner = configured_owner(config)
    return Reconstruct(store, scope.users, options).run()


def iter_lines(report: Report) -> Iterator[str]:
    """The report as text lines: actions, then problems, then notices."""
    for action in report.actions:
        yield f"repaired  {action.path}  {action.kind}: {action.text}"
    for finding in report.problems():
        yield f"problem   {finding.path}  {finding.kind}: {finding.detail}; {finding.advice}"
    for finding in report.notices():
        yield f"notice    {finding.path}  {finding.kind}: {finding.detail}" + (
            f"; {finding.advice}" if finding.advice else "")
