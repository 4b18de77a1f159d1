"""The restore engine: applies the plans (``ims.restore.plan``) to a store writer.

It is fed, in archive order, users, folders and messages — by ``feed_archive`` from one
archive read in order, by ``feed_indexed`` from the users a seekable archive's trailer
points to, by ``ims.restore.chain`` from a merged chain — and for each folder asks the plan
what to do and a ``StoreWriter`` to do it.  It counts only what landed in the store.

Failure behaviour, per item (reported, exit code at the end):
- a user, folder state or message whose record is invalid (``member.invalid``): exit 4; an
  invalid folder state means nothing of that folder is written, an invalid message in a
  folder restored whole discards the whole folder (it was built aside), in a folder merged
  into a live one only that message is left out;
- a message whose bytes do not match its SHA-256: left out, exit 4;
- a message or folder the store refuses (``OSError``): left out, exit 1;
- a link whose bytes cannot be had (a pipe): listed for a references file, exit 5;
- a folder whose lock is not released in time: what it staged is removed, and the run
  stops there (exit 3), since every later folder would wait as long again;
- the stream cut short: what is complete stays, the folder in progress is committed (exit 4);
- interrupted (Ctrl-C, a signal turned into an exception): the folder in progress is
  discarded — a folder being restored whole stays absent, so that a second run restores it
  whole with its UIDs — and the interruption propagates.
``decide`` (from ``-c``) says whether to go on after a reported error.
"""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from ims import debuglog
from ims.archive import format as fmt
from ims.archive.reader import (ArchiveReader, Incomplete, Member, MemberDamaged, ReaderDied,
                               decode_record)
from ims.archive.records import (FolderRecord, MessageRecord, TrailerRecord, UserExtent,
                                 UserRecord)
from ims.errors import ArchiveDamaged, ExitCode, StoreLocked, most_serious
from ims.restore.firstcopies import FirstCopies
from ims.restore.plan import (DEFAULT_UID_MARGIN, Action, FolderPlan, Source, plan_folder,
                              plan_message_source, sibling_suffix)
from ims.restore.selection import Pattern, folder_selected, map_user, user_selected
from ims.signals import held
from ims.store.base import FolderWriter, Landed, StoreWriter, UnstorableName


@dataclass(frozen=True)
class RestoreOptions:
    patterns: tuple[Pattern, ...] = (Pattern(),)
    ignore_existing: bool = False           # -i
    new_sibling: bool = False               # -n
    user_map: dict[str, str] = field(default_factory=dict)
    partition: str | None = None            # --partition
    list_only: bool = False                 # -t
    uid_margin: int = DEFAULT_UID_MARGIN    # --uid-margin


@dataclass
class RestoreReport:
    messages: int = 0           # messages that landed (data or link)
    links: int = 0              # of which hard links to a message restored in this run
    bytes: int = 0
    already_there: int = 0
    folders_whole: int = 0      # rule 1
    folders_merged: int = 0     # rule 2
    unresolved: list[dict[str, Any]] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    locked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)     # said in the summary, no error
    listing: list[str] = field(default_factory=list)
    matched: bool = False
    unmatched: list[int] = field(default_factory=list)  # NAMEs (by index) that matched nothing
    complete: bool = False      # the archive was read to its verified trailer
    stopped: bool = False       # the run ended early on purpose (-c n, a lock timeout)
    seconds: float = 0.0

    def add(self, landed: Landed, logical: str) -> None:
        self.skipped.extend(f"{logical}/{line}" for line in landed.refused)
        self.messages += landed.messages
        self.links += landed.links
        self.bytes += landed.bytes
        self.already_there += landed.already_there
        if landed.whole:
            self.folders_whole += 1
        elif landed.merged and (landed.messages or landed.already_there):
            self.folders_merged += 1

    def exit_code(self) -> int:
        codes = [ExitCode.OK]
        if self.damaged or not (self.complete or self.stopped):
            codes.append(ExitCode.DAMAGED)
        if self.locked:
            codes.append(ExitCode.LOCKED)
        if self.unresolved:
            codes.append(ExitCode.UNRESOLVED_LINKS)
        if self.skipped:
            codes.append(ExitCode.SKIPPED)
        return most_serious(*codes)


