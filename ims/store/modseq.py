"""A folder's CONDSTORE/QRESYNC modification sequence: read it at backup, seed it at restore.

Why: a client that cached a folder (QRESYNC) resynchronises by sending the HIGHESTMODSEQ it
last saw; the server answers with the flags changed and the UIDs expunged *since* that value.
A folder restored whole has no Dovecot index, so Dovecot starts counting modseqs again from
1 and answers a client that cached, say, 42 with "nothing changed": the client keeps wrong
flags and never learns of expunged mail.  Dovecot compares modseqs only, so the restored
folder must start *above* anything a client may have cached.

Method: Dovecot keeps the modseq in its transaction log, ``dovecot.index.log``.  The log's
header holds ``initial_modseq`` (the folder's highest modseq when this log file was
started), and some records raise it (appends, flag, keyword and attribute changes, expunges:
+1 each; a modseq-update record sets it).  ``dovecot.index``, when it exists, holds a
``modseq`` extension header with the highest modseq when the index was last written.
Dovecot creates a log only when it has none, and a new folder with no ``dovecot.index``
takes its index ID and its starting modseq from an existing log.

* ``read_highest_modseq`` reads the log (and the index's modseq header, if there is an
  index) and returns an *upper bound* of what Dovecot would report: it starts from the
  larger of the two headers and counts +1 for every record that is not of a type known not
  to raise the modseq, taking the maximum of modseq-update records.  Over-estimating is
  safe (the restored folder just starts higher); under-estimating is not.
* ``seed_modseq`` writes a log holding only a header with ``initial_modseq`` set into a
  folder that has no index files and that Dovecot has not opened yet.  When Dovecot first
  opens the folder it builds its index on top of that log, so every message gets a modseq
  above the seed, and a client's ``SELECT ... (QRESYNC (v m uids))`` with an older ``m``
  gets every message's flags and ``VANISHED (EARLIER)`` for the UIDs that are gone.
* ``restored_modseq`` is the margin rule: ``max(recorded + 1, restore time in ms + 1)``.

The header layout (``struct mail_transaction_log_header``, format 1.3) is the same in
Dovecot 2.3 and 2.4; both write it in the host's byte order with a compat flag saying which.

Failure behaviour: ``read_highest_modseq`` never raises for a missing, unreadable, truncated
or garbage file, or a symlink in place of one (it returns None when no bound can be had);
``seed_modseq`` raises ``FileExistsError`` when the folder already has a log (Dovecot has
opened it: seeding now would corrupt its modseq tracking, so the caller must not go on as
if seeded) and ``OSError`` for other failures, leaving no partial log behind.
"""

from __future__ import annotations

import os
import struct
import sys
import time
from pathlib import Path

from ims.store.lock import hostname

LOG_NAME = "dovecot.index.log"
INDEX_NAME = "dovecot.index"

# struct mail_transaction_log_header: major u8, minor u8, hdr_size u16, indexid u32,
# file_seq u32, prev_file_seq u32, prev_file_offset u32, create_stamp u32,
# initial_modseq u64, compat_flags u8, unused[3], unused2 u32  (40 bytes, host order).
_LOG_MAJOR = 1
_LOG_MINOR = 3                  # what Dovecot 2.3 and 2.4 write
_LOG_HEADER = "BBHIIIIIQB3xI"
_LOG_HEADER_SIZE = 40
_LOG_HEADER_MIN = 24            # Dovecot refuses smaller; fields past hdr_size read as 0
_COMPAT_LITTLE_ENDIAN = 0x01

# Record types (mail-transaction-log.h) that never raise the modseq.  Any other type,
# including one a later Dovecot may add, is counted as +1: an over-estimate is safe.
_TYPE_MASK = 0x0FFFFFFF
_MODSEQ_UPDATE = 0x00008000
_NO_MODSEQ_CHANGE = frozenset((
    0x00000020,   # HEADER_UPDATE
    0x00000040,   # EXT_INTRO (starts modseq tracking in old logs: covered by starting at 1)
    0x00000080,   # EXT_RESET
    0x00000100,   # EXT_HDR_UPDATE
    0x00000200,   # EXT_REC_UPDATE
    0x00001000,   # EXT_ATOMIC_INC
    0x00004000,   # UID_UPDATE (old versions)
    0x00010000,   # EXT_HDR_UPDATE32
    0x00020000,   # INDEX_DELETED
    0x00040000,   # INDEX_UNDELETED
    0x00080000,   # BOUNDARY
))

# struct mail_index_header: major u8 (7), minor u8, base_header_size u16, header_size u32,
# record_size u32, compat_flags u8 ...; extension headers follow at the 8-aligned
# base_header_size: struct mail_index_ext_header {hdr_size u32, reset_id u32,
# record_offset u16, record_size u16, record_align u16, name_size u16}, the name, and the
# data from the next 8-aligned offset.  The "modseq" data starts with highest_modseq u64.
_INDEX_MAJOR = 7
_INDEX_EXT_HEADER_SIZE = 16
_INDEX_HEADER_MAX = 1 << 20     # a real header is a few hundred bytes

