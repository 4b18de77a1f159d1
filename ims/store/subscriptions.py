"""Dovecot's per-user ``subscriptions`` file (Maildir driver part): read at backup, merged
at restore, in either of the two formats Dovecot reads.

* **V2**: the file starts with exactly ``V\\t2\\n\\n``; then one name a line, its levels
  separated by TAB, each level in IMAP modified UTF-7 (with Dovecot's tab-escapes:
  ``\\x01`` followed by ``1 t r n 0``).
* **Old** (anything else, including ``V\\t2`` without the empty line, or ``V\\t3``): one
  name a line in the store's own form, levels separated by the hierarchy separator (``.``
  for Maildir++, so ``Archive.2025`` is ``Archive/2025``), in modified UTF-7.

Both are read the way Dovecot 2.3 reads them (checked against a running Dovecot): a line is
turned into the store's name (TABs -> separator, so a ``.`` inside a V2 level also separates
levels), then decoded from modified UTF-7 as a whole; a name that is not valid modified
UTF-7 is kept as it is, as Dovecot keeps it.  Ignored, as Dovecot ignores them: empty lines,
lines that are not UTF-8, old-format names holding ``/`` (Dovecot drops them as invalid), and
a last line without its newline.  A trailing CR is dropped.  ``inbox`` in any case, as the
first level, is ``INBOX``.

Writing keeps the file's format, as Dovecot does on SUBSCRIBE: names are appended in the
format the file has (V2 for a file that does not exist; old for an existing empty file, which
Dovecot reads and extends as old), existing lines are kept as they are.  The file is
rewritten through a temporary file and a rename, under Dovecot's ``subscriptions.lock``
dotlock so that a client's concurrent SUBSCRIBE is not lost.

Failures: ``parse_subscriptions`` never raises.  ``read_subscriptions`` and
``merge_subscriptions`` raise ``OSError`` when the file cannot be read or written; a
``subscriptions`` that is a symbolic link is never read through (``OSError`` ELOOP).
``merge_subscriptions`` raises ``ims.errors.StoreLocked`` when Dovecot's lock is held past
the timeout.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ims.store import mutf7
from ims.store.files import read_regular
from ims.store.lock import DEFAULT_TIMEOUT, FolderLock

if TYPE_CHECKING:
    from ims.store.maildir_write import Owner

FILE_NAME = "subscriptions"
LOCK_NAME = "subscriptions.lock"
V2_HEADER = "V\t2\n\n"
INBOX = "INBOX"

_TAB_UNESCAPES = {"1": "\x01", "t": "\t", "r": "\r", "n": "\n", "0": "\0"}


def parse_subscriptions(text: str, separator: str = ".") -> list[str]:
    """Folder names (Unicode, ``/`` between levels, ``INBOX``) from either format, in file
    order without repeats.  ``text`` may carry undecodable bytes as surrogate escapes
    (``errors="surrogateescape"``): such lines are dropped, as Dovecot drops them."""
    v2 = text.startswith(V2_HEADER)
    body = text[len(V2_HEADER):] if v2 else text
    # the part after the last newline is an unfinished line: Dovecot does not list it
    lines = body.split("\n")[:-1]
    names: list[str] = []
    seen: set[str] = set()
    for line in lines:
        name = _line_to_name(line.removesuffix("\r"), v2, separator)
        if name is not None and name not in seen:
            seen.add(name)
            names.append(name)
    return names


def _line_to_name(line: str, v2: bool, separator: str) -> str | None:
    if not line:
        return None
    if v2:
        storage = separator.join(_tab_unescape(part) for part in line.split("\t"))
    else:
        if separator != "/" and "/" in line:
            return None     # not a valid Maildir++ name: Dovecot removes the line
        storage = line
    # Dovecot's order: separator -> "/" first, then modified UTF-7 over the whole name
    raw = "/".join(storage.split(separator))
    try:
        name = mutf7.decode(raw)
    except ValueError:
        name = raw
    if not _is_utf8(name):
        return None         # not UTF-8 on disk: Dovecot ignores (and drops) it
    return _inbox_upper(name)


def _inbox_upper(name: str) -> str:
    """``inbox`` as the first level, in any ASCII case, is the INBOX (Dovecot's rule)."""
    first, slash, rest = name.partition("/")
    if first.isascii() and first.lower() == "inbox":
        return INBOX + slash + rest
    return name


def _tab_unescape(part: str) -> str:
    if "\x01" not in part:
        return part
    out: list[str] = []
    i = 0
    while i < len(part):
        if part[i] == "\x01" and i + 1 < len(part):
            out.append(_TAB_UNESCAPES.get(part[i + 1], part[i + 1]))
            i += 2
        else:
            out.append(part[i])
            i += 1
    return "".join(out)


def encode_name(name: str, v2: bool, separator: str = ".") -> str | None:
    """A folder name as a line of the file; None if the format cannot hold it (an empty
    level, or a level holding the separator, which would read back as two levels)."""
    levels = name.split("/")
    if not all(levels) or any(separator in level for level in levels):
        return None
    encoded = [mutf7.encode(level) for level in levels]
    return "\t".join(encoded) if v2 else separator.join(encoded)


def _read(path: Path) -> str | None:
    """The file's text (undecodable bytes as surrogate escapes), None if there is none.
    O_NOFOLLOW: root must not read whatever a planted symlink points to."""
    try:
        return read_regular(path, limit=64 << 20).decode("utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return None


def read_subscriptions(maildir: Path, separator: str = ".") -> list[str]:
    """The user's subscribed folder names; [] when the Maildir has no ``subscriptions``."""
    text = _read(maildir / FILE_NAME)
    return [] if text is None else parse_subscriptions(text, separator)


def merge_subscriptions(maildir: Path, names: list[str], owner: Owner, *,
                        separator: str = ".", lock_timeout: float = DEFAULT_TIMEOUT,
                        sync: bool = False, shown: Path | None = None) -> None:
    """Add the names not yet in ``<maildir>/subscriptions``, keeping the file's format and
    its lines; nothing is written when every name is there already.  Names the format
    cannot hold are left out."""
    # imported here: maildir_write imports ims.store.maildir, which imports this module
    from ims.store.maildir_write import replace_file

    with FolderLock(maildir, lock_timeout, name=LOCK_NAME, shown=shown):
        text = _read(maildir / FILE_NAME)
        v2 = text is None or text.startswith(V2_HEADER)
        present = set(parse_subscriptions(text or "", separator))
        added: list[str] = []
        for name in map(_inbox_upper, names):
            line = encode_name(name, v2, separator)
            if line is not None and name not in present:
                present.add(name)
                added.append(line)
        if not added:
            return
        if text is None:
            kept = V2_HEADER
        else:
            # as Dovecot does when it rewrites: the unfinished last line and lines that are
            # not UTF-8 go (Dovecot never listed them); every other line stays as it was
            header = V2_HEADER if v2 else ""
            lines = text[len(header):].split("\n")[:-1]
            kept = header + "".join(line + "\n" for line in lines if _is_utf8(line))
        dir_fd = os.open(maildir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            replace_file(dir_fd, FILE_NAME, kept + "".join(line + "\n" for line in added),
                         owner, sync)
        finally:
            os.close(dir_fd)


def _is_utf8(line: str) -> bool:
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
