"""The backup engine: scope + store driver -> archive stream.

Order of the stream: the header member; per user a user member; per folder its state member
(UIDVALIDITY, GUID, next UID, keywords and every listed message's key, UID and flags), then
its messages; the trailer last.  Single copy: a message file with at least ``link_min``
links whose inode (device, inode) was already written becomes a hard-link member naming the
first copy; the table only holds such inodes, so memory grows with shared files, not with
the store.

Incremental (``since``): a folder whose ``cur/`` and ``new/`` have not changed since the
date cannot hold a changed message, so it is not listed and has no member: its user member
names it, with its identity, among the ``unchanged`` folders (format version 2).  In other
folders a message is taken when its inode's ctime is at or after the date (delivery, COPY,
flag-change rename and link() all set it).  That may take a few more messages, never fewer.

The store is read by ``ims.readahead`` in a child process; this module writes what it sends,
in order, and keeps the counts.

Failure behaviour: a message that vanished (expunged) is counted; one that cannot be read is
skipped and listed (exit 1); a device error propagates as ``DeviceError`` before the trailer,
so an interrupted stream never looks complete.  A folder or user directory that disappears
while being read is reported as skipped, never aborts the run.
"""

from __future__ import annotations

import hashlib
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import ims
from ims import debuglog
from ims.archive import format as fmt
from ims.archive.records import ArchiveHeader, FolderRecord, UnchangedFolder, UserRecord
from ims.archive.writer import ArchiveWriter
from ims.config import Config
from ims.names import Scope
from ims.readahead import (CANNOT_HOLD, FLAGS, INFO, IS_NEW, KEY, KEYWORDS, O_ENTRY, O_GID, O_INDEX,
                           O_KIND, O_LENGTH, O_LINK_TARGET, O_MTIME, O_REASON, O_SHA256,
                           O_NLINK, O_SIZE, O_START, O_UID, UID, Batch, FolderDone, FolderItem,
                           StoreReadAhead, UserItem)
from ims.store.base import StoreReader


@dataclass(frozen=True)
class BackupOptions:
    names: tuple[str, ...]
    since: float | None = None          # epoch seconds; None = full backup
    since_text: str | None = None       # as given on the command line
    link_min: int = 2                   # -m: only inodes with >= this many links are tracked
    full_copies: bool = False           # -i: no hard-link members
    ignore_exclusions: bool = False     # -x
    blocking_factor: int = fmt.DEFAULT_BLOCKING_FACTOR


@dataclass
class BackupReport:
    messages: int = 0       # message members with data
    links: int = 0          # hard-link members
    bytes: int = 0          # message bytes stored
    vanished: int = 0
    vanished_folders: int = 0   # deleted during the backup: counted, not errors
    folders: int = 0
    users: int = 0
    unchanged_folders: int = 0
    skipped: list[str] = field(default_factory=list)
    excluded_folders: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    empty_groups: list[str] = field(default_factory=list)   # named in warnings too; no mail lost
    seconds: float = 0.0


ProgressFn = Callable[[BackupReport, str], None]


def run_backup(config: Config, store: StoreReader, scope: Scope, writer: ArchiveWriter,
               options: BackupOptions, progress: ProgressFn | None = None) -> BackupReport:
    started = time.monotonic()
    report = BackupReport(warnings=list(scope.warnings), empty_groups=list(scope.empty_groups))
    now = int(time.time())
    exclusions = [] if options.ignore_exclusions else config.msg.exclusions()
    header = ArchiveHeader(
        created=now, since=options.since, blocking_factor=options.blocking_factor,
        names=tuple(options.names), archive_id=uuid.uuid4().hex, host=socket.gethostname(),
        tool=f"imsbackup {ims.__version__}", since_text=options.since_text,
        options={"link_min": options.link_min, "full_copies": options.full_copies,
                 "ignore_exclusions": options.ignore_exclusions, "exclusions": exclusions,
                 # ims.singlecopy: a first copy is named until its inode's links were all met
                 "links_counted": True})
    writer.add_json(fmt.HEADER_NAME, fmt.HEADER, header.encode(
        fmt.FORMAT_NAME, fmt.FORMAT_VERSION,
        time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now))), now)

    readahead = StoreReadAhead(store, scope, exclusions, options.since, options.link_min,
                               options.full_copies)
    readahead.start()
    try:
        _write_items(readahead, writer, report, now, options.since, progress)
    finally:
        readahead.stop()
    report.seconds = time.monotonic() - started
    writer.finish({
        "format": fmt.FORMAT_NAME,
        "complete": True,
        # ``folders`` counts folder-state members (a reader checks it against those it
        # read); the unchanged folders are entries of their users' members
        "counts": {"users": report.users,
                   "folders": report.folders - report.unchanged_folders,
                   "messages": report.messages, "links": report.links,
                   "bytes": report.bytes, "vanished": report.vanished,
                   "unchanged_folders": report.unchanged_folders},
        "skipped": report.skipped,
        "excluded_folders": report.excluded_folders,
    }, int(time.time()))
    return report


