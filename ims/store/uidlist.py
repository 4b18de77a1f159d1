"""Dovecot's ``dovecot-uidlist`` (version 3) and the ``next_uid`` in ``dovecot.index``.

The uidlist may be read without Dovecot's lock: Dovecot only appends whole lines or replaces
the file by rename.  A last line without a newline is an append in progress and is ignored.

Parsing never raises on a damaged line: the line is skipped and counted in
``Uidlist.bad_lines`` (the message then looks like one without a UID, so it is still backed
up).  A header that is not version 3 makes the whole file unusable (``UidlistError``).
"""

from __future__ import annotations

import os
import struct

from ims.store.files import open_regular, read_regular
from dataclasses import dataclass, field


class UidlistError(ValueError):
    pass


@dataclass
class Uidlist:
    uidvalidity: int | None = None
    next_uid: int = 1
    guid: str | None = None
    uids: dict[str, int] = field(default_factory=dict)  # maildir base name -> UID
    last_uid: int = 0
    bad_lines: int = 0

    @property
    def effective_next_uid(self) -> int:
        """The stale-N rule: Dovecot's header N lags; the last line's UID + 1 may be higher."""
        return max(self.next_uid, self.last_uid + 1)


def parse(data: bytes) -> Uidlist:
    text = data.decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    # The element after the last "\n" is either "" or an append still being written.
    lines.pop()
    if not lines:
        raise UidlistError("empty dovecot-uidlist")
    result = Uidlist()
    header = lines[0].split()
    if not header or header[0] != "3":
        raise UidlistError(f"unsupported dovecot-uidlist version {lines[0][:20]!r}")
    for item in header[1:]:
        key, value = item[:1], item[1:]
        try:
            if key == "V":
                result.uidvalidity = int(value)
            elif key == "N":
                result.next_uid = int(value)
        except ValueError:
            raise UidlistError(f"bad dovecot-uidlist header field {item!r}") from None
        if key == "G":
            result.guid = value
    uids = result.uids
    last = 0
    for line in lines[1:]:
        line = line.rstrip("\r")
        space = line.find(" ")
        # "<uid> [extension fields] :<file name>", the name possibly a whole file name
        # ("<base>:2,<flags>"): the base is what names the message
        marker = line.find(" :", max(space - 1, 0))
        base = line[marker + 2:].partition(":")[0] if marker >= 0 else ""
        if space <= 0 or not base:
            result.bad_lines += 1
            continue
        try:
            uid = int(line[:space])
        except ValueError:
            result.bad_lines += 1
            continue
        uids[base] = uid
        if uid > last:
            last = uid
    result.last_uid = last
    return result


def read(folder_fd: int) -> Uidlist | None:
    """The folder's uidlist, or None when Dovecot has not written one yet."""
    try:
        data = read_regular("dovecot-uidlist", folder_fd)
    except FileNotFoundError:
        return None
    return parse(data)


# struct mail_index_header (Dovecot 2.x src/lib-index/mail-index.h): major_version u8,
# minor_version u8, base_header_size u16, header_size u32, record_size u32,
# compat_flags u8 (bit 0: little endian), unused[3], indexid u32, flags u32,
# uid_validity u32, next_uid u32, ...
_INDEX_MAJOR = 7
_INDEX_HEADER_SIZE = 32


def index_next_uid(folder_fd: int) -> int | None:
    """``next_uid`` from the header of ``dovecot.index``, or None when absent or unknown."""
    try:
        fd = open_regular("dovecot.index", folder_fd)
    except OSError:
        return None
    try:
        head = os.read(fd, _INDEX_HEADER_SIZE)
    finally:
        os.close(fd)
    if len(head) < _INDEX_HEADER_SIZE or head[0] != _INDEX_MAJOR:
        return None
    fmt = "<" if head[12] & 1 else ">"
    (next_uid,) = struct.unpack_from(fmt + "I", head, 28)
    return next_uid
