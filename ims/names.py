"""Logical names -> the scope to work on (DESIGN §4).

``/`` the store; ``/P`` a partition; ``/P/G`` a backup group on it; ``/P/G/U`` a user;
``/P/G/U/F[/S...]`` a folder and its subfolders.  ``*`` as P means every partition.  A name
without a leading ``/`` is a user ID, looked up on every partition.  Names are resolved in
full before anything is written; the first that does not exist raises ``UnknownName``.
``/P/X`` where X is no backup group but a user on P is that user (Sun's guide writes users
so); a name both a group and a user is the group, with a warning naming the user's form.

A custom group that a name covers but that holds no user on the partitions covered is listed
in ``Scope.empty_groups`` and named in a warning (no mail is left out: its users, if any,
are in an earlier group or ``ungrouped``).

Exclusions (``local.store.backup.exclude``) apply to folders reached through a wider name;
a folder named in full is always taken.  ``ignore_exclusions`` (imsbackup ``-x``) turns the
list off for a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AbstractSet

from ims.config import EVERYONE_GROUPS, UNGROUPED, Config
from ims.errors import UnknownName, UsageError
from ims.store import mutf7
from ims.store.base import StoreReader

INBOX = "INBOX"


# slots, and no set of its own until a folder is named: one is made for every user of the
# store before the backup starts (at 10,000 users the empty sets alone had taken 2 MiB)
@dataclass(slots=True)
class UserScope:
    partition: str
    user: str
    group: str
    folders: set[str] | None = None          # None: every folder of the user
    named_folders: AbstractSet[str] = frozenset()  # named in full: never excluded
    exact: bool = False                      # the named folders only, not their subfolders

    def add_all(self) -> None:
        self.folders = None

    def add_folder(self, folder: str) -> None:
        self.named_folders = self.named_folders | {folder}
        if self.folders is not None:
            self.folders.add(folder)


@dataclass
class Scope:
    users: list[UserScope]
    warnings: list[str]
    empty_groups: list[str] = field(default_factory=list)   # custom groups covered, no user


def normalize_folder(folder: str) -> str:
    first, sep, rest = folder.partition("/")
    if first.upper() == INBOX:
        return INBOX + sep + rest
    return folder


def in_folder(folder: str, parent: str) -> bool:
    """True when ``folder`` is ``parent`` or one of its subfolders."""
    return folder == parent or folder.startswith(parent + "/")


def is_excluded(folder: str, exclusions: list[str]) -> bool:
    return any(in_folder(folder, excluded) for excluded in exclusions)


def left_out(folder: str, exclusions: list[str], named_folders: AbstractSet[str]) -> bool:
    """True when an excluded folder covers ``folder`` and no name given reaches it from at
    or below that excluded folder: naming ``Trash`` takes Trash and its subfolders, but
    naming ``Archive`` does not take an excluded ``Archive/2024`` (a wider name)."""
    return any(in_folder(folder, excluded)
               and not any(in_folder(named, excluded) and in_folder(folder, named)
                           for named in named_folders)
               for excluded in exclusions)


def select_folders(user_scope: UserScope, all_folders: list[str], exclusions: list[str]
                   ) -> tuple[list[str], list[str]]:
    """(folders to take, folders left out by the exclusion list) for one user."""
    chosen: list[str] = []
    excluded: list[str] = []
    for folder in all_folders:
        if user_scope.folders is not None and not (
                folder in user_scope.folders if user_scope.exact else
                any(in_folder(folder, wanted) for wanted in user_scope.folders)):
            continue
        if left_out(folder, exclusions, user_scope.named_folders):
            excluded.append(folder)
            continue
        chosen.append(folder)
    return chosen, excluded


def resolve(names: list[str], config: Config, store: StoreReader,
            folder_encoding: str = "UTF-8") -> Scope:
    if not names:
        raise UsageError("no logical name given (use / for the whole store)")
    groups = config.groups
    partitions = store.partitions()
    scope_warnings: list[str] = []
    by_key: dict[tuple[str, str], UserScope] = {}
    user_cache: dict[str, list[str]] = {}
    covered: dict[str, set[str]] = {}       # custom group -> partitions a name took it on

    def cover(group_names: list[str], on: list[str]) -> None:
        for group_name in group_names:
            covered.setdefault(group_name, set()).update(on)

    def users_of(partition: str) -> list[str]:
        if partition not in user_cache:
            user_cache[partition] = list(store.users(partition))
        return user_cache[partition]

    def take(partition: str, user: str) -> UserScope:
        key = (partition, user)
        if key not in by_key:
            by_key[key] = UserScope(partition, user, groups.group_of(user), folders=set())
        return by_key[key]

    for name in names:
        if not name.startswith("/"):
            homes = [p for p in partitions if store.user_exists(p, name)]
            if not homes:
                raise UnknownName(f"{name}: no such user on any partition")
            for partition in homes:
                take(partition, name).add_all()
            continue
        parts = [p for p in name.split("/") if p]
        if not parts:
            cover(groups.custom_names(), partitions)
            for partition in partitions:
                for user in users_of(partition):
                    take(partition, user).add_all()
            continue
        if parts[0] == "*":
            chosen_partitions = partitions
        elif parts[0] in partitions:
            chosen_partitions = [parts[0]]
        else:
            raise UnknownName(f"{name}: no such partition {parts[0]!r}"
                              f" (configured: {', '.join(partitions) or 'none'})")
        if len(parts) == 1:
            cover(groups.custom_names(), chosen_partitions)
            for partition in chosen_partitions:
                for user in users_of(partition):
                    take(partition, user).add_all()
            continue
        group = parts[1]
        as_user = [p for p in chosen_partitions if store.user_exists(p, group)]
        if not groups.exists(group):
            if not as_user:
                known = ", ".join(dict.fromkeys([*EVERYONE_GROUPS, *groups.names()]))
                raise UnknownName(f"{name}: no such backup group {group!r} (known: {known})")
            # Sun's guide writes a user as /primary/user1: no group has that name, so it
            # can only mean /primary/user/user1
            parts.insert(1, EVERYONE_GROUPS[0])
            group = parts[1]
        elif len(parts) == 2 and group not in EVERYONE_GROUPS and as_user:
            scope_warnings.append(f"{name} is the backup group {group!r}; the user {group!r}"
                                  f" is /{parts[0]}/{EVERYONE_GROUPS[0]}/{group}")
        if len(parts) == 2:
            cover(groups.custom_names() if group in EVERYONE_GROUPS else [group],
                  chosen_partitions)
            for partition in chosen_partitions:
                for user in users_of(partition):
                    if groups.contains(group, user):
                        take(partition, user).add_all()
            continue
        user = parts[2]
        homes = [p for p in chosen_partitions if store.user_exists(p, user)]
        if not homes:
            where = "any partition" if parts[0] == "*" else f"partition {parts[0]!r}"
            raise UnknownName(f"{name}: no such user {user!r} on {where}")
        if not groups.contains(group, user):
            raise UnknownName(f"{name}: user {user!r} is in backup group"
                              f" {groups.group_of(user)!r}, not {group!r}")
        if len(parts) == 3:
            for partition in homes:
                take(partition, user).add_all()
            continue
        folder_parts = parts[3:]
        if folder_encoding.upper() in ("IMAP_MODIFIED-UTF-7", "IMAP-MODIFIED-UTF-7", "MUTF-7"):
            try:
                folder_parts = [mutf7.decode(p) for p in folder_parts]
            except ValueError as exc:
                raise UsageError(f"{name}: {exc}") from None
        folder = normalize_folder("/".join(folder_parts))
        for partition in homes:
            existing = store.folders(partition, user)
            if not any(in_folder(f, folder) for f in existing):
                raise UnknownName(f"{name}: user {user!r} has no folder {folder!r}")
            take(partition, user).add_folder(folder)

    warnings = scope_warnings
    ordered = sorted(by_key.values(), key=lambda s: (s.partition, s.user))
    if groups.groups:
        loose = [s.user for s in ordered if s.group == UNGROUPED]
        if loose:
            warnings.append(f"{len(loose)} user(s) match no backup group and are kept in group"
                            f" '{UNGROUPED}': {', '.join(loose[:20])}"
                            + (" ..." if len(loose) > 20 else ""))
        overlap = [(s.user, groups.overlapping(s.user)) for s in ordered]
        overlap = [(u, g) for u, g in overlap if len(g) > 1]
        if overlap:
            sample = "; ".join(f"{u} in {', '.join(g)}" for u, g in overlap[:5])
            warnings.append(f"{len(overlap)} user(s) match several backup groups (the first"
                            f" in file order wins): {sample}")
    seen_users: dict[str, str] = {}
    for s in ordered:
        if s.user in seen_users:
            warnings.append(f"user {s.user!r} exists on partitions {seen_users[s.user]!r}"
                            f" and {s.partition!r}: both are taken")
        seen_users[s.user] = s.partition
    present: dict[str, set[str]] = {}       # partition -> the groups its users are in
    for partition in set().union(*covered.values()):
        present[partition] = {groups.group_of(user) for user in users_of(partition)}
    empty = [g for g in groups.custom_names()
             if g in covered and not any(g in present[p] for p in covered[g])]
    warnings.extend(groups.empty_warning(g, sorted(covered[g]), partitions) for g in empty)
    return Scope(ordered, warnings, empty)


def validate_encoding(encoding: str) -> str:
    upper = encoding.upper()
    if upper in ("UTF-8", "UTF8"):
        return "UTF-8"
    if upper in ("IMAP_MODIFIED-UTF-7", "IMAP-MODIFIED-UTF-7", "MUTF-7"):
        return "IMAP_MODIFIED-UTF-7"
    raise UsageError(f"-e {encoding}: unknown encoding (UTF-8 or IMAP_MODIFIED-UTF-7)")