Decide = Callable[[str], bool]
Fetch = Callable[[str], "bytes | memoryview | None"]


class Stop(Exception):
    """The run ends here (``-c n``, a lock timeout); what landed stays."""


@dataclass
class _User:
    record: UserRecord
    partition: str            # where it goes in the store
    user: str
    whole: bool               # selected as a whole (not only some folders)
    restored: set[str] = field(default_factory=set)   # folders restored in this run


@dataclass
class _Folder:
    logical: str
    target: tuple[str, str, str]          # (partition, user, folder) in the store
    plan: FolderPlan
    writer: FolderWriter | None
    listed: dict[str, int | None]         # key -> UID, as the folder state lists them
    seen: set[str] = field(default_factory=set)
    dead: bool = False                    # discarded: its remaining messages are ignored


class Engine:
    def __init__(self, store: StoreWriter, options: RestoreOptions, decide: Decide, *,
                 has_full: bool, backup_created: int, fetch: Fetch | None = None,
                 emit: Callable[[str], None] | None = None, forget_linked: bool = False) -> None:
        self.store = store
        self.options = options
        self.decide = decide
        self.has_full = has_full
        self.sibling_suffix = sibling_suffix(backup_created)
        self.fetch = fetch
        self.emit = emit
        self.report = RestoreReport()
        # member name -> RestoredFile, shared inodes only
        self.restored = FirstCopies(store.pack_restored, store.unpack_restored)
        # One archive whose header says ``links_counted``: its backup named a first copy in
        # link members only until it had seen as many links as the inode had (``st_nlink``
        # at each sight, ims/singlecopy.py), and never named a link member.  The same count
        # here forgets a first copy once its last link is placed, so what is remembered is
        # the shared messages whose other links are still to come, not every one restored.
        # (Not the format version: early version 2 backups kept every first copy.)
        self.forget_linked = forget_linked
        self.hits = [False] * len(options.patterns)   # which NAMEs matched something
        self._user: _User | None = None
        self._folder: _Folder | None = None
        self._listing: str | None = None      # -t: the logical name of the folder listed

    # -- errors --------------------------------------------------------------------------

    def _error(self, bucket: list[str], message: str) -> None:
        bucket.append(message)
        debuglog.warning("%s", message)
        if not self.decide(message):
            raise Stop()

    def _list(self, line: str) -> None:
        self.report.listing.append(line)
        if self.emit:
            self.emit(line)

    def mark_hits(self, partition: str, group: str, user: str, folder: str | None) -> None:
        """Record which patterns select this user (``folder`` None) or this folder."""
        for i, p in enumerate(self.options.patterns):
            if p.user_matches(partition, group, user) and (
                    p.folder is None if folder is None else p.folder_matches(folder)):
                self.hits[i] = True

    # -- users -----------------------------------------------------------------------------

    def begin_user(self, record: UserRecord | None, invalid: str | None = None) -> None:
        self.end_user()
        if record is None:
            self._error(self.report.damaged, f"{invalid}: user skipped")
            return
        if not user_selected(self.options.patterns, record.partition, record.group, record.user):
            return
        self.report.matched = True
        self.mark_hits(record.partition, record.group, record.user, None)
        partition = self.options.partition or record.partition
        if not self.store.has_partition(partition):
            # the folders named are found, and left for this reason, not "not in the archive"
            for folder in record.folders:
                self.mark_hits(record.partition, record.group, record.user, folder)
            self._error(self.report.skipped, f"{record.logical}: partition {partition!r} is not"
                        " configured here; use --partition")
            return
        user = map_user(record.user, self.options.user_map)
        whole = any(p.folder is None and p.user_matches(record.partition, record.group, record.user)
                    for p in self.options.patterns)
        self._user = _User(record, partition, user, whole)
        if self.options.list_only:
            self._list(f"user {record.logical} ({len(record.folders)} folders)")
            return
        try:
            self.store.prepare_user(partition, user)
        except (OSError, UnstorableName) as exc:
            self._user = None
            self._error(self.report.skipped, f"{record.logical}: {_reason(exc)}")

    def end_user(self) -> None:
        """Subscriptions go in once the user's folders are restored (the user exists)."""
        self.end_folder()
        user, self._user = self._user, None
        if user is None or self.options.list_only:
            return
        # a user restored as a whole gets back every subscription it had; a partial restore
        # only those of the folders it restored (the user may have unsubscribed from others)
        names = [n for n in user.record.subscriptions if user.whole or n in user.restored]
        if not names:
            return
        try:
            self.store.add_subscriptions(user.partition, user.user, names)
        except StoreLocked as exc:
            self.report.locked.append(f"{user.record.logical}: subscriptions: {exc}")
        except OSError as exc:
            self.report.skipped.append(f"{user.record.logical}: subscriptions: {_reason(exc)}")

    # -- folders ---------------------------------------------------------------------------

    def begin_folder(self, record: FolderRecord | None, invalid: str | None = None) -> None:
        self.end_folder()
        self._listing = None
        user = self._user
        if user is None:
            return
        if record is None:
            self._error(self.report.damaged, f"{invalid}: folder not restored")
            return
        if (record.partition, record.user) != (user.record.partition, user.record.user):
            self._error(self.report.damaged, f"{record.partition}/{record.user}/{record.folder}:"
                        " a folder state outside its user: not restored")
            return
        u = user.record
        if not folder_selected(self.options.patterns, u.partition, u.group, u.user, record.folder):
            return
        logical = f"{u.logical}/{record.folder}"
        self.mark_hits(u.partition, u.group, u.user, record.folder)
        if self.options.list_only:
            self._listing = logical
            if record.messages is not None:
                self._list(f"folder {logical} uidvalidity={record.uidvalidity}"
                           f" next_uid={record.next_uid} messages={len(record.messages)}")
            else:
                self._list(f"folder {logical} unchanged since"
                           f" {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(record.unchanged_since or 0))}"
                           " (its state is in an earlier backup)")
            return
        try:
            live = self.store.live_folder(user.partition, user.user, record.folder)
        except (OSError, UnstorableName) as exc:
            self._error(self.report.skipped, f"{logical}: {_reason(exc)}")
            return
        plan = plan_folder(record, live, has_full=self.has_full,
                           new_sibling=self.options.new_sibling,
                           uid_margin=self.options.uid_margin)
        if plan.action is Action.SKIP:
            self._error(self.report.skipped, f"{logical}: {plan.note}")
            return
        if plan.note:
            self.report.notes.append(f"{logical}: {plan.note}")
        folder = record.folder
        if plan.into_sibling:
            folder = self.store.free_sibling(user.partition, user.user, folder, self.sibling_suffix)
        listed = {m.key: m.uid for m in record.messages or ()}
        try:
            # an interrupt lands before the writer exists or once the engine knows it (and
            # aborts it), never in between with a folder left half-built aside
            with held():
                if plan.action is Action.WHOLE:
                    assert plan.whole is not None
                    writer = self.store.restore_whole(user.partition, user.user, folder,
                                                      plan.whole)
                else:
                    writer = self.store.add_to_folder(user.partition, user.user, folder,
                                                      not self.options.ignore_existing)
                self._folder = _Folder(logical, (user.partition, user.user, folder), plan,
                                       writer, listed)
        except (OSError, UnstorableName) as exc:
            self._error(self.report.skipped, f"{logical}: {_reason(exc)}")
            return
        if not plan.into_sibling:
            user.restored.add(record.folder)

    def end_folder(self) -> None:
        folder, self._folder = self._folder, None
        if folder is None or folder.writer is None:
            return
        try:
            self._commit(folder)
        finally:
            self.restored.settle()

    def _commit(self, folder: _Folder) -> None:
        assert folder.writer is not None
        try:
            try:
                landed = folder.writer.commit()
            except BaseException as exc:
                if not isinstance(exc, (StoreLocked, OSError)):
                    # interrupted (Ctrl-C, SIGTERM) while it went in: nothing half-built stays
                    folder.writer.abort()
                    self.report.add(folder.writer.landed, folder.logical)
                raise
            self.report.add(landed, folder.logical)
        except StoreLocked as exc:
            folder.writer.abort()
            self.report.add(folder.writer.landed, folder.logical)
            self.report.locked.append(str(exc))
            debuglog.error("%s", exc)
            raise Stop() from None
        except OSError as exc:
            folder.writer.abort()
            self.report.add(folder.writer.landed, folder.logical)
            self._error(self.report.skipped, f"{folder.logical}: {_reason(exc)}")

    def _discard_folder(self, folder: _Folder) -> None:
        if folder.writer is not None:
            folder.writer.abort()
            self.report.add(folder.writer.landed, folder.logical)
            folder.writer = None
            self.restored.settle()
        folder.dead = True

    def abort(self) -> None:
        """Interrupted: the folder in progress does not reach the store."""
        folder, self._folder = self._folder, None
        self._user = None
        if folder is not None and folder.writer is not None:
            folder.writer.abort()
            self.report.add(folder.writer.landed, folder.logical)

    # -- messages --------------------------------------------------------------------------

    def message(self, record: MessageRecord | None, invalid: str | None, name: str,
                is_link: bool, linkname: str, data: Callable[[], bytes | memoryview]) -> None:
        folder = self._folder
        if self.options.list_only:
            if self._listing is not None and record is not None:
                link = f" -> {linkname}" if is_link else ""
                self._list(f"{self._listing}/{record.key} uid={record.uid} size={record.size}"
                           f" flags={record.flags} keywords={','.join(record.keywords)}{link}")
            return
        if folder is None or folder.dead:
            return
        if record is None or record.key not in folder.listed or record.key in folder.seen:
            why = invalid or (f"{folder.logical}/{record.key}: listed twice in its folder"
                              if record is not None and record.key in folder.seen else
                              f"{folder.logical}/{record.key if record else name}: not listed in"
                              " its folder state")
            if folder.plan.action is Action.WHOLE:
                self._discard_folder(folder)
                self._error(self.report.damaged, f"{why}; folder {folder.logical} not restored")
            else:
                self._error(self.report.damaged, f"{why}: message not restored")
            return
        folder.seen.add(record.key)
        listed_uid = folder.listed[record.key]
        if record.uid != listed_uid and folder.plan.action is Action.WHOLE:
            # the folder state's UIDs were checked as a whole (unique, in range): they are the
            # ones a folder restored whole gets, whatever a member says
            record = record._replace(uid=listed_uid)
        source = plan_message_source(name, is_link, linkname, self.restored, self.fetch is not None)
        try:
            self._place(folder, record, name, linkname, source, data)
        except MemberDamaged as exc:
            self._error(self.report.damaged, str(exc))
        except StoreLocked as exc:
            self._discard_folder(folder)
            self.report.locked.append(str(exc))
            debuglog.error("%s", exc)
            raise Stop() from None
        except OSError as exc:
            if folder.plan.action is Action.WHOLE:
                # a folder comes back whole or not at all: with a message missing it would
                # exist, and the next run could only add that message with a new UID
                self._discard_folder(folder)
                self._error(self.report.skipped, f"{folder.logical}/{record.key}: {_reason(exc)};"
                            f" folder {folder.logical} not restored (run the restore again once"
                            " the cause is fixed: it comes back whole)")
                return
            self._error(self.report.skipped, f"{folder.logical}/{record.key}: {_reason(exc)}")

    def _place(self, folder: _Folder, record: MessageRecord, name: str, linkname: str,
               source: Source, data: Callable[[], bytes | memoryview]) -> None:
        writer = folder.writer
        assert writer is not None
        if source is Source.INVALID:
            self._error(self.report.damaged, f"{folder.logical}/{record.key}: link to itself")
            return
        if source is Source.LINK:
            first = self.restored[linkname]
            try:
                self._remember_link(name, linkname, record, writer.add_link(record, first))
                return
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOENT, errno.EMLINK):
                    raise
                if exc.errno != errno.ENOENT:       # another file system: copy the bytes
                    self._remember_link(name, linkname, record,
                                        writer.add(record, self.store.read_file(first)))
                    return
            source = Source.FETCH if self.fetch is not None else Source.UNRESOLVED
        if source is Source.FETCH:
            assert self.fetch is not None
            fetched = self.fetch(linkname)
            if fetched is None:
                # the archive (or chain) is all there is: a link to bytes it does not hold
                # is damage, not something a references file could complete
                self._error(self.report.damaged, f"{folder.logical}/{record.key}: its link"
                            f" target {linkname} is not in the archive")
                return
            placed = writer.add(record, fetched)
            # later links to the same first copy become links to this one
            self.restored.setdefault(linkname, placed)
            if self.forget_linked:
                self._remember_link(name, linkname, record, placed)
            else:
                self.restored[name] = placed
            return
        if source is Source.UNRESOLVED:
            partition, user, target_folder = folder.target
            self.report.unresolved.append({
                "partition": partition, "user": user, "folder": target_folder,
                "logical": f"{folder.logical}/{record.key}", "basename": record.key,
                "uid": record.uid, "flags": record.flags, "keywords": list(record.keywords),
                "internaldate": record.internaldate, "is_new": record.is_new, "needs": linkname,
            })
            return
        self._remember(name, record, writer.add(record, data()))

    def _remember(self, name: str, record: MessageRecord, placed: Any) -> None:
        if record.links > 1:
            self.restored[name] = placed

    def _remember_link(self, name: str, linkname: str, record: MessageRecord,
                       placed: Any) -> None:
        """A link member placed: remembered by its own name too (a chain restore may take a
        later link's first copy from another archive), or, with ``forget_linked``, counted as
        a sight of its first copy, which is forgotten after its last link."""
        if not self.forget_linked:
            self._remember(name, record, placed)
            return
        self.restored.sighted(linkname, record.links)

    # -- driving ---------------------------------------------------------------------------

    def member(self, member: Member, read_data: Callable[[Member], bytes | memoryview]) -> None:
        kind = member.kind
        if kind == fmt.MESSAGE:
            self.message(member.record, member.invalid, member.name, member.is_link,
                         member.linkname, lambda: read_data(member))
        elif kind == fmt.FOLDER:
            self.begin_folder(member.record, member.invalid)
        elif kind == fmt.USER:
            self.begin_user(member.record, member.invalid)
            # an incremental's unchanged folders (format version 2): no member of their own
            for state in member.record.unchanged_states() if member.record else ():
                self.begin_folder(state)
        elif kind == fmt.TRAILER:
            self.end_user()

    def run(self, feed: Callable[["Engine"], None]) -> RestoreReport:
        """Drive ``feed``; the report says what landed and what went wrong."""
        started = time.monotonic()
        try:
            feed(self)
            self.end_user()
            self.report.complete = True
        except ReaderDied as exc:
            # not the end of the data: the folder in progress is not known to be complete
            self.report.damaged.append(f"{exc}; the folder in progress was not restored")
            debuglog.error("%s", exc)
            self.abort()
        except (Incomplete, ArchiveDamaged) as exc:
            self.report.damaged.append(str(exc))
            debuglog.error("%s", exc)
            self._end_quietly()
        except Stop:
            self.report.stopped = True
            self._end_quietly()
        except BaseException:
            self.abort()
            raise
        finally:
            self.store.close()
        self.report.unmatched = [i for i, hit in enumerate(self.hits) if not hit]
        self.report.seconds = time.monotonic() - started
        return self.report

    def _end_quietly(self) -> None:
        try:
            self.end_user()
        except Stop:
            pass


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


