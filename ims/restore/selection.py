"""What to restore: logical names as patterns over what an archive recorded, and user maps.

Failure behaviour: ``UsageError`` (exit 2) for a name that cannot be decoded or a map file
that cannot be read or has a bad line (named ``file:line``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

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
    # the same name read as Sun's guide writes a user (/P/user1 for /P/user/user1)
    user_form: "Pattern | None" = field(default=None, compare=False)

    def partition_matches(self, partition: str) -> bool:
        return self.partition in (None, "*", partition)

    def user_matches(self, partition: str, group: str, user: str) -> bool:
        return (self.partition_matches(partition)
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
    return [_parse_name(name, encoding) for name in names]


def _parse_name(name: str, encoding: str) -> Pattern:
    if not name.startswith("/"):
        return Pattern(user=name)
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
    user_form = None
    if len(parts) > 1 and parts[1] not in EVERYONE_GROUPS:
        user_form = _parse_name(user_form_name(name), encoding)
    return Pattern(parts[0] if parts else None, parts[1] if len(parts) > 1 else None,
                   parts[2] if len(parts) > 2 else None, folder, user_form)


def user_form_name(name: str) -> str:
    """``/primary/user1[/F...]`` as a user's name in full: ``/primary/user/user1[/F...]``."""
    parts = [p for p in name.split("/") if p]
    return "/" + "/".join([parts[0], EVERYONE_GROUPS[0], *parts[1:]])


def accept_user_forms(names: list[str], patterns: tuple[Pattern, ...],
                      recorded: Iterable[tuple[str, str, str]]) -> tuple[tuple[Pattern, ...], list[str]]:
    """Sun's guide writes a user as ``/primary/user1``: where the archive recorded (as
    (partition, group, user)) no group of that name but a user of that ID, the name is taken
    as the user.  A name that is both stays the group, with a note naming the user's form."""
    entries = list(recorded)
    accepted: list[Pattern] = []
    notes: list[str] = []
    for name, pattern in zip(names, patterns):
        alias = pattern.user_form
        if alias is None:
            accepted.append(pattern)
            continue
        is_group = any(pattern.partition_matches(p) and g == pattern.group for p, g, _ in entries)
        is_user = any(alias.user_matches(p, g, u) for p, g, u in entries)
        if is_user and not is_group:
            accepted.append(alias)
            continue
        if is_user and pattern.user is None:
            notes.append(f"{name} is the backup group {pattern.group!r}; the user"
                         f" {pattern.group!r} is {user_form_name(name)}")
        accepted.append(pattern)
    return tuple(accepted), notes


def not_in_archive(names: list[str], where: str, hint: bool = True) -> str:
    """The message for NAMEs that select nothing.  With ``hint`` (an archive read as a
    stream, whose users are not known before its end) a ``/P/X`` name gets the form it would
    have if X is a user."""
    hints = []
    for name in names:
        parts = [p for p in name.split("/") if p]
        if hint and name.startswith("/") and len(parts) == 2 and parts[1] not in EVERYONE_GROUPS:
            hints.append(f"if {parts[1]!r} is a user: {user_form_name(name)}")
    return f"{' '.join(names)}: not in the archive {where}" + (
        f" ({'; '.join(hints)})" if hints else "")


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
