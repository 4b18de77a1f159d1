"""What to restore: logical names as patterns over what an archive recorded, and user maps.

Failure behaviour: ``UsageError`` (exit 2) for a name that cannot be decoded or a map file
that cannot be read or has a bad line (named ``file:line``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ims.archive.records import valid_user
from ims.config import EVERYONE_GROUPS
from ims.errors import UsageError
from ims.names import in_folder, normalize_folder
from ims.store import mutf7


@dataclass(frozen=True)
class Pattern:
    partition: str | None = None      # None or "*": any
    group: str | None = None          # None, user, ALL: any
    user: str | None = None
    folder: str | None = None

    def user_matches(self, partition: str, group: str, user: str) -> bool:
        return ((self.partition in (None, "*") or self.partition == partition)
                and (self.group in (None, *EVERYONE_GROUPS) or self.group == group)
                and (self.user is None or self.user == user))

    def folder_matches(self, folder: str) -> bool:
        return self.folder is None or in_folder(folder, self.folder)


def user_selected(patterns: tuple[Pattern, ...], partition: str, group: str, user: str) -> bool:
    return any(p.user_matches(partition, group, user) for p in patterns)


def folder_selected(patterns: tuple[Pattern, ...], partition: str, group: str, user: str,
                    folder: str) -> bool:
    return any(p.user_matches(partition, group, user) and p.folder_matches(folder)
               for p in patterns)


def selects_users_only(patterns: tuple[Pattern, ...]) -> bool:
    """True when every pattern names a partition or a user: a seekable archive can then be
    read through its trailer's index instead of whole."""
    return all(p.partition not in (None, "*") or p.user is not None for p in patterns)


def parse_selection(names: list[str], encoding: str = "UTF-8") -> list[Pattern]:
    """Logical names as imsbackup takes them, matched against what the archive recorded."""
    if not names:
        return [Pattern()]
    patterns = []
    for name in names:
        if not name.startswith("/"):
            patterns.append(Pattern(user=name))
            continue
        parts = [p for p in name.split("/") if p]
        folder = None
        if len(parts) > 3:
            levels = parts[3:]
            if encoding == "IMAP_MODIFIED-UTF-7":
                try:
                    levels = [mutf7.decode(level) for level in levels]
                except ValueError as exc:
                    raise UsageError(f"{name}: {exc}") from None
            folder = normalize_folder("/".join(levels))
        patterns.append(Pattern(parts[0] if parts else None, parts[1] if len(parts) > 1 else None,
                                parts[2] if len(parts) > 2 else None, folder))
    return patterns


def read_user_map(path: str) -> dict[str, str]:
    """``old=new`` lines (``#`` comments); ``@old.domain=@new.domain`` renames a domain."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the map file: {exc.strerror}") from None
    mapping: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        old, sep, new = (part.strip() for part in line.partition("="))
        if not sep or not old or not new or not valid_user(new.lstrip("@")) or \
                old.startswith("@") != new.startswith("@"):
            raise UsageError(f"{path}:{lineno}: expected 'old=new' (or '@old.domain=@new.domain'),"
                             f" got {line!r}")
        mapping[old] = new
    return mapping


def map_user(user: str, mapping: dict[str, str]) -> str:
    if user in mapping:
        return mapping[user]
    local, at, domain = user.partition("@")
    if at and f"@{domain}" in mapping:
        return local + mapping[f"@{domain}"]
    return user
