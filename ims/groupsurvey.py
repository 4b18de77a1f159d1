"""Which users each backup group holds, per partition, and how much mail: for checking a
backup-groups.conf (installed or not) before a backup uses it.

The store is only read (directory listings and ``lstat``).  A group that holds no user is
flagged: its regex may be wrong, or an earlier group takes all its users (``shadowed``).
Failure behaviour: a user whose Maildir cannot be listed in full is listed in its group but
left out of the sizes, and named in ``unreadable``; a bad groups file is the caller's
``ConfigError``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ims.config import BackupGroups
from ims.store.maildir import MaildirStore


@dataclass
class GroupSurvey:
    name: str
    line: int | None                 # its line in the file; None for ungrouped and ALL
    regex: str | None
    users: dict[str, list[str]] = field(default_factory=dict)    # partition -> user IDs
    messages: int = 0
    bytes: int = 0
    shadowed: list[str] = field(default_factory=list)   # its regex matches, an earlier group won

    @property
    def user_count(self) -> int:
        return sum(len(users) for users in self.users.values())

    @property
    def empty(self) -> bool:
        """A custom group no user falls in (an empty ``ungrouped`` is what one wants)."""
        return self.line is not None and self.user_count == 0


@dataclass
class Survey:
    path: Path | None                # the groups file; None: there is none (one group, ALL)
    partitions: list[str]
    groups: list[GroupSurvey]
    unreadable: list[str] = field(default_factory=list)

    def empty_groups(self) -> list[str]:
        return [g.name for g in self.groups if g.empty]

    def as_json(self) -> dict[str, Any]:
        return {
            "groups_file": str(self.path) if self.path else None,
            "partitions": self.partitions,
            "groups": [{"name": g.name, "line": g.line, "regex": g.regex, "empty": g.empty,
                        "users": g.users, "user_count": g.user_count, "messages": g.messages,
                        "bytes": g.bytes, "shadowed": g.shadowed} for g in self.groups],
            "empty_groups": self.empty_groups(),
            "unreadable": self.unreadable,
        }


    def as_text(self, users: bool = True, sizes: bool = True) -> str:
        """A table, one row per group (its users per partition below it), then the total."""
        head = ["GROUP", "LINE", "REGEX", "USERS"] + (["MESSAGES", "BYTES"] if sizes else [])
        rows = [[g.name, str(g.line or "-"), g.regex or "-", str(g.user_count)]
                + ([str(g.messages), str(g.bytes)] if sizes else []) for g in self.groups]
        total = ["total", "", "", str(sum(g.user_count for g in self.groups))] + (
            [str(sum(g.messages for g in self.groups)), str(sum(g.bytes for g in self.groups))]
            if sizes else [])
        widths = [max(len(row[i]) for row in [head, *rows, total]) for i in range(len(head))]

        def line(row: list[str]) -> str:
            # names and regexes to the left, numbers to the right
            return "  ".join(cell.ljust(w) if i in (0, 2) else cell.rjust(w)
                             for i, (cell, w) in enumerate(zip(row, widths))).rstrip()

        where = str(self.path) if self.path else "no backup-groups.conf: every user is in ALL"
        out = [f"groups: {where}", line(head)]
        for group, row in zip(self.groups, rows):
            out.append(line(row) + ("  EMPTY: matches no user" if group.empty else ""))
            if users:
                out.extend(f"  {p} ({len(ids)}): {' '.join(ids)}" for p, ids in group.users.items())
            if group.shadowed:
                taken = " ".join(group.shadowed) if users else f"{len(group.shadowed)} user(s)"
                out.append(f"  matched, but in an earlier group: {taken}")
        out.append(line(total))
        return "\n".join(out) + "\n"


def mail_size(store: MaildirStore, partition: str, user: str) -> tuple[int, int]:
    """(messages, bytes) of a user: the files in every folder's ``cur/`` and ``new/``.
    Raises ``OSError`` when a directory of the Maildir cannot be listed."""
    messages = size = 0

    def walk_error(exc: OSError) -> None:
        raise exc

    # a directory that cannot be listed is an error: a partial count would look complete
    for dirpath, _dirs, files in os.walk(store.maildir(partition, user), onerror=walk_error):
        if os.path.basename(dirpath) not in ("cur", "new"):
            continue
        for name in files:
            try:
                size += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:        # expunged while we looked
                continue
            messages += 1
    return messages, size


def survey(groups: BackupGroups, store: MaildirStore, sizes: bool = True) -> Survey:
    """Every group of ``groups`` (custom ones in file order, then ``ungrouped``; ``ALL``
    without a file) with its users per partition and, with ``sizes``, their mail."""
    by_name = {name: GroupSurvey(name, None, None) for name in groups.names()}
    for group in groups.groups:
        by_name[group.name].line, by_name[group.name].regex = group.lineno, group.regex
    result = Survey(groups.path, store.partitions(), list(by_name.values()))
    for partition in result.partitions:
        for user in store.users(partition):
            matching = groups.overlapping(user)
            home = by_name[groups.group_of(user)]
            home.users.setdefault(partition, []).append(user)
            for name in matching[1:]:
                by_name[name].shadowed.append(user)
            if not sizes:
                continue
            try:
                messages, size = mail_size(store, partition, user)
            except OSError as exc:
                result.unreadable.append(f"/{partition}/{home.name}/{user}:"
                                         f" {exc.strerror or exc}")
                continue
            home.messages += messages
            home.bytes += size
    return result
