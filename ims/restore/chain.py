"""A chain — a full backup and its incrementals — checked, merged, and fed to the engine.

Rules (docs/guide.md, "Chains"):

- Every archive's header carries its identity (``archive_id``), its start time
  (``created``) and, for an incremental, its since-time (``since``, from ``-d``).
- The chain is put in order of start time; if it was given in another order the command
  says so (a note) and goes on.  The same archive twice, or archives of different logical
  names, are not one chain (exit 2).
- A gap — an incremental whose since-time is later than the start of the archive before it —
  means mail may be missing: exit 2 naming the interval, unless ``--allow-gaps``.
- Without a full backup at its head, the chain never recreates a gone folder whole with the
  archived UIDVALIDITY (``has_full`` is False: see ``ims.restore.plan``).
- The merged state is the *latest* archive's users and folders (an incremental lists every
  folder, changed or not), each folder with its latest listed state; only message bytes come
  from earlier archives.  A user or folder deleted before the last backup stays deleted; a
  message the last state no longer lists (expunged) is not brought back.

How: every archive is read once, in order (so each one's trailer and digest are checked),
keeping for each folder its latest full state and, for each message member, where its
bytes are (archive, offset, size, SHA-256).  The engine is then fed the selected users of
the last archive; a message's bytes are read by offset and checked against their SHA-256; a
message whose folder was renamed between backups is found by its base name within the same
user; a message shared by several users is written once and hard-linked.

Failure behaviour: ``UsageError`` (exit 2) for a chain that is not one (duplicates,
different names, a gap); every archive must be a complete,
seekable file (``ArchiveDamaged``, exit 4, otherwise); a message listed by the last state
whose bytes are in no archive of the chain is reported as skipped (exit 1).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import Callable

from ims.archive import format as fmt
from ims.archive.reader import ArchiveReader, MemberDamaged
from ims.archive.records import ArchiveHeader, FolderRecord, MessageRecord, UserRecord
from ims.errors import DeviceError, UsageError
from ims.restore.engine import Engine
from ims.restore.selection import Pattern, user_selected


@dataclass(frozen=True)
class ChainOrder:
    """The archives in order, what was said about it, and whether a full backup heads it."""

    order: list[int]                  # indexes into the given list, oldest first
    notes: list[str]
    has_full: bool


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def order_chain(archives: list[tuple[str, ArchiveHeader]], allow_gaps: bool) -> ChainOrder:
    """Check and order a chain (pure: headers in, order out).  Raises ``UsageError``."""
    # within one second (start times are recorded to the second) a full backup comes first,
    # then the given order
    order = sorted(range(len(archives)),
                   key=lambda i: (archives[i][1].created, archives[i][1].since is not None))
    notes: list[str] = []
    if order != list(range(len(archives))):
        notes.append("the archives were not given oldest first; restored in the order "
                     + ", ".join(f"{archives[i][0]} ({_when(archives[i][1].created)})"
                                 for i in order))
    # a full backup supersedes everything before it: the chain starts at the last one
    fulls = [position for position, i in enumerate(order) if archives[i][1].since is None]
    if fulls and fulls[-1] > 0:
        head = fulls[-1]
        notes.append("not needed, as the full backup " + archives[order[head]][0]
                     + " comes after them: " + ", ".join(archives[i][0] for i in order[:head]))
        order = order[head:]
    ids = [h.archive_id for _, h in archives if h.archive_id]
    if len(ids) != len(set(ids)):
        raise UsageError("the same archive is given twice: "
                         + ", ".join(n for n, h in archives if ids.count(h.archive_id) > 1))
    for earlier, later in zip(order, order[1:]):
        (name_a, a), (name_b, b) = archives[earlier], archives[later]
        if sorted(a.names) != sorted(b.names):
            raise UsageError(f"{name_a} backed up {' '.join(a.names) or '/'} but {name_b}"
                             f" backed up {' '.join(b.names) or '/'}: not one chain")
        # start times are recorded to the second (rounded down), hence the + 1
        if b.since is not None and b.since >= a.created + 1:
            gap = (f"{name_b} holds changes since {_when(b.since)}, but {name_a} started at"
                   f" {_when(a.created)}: mail changed between {_when(a.created)} and"
                   f" {_when(b.since)} is in no archive given")
            if not allow_gaps:
                raise UsageError(gap + " (give the missing incremental, or --allow-gaps)")
            notes.append(gap)
    head = archives[order[0]][1]
    if head.since is not None:
        notes.append(f"{archives[order[0]][0]} is an incremental and no full backup precedes"
                     " it: gone folders come back with new UIDs")
    return ChainOrder(order, notes, head.since is None)


# where a message's bytes are: (archive number, data offset, size, sha256, links, internaldate)
Bytes = tuple[int, int, int, str, int, int]


@dataclass
class MergedChain:
    readers: list[ArchiveReader]
    users: list[UserRecord] = field(default_factory=list)           # the last archive's
    states: dict[tuple[str, str, str], FolderRecord] = field(default_factory=dict)
    by_folder: dict[tuple[str, str, str, str], Bytes] = field(default_factory=dict)
    by_user: dict[tuple[str, str, str], Bytes] = field(default_factory=dict)
    invalid: list[str] = field(default_factory=list)
    earlier_users: dict[tuple[str, str], UserRecord] = field(default_factory=dict)
    by_identity: dict[tuple[str, str, int | None], FolderRecord] = field(default_factory=dict)


def merge(readers: list[ArchiveReader], patterns: tuple[Pattern, ...]) -> MergedChain:
    """Read every archive (oldest first, headers already read, each a seekable file: the
    caller checks) and keep the latest state of the selected users' folders and where each
    message's bytes are."""
    chain = MergedChain(readers)
    last = len(readers) - 1
    for number, reader in enumerate(readers):
        data_members: dict[str, Bytes] = {}
        user: UserRecord | None = None
        folder_key: tuple[str, str, str] | None = None
        for member in reader.members():
            kind = member.kind
            if member.invalid is not None:
                if kind in (fmt.USER, fmt.FOLDER):
                    user = None if kind == fmt.USER else user
                    folder_key = None
                chain.invalid.append(member.invalid)
                continue
            if kind == fmt.USER:
                user = member.record
                folder_key = None
                if not user_selected(patterns, user.partition, user.group, user.user):
                    user = None
                elif number == last:
                    chain.users.append(user)
                else:
                    chain.earlier_users[(user.partition, user.user)] = user
                for state in user.unchanged_states() if user is not None else ():
                    _take_state(chain, state)     # format version 2: in the user's record
            elif kind == fmt.FOLDER:
                folder_key = None
                state: FolderRecord = member.record
                if user is None or (state.partition, state.user) != (user.partition, user.user):
                    continue
                # every folder of a selected user (the engine selects folders): a folder
                # renamed between backups is found under its old name
                folder_key = (state.partition, state.user, state.folder)
                _take_state(chain, state)
            elif kind == fmt.MESSAGE:
                record: MessageRecord = member.record
                if member.is_link:
                    source = data_members.get(member.linkname)
                    if source is None:
                        continue
                else:
                    source = (number, member.data_offset, member.size, record.sha256 or "",
                              record.links, record.internaldate)
                    if record.links > 1:      # bytes a selected user's link may need
                        data_members[member.name] = source
                if folder_key is None:
                    continue
                chain.by_folder[(*folder_key, record.key)] = source
                chain.by_user[(folder_key[0], folder_key[1], record.key)] = source
    return chain


