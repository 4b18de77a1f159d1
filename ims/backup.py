"""The backup engine: scope + store driver -> archive stream.

Order of the stream: the header member; per user a user member; per folder its state member
(UIDVALIDITY, GUID, next UID, keywords and every listed message's key, UID and flags), then
its messages; the trailer last.  Single copy: a message file with at least ``link_min``
links whose inode (device, inode) was already written becomes a hard-link member naming the
first copy; the table only holds such inodes, so memory grows with shared files, not with
the store.

Incremental (``since``): a folder whose ``cur/`` and ``new/`` have not changed since the
date cannot hold a changed message, so only its state is written; in other folders a message
is taken when its inode's ctime is at or after the date (delivery, COPY, flag-change rename
and link() all set it).  That may take a few more messages, never fewer.

Failure behaviour: a message that vanished (expunged) is counted; one that cannot be read is
skipped and listed (exit 1); a device error propagates as ``DeviceError`` before the trailer,
so an interrupted stream never looks complete.  A folder or user directory that disappears
while being read is reported as skipped, never aborts the run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import ims
from ims.archive import format as fmt
from ims.archive.writer import ArchiveWriter
from ims.config import Config
from ims.names import Scope, select_folders
from ims.store.base import FolderReader, StoreReader

log = logging.getLogger("ims.backup")

_IN_MEMORY_LIMIT = 16 << 20
_CHUNK = 1 << 20


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
    folders: int = 0
    users: int = 0
    unchanged_folders: int = 0
    skipped: list[str] = field(default_factory=list)
    excluded_folders: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


ProgressFn = Callable[[BackupReport, str], None]


def run_backup(config: Config, store: StoreReader, scope: Scope, writer: ArchiveWriter,
               options: BackupOptions, progress: ProgressFn | None = None) -> BackupReport:
    started = time.monotonic()
    report = BackupReport(warnings=list(scope.warnings))
    now = int(time.time())
    exclusions = [] if options.ignore_exclusions else config.msg.exclusions()
    writer.add_json(fmt.HEADER_NAME, fmt.HEADER, {
        "format": fmt.FORMAT_NAME,
        "version": fmt.FORMAT_VERSION,
        "tool": f"imsbackup {ims.__version__}",
        "host": socket.gethostname(),
        "created": now,
        "created_iso": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now)),
        "names": list(options.names),
        "since": options.since,
        "since_text": options.since_text,
        "blocking_factor": options.blocking_factor,
        "options": {"link_min": options.link_min, "full_copies": options.full_copies,
                    "ignore_exclusions": options.ignore_exclusions,
                    "exclusions": exclusions},
        "store": "dovecot-maildir",
    }, now)

    links: dict[tuple[int, int], str] = {}
    link_min = max(options.link_min, 1)
    for user_scope in scope.users:
        partition, user = user_scope.partition, user_scope.user
        try:
            info = store.user_info(partition, user)
            all_folders = store.folders(partition, user)
        except FileNotFoundError:
            report.skipped.append(f"/{partition}/{user_scope.group}/{user}: user vanished"
                                  " during the backup")
            continue
        except OSError as exc:
            report.skipped.append(f"/{partition}/{user_scope.group}/{user}: {exc.strerror}")
            continue
        folders, excluded = select_folders(user_scope, all_folders, exclusions)
        report.excluded_folders.extend(f"/{partition}/{user_scope.group}/{user}/{f}"
                                       for f in excluded)
        writer.add_json(f"{partition}/{user}/{fmt.USER_MEMBER}", fmt.USER, {
            "partition": partition, "user": user, "group": user_scope.group,
            "uid": info.uid, "gid": info.gid, "subscriptions": list(info.subscriptions),
            "folders": folders, "excluded_folders": excluded,
        }, now)
        report.users += 1
        for folder in folders:
            logical = f"/{partition}/{user_scope.group}/{user}/{folder}"
            try:
                reader = store.open_folder(partition, user, folder)
            except FileNotFoundError:
                report.skipped.append(f"{logical}: folder vanished during the backup")
                continue
            except OSError as exc:
                report.skipped.append(f"{logical}: {exc.strerror or exc}")
                continue
            try:
                _backup_folder(reader, partition, user, folder, logical, writer, options,
                               links, link_min, report, now)
            finally:
                reader.close()
            writer.end_folder()
            report.folders += 1
            if progress:
                progress(report, logical)
    report.seconds = time.monotonic() - started
    writer.finish({
        "format": fmt.FORMAT_NAME,
        "complete": True,
        "counts": {"users": report.users, "folders": report.folders,
                   "messages": report.messages, "links": report.links,
                   "bytes": report.bytes, "vanished": report.vanished,
                   "unchanged_folders": report.unchanged_folders},
        "skipped": report.skipped,
        "excluded_folders": report.excluded_folders,
    }, int(time.time()))
    return report


def _backup_folder(reader: FolderReader, partition: str, user: str, folder: str, logical: str,
                   writer: ArchiveWriter, options: BackupOptions,
                   links: dict[tuple[int, int], str], link_min: int, report: BackupReport,
                   now: int) -> None:
    state = reader.state
    for note in state.notes:
        report.warnings.append(note)
    prefix = f"{partition}/{user}/{folder}/"
    writer.begin_folder(prefix + fmt.FOLDER_MEMBER, {
        "partition": partition, "user": user, "folder": folder,
        "uidvalidity": state.uidvalidity, "next_uid": state.next_uid, "guid": state.guid,
        "keywords": state.keywords,
        "messages": [[m.key, m.uid, m.flags, list(m.keywords)] for m in state.messages],
    }, now)
    since = options.since
    if since is not None and not reader.changed_since(since):
        report.unchanged_folders += 1
        log.debug("%s: unchanged since %s", logical, options.since_text)
        return
    track_links = not options.full_copies
    written = 0
    for entry in state.messages:
        try:
            opened = reader.open_message(entry)
        except OSError as exc:
            report.skipped.append(f"{logical}/{entry.key}: {exc.strerror or exc}")
            log.warning("skipped %s/%s: %s", logical, entry.key, exc)
            continue
        if opened is None:
            report.vanished += 1
            log.debug("vanished %s/%s", logical, entry.key)
            continue
        fd, st = opened
        try:
            if since is not None and st.st_ctime < since:
                continue
            name = prefix + entry.key
            mtime = int(st.st_mtime)
            records = [("IMS.type", fmt.MESSAGE)]
            if entry.uid is not None:
                records.append(("IMS.uid", str(entry.uid)))
            records += [
                ("IMS.flags", entry.flags),
                ("IMS.keywords", " ".join(entry.keywords)),
                ("IMS.info", entry.info),
                ("IMS.state", "new" if entry.is_new else "cur"),
                ("IMS.internaldate", str(mtime)),
                ("IMS.basename", entry.key),
            ]
            inode = (st.st_dev, st.st_ino)
            first = links.get(inode) if track_links and st.st_nlink >= link_min else None
            if first is not None:
                records.append(("IMS.size", str(st.st_size)))
                writer.add_link(name, first, mtime, records, st.st_uid, st.st_gid)
                report.links += 1
                written += 1
                continue
            size = st.st_size
            if size <= _IN_MEMORY_LIMIT:
                data = _read_all(fd, size)
                records.append(("IMS.size", str(len(data))))
                records.append(("IMS.sha256", hashlib.sha256(data).hexdigest()))
                writer.add_message(name, data, mtime, records, st.st_uid, st.st_gid)
                size = len(data)
            else:
                digest = hashlib.sha256()
                for chunk in _chunks(fd, 0, size):
                    digest.update(chunk)
                records.append(("IMS.size", str(size)))
                records.append(("IMS.sha256", digest.hexdigest()))
                copied = writer.add_large_message(name, size, _chunks(fd, 0, size), mtime,
                                                  records, st.st_uid, st.st_gid)
                if copied != size:
                    report.skipped.append(f"{logical}/{entry.key}: file changed while it"
                                          " was read; the archived copy is damaged")
            report.messages += 1
            report.bytes += size
            written += 1
            if track_links and st.st_nlink >= link_min:
                links[inode] = name
        except OSError as exc:
            report.skipped.append(f"{logical}/{entry.key}: {exc.strerror or exc}")
        finally:
            os.close(fd)
    log.debug("%s: %d of %d messages written", logical, written, len(state.messages))


def _read_all(fd: int, size: int) -> bytes:
    data = os.read(fd, size + 1) if size else os.read(fd, 65536)
    if len(data) > size or (data and len(data) < size):
        # a short read or a file that grew: read to the end so the copy is whole
        parts = [data]
        while True:
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                break
            parts.append(chunk)
        data = b"".join(parts)
    return data


def _chunks(fd: int, offset: int, size: int) -> Iterator[bytes]:
    position = offset
    while position < size:
        chunk = os.pread(fd, min(_CHUNK, size - position), position)
        if not chunk:
            return
        yield chunk
        position += len(chunk)


def summary(report: BackupReport, exit_code: int) -> dict[str, Any]:
    return {
        "exit_code": exit_code,
        "messages": report.messages,
        "bytes": report.bytes,
        "links": report.links,
        "vanished": report.vanished,
        "skipped": report.skipped,
        "excluded_folders": report.excluded_folders,
        "folders": report.folders,
        "unchanged_folders": report.unchanged_folders,
        "users": report.users,
        "warnings": report.warnings,
        "seconds": round(report.seconds, 3),
    }


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
