"""The store driver interface, in store-neutral terms.

A driver knows partitions, users, folders and messages.  Folder names are Unicode with ``/``
as the hierarchy separator and ``INBOX`` for the inbox, whatever the store keeps on disk.  A
message is identified inside its folder by ``key`` (for Maildir the base file name; for Cyrus
it would be the UID file), which is stable across flag changes.

Failure behaviour: listing calls raise ``OSError`` for a partition or user directory that
cannot be read; ``FolderReader.open_message`` returns None for a message that vanished
(expunged) and raises ``OSError`` (for example ``PermissionError``) for one that exists but
cannot be read, so that the engine can skip and report it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterator, Protocol


@dataclass(slots=True)
class MessageEntry:
    """One message as listed in its folder."""

    key: str                 # stable identity inside the folder (maildir base name)
    uid: int | None          # None: the store has not assigned one yet (Maildir new/)
    flags: str               # system flags as Maildir letters, ASCII order: D F P R S T
    keywords: tuple[str, ...]
    info: str                # the raw flag suffix as stored (Maildir ":2,..." part), "" if none
    location: str            # driver-specific place of the file (e.g. "cur/<name>")
    is_new: bool = False     # not yet seen by any client (Maildir new/)


@dataclass
class FolderState:
    """What a client's cache depends on, read when the folder is listed."""

    name: str
    uidvalidity: int | None
    next_uid: int
    guid: str | None
    keywords: list[str]
    messages: list[MessageEntry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # oddities met while reading (bad lines)


@dataclass(frozen=True)
class UserInfo:
    partition: str
    user: str
    uid: int
    gid: int
    subscriptions: tuple[str, ...]


class FolderReader(Protocol):
    state: FolderState

    def open_message(self, entry: MessageEntry) -> tuple[int, os.stat_result] | None:
        """An open fd and its fstat, following a rename; None if the message is gone."""

    def close(self) -> None: ...


class StoreReader(Protocol):
    def partitions(self) -> list[str]: ...

    def users(self, partition: str) -> Iterator[str]: ...

    def user_exists(self, partition: str, user: str) -> bool: ...

    def user_info(self, partition: str, user: str) -> UserInfo: ...

    def folders(self, partition: str, user: str) -> list[str]: ...

    def open_folder(self, partition: str, user: str, folder: str) -> FolderReader: ...

    def changed_since(self, partition: str, user: str, folder: str, since: float) -> bool:
        """False only when no message can have been stored, copied, renamed or expunged in
        the folder since that time (so its state is the one a backup at that time saw)."""
