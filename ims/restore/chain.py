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
import sys
import time
from array import array
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from ims.archive import format as fmt
from ims.archive.reader import ArchiveReader, MemberDamaged, decode_record
from ims.archive.records import ArchiveHeader, FolderRecord, MessageRecord, UserRecord
from ims.errors import ArchiveDamaged, DeviceError, UsageError
from ims.restore.engine import Engine
from ims.restore.selection import Pattern, user_selected
from ims.spilledmap import SpilledMap


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


class StateRef(NamedTuple):
    """Where a listed folder state is (read again when the chain is fed: its message list,
    kept as objects for every folder, was most of a chain's memory), as ``MergedChain.listed``
    gives it."""

    number: int                 # the archive
    offset: int                 # its folder-state member
    identity: int | None


NO_SPAN = -1                    # the end of a folder's list of spans
SHORT_HASH = 0xFFFFFFFF         # a base name's hash is kept in 32 bits


def short_hash(key: str) -> int:
    """The 32 bits of a base name's hash the merge keeps (a match is always checked against
    the member's own name, and a miss searched for by name: see ``_Finder``)."""
    return hash(key) & SHORT_HASH


@dataclass
class MergedChain:
    """The merge's result, kept compact (docs/performance.md, "Memory at scale"): for each
    message member of a selected user's folder, 32 bits of its base name's hash and its
    offset (in ``hashes`` and ``offsets``), and per folder and archive the span of those
    entries; a message's size, SHA-256 and date are read again from its member header when
    it is fed.  Names are interned: the keys of a user's folders share them."""

    readers: list[ArchiveReader]
    users: list[UserRecord] = field(default_factory=list)           # the last archive's
    # the latest state of each folder: the number of its listing (see ``listed``), or an
    # unchanged state never listed in the chain (its head is an incremental)
    states: dict[tuple[str, str, str], int | FolderRecord] = field(default_factory=dict)
    invalid: list[str] = field(default_factory=list)
    earlier_users: dict[tuple[str, str], UserRecord] = field(default_factory=dict)
    # (partition, user, identity) -> the number of the latest listing of that identity
    by_identity: dict[tuple[str, str, int | None], int] = field(default_factory=dict)
    # each listing: its member's offset x archives + archive, and its folder's identity
    listed_at: array = field(default_factory=lambda: array("q"))
    listed_identity: list[int | None] = field(default_factory=list)
    hashes: array = field(default_factory=lambda: array("I"))        # short_hash(base name)
    offsets: array = field(default_factory=lambda: array("q"))       # its member
    # (partition, user) -> folder -> where its newest span starts in ``spans``, whose records
    # are [archive, first, end, the folder's previous span or NO_SPAN]: the entries of
    # ``hashes``/``offsets`` each archive holds for the folder (four machine words an archive
    # in one array: an array per folder cost some 160 bytes a folder)
    ranges: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    spans: array = field(default_factory=lambda: array("q"))
    # per archive: hash(member name) -> offset of the data member a link member may name
    # (only messages of several links); -1 when two names share a hash
    shared: list[SharedOffsets] = field(default_factory=list)

    def listed(self, listing: int) -> StateRef:
        """Where a listing (a number from ``states`` or ``by_identity``) is."""
        offset, number = divmod(self.listed_at[listing], len(self.readers))
        return StateRef(number, offset, self.listed_identity[listing])

    def folder_spans(self, head: int) -> list[tuple[int, int, int]]:
        """A folder's spans, (archive, first, end), from the one starting at ``head``."""
        found = []
        spans = self.spans
        while head != NO_SPAN:
            found.append((spans[head], spans[head + 1], spans[head + 2]))
            head = spans[head + 3]
        return found


class SharedOffsets:
    """An archive's table of shared messages' data members, frozen once the archive is
    read: hash(member name) -> offset in two sorted arrays, 16 bytes an entry (as a dict of
    boxed integers it was some 100: 6.7 MiB for the 68,000 shared messages of a
    1,000,000-message store)."""

    def __init__(self, found: dict[int, int]) -> None:
        keys = sorted(found)
        self._hashes = array("q", keys)
        self._offsets = array("q", [found[key] for key in keys])

    def get(self, name_hash: int, default: int) -> int:
        index = bisect_left(self._hashes, name_hash)
        if index < len(self._hashes) and self._hashes[index] == name_hash:
            return self._offsets[index]
        return default