def _take_state(chain: MergedChain, state: FolderRecord) -> None:
    """A folder state of a selected user, read in chain order: a listed state replaces the
    one kept; an unchanged one keeps the earlier state, found by identity when the folder
    was renamed."""
    folder_key = (state.partition, state.user, state.folder)
    identity_key = (state.partition, state.user, state.identity)
    known = chain.states.get(folder_key)
    if state.unchanged and state.identity is not None \
            and identity_key in chain.by_identity \
            and (known is None or known.identity != state.identity):
        # renamed since its last listing: cur/ and new/ did not change, so the backup saw
        # nothing; the folder is the one with the same identity, also when a folder deleted
        # meanwhile had this name (identity wins)
        earlier = chain.by_identity[identity_key]
        chain.states[folder_key] = dataclasses.replace(earlier, folder=state.folder)
    elif not state.unchanged or folder_key not in chain.states:
        chain.states[folder_key] = state
    if not state.unchanged and state.identity is not None:
        chain.by_identity[identity_key] = state


def feed_chain(chain: MergedChain) -> Callable[[Engine], None]:
    def feed(engine: Engine) -> None:
        for problem in chain.invalid:
            engine.report.damaged.append(problem)
        for key in sorted(set(chain.earlier_users) - {(u.partition, u.user) for u in chain.users}):
            gone = chain.earlier_users[key]
            engine.report.matched = True
            engine.mark_hits(gone.partition, gone.group, gone.user, None)
            engine.report.notes.append(
                f"{gone.logical}: not in the last backup of the chain (deleted before it):"
                " not restored; restore it from an earlier archive alone to bring it back")
        for user in chain.users:
            now_named: dict[int, str] = {}       # identity -> the folder's last name
            for folder in user.folders:
                current = chain.states.get((user.partition, user.user, folder))
                if current is not None and current.identity is not None:
                    now_named[current.identity] = folder
            for partition, name, folder in sorted(chain.states):
                if (partition, name) != (user.partition, user.user) or folder in user.folders \
                        or folder in user.excluded_folders:
                    continue
                if any(p.folder is not None and p.user_matches(partition, user.group, name)
                       and p.folder_matches(folder) for p in engine.options.patterns):
                    engine.mark_hits(partition, user.group, name, folder)
                    identity = chain.states[(partition, name, folder)].identity
                    if identity is not None and identity in now_named:
                        engine.report.notes.append(
                            f"{user.logical}/{folder}: renamed to {now_named[identity]} before the"
                            " last backup of the chain: not restored under its old name;"
                            f" restore {user.logical}/{now_named[identity]}")
                        continue
                    engine.report.notes.append(
                        f"{user.logical}/{folder}: not in the last backup of the chain (deleted"
                        " before it): not restored; restore it from an earlier archive alone to"
                        " bring it back")
        emitted: dict[Bytes, str] = {}            # shared bytes -> the first name fed
        for user in chain.users:
            engine.begin_user(user)
            # a folder the last backup left out by local.store.backup.exclude was there, not
            # deleted: it comes back as the latest backup that held it had it
            excluded_later = [folder for folder in user.excluded_folders
                              if folder not in user.folders
                              and (user.partition, user.user, folder) in chain.states]
            for folder in excluded_later:
                engine.report.notes.append(
                    f"{user.logical}/{folder}: excluded from the last backup of the chain"
                    " (local.store.backup.exclude): restored as the latest backup that held"
                    " it had it")
            for folder in [*user.folders, *excluded_later]:
                state = chain.states.get((user.partition, user.user, folder))
                if state is None:
                    continue                      # not selected
                engine.begin_folder(state)
                for listed in state.messages or ():
                    source = (chain.by_folder.get((user.partition, user.user, folder, listed.key))
                              or chain.by_user.get((user.partition, user.user, listed.key)))
                    name = f"{user.partition}/{user.user}/{folder}/{listed.key}"
                    if source is None:
                        engine.report.skipped.append(
                            f"{user.logical}/{folder}/{listed.key}: its bytes are in no"
                            " archive of the chain")
                        continue
                    number, offset, size, sha, links, internaldate = source
                    record = MessageRecord(listed.key, listed.uid, listed.flags,
                                           listed.keywords, internaldate, listed.uid is None,
                                           size, sha, links)
                    first = emitted.get(source)
                    if first is None and links > 1:
                        emitted[source] = name
                    engine.message(record, None, name, first is not None, first or "",
                                   lambda s=source, n=name: read_bytes(chain, s, n))
            engine.end_user()
    return feed


