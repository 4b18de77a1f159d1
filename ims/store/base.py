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
    # An upper bound of the folder's CONDSTORE HIGHESTMODSEQ, read after the messages were
    # listed (None: never indexed, or the store keeps none); a whole-folder restore starts
    # the folder above it so that QRESYNC clients resynchronise (ims.store.modseq).
    highest_modseq: int | None = None
    # what of the folder could not be read although its messages were (named as skipped)
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class UserInfo:
    partition: str
    user: str
    uid: int
    gid: int
    subscriptions: tuple[str, ...]
    problems: tuple[str, ...] = ()   # what of the user could not be read (named as skipped)


class FolderReader(Protocol):
    state: FolderState
    identity: int | None     # as StoreReader.folder_identity, from the open folder


    def open_message(self, entry: MessageEntry) -> tuple[int, os.stat_result] | None:
        """An open fd and its fstat, following a rename; None if the message is gone."""

    def close(self) -> None:
        """Release what the writer keeps between folders (directory descriptors)."""


class StoreReader(Protocol):
    def partitions(self) -> list[str]: ...

    def users(self, partition: str) -> Iterator[str]: ...

    def user_exists(self, partition: str, user: str) -> bool: ...

    def user_info(self, partition: str, user: str) -> UserInfo: ...

    def folders(self, partition: str, user: str) -> list[str]: ...

    def refused_links(self, partition: str, user: str) -> list[tuple[str, str]]:
        """(folder, why) for each folder the last ``folders`` call found but will not read
        (a link the driver does not follow); a backup names them among its skipped items."""

    def open_folder(self, partition: str, user: str, folder: str) -> FolderReader: ...

    def folder_identity(self, partition: str, user: str, folder: str) -> int | None:
        """A number that stays the same when the folder is renamed and is not shared with
        another folder of the user that exists at the same time (Maildir: the inode of
        ``cur/``), so that a chain restore can follow a rename; None when unknown."""

    def unchanged_since(self, partition: str, user: str, folder: str,
                        since: float) -> tuple[bool, int | None]:
        """(unchanged, identity): unchanged only when no message can have been stored,
        copied, renamed or expunged in the folder since that time (so its state is the one a
        backup at that time saw); then also its ``folder_identity``, taken from the same look
        at the folder (an incremental checks every folder: it must cost no more than that)."""


# -- the write side: what a restore needs from a store ---------------------------------------

class UnstorableName(ValueError):
    """A user or folder name this store cannot hold (for example a user without the domain
    its layout needs); the restore reports the item and goes on."""


@dataclass(frozen=True)
class LiveFolder:
    """A folder of the live store as a restore sees it before deciding how to restore it."""

    exists: bool
    pristine: bool       # exists but has never handed out a UID (Dovecot recreated it empty)


@dataclass(frozen=True)
class WholeFolder:
    """The state a folder restored whole comes back with (decided by ``ims.restore.plan``)."""

    uidvalidity: int | None      # None: the store never assigned one; it will choose
    next_uid: int
    guid: str | None
    keywords: tuple[str, ...]
    modseq: int | None = None    # the lowest modseq the restored folder may report


@dataclass
class Landed:
    """What a folder writer put into the store: counted when it landed, never before."""

    messages: int = 0            # messages now in the folder (data or hard link)
    links: int = 0               # of which hard links to a file restored in this run
    bytes: int = 0               # message bytes written
    already_there: int = 0       # rule 2: the folder had them; left as they are
    whole: bool = False          # the folder came back whole (rule 1)
    merged: bool = False         # messages were added to a live folder (rule 2)
    refused: list[str] = field(default_factory=list)   # "<key>: why", each not added


class RestoredFile(Protocol):
    """A message file restored in this run, which later messages may hard-link to."""

    def path(self) -> object: ...


class FolderWriter(Protocol):
    """One folder being restored.  ``add``/``add_link`` may raise ``OSError`` (the message is
    not written) or ``StoreLocked`` (a batch could not be committed: the run must stop);
    ``commit`` makes the folder's messages visible; ``abort`` removes whatever was staged and
    not yet committed.  ``landed`` says what is in the store, also after an abort."""

    landed: Landed

    def add(self, message, data: bytes | memoryview) -> RestoredFile: ...

    def add_link(self, message, source: RestoredFile) -> RestoredFile: ...

    def commit(self) -> Landed: ...

    def abort(self) -> None: ...


class StoreWriter(Protocol):
    """The restore's view of a store; messages are ``ims.archive.records.MessageRecord``."""

    def has_partition(self, partition: str) -> bool: ...

    def live_folder(self, partition: str, user: str, folder: str) -> LiveFolder: ...

    def free_sibling(self, partition: str, user: str, folder: str, suffix: str) -> str: ...

    def prepare_user(self, partition: str, user: str) -> None: ...

    def restore_whole(self, partition: str, user: str, folder: str,
                      whole: WholeFolder) -> FolderWriter: ...

    def add_to_folder(self, partition: str, user: str, folder: str,
                      check_existing: bool) -> FolderWriter: ...

    def add_subscriptions(self, partition: str, user: str, names: list[str]) -> None: ...

    def read_file(self, restored: RestoredFile) -> bytes: ...

    def pack_restored(self, restored: RestoredFile) -> bytes: ...

    def unpack_restored(self, packed: bytes) -> RestoredFile: ...

    def close(self) -> None:
        """Release what the writer keeps between folders (directory descriptors)."""