def merge(readers: list[ArchiveReader], patterns: tuple[Pattern, ...]) -> MergedChain:
    """Read every archive (oldest first, headers already read, each a seekable file: the
    caller checks) and keep the latest state of the selected users' folders and where each
    message's bytes are."""
    chain = MergedChain(readers)
    last = len(readers) - 1
    intern = sys.intern
    for number, reader in enumerate(readers):
        shared: dict[int, int] = {}
        user: UserRecord | None = None
        span_end = NO_SPAN                # where the span of the folder being read ends
        for member in reader.members():
            kind = member.kind
            if member.invalid is not None:
                if kind in (fmt.USER, fmt.FOLDER):
                    user = None if kind == fmt.USER else user
                    span_end = NO_SPAN
                chain.invalid.append(member.invalid)
                continue
            if kind == fmt.USER:
                user = member.record
                span_end = NO_SPAN
                if not user_selected(patterns, user.partition, user.group, user.user):
                    user = None
                else:
                    for state in user.unchanged_states():
                        _take_state(chain, state)   # format version 2: in the record
                    # kept without its unchanged folders (taken just above) and, for an
                    # earlier archive, without its folder lists, which only the last one's
                    # matter: kept whole, an incremental's records of 10,000 users held some
                    # 45 MiB
                    if number == last:
                        chain.users.append(_kept_user(user, whole=True))
                    else:
                        chain.earlier_users[(user.partition, user.user)] = \
                            _kept_user(user, whole=False)
            elif kind == fmt.FOLDER:
                span_end = NO_SPAN
                state: FolderRecord = member.record
                if user is None or (state.partition, state.user) != (user.partition, user.user):
                    continue
                # every folder of a selected user (the engine selects folders): a folder
                # renamed between backups is found under its old name
                _take_state(chain, state, member.offset * len(readers) + number)
                folders = chain.ranges.setdefault((intern(state.partition), intern(state.user)), {})
                folder = intern(state.folder)
                head = len(chain.spans)
                chain.spans.extend((number, len(chain.hashes), len(chain.hashes),
                                    folders.get(folder, NO_SPAN)))
                folders[folder] = head
                span_end = head + 2
            elif kind == fmt.MESSAGE:
                record: MessageRecord = member.record
                if member.is_link:
                    if hash(member.linkname) not in shared:
                        continue                  # its bytes are in no member of the archive
                elif record.links > 1:            # bytes a selected user's link may need
                    name_hash = hash(member.name)
                    shared[name_hash] = -1 if name_hash in shared else member.offset
                if span_end == NO_SPAN:
                    continue
                chain.hashes.append(short_hash(record.key))
                chain.offsets.append(member.offset)
                chain.spans[span_end] = len(chain.hashes)
        chain.shared.append(SharedOffsets(shared))
    return chain


def _kept_user(user: UserRecord, whole: bool) -> UserRecord:
    """The part of a user record the feed reads: its names interned (shared with the
    states' keys), its folder lists only when ``whole``, never its unchanged folders."""
    intern = sys.intern
    if not whole:
        return dataclasses.replace(user, partition=intern(user.partition),
                                   user=intern(user.user), group=intern(user.group),
                                   subscriptions=(), folders=(), excluded_folders=(),
                                   unchanged=(), unchanged_since=None)
    return dataclasses.replace(
        user, partition=intern(user.partition), user=intern(user.user),
        group=intern(user.group), subscriptions=tuple(map(intern, user.subscriptions)),
        folders=tuple(map(intern, user.folders)),
        excluded_folders=tuple(map(intern, user.excluded_folders)),
        unchanged=(), unchanged_since=None)