_CHUNK = 1 << 20
_MAX_MODSEQ = (1 << 63) - 1     # IMAP mod-sequence-value is 63-bit
PLAUSIBLE_MODSEQ = 1 << 53      # above any real count of changes or restore-time seed


def _align8(value: int) -> int:
    return (value + 7) & ~7


def _open_nofollow(name: str, dir_fd: int | None) -> int | None:
    try:
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                       dir_fd=dir_fd)
    except OSError:   # absent, a symlink (ELOOP), unreadable: no bound from this file
        return None


def _pread_full(fd: int, size: int, offset: int) -> bytes:
    parts: list[bytes] = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        parts.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


def _offset_to_uint32(raw: bytes | memoryview, at: int) -> int:
    """A record's size: Dovecot stores it in 4 bytes of 7 bits each, most significant byte
    first whatever the host's byte order, each byte with its high bit set
    (``mail_index_offset_to_uint32``); 0 for a record still being written, or garbage."""
    b0, b1, b2, b3 = raw[at], raw[at + 1], raw[at + 2], raw[at + 3]
    if not b0 & b1 & b2 & b3 & 0x80:
        return 0
    return ((b3 & 0x7F) << 2) | ((b2 & 0x7F) << 9) | ((b1 & 0x7F) << 16) | ((b0 & 0x7F) << 23)


def _index_modseq(fd: int) -> int | None:
    """``highest_modseq`` of the ``modseq`` extension in ``dovecot.index``'s header."""
    head = _pread_full(fd, 16, 0)
    if len(head) < 16 or head[0] != _INDEX_MAJOR:
        return None
    order = "<" if head[12] & _COMPAT_LITTLE_ENDIAN else ">"
    base_size, header_size = struct.unpack_from(order + "HI", head, 2)
    if not 16 <= base_size <= header_size <= _INDEX_HEADER_MAX:
        return None
    header = _pread_full(fd, header_size, 0)
    if len(header) < header_size:
        return None
    offset = _align8(base_size)
    while offset + _INDEX_EXT_HEADER_SIZE <= header_size:
        hdr_size, _reset, _roff, _rsize, _ralign, name_size = struct.unpack_from(
            order + "IIHHHH", header, offset)
        name_start = offset + _INDEX_EXT_HEADER_SIZE
        data = _align8(name_start + name_size)
        end = data + _align8(hdr_size)
        if name_start + name_size > header_size or end > header_size:
            return None
        if header[name_start:name_start + name_size] == b"modseq":
            if hdr_size < 8:
                return None
            (modseq,) = struct.unpack_from(order + "Q", header, data)
            return modseq
        offset = end
    return None


def _log_bound(fd: int, start: int) -> int | None:
    """Upper bound of the modseq at the end of the log: ``max(initial_modseq, start, 1)``
    plus one per record that may raise it, raised to any modseq-update value."""
    head = _pread_full(fd, _LOG_HEADER_SIZE, 0)
    if len(head) < _LOG_HEADER_MIN or head[0] != _LOG_MAJOR:
        return None
    # Format 1.2+ says its byte order; older files are in the host's (Dovecot's own rule).
    if head[1] >= 2 and len(head) > 32:
        order = "<" if head[32] & _COMPAT_LITTLE_ENDIAN else ">"
    else:
        order = "<" if sys.byteorder == "little" else ">"
    hdr_size, indexid = struct.unpack_from(order + "HI", head, 2)
    if hdr_size < _LOG_HEADER_MIN or indexid == 0:    # indexid 0: Dovecot marked it corrupt
        return None
    initial = struct.unpack_from(order + "Q", head, 24)[0] if hdr_size >= 32 else 0
    modseq = max(initial, start, 1)
    kind_of = struct.Struct(order + "I")
    update = struct.Struct(order + "III")
    offset = hdr_size
    buffer = b""
    buffer_start = offset
    while True:
        at = offset - buffer_start
        if at + 8 > len(buffer):
            buffer = _pread_full(fd, _CHUNK, offset)
            buffer_start, at = offset, 0
            if len(buffer) < 8:
                break                          # end of the log (or a torn header)
        size = _offset_to_uint32(buffer, at)
        (kind,) = kind_of.unpack_from(buffer, at + 4)
        if size < 8:
            break                              # a record being written, or garbage: stop
        kind &= _TYPE_MASK
        if kind == _MODSEQ_UPDATE:
            if at + size > len(buffer):
                buffer = _pread_full(fd, max(size, _CHUNK), offset)
                buffer_start, at = offset, 0
                if len(buffer) < size:
                    break                      # not written completely yet
            for pos in range(at + 8, at + size - 11, 12):
                _uid, low, high = update.unpack_from(buffer, pos)
                modseq = max(modseq, (high << 32) | low)
        if kind not in _NO_MODSEQ_CHANGE:
            modseq += 1
        offset += size
    return modseq