# -- feeds -------------------------------------------------------------------------------------

def feed_archive(reader: ArchiveReader) -> Callable[[Engine], None]:
    """Every member of one archive, in order."""
    def feed(engine: Engine) -> None:
        for member in reader.members():
            engine.member(member, reader.read_data)
    return feed


def feed_indexed(reader: ArchiveReader, trailer: TrailerRecord) -> Callable[[Engine], None]:
    """Only the selected users' members of a seekable archive, by the trailer's offsets
    (each message still checked against its digest)."""
    def feed(engine: Engine) -> None:
        for entry in trailer.users:
            if not user_selected(engine.options.patterns, entry.partition, entry.group, entry.user):
                continue
            member = _user_member(reader, entry)
            engine.member(member, reader.data_at)
            for extent in list(trailer.folders.of_user(entry.partition, entry.user)):
                for member in reader.members_between(extent.offset, extent.end):
                    engine.member(member, reader.data_at)
            engine.end_user()
    return feed


def _user_member(reader: ArchiveReader, entry: UserExtent) -> Member:
    """The user member the trailer's ``users`` entry points to, its record decoded."""
    member = reader.member_at(entry.offset)
    if member is None or member.kind != fmt.USER:
        raise ArchiveDamaged(f"{reader.device_name}: no user member at byte"
                             f" {entry.offset} as the index says")
    reader.json_at(member)
    decode_record(member)
    return member