def _take_state(chain: MergedChain, state: FolderRecord, at: int | None = None) -> None:
    """A folder state of a selected user, read in chain order (``at``: where a listed one
    is, offset x archives + archive): a listed state replaces the one kept; an unchanged one
    keeps the earlier state, found by identity when the folder was renamed."""
    intern = sys.intern
    folder_key = (intern(state.partition), intern(state.user), intern(state.folder))
    identity_key = (folder_key[0], folder_key[1], state.identity)
    known = chain.states.get(folder_key)
    known_identity = (known.identity if isinstance(known, FolderRecord)
                      else None if known is None else chain.listed_identity[known])
    if state.unchanged and state.identity is not None \
            and identity_key in chain.by_identity \
            and (known is None or known_identity != state.identity):
        # renamed since its last listing: cur/ and new/ did not change, so the backup saw
        # nothing; the folder is the one with the same identity, also when a folder deleted
        # meanwhile had this name (identity wins); ``listed_state`` gives it its new name
        chain.states[folder_key] = chain.by_identity[identity_key]
    elif not state.unchanged or folder_key not in chain.states:
        if at is None:
            chain.states[folder_key] = state
        else:
            listing = len(chain.listed_at)
            chain.listed_at.append(at)
            chain.listed_identity.append(state.identity)
            chain.states[folder_key] = listing
            # only a listed state is what a renamed folder's identity leads to: a version 1
            # unchanged member has a place too, but no messages
            if not state.unchanged and state.identity is not None:
                chain.by_identity[identity_key] = listing


def state_identity(chain: MergedChain, key: tuple[str, str, str]) -> int | None:
    """The identity of a folder's kept state (None: none kept, or none recorded)."""
    kept = chain.states.get(key)
    if kept is None or isinstance(kept, FolderRecord):
        return None if kept is None else kept.identity
    return chain.listed_identity[kept]


def listed_state(chain: MergedChain, key: tuple[str, str, str]) -> FolderRecord | None:
    """The folder's latest state with its messages (read again from its archive), under the
    folder's name in the last backup; None when not selected."""
    kept = chain.states.get(key)
    if kept is None or isinstance(kept, FolderRecord):
        return kept
    where = chain.listed(kept)
    reader = chain.readers[where.number]
    member = reader.member_at(where.offset)
    if member is None:
        raise ArchiveDamaged(f"{reader.device_name}: no folder state at byte {where.offset}"
                             " where it was read before")
    reader.json_at(member)
    decode_record(member)
    if member.record is None:
        raise ArchiveDamaged(f"{member.invalid} (it was valid when read before)")
    record: FolderRecord = member.record
    return record if record.folder == key[2] else dataclasses.replace(record, folder=key[2])


