"""The restore engine: archive -> plan -> store, with the UID rules of DESIGN §7 in one place.

Per folder of the selection, when its state member arrives:

1. The folder is gone, or has never handed out a UID: it comes back as one unit with the
   archive's UIDVALIDITY, GUID, UIDs and next UID (the larger of the recorded next UID and
   the highest archived UID + 1), built aside and moved into place (``NewFolder``).  If
   Dovecot created it meanwhile, rule 2 takes the messages.
2. The folder exists: each message not already there (same maildir base name listed in its
   uidlist) gets the folder's next UID as it lands, under the lock, in batches
   (``ExistingFolder``).  ``-i`` skips the check; ``-n`` restores into a new sibling folder
   ``<folder>_<YYYYMMDD of the backup>`` instead.

Links: a hard-link member whose first copy was restored in this run becomes a hard link
again (one inode for several users, as Sun's partial-restore Example 1).  Otherwise, from a
seekable archive the first copy's data is read by offset (trailer index); from a pipe the
message is listed in a references file for ``imsrestore -r`` (exit 5).

Failure behaviour: a damaged message (digest) is skipped and reported (exit 4 at the end);
a stream cut short keeps every message already restored, commits the folder in progress and
reports where it ended (exit 4); a folder whose lock is not released in time is reported
(exit 3); a message that cannot be written is skipped (exit 1).  ``decide`` (from ``-c``)
says whether to go on after an error.  Names from the archive never become paths unchecked.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ims.archive import format as fmt
from ims.archive.reader import ArchiveIndex, ArchiveReader, Incomplete, Member, MemberDamaged
from ims.config import Config, EVERYONE_GROUPS
from ims.errors import ArchiveDamaged, ExitCode, StoreLocked, UsageError, most_serious
from ims.names import in_folder, normalize_folder
from ims.store import mutf7
from ims.store.maildir import INBOX, MaildirStore, folder_to_dirname
from ims.store.maildir_write import (ExistingFolder, Message, NewFolder, Owner, is_pristine,
                                     make_dirs, make_maildir, replace_file)

log = logging.getLogger("ims.restore")

_SYSTEM_FLAGS = set("DFPRST")


# -- what to restore ---------------------------------------------------------------------

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


# -- validation of names coming from an archive -----------------------------------------------

def valid_user(user: str) -> bool:
    return bool(user) and user not in (".", "..") and "/" not in user and "\0" not in user \
        and not user.startswith(".")


def valid_folder(folder: str) -> bool:
    if not folder or "\0" in folder:
        return False
    return all(level and level not in (".", "..") and "." not in level
               for level in folder.split("/"))


def valid_key(key: str) -> bool:
    return bool(key) and key not in (".", "..") and "/" not in key and ":" not in key \
        and "\0" not in key and not key.startswith(".")


# -- the engine ------------------------------------------------------------------------

@dataclass(frozen=True)
class RestoreOptions:
    patterns: tuple[Pattern, ...] = (Pattern(),)
    ignore_existing: bool = False           # -i
    new_sibling: bool = False               # -n
    user_map: dict[str, str] = field(default_factory=dict)
    partition: str | None = None            # --partition
    lock_timeout: float = 60.0
    sync: bool = False
    list_only: bool = False                 # -t
    batch: int = 500                        # messages per lock hold (rule 2)


@dataclass
class RestoreReport:
    messages: int = 0           # messages written (data or link)
    links: int = 0              # of which hard links to a message restored in this run
    bytes: int = 0
    already_there: int = 0
    folders_whole: int = 0      # rule 1
    folders_merged: int = 0     # rule 2
    unresolved: list[dict[str, Any]] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    locked: list[str] = field(default_factory=list)
    listing: list[str] = field(default_factory=list)
    matched: bool = False
    complete: bool = False
    seconds: float = 0.0

    def exit_code(self) -> int:
        codes = [ExitCode.OK]
        if self.damaged or not self.complete:
            codes.append(ExitCode.DAMAGED)
        if self.locked:
            codes.append(ExitCode.LOCKED)
        if self.unresolved:
            codes.append(ExitCode.UNRESOLVED_LINKS)
        if self.skipped:
            codes.append(ExitCode.SKIPPED)
        return most_serious(*codes)


Decide = Callable[[str], bool]


class _Stop(Exception):
    pass


@dataclass
class _Placed:
    folder: Any         # NewFolder or ExistingFolder
    handle: Any

    def path(self) -> Path:
        return self.folder.current_path(self.handle)


class Restorer:
    def __init__(self, config: Config, store: MaildirStore, options: RestoreOptions,
                 decide: Decide, emit: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.store = store
        self.options = options
        self.decide = decide
        self.emit = emit
        self.report = RestoreReport()
        self.placed: dict[str, _Placed] = {}     # member name -> where its file is now
        self.owners: dict[tuple[str, str], Owner] = {}
        self.index: ArchiveIndex | None = None
        self.reader: ArchiveReader | None = None
        self._folder: Any = None
        self._folder_logical = ""
        self._new_folder_target: Path | None = None
        self._user: dict[str, Any] | None = None
        self._target: tuple[str, str] | None = None   # (partition, user) in the store
        self._folder_selected = False
        self._backup_date = ""
        self._counter = 0
        self._partition_owners: dict[str, Owner] = {}

    # -- driving ---------------------------------------------------------------------

    def run(self, reader: ArchiveReader) -> RestoreReport:
        started = time.monotonic()
        self.reader = reader
        header = reader.read_header()
        self._backup_date = time.strftime("%Y%m%d", time.localtime(header.get("created", 0)))
        if reader.seekable:
            trailer = reader.locate_trailer()
            if trailer is not None:
                self.index = ArchiveIndex.from_trailer(trailer)
        self._read_data = reader.read_data
        try:
            if self.index is not None and self._partial():
                self._run_indexed(reader, self.index)
            else:
                for member in reader.members():
                    self._member(member)
            self.report.complete = True
        except Incomplete as exc:
            self._fail(str(exc))
        except ArchiveDamaged as exc:
            self._fail(str(exc))
        except _Stop:
            pass
        finally:
            self._close_folder()
            self._close_user()
        self.report.seconds = time.monotonic() - started
        return self.report

    def _partial(self) -> bool:
        return all(p.partition not in (None, "*") or p.user is not None
                   for p in self.options.patterns) and not self.options.list_only

    def _run_indexed(self, reader: ArchiveReader, index: ArchiveIndex) -> None:
        """A part of a seekable archive: only the selected users' members are read, by
        offset from the trailer's index (each message still checked against its digest)."""
        self._read_data = reader.data_at
        for entry in index.users:
            if not any(p.user_matches(entry["partition"], entry.get("group", ""), entry["user"])
                       for p in self.options.patterns):
                continue
            member = reader.member_at(entry["offset"])
            if member is None or member.kind != fmt.USER:
                raise ArchiveDamaged(f"{reader.device_name}: no user member at byte"
                                     f" {entry['offset']} as the index says")
            reader.json_at(member)
            self._close_folder()
            self._close_user()
            self._member(member)
            for extent in index.folders:
                if (extent.partition, extent.user) != (entry["partition"], entry["user"]):
                    continue
                for member in reader.members_between(extent.offset, extent.end):
                    self._member(member)
        self._close_folder()
        self._close_user()

    def _fail(self, message: str) -> None:
        self.report.damaged.append(message)
        log.error("%s", message)

    def _error(self, bucket: list[str], message: str) -> None:
        bucket.append(message)
        log.warning("%s", message)
        if not self.decide(message):
            raise _Stop()

    def _member(self, member: Member) -> None:
        kind = member.kind
        if kind == fmt.USER:
            self._close_folder()
            self._close_user()
            self._open_user(member.body)
        elif kind == fmt.FOLDER:
            self._close_folder()
            self._open_folder(member.body)
        elif kind == fmt.MESSAGE:
            if self._folder_selected:
                self._message(member)
        elif kind == fmt.TRAILER:
            self._close_folder()
            self._close_user()

    # -- users and folders -----------------------------------------------------------

    def _open_user(self, body: dict[str, Any]) -> None:
        partition, group, user = body.get("partition", ""), body.get("group", ""), body.get("user", "")
        if not any(p.user_matches(partition, group, user) for p in self.options.patterns):
            return
        self.report.matched = True
        if not valid_user(str(user)):
            self._error(self.report.damaged, f"archive names an invalid user {user!r}: skipped")
            return
        target_user = map_user(user, self.options.user_map)
        target_partition = self.options.partition or partition
        if target_partition not in self.store.partition_dirs:
            self._error(self.report.skipped, f"/{partition}/{group}/{user}: partition"
                        f" {target_partition!r} is not configured here; use --partition")
            return
        self._user = body
        self._target = (target_partition, target_user)
        if self.options.list_only:
            self._list(f"user /{partition}/{group}/{user} ({len(body.get('folders', []))} folders)")
            return
        maildir = self.store.maildir(target_partition, target_user)
        make_dirs(maildir.parent, self._owner(target_partition, target_user))

    def _close_user(self) -> None:
        """Subscriptions go in once the user's folders are restored (the Maildir exists)."""
        user, target = self._user, self._target
        self._user = self._target = None
        if user is None or target is None or self.options.list_only:
            return
        names = [n for n in user.get("subscriptions") or [] if valid_folder(str(n))]
        maildir = self.store.maildir(*target)
        if names and maildir.is_dir():
            try:
                merge_subscriptions(maildir, names, self._owner(*target))
            except OSError as exc:
                self.report.skipped.append(f"{maildir}/subscriptions: {exc.strerror or exc}")

    def _owner(self, partition: str, user: str) -> Owner:
        key = (partition, user)
        if key in self.owners:
            return self.owners[key]
        msg = self.config.msg
        uid, gid = msg.get("local.store.uid"), msg.get("local.store.gid")
        if uid and gid and uid.isdigit() and gid.isdigit():
            owner = Owner(int(uid), int(gid))
        else:
            owner = self._owner_from_store(partition, user)
        self.owners[key] = owner
        return owner

    def _owner_from_store(self, partition: str, user: str) -> Owner:
        maildir = self.store.maildir(partition, user)
        for candidate in (maildir, maildir.parent):
            try:
                st = os.stat(candidate)
                if candidate != self.store.partition_dirs[partition]:
                    return Owner(st.st_uid, st.st_gid)
            except FileNotFoundError:
                continue
        if partition not in self._partition_owners:
            # the owner the partition's other users share (listed once per partition)
            owner = None
            for other in self.store.users(partition):
                try:
                    st = os.stat(self.store.maildir(partition, other))
                    owner = Owner(st.st_uid, st.st_gid)
                    break
                except OSError:
                    continue
            if owner is None:
                st = os.stat(self.store.partition_dirs[partition])
                owner = Owner(st.st_uid, st.st_gid)
            self._partition_owners[partition] = owner
        return self._partition_owners[partition]

    def _open_folder(self, state: dict[str, Any]) -> None:
        self._folder_selected = False
        if self._user is None or self._target is None:
            return
        if (state.get("partition"), state.get("user")) != (self._user.get("partition"),
                                                           self._user.get("user")):
            self._error(self.report.damaged, "a folder state outside its user: skipped")
            return
        folder = state.get("folder", "")
        user = self._user
        if not any(p.user_matches(user["partition"], user.get("group", ""), user["user"])
                   and p.folder_matches(folder) for p in self.options.patterns):
            return
        if not valid_folder(str(folder)):
            self._error(self.report.damaged, f"archive names an invalid folder {folder!r}: skipped")
            return
        self._folder_logical = f"/{user['partition']}/{user.get('group')}/{user['user']}/{folder}"
        self._folder_selected = True
        if state.get("unchanged_since") is not None:
            self._folder_selected = False   # nothing of it in this archive
            return
        if self.options.list_only:
            self._list(f"folder {self._folder_logical} uidvalidity={state.get('uidvalidity')}"
                       f" next_uid={state.get('next_uid')} messages={len(state.get('messages') or [])}")
            return
        partition, target_user = self._target
        owner = self._owner(partition, target_user)
        maildir = self.store.maildir(partition, target_user)
        if folder != INBOX and not maildir.is_dir():
            make_maildir(maildir, owner, marker=False)     # an empty INBOX to hang it on
        target = self._folder_path(maildir, folder)
        if self.options.new_sibling and target.exists() and not is_pristine(target):
            target = self._sibling(maildir, folder)
        try:
            if target.exists() and not is_pristine(target):
                self._folder = ExistingFolder(target, owner, self.options.lock_timeout,
                                              not self.options.ignore_existing, self.options.sync,
                                              self.options.batch)
                self.report.folders_merged += 1
            else:
                aside_dir = (maildir.parent if folder == INBOX else maildir / "tmp")
                self._counter += 1
                aside = aside_dir / f".ims-restore.{os.getpid()}.{self._counter}"
                self._folder = NewFolder(target, aside, owner, state, folder == INBOX,
                                         self.options.sync)
                self._new_folder_target = target
        except OSError as exc:
            self._folder = None
            self._folder_selected = False
            self._error(self.report.skipped, f"{self._folder_logical}: {exc.strerror or exc}")

    def _folder_path(self, maildir: Path, folder: str) -> Path:
        return maildir if folder == INBOX else maildir / folder_to_dirname(folder)

    def _sibling(self, maildir: Path, folder: str) -> Path:
        base = f"{folder}_{self._backup_date}"
        candidate, n = base, 1
        while True:
            path = self._folder_path(maildir, candidate)
            if not path.exists():
                return path
            n += 1
            candidate = f"{base}_{n}"

    def _close_folder(self) -> None:
        folder, self._folder = self._folder, None
        self._folder_selected = False
        if folder is None:
            return
        try:
            if isinstance(folder, NewFolder):
                self._commit_new(folder)
            else:
                folder.commit()
                self.report.already_there += folder.already_there
        except StoreLocked as exc:
            self.report.locked.append(str(exc))
            log.error("%s", exc)
        except OSError as exc:
            self.report.skipped.append(f"{self._folder_logical}: {exc.strerror or exc}")

    def _commit_new(self, folder: NewFolder) -> None:
        target = folder.target
        if not target.exists():
            if folder.commit():
                self.report.folders_whole += 1
                return
        elif folder.commit_into_existing(self.options.lock_timeout):
            self.report.folders_whole += 1
            return
        # Dovecot created it meanwhile (a delivery): rule 2 for what was built
        merged = ExistingFolder(target, folder.owner, self.options.lock_timeout,
                                not self.options.ignore_existing, self.options.sync)
        moved = folder.hand_over(merged)
        for placed in self.placed.values():
            if placed.folder is folder:
                placed.folder, placed.handle = merged, moved[placed.handle]
        merged.commit()
        self.report.already_there += merged.already_there
        self.report.folders_merged += 1

    # -- messages --------------------------------------------------------------------

    def _message(self, member: Member) -> None:
        pax = member.pax
        key = pax.get("IMS.basename", "")
        if not valid_key(key):
            self._error(self.report.damaged, f"{self._folder_logical}: invalid message name"
                        f" {key!r} in the archive: skipped")
            return
        try:
            message = Message(
                key=key,
                uid=int(pax["IMS.uid"]) if pax.get("IMS.uid") else None,
                flags="".join(f for f in pax.get("IMS.flags", "") if f in _SYSTEM_FLAGS),
                keywords=tuple(k for k in pax.get("IMS.keywords", "").split() if k),
                internaldate=int(pax.get("IMS.internaldate", member.mtime)),
                is_new=pax.get("IMS.state") == "new",
            )
        except ValueError:
            self._error(self.report.damaged, f"{self._folder_logical}/{key}: bad metadata: skipped")
            return
        if member.typeflag not in (fmt.REGULAR, fmt.HARDLINK):
            self._error(self.report.damaged, f"{self._folder_logical}/{key}: member type"
                        f" {member.typeflag!r} is not a message: skipped")
            return
        if self.options.list_only:
            link = f" -> {member.linkname}" if member.is_link else ""
            self._list(f"{self._folder_logical}/{key} uid={message.uid} size={pax.get('IMS.size')}"
                       f" flags={message.flags} keywords={','.join(message.keywords)}{link}")
            return
        folder = self._folder
        if folder is None:
            return
        try:
            if member.is_link:
                self._restore_link(member, message, folder)
            else:
                data = self._read_data(member)
                handle = folder.add(message, data)
                self._remember(member, folder, handle)
                self.report.messages += 1
                self.report.bytes += len(data)
        except MemberDamaged as exc:
            self._error(self.report.damaged, str(exc))
        except StoreLocked as exc:
            self.report.locked.append(str(exc))
        except OSError as exc:
            self._error(self.report.skipped, f"{self._folder_logical}/{key}: {exc.strerror or exc}")

    def _remember(self, member: Member, folder: Any, handle: Any) -> None:
        if int(member.pax.get("IMS.links", "1") or 1) > 1:
            self.placed[member.name] = _Placed(folder, handle)

    def _restore_link(self, member: Member, message: Message, folder: Any) -> None:
        target = member.linkname
        if target == member.name:
            self._error(self.report.damaged, f"{self._folder_logical}/{message.key}: link to itself")
            return
        placed = self.placed.get(target)
        if placed is not None:
            try:
                handle = folder.add_link(message, placed.path())
                self._remember(member, folder, handle)
                self.report.messages += 1
                self.report.links += 1
                return
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOENT, errno.EMLINK):
                    raise
                data = placed.path().read_bytes() if exc.errno != errno.ENOENT else None
                if data is not None:
                    handle = folder.add(message, data)
                    self._remember(member, folder, handle)
                    self.report.messages += 1
                    self.report.bytes += len(data)
                    return
        data = self._data_by_name(target)
        if data is None:
            self.report.unresolved.append({
                "partition": self._target[0] if self._target else "",
                "user": self._target[1] if self._target else "",
                "folder": self._folder_logical.split("/", 4)[-1],
                "logical": f"{self._folder_logical}/{message.key}",
                "basename": message.key, "uid": message.uid, "flags": message.flags,
                "keywords": list(message.keywords), "internaldate": message.internaldate,
                "is_new": message.is_new, "needs": target,
            })
            return
        handle = folder.add(message, data)
        self.placed[member.name] = _Placed(folder, handle)
        self.placed.setdefault(target, _Placed(folder, handle))
        self.report.messages += 1
        self.report.bytes += len(data)

    def _data_by_name(self, name: str) -> bytes | None:
        """A message's data found by member name in a seekable archive (trailer index)."""
        if self.reader is None or not self.reader.seekable or self.index is None:
            return None
        return data_by_name(self.reader, self.index, name)

    def _list(self, line: str) -> None:
        self.report.listing.append(line)
        if self.emit:
            self.emit(line)