def _write_items(readahead: StoreReadAhead, writer: ArchiveWriter, report: BackupReport,
                 now: int, since: float | None, progress: ProgressFn | None) -> None:
    folder: FolderItem | None = None
    prefix = b""
    flag_parts: dict[str, bytes] = {}
    for item in readahead:
        if isinstance(item, Batch):
            if item.outcomes:
                assert folder is not None
                _write_batch(item, readahead.view(item.slot) if item.slot is not None else None,
                             folder, prefix, flag_parts, writer, report)
            if item.release:
                writer.settle()         # nothing of the slot's bytes is left unwritten
                readahead.release(item.slot)
        elif isinstance(item, FolderItem):
            prefix = f"{item.partition}/{item.user}/{item.folder}/".encode("utf-8", "surrogateescape")
            member = prefix.decode("utf-8", "surrogateescape") + fmt.FOLDER_MEMBER
            if item.vanished:
                report.vanished_folders += 1
                report.warnings.append(f"{item.logical}: deleted during the backup (not in it)")
                continue
            if item.state is None:
                report.skipped.append(f"{item.logical}: {item.error}")
                continue
            folder = item
            flag_parts = {}
            state = item.state
            report.skipped.extend(f"{item.logical}/{key!r}: {CANNOT_HOLD}" for key in item.refused)
            report.skipped.extend(f"{item.logical}: {problem}" for problem in state.problems)
            report.warnings.extend(state.notes)
            writer.begin_folder(member, FolderRecord.encode_listed(
                item.partition, item.user, item.folder, None, state.uidvalidity, state.next_uid,
                state.guid, list(state.keywords), state.highest_modseq,
                [[m[KEY], m[UID], m[FLAGS], list(m[KEYWORDS])] for m in item.messages],
                item.identity), now)
        elif isinstance(item, FolderDone):
            assert folder is not None
            writer.end_folder()
            report.folders += 1
            debuglog.debug("%s: folder written", folder.logical)
            if progress:
                progress(report, folder.logical)
            folder = None
        elif isinstance(item, UserItem):
            logical = f"/{item.partition}/{item.group}/{item.user}"
            if item.info is None:
                report.skipped.append(f"{logical}: {item.error}")
                continue
            report.skipped.extend(f"{logical}: {problem}" for problem in item.info.problems)
            report.excluded_folders.extend(f"{logical}/{f}" for f in item.excluded)
            writer.user_index.append({"partition": item.partition, "user": item.user,
                                      "group": item.group, "offset": writer.offset})
            writer.add_json(f"{item.partition}/{item.user}/{fmt.USER_MEMBER}", fmt.USER, UserRecord(
                item.partition, item.user, item.group, item.info.uid, item.info.gid,
                tuple(item.info.subscriptions), tuple(item.folders),
                tuple(item.excluded), tuple(UnchangedFolder(*entry) for entry in item.unchanged),
                since if item.unchanged else None).encode(), now)
            report.users += 1
            report.unchanged_folders += len(item.unchanged)
            report.folders += len(item.unchanged)


def _write_batch(batch: Batch, view: memoryview | None, folder: FolderItem, prefix: bytes,
                 flag_parts: dict[str, bytes], writer: ArchiveWriter, report: BackupReport) -> None:
    listed = folder.messages
    for outcome in batch.outcomes:
        kind = outcome[O_KIND]
        if kind == "chunk":
            assert view is not None
            start = outcome[O_START]
            writer.add_large_chunk(view[start:start + outcome[O_LENGTH]])
            continue
        entry = outcome[O_ENTRY] or listed[outcome[O_INDEX]]
        if kind == "vanished":
            report.vanished += 1
            debuglog.debug("vanished %s/%s", folder.logical, entry[KEY])
            continue
        if kind == "skipped":
            report.skipped.append(f"{folder.logical}/{entry[KEY]}: {outcome[O_REASON]}")
            debuglog.warning("skipped %s/%s: %s", folder.logical, entry[KEY], outcome[O_REASON])
            continue
        if kind == "large_end":
            if not writer.end_large_message():
                report.skipped.append(f"{folder.logical}/{entry[KEY]}: could not be read to its"
                                      " end (a read error, or the file shrank); the archived"
                                      " copy is damaged")
            continue
        key = entry[KEY].encode("utf-8", "surrogateescape")
        info = entry[INFO]
        flags_part = flag_parts.get(info)
        if flags_part is None:
            flags_part = flag_parts[info] = fmt.flag_records(entry[FLAGS], entry[KEYWORDS], info)
        mtime = outcome[O_MTIME]
        if kind == "data":
            assert view is not None
            start, length = outcome[O_START], outcome[O_LENGTH]
            data = view[start:start + length]
            # the child leaves the hash to this process when it waits for the child
            sha256 = outcome[O_SHA256] or hashlib.sha256(data).hexdigest()
            writer.add_message(prefix + key, data, mtime,
                               fmt.message_records(entry[UID], flags_part, entry[IS_NEW], mtime,
                                                   key, length, sha256, outcome[O_NLINK]),
                               outcome[O_UID], outcome[O_GID])
            report.messages += 1
            report.bytes += length
        elif kind == "link":
            writer.add_link(prefix + key, outcome[O_LINK_TARGET], mtime, fmt.message_records(
                entry[UID], flags_part, entry[IS_NEW], mtime, key, outcome[O_SIZE], None,
                outcome[O_NLINK]),
                outcome[O_UID], outcome[O_GID])
            report.links += 1
        elif kind == "large":
            size = outcome[O_SIZE]
            writer.begin_large_message(prefix + key, size, mtime, fmt.message_records(
                entry[UID], flags_part, entry[IS_NEW], mtime, key, size, outcome[O_SHA256],
                outcome[O_NLINK]),
                outcome[O_UID], outcome[O_GID])
            report.messages += 1
            report.bytes += size


def summary(report: BackupReport, exit_code: int) -> dict[str, Any]:
    return {
        "exit_code": exit_code,
        "messages": report.messages,
        "bytes": report.bytes,
        "links": report.links,
        "vanished": report.vanished,
        "vanished_folders": report.vanished_folders,
        "skipped": report.skipped,
        "excluded_folders": report.excluded_folders,
        "folders": report.folders,
        "unchanged_folders": report.unchanged_folders,
        "users": report.users,
        "warnings": report.warnings,
        "empty_groups": report.empty_groups,
        "seconds": round(report.seconds, 3),
    }


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