class _Finder:
    """Where the bytes of a listed message are: first among the members of its folder (by
    name, the latest archive first), else among all its user's (a folder renamed between
    backups).  A map of one folder's (or one user's) entries by their 32-bit hash is built
    when first asked for and kept until another is; each hit is checked against the member's
    own name, and a name the maps miss (two base names of one short hash: the later one
    hides the other) is searched for among the entries of its hash, by name."""

    def __init__(self, chain: MergedChain) -> None:
        self.chain = chain
        self._folder: tuple[tuple[str, str, str], dict[int, int]] | None = None
        self._user: tuple[tuple[str, str], dict[int, int]] | None = None

    def _spans(self, heads: list[int]) -> list[tuple[int, int, int]]:
        """The spans of the folders whose newest spans start at ``heads``, oldest archive
        first."""
        return sorted(span for head in heads for span in self.chain.folder_spans(head))

    def _map(self, heads: list[int]) -> dict[int, int]:
        """short hash -> entry x archives + archive, later archives replacing earlier ones
        (one int a message: the map lives while a folder or a user is fed)."""
        hashes, count = self.chain.hashes, len(self.chain.readers)
        found: dict[int, int] = {}
        for number, first, end in self._spans(heads):
            for entry in range(first, end):
                found[hashes[entry]] = entry * count + number
        return found

    def find(self, partition: str, user: str, folder: str, key: str) -> Bytes | None:
        folders = self.chain.ranges.get((partition, user), {})
        folder_heads = [folders[folder]] if folder in folders else []
        short = short_hash(key)
        if self._folder is None or self._folder[0] != (partition, user, folder):
            self._folder = ((partition, user, folder), self._map(folder_heads))
        source = self._source(self._folder[1].get(short), key)
        if source is not None:
            return source
        if self._user is None or self._user[0] != (partition, user):
            self._user = ((partition, user), self._map(list(folders.values())))
        source = self._source(self._user[1].get(short), key)
        if source is not None:
            return source
        return self._search(folder_heads, short, key) or \
            self._search(list(folders.values()), short, key)

    def _search(self, heads: list[int], short: int, key: str) -> Bytes | None:
        """The entries of the short hash in these folders, the latest archive first, each
        checked by name (the maps keep one entry a hash)."""
        hashes, count = self.chain.hashes, len(self.chain.readers)
        for number, first, end in reversed(self._spans(heads)):
            while first < end:
                try:
                    entry = hashes.index(short, first, end)
                except ValueError:
                    break
                source = self._source(entry * count + number, key)
                if source is not None:
                    return source
                first = entry + 1
        return None

    def _source(self, packed: int | None, key: str) -> Bytes | None:
        if packed is None:
            return None
        entry, number = divmod(packed, len(self.chain.readers))
        reader = self.chain.readers[number]
        member = reader.member_at(self.chain.offsets[entry])
        if member is None:
            raise ArchiveDamaged(f"{reader.device_name}: no member at byte"
                                 f" {self.chain.offsets[entry]} where one was read before")
        decode_record(member)
        if member.record is None or member.record.key != key:
            return None                         # another base name of the same hash
        if member.is_link:
            target = self.chain.shared[number].get(hash(member.linkname), -1)
            linked = reader.member_at(target) if target >= 0 else None
            if linked is None or linked.name != member.linkname:
                return None
            member = linked
            decode_record(member)
            if member.record is None:
                return None
        record: MessageRecord = member.record
        return (number, member.data_offset, member.size, record.sha256 or "", record.links,
                record.internaldate)


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
        # each user's folders in the merged state, once (not every state for every user)
        kept: dict[tuple[str, str], list[str]] = {}
        for partition, name, folder in sorted(chain.states):
            kept.setdefault((partition, name), []).append(folder)
        for user in chain.users:
            now_named: dict[int, str] = {}       # identity -> the folder's last name
            for folder in user.folders:
                identity = state_identity(chain, (user.partition, user.user, folder))
                if identity is not None:
                    now_named[identity] = folder
            partition, name = user.partition, user.user
            for folder in kept.get((partition, name), ()):
                if folder in user.folders or folder in user.excluded_folders:
                    continue
                if any(p.folder is not None and p.user_matches(partition, user.group, name)
                       and p.folder_matches(folder) for p in engine.options.patterns):
                    engine.mark_hits(partition, user.group, name, folder)
                    identity = state_identity(chain, (partition, name, folder))
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
        # shared bytes (archive offset, archive) -> the first name fed: a table of 21 to 43
        # bytes an entry, the names in its temporary file (as a dict: 190 bytes an entry,
        # 11.8 MiB for the 63,000 shared messages of a 1,000,000-message store)
        emitted = SpilledMap()
        archives = len(chain.readers)
        try:
            finder = _Finder(chain)
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
                    state = listed_state(chain, (user.partition, user.user, folder))
                    if state is None:
                        continue                      # not selected
                    engine.begin_folder(state)
                    for listed in state.messages or ():
                        source = finder.find(user.partition, user.user, folder, listed.key)
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
                        first = None
                        if links > 1:
                            # exact: offsets are far below 2**64 / archives
                            place = offset * archives + number
                            fed = emitted.get(place)
                            if fed is None:
                                emitted.put(place, name.encode("utf-8", "surrogateescape"))
                            else:
                                first = fed[0].decode("utf-8", "surrogateescape")
                        engine.message(record, None, name, first is not None, first or "",
                                       lambda s=source, n=name: read_bytes(chain, s, n))
                engine.end_user()
        finally:
            emitted.close()
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
    finder = _Finder(chain)

    def fetch(name: str) -> bytes | None:
        parts = name.split("/")
        if len(parts) < 4:
            return None
        source = finder.find(parts[0], parts[1], "/".join(parts[2:-1]), parts[-1])
        return None if source is None else read_bytes(chain, source, name)
    return fetch


def check_headers(readers: list[ArchiveReader]) -> list[tuple[str, ArchiveHeader]]:
    """Each archive's header, read and checked (format, version, blocking factor)."""
    return [(reader.device_name, reader.read_header()) for reader in readers]