def data_by_name(reader: ArchiveReader, index: ArchiveIndex, name: str) -> bytes | None:
    parts = name.split("/")
    if len(parts) < 4:
        return None
    partition, user, folder = parts[0], parts[1], "/".join(parts[2:-1])
    extent = index.folder(partition, user, folder)
    if extent is None:
        return None
    member = reader.find_member(name, extent.offset, extent.end)
    if member is None or member.is_link:
        return None
    return reader.data_at(member)


# -- references files (partial restores from a pipe) --------------------------------------

def write_refs(path: Path, header: dict[str, Any], unresolved: list[dict[str, Any]]) -> None:
    lines = [json.dumps({"format": "imsrestore-refs", "version": 1,
                         "archive_created": header.get("created"),
                         "archive_host": header.get("host")})]
    lines += [json.dumps(entry, ensure_ascii=False) for entry in unresolved]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_refs(path: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the references file: {exc.strerror}") from None
    try:
        head = json.loads(lines[0])
        if head.get("format") != "imsrestore-refs":
            raise ValueError
        entries = [json.loads(line) for line in lines[1:] if line.strip()]
    except (ValueError, IndexError):
        raise UsageError(f"{path}: not an imsrestore references file") from None
    return head, entries


def restore_refs(config: Config, store: MaildirStore, reader: ArchiveReader,
                 entries: list[dict[str, Any]], options: RestoreOptions,
                 decide: Decide) -> RestoreReport:
    """Complete a pipe restore: each listed message from the copy it needs, by rule 2."""
    restorer = Restorer(config, store, options, decide)
    report = restorer.report
    reader.read_header()
    trailer = reader.locate_trailer()
    if trailer is None:
        raise ArchiveDamaged(f"{reader.device_name}: no trailer: -r needs the complete archive file")
    index = ArchiveIndex.from_trailer(trailer)
    folders: dict[tuple[str, str, str], ExistingFolder] = {}
    for entry in entries:
        partition, user, folder = entry.get("partition"), entry.get("user"), entry.get("folder")
        key = entry.get("basename", "")
        if not (valid_user(str(user)) and valid_folder(str(folder)) and valid_key(str(key))
                and partition in store.partition_dirs):
            report.damaged.append(f"references file entry {entry!r} is not valid: skipped")
            continue
        data = data_by_name(reader, index, entry.get("needs", ""))
        if data is None:
            report.skipped.append(f"{entry.get('logical')}: {entry.get('needs')} is not in"
                                  f" {reader.device_name}")
            continue
        target_key = (partition, user, folder)
        if target_key not in folders:
            owner = restorer._owner(partition, user)
            maildir = store.maildir(partition, user)
            if not maildir.is_dir():
                make_maildir(maildir, owner, marker=False)
            folders[target_key] = ExistingFolder(restorer._folder_path(maildir, folder), owner,
                                                 options.lock_timeout,
                                                 not options.ignore_existing, options.sync)
        message = Message(key, entry.get("uid"), entry.get("flags", ""),
                          tuple(entry.get("keywords", [])), int(entry.get("internaldate", 0)),
                          bool(entry.get("is_new")))
        folders[target_key].add(message, data)
        report.messages += 1
        report.bytes += len(data)
    for target in folders.values():
        try:
            target.commit()
            report.already_there += target.already_there
        except StoreLocked as exc:
            report.locked.append(str(exc))
    report.matched = True
    report.complete = True
    return report


def merge_subscriptions(maildir: Path, names: list[str], owner: Owner) -> None:
    """Add folder names to Dovecot's ``subscriptions`` (``V\t2`` format, TAB-separated
    levels in modified UTF-7), keeping what is there."""
    path = maildir / "subscriptions"
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    except FileNotFoundError:
        lines = []
    if lines and lines[0].startswith("V\t"):
        lines = lines[1:]
    entries = [line for line in lines if line]
    wanted = ["\t".join(mutf7.encode(level) for level in name.split("/")) for name in names]
    merged = entries + [w for w in wanted if w not in entries]
    if merged != entries:
        replace_file(maildir, "subscriptions", "V\t2\n\n" + "\n".join(merged) + "\n", owner)
