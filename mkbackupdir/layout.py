"""The placeholder tree's naming, both ways.

``<backupdir>/<server>/<group>/<user>/<mailbox placeholder>``; with ``-u`` the user itself is
a zero-length file ``<backupdir>/<server>/<group>/<user>``.

A mailbox ``A/B/C`` is the zero-length file ``A.d/B.d/C``: every hierarchy level above the
leaf is a directory named after the level plus ``.d``.  Maildir++ forbids ``.`` in folder
names, so a directory ending in ``.d`` can only be a hierarchy level, and a folder that both
holds mail and has subfolders is the file ``A`` beside the directory ``A.d``.  Names are
UTF-8; ``%``, control characters and a leading ``.`` are written ``%XX``, so every folder
name maps to a file name and back.  Sun's tree put the partition where this one puts the
server (``/backup/primary/groupA/amy``): ``parse`` accepts both forms.
"""

from __future__ import annotations

from dataclasses import dataclass

LEVEL_SUFFIX = ".d"
NSR_FILE = ".nsr"


def encode_level(level: str) -> str:
    out = []
    for index, ch in enumerate(level):
        if ch == "%" or ord(ch) < 0x20 or ord(ch) == 0x7F or (index == 0 and ch == "."):
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8")))
        else:
            out.append(ch)
    return "".join(out)


def decode_level(name: str) -> str:
    raw = bytearray()
    i = 0
    encoded = name.encode("utf-8")
    while i < len(encoded):
        if encoded[i:i + 1] == b"%" and i + 2 < len(encoded) + 0 and _is_hex(encoded[i + 1:i + 3]):
            raw.append(int(encoded[i + 1:i + 3], 16))
            i += 3
        else:
            raw.append(encoded[i])
            i += 1
    return raw.decode("utf-8")


def _is_hex(chunk: bytes) -> bool:
    return len(chunk) == 2 and all(c in b"0123456789ABCDEFabcdef" for c in chunk)


def folder_to_parts(folder: str) -> list[str]:
    """``A/B/C`` -> ``["A.d", "B.d", "C"]`` (path components below the user directory)."""
    levels = folder.split("/")
    return [encode_level(level) + LEVEL_SUFFIX for level in levels[:-1]] + [encode_level(levels[-1])]


def parts_to_folder(parts: list[str]) -> str:
    """The inverse of ``folder_to_parts``; raises ValueError for a path that is not one."""
    if not parts:
        raise ValueError("no folder")
    levels = []
    for part in parts[:-1]:
        if not part.endswith(LEVEL_SUFFIX):
            raise ValueError(f"{part!r} is not a folder level directory (*{LEVEL_SUFFIX})")
        levels.append(decode_level(part[:-len(LEVEL_SUFFIX)]))
    levels.append(decode_level(parts[-1]))
    return "/".join(levels)


@dataclass(frozen=True)
class Placeholder:
    """What a path under the backup directory stands for."""

    top: str                 # the server name, or (Sun's form) a partition name
    group: str | None = None
    user: str | None = None
    folder: str | None = None
    folder_prefix: bool = False   # a .d directory: the folder and everything under it

    def logical_name(self, partition: str) -> str:
        parts = [partition]
        if self.group:
            parts.append(self.group)
        if self.user:
            parts.append(self.user)
        if self.folder:
            parts.append(self.folder)
        return "/" + "/".join(parts)


def parse(relative: list[str]) -> Placeholder:
    """Components of a path relative to the backup directory -> ``Placeholder``."""
    parts = [p for p in relative if p not in ("", ".")]
    if not parts:
        raise ValueError("the backup directory itself names no server")
    if any(p == ".." for p in parts):
        raise ValueError("'..' in a placeholder path")
    if parts[-1] == NSR_FILE:
        raise ValueError(f"{NSR_FILE} is a directive file, not a placeholder")
    top = parts[0]
    group = parts[1] if len(parts) > 1 else None
    user = parts[2] if len(parts) > 2 else None
    folder = None
    prefix = False
    if len(parts) > 3:
        levels = parts[3:]
        if levels[-1].endswith(LEVEL_SUFFIX):
            prefix = True
            levels = levels[:-1] + [levels[-1][:-len(LEVEL_SUFFIX)]]
            folder = parts_to_folder([*(lvl for lvl in levels[:-1]), levels[-1]])
        else:
            folder = parts_to_folder(levels)
    return Placeholder(top, group, user, folder, prefix)