def read_highest_modseq(folder: int | str | os.PathLike[str]) -> int | None:
    """An upper bound of the HIGHESTMODSEQ Dovecot reports for the folder (a directory fd or
    path), from its ``dovecot.index.log`` and ``dovecot.index``; None when Dovecot has never
    indexed it or its files cannot be read.  No process; never raises.  Cost: two opens and
    a walk over the log's record headers, which Dovecot rotates by 1 MiB at the latest
    (measured: about 30 ms for a full 1 MiB log, well under 1 ms for a typical one)."""
    own_fd = None
    try:
        if isinstance(folder, int):
            dir_fd = folder
        else:
            dir_fd = own_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        index_value: int | None = None
        fd = _open_nofollow(INDEX_NAME, dir_fd)
        if fd is not None:
            try:
                index_value = _index_modseq(fd)
            except (OSError, struct.error):
                index_value = None
            finally:
                os.close(fd)
        log_value: int | None = None
        fd = _open_nofollow(LOG_NAME, dir_fd)
        if fd is not None:
            try:
                log_value = _log_bound(fd, index_value or 0)
            except (OSError, struct.error):
                log_value = None
            finally:
                os.close(fd)
        # With a log, its bound already started from the index's value.  Without one (or a
        # corrupt one), Dovecot starts a new log at the index's value.
        result = log_value if log_value is not None else index_value
        return None if result is None else min(result, _MAX_MODSEQ)
    finally:
        if own_fd is not None:
            os.close(own_fd)


def restored_modseq(recorded: int | None, now: float) -> int:
    """The modseq a folder restored whole starts at: ``max(recorded + 1, ms(now) + 1)``.

    ``recorded`` (the bound read at backup) covers what clients saw up to the backup; the
    time term covers what they saw after it.  Dovecot raises a folder's modseq by one per
    change, starting from 1, so a folder never restored has a modseq far below the number
    of milliseconds since 1970 (1.7e12 in 2024), and a folder seeded at restore time T
    stays below ms(t) at every later time t as long as it gets fewer than 1000 changes a
    second on average: a second restore of the same backup, later, starts above whatever
    the first one's clients saw.  The value stays below 2**53 (exact as a JavaScript
    number) until the year 2255.  A recorded value of ``PLAUSIBLE_MODSEQ`` (2**53) or more
    cannot come from counting changes or from this rule: it is taken for a damaged file and
    ignored, so that garbage cannot push the folder to the 63-bit end of the modseq range
    (where it could not grow any more).  Limits: a clock set back between two restores of the
    same folder, or a folder changed more than 1000 times a second on average since its
    last restore, can leave the new value at or below a cached one.
    """
    floor = int(now * 1000) + 1
    if recorded is not None and floor <= recorded < PLAUSIBLE_MODSEQ:
        return recorded + 1
    return floor


def seed_modseq(folder_dir: Path | str | int, modseq: int, uid: int, gid: int,
                *, unseen: bool = False) -> None:
    """Make a folder that has no index files yet, and that Dovecot has not opened, start at
    ``modseq`` when Dovecot first opens it: write a ``dovecot.index.log`` holding only a
    header with that ``initial_modseq``.  ``folder_dir`` is a path or a directory fd.

    The log is written complete under a temporary name and then hard-linked to its name, so
    Dovecot never sees a partial header, and an existing log is never replaced
    (``FileExistsError``).  Files are created with O_EXCL|O_NOFOLLOW, mode 0600, owned
    uid:gid when running as root.  ``unseen``: the folder is still being built aside where
    Dovecot cannot see it, so the log is written under its own name directly.
    """
    if not 1 <= modseq <= _MAX_MODSEQ:
        raise ValueError(f"modseq {modseq} out of range")
    own_fd = None
    if isinstance(folder_dir, int):
        dir_fd = folder_dir
    else:
        dir_fd = own_fd = os.open(folder_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        now = int(time.time())
        # indexid: any non-zero value; Dovecot uses its start time and adopts the log's
        # when it creates the index.  file_seq 1 and prev 0/0: a first log, no predecessor.
        header = struct.pack(
            "=" + _LOG_HEADER, _LOG_MAJOR, _LOG_MINOR, _LOG_HEADER_SIZE,
            (now & 0xFFFFFFFF) or 1, 1, 0, 0, now & 0xFFFFFFFF, modseq,
            _COMPAT_LITTLE_ENDIAN if sys.byteorder == "little" else 0, 0)
        # Not a dot name (in the Maildir root that would look like a folder to a lister);
        # the restore's stale-file cleaner knows ims-restore.<pid>.* of dead processes.
        temp = LOG_NAME if unseen else \
            f"ims-restore.{os.getpid()}.modseq-seed.{hostname()}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dir_fd)
        try:
            try:
                if os.write(fd, header) != len(header):
                    raise OSError(f"short write of {temp}")
                if os.geteuid() == 0:
                    os.fchown(fd, uid, gid)
                os.fchmod(fd, 0o600)     # whatever the umask
            finally:
                os.close(fd)
        except BaseException:
            os.unlink(temp, dir_fd=dir_fd)
            raise
        if not unseen:
            try:
                os.link(temp, LOG_NAME, src_dir_fd=dir_fd, dst_dir_fd=dir_fd,
                        follow_symlinks=False)
            finally:
                os.unlink(temp, dir_fd=dir_fd)
    finally:
        if own_fd is not None:
            os.close(own_fd)