def indexed_folders(reader: ArchiveReader, trailer: TrailerRecord,
                    patterns: tuple[Pattern, ...]) -> Iterator[tuple[str, str, str, str]]:
    """(partition, group, user, folder) of the folders a seekable archive holds, for the
    check that every NAME selects something: the trailer's index, and the unchanged
    folders of an incremental, which are in their user member only (read for the users a
    NAME with a folder may select).  A user member that cannot be read adds nothing here:
    the restore names it."""
    groups = {(u.partition, u.user): u.group for u in trailer.users}
    for f in trailer.folders:
        yield f.partition, groups.get((f.partition, f.user), ""), f.user, f.folder
    for entry in trailer.users:
        if not any(p.folder is not None and p.user_matches(entry.partition, entry.group,
                                                          entry.user) for p in patterns):
            continue
        try:
            record = _user_member(reader, entry).record
        except ArchiveDamaged:
            continue
        if record is not None:
            for unchanged in record.unchanged:
                yield entry.partition, entry.group, entry.user, unchanged.folder


def fetch_by_name(reader: ArchiveReader, trailer: TrailerRecord | None = None) -> Fetch:
    """A message's bytes found by member name in a seekable archive (the trailer's index,
    located when first needed if not given); each folder is scanned once, its data members
    remembered by name."""
    scanned: dict[tuple[str, str, str], dict[str, Member]] = {}
    located: list[TrailerRecord] = [trailer] if trailer is not None else []

    def fetch(name: str) -> bytes | None:
        parts = name.split("/")
        if len(parts) < 4:
            return None
        key = (parts[0], parts[1], "/".join(parts[2:-1]))
        if key not in scanned:
            if not located:
                found = reader.locate_trailer()
                if found is None:
                    return None
                located.append(found)
            extent = located[0].folders.find(*key)
            if extent is None:
                return None
            if len(scanned) > 64:           # links point mostly to recent folders
                scanned.clear()
            scanned[key] = {m.name: m for m in reader.members_between(extent.offset, extent.end)
                            if m.kind == fmt.MESSAGE and not m.is_link}
        member = scanned[key].get(name)
        return None if member is None else reader.data_at(member)
    return fetch