def read_bytes(chain: MergedChain, source: Bytes, name: str) -> bytes:
    number, offset, size, sha, _, _ = source
    reader = chain.readers[number]
    try:
        data = os.pread(reader.fd, size, offset)
    except OSError as exc:
        raise DeviceError(f"{reader.device_name}: read failed at byte {offset}:"
                          f" {exc.strerror}") from None
    if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
        raise MemberDamaged(f"{reader.device_name}: {name} at byte {offset}: SHA-256 mismatch,"
                            " the message is damaged")
    return data


def fetch_from_chain(chain: MergedChain) -> Callable[[str], bytes | None]:
    """Bytes by the name the chain fed (a link whose first copy could not be linked to)."""
    def fetch(name: str) -> bytes | None:
        parts = name.split("/")
        if len(parts) < 4:
            return None
        source = chain.by_folder.get((parts[0], parts[1], "/".join(parts[2:-1]), parts[-1])) \
            or chain.by_user.get((parts[0], parts[1], parts[-1]))
        return None if source is None else read_bytes(chain, source, name)
    return fetch


def check_headers(readers: list[ArchiveReader]) -> list[tuple[str, ArchiveHeader]]:
    """Each archive's header, read and checked (format, version, blocking factor)."""
    return [(reader.device_name, reader.read_header()) for reader in readers]
