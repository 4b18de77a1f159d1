"""Restoring a chain (a full backup and its incrementals) as one: merge, then restore.

DESIGN §7: the archives are merged first into the state of the last backup — its folders,
their messages with the UIDs and flags its folder states list, and its next UIDs; a message
the last backup no longer lists (expunged between the backups) is not brought back — and
that state is restored by the usual rules.

How: every archive is read once, sequentially (so each one's trailer and digest are checked),
keeping for each folder its latest full state (an incremental's ``unchanged_since`` state
keeps the earlier one) and, for each message member, where its bytes are (archive, offset).
Then a merged archive stream is written into a pipe by a thread and read back by the normal
``Restorer``: message bytes come from whichever archive holds them, by offset, with their
digest checked; a message whose folder was renamed between backups is found by its base
name within the same user.

Failure behaviour: every archive must be a complete, seekable file (``ArchiveDamaged``
otherwise, exit 4); a message listed by the last state whose bytes are in no archive of the
chain is reported as skipped.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ims.archive import format as fmt
from ims.archive.reader import ArchiveReader
from ims.archive.writer import ArchiveWriter, RecordSink
from ims.errors import ArchiveDamaged, UsageError

# where a message's bytes are: (archive number, data offset, size, sha256, links)
Source = tuple[int, int, int, str, int]


@dataclass
class ChainPlan:
    readers: list[ArchiveReader]
    users: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    states: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    by_folder: dict[tuple[str, str, str, str], Source] = field(default_factory=dict)
    by_user: dict[tuple[str, str, str], Source] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    mtimes: dict[tuple[int, int], int] = field(default_factory=dict)


def build_plan(readers: list[ArchiveReader]) -> ChainPlan:
    for reader in readers:
        if not reader.seekable:
            raise UsageError(f"{reader.device_name}: a chain is restored from files, not pipes")
    plan = ChainPlan(readers)
    for number, reader in enumerate(readers):
        reader.read_header()
        data_members: dict[str, Source] = {}
        user_key: tuple[str, str] | None = None
        folder_key: tuple[str, str, str] | None = None
        for member in reader.members():
            kind = member.kind
            if kind == fmt.USER:
                body = member.body
                user_key = (body["partition"], body["user"])
                plan.users[user_key] = body
                folder_key = None
            elif kind == fmt.FOLDER:
                body = member.body
                folder_key = (body["partition"], body["user"], body["folder"])
                if body.get("unchanged_since") is None or folder_key not in plan.states:
                    plan.states[folder_key] = body
            elif kind == fmt.MESSAGE and folder_key is not None:
                pax = member.pax
                base = pax.get("IMS.basename", "")
                links = int(pax.get("IMS.links", "1") or 1)
                if member.is_link:
                    source = data_members.get(member.linkname)
                    if source is None:
                        continue
                else:
                    source = (number, member.data_offset, member.size, pax.get("IMS.sha256", ""),
                              links)
                    data_members[member.name] = source
                plan.by_folder[(*folder_key, base)] = source
                plan.by_user[(folder_key[0], folder_key[1], base)] = source
    return plan


def write_merged(plan: ChainPlan, fd: int, blocking_factor: int, names: list[str]) -> None:
    """Write the merged state as one archive stream to ``fd`` (then close it)."""
    sink = RecordSink(fd, blocking_factor, "merged chain")
    writer = ArchiveWriter(sink)
    now = int(time.time())
    last_header = plan.readers[-1].header
    writer.add_json(fmt.HEADER_NAME, fmt.HEADER, {
        **last_header, "names": names, "blocking_factor": blocking_factor,
        "chain": [r.device_name for r in plan.readers]}, now)
    emitted: dict[Source, bytes] = {}
    counts = {"messages": 0, "links": 0, "folders": 0, "users": 0}
    for (partition, user), body in plan.users.items():
        writer.add_json(f"{partition}/{user}/{fmt.USER_MEMBER}", fmt.USER, body, now)
        counts["users"] += 1
        for folder in body.get("folders", []):
            state = plan.states.get((partition, user, folder))
            if state is None or state.get("messages") is None:
                continue
            prefix = f"{partition}/{user}/{folder}/"
            writer.begin_folder(prefix + fmt.FOLDER_MEMBER, {**state, "unchanged_since": None}, now)
            counts["folders"] += 1
            for key, uid, flags, keywords in state["messages"]:
                source = plan.by_folder.get((partition, user, folder, key)) or \
                    plan.by_user.get((partition, user, key))
                if source is None:
                    plan.missing.append(f"/{partition}/{body.get('group')}/{user}/{folder}/{key}")
                    continue
                number, offset, size, sha, links = source
                records = fmt.message_records(
                    uid, fmt.flag_records(flags, tuple(keywords), ""), False,
                    _internaldate(plan, source), key.encode("utf-8", "surrogateescape"), size,
                    None if source in emitted else sha, links)
                name = (prefix + key).encode("utf-8", "surrogateescape")
                if source in emitted:
                    writer.add_link(name, emitted[source], _internaldate(plan, source), records, 0, 0)
                    counts["links"] += 1
                    continue
                data = os.pread(plan.readers[number].fd, size, offset)
                writer.add_message(name, data, _internaldate(plan, source), records, 0, 0)
                counts["messages"] += 1
                if links > 1:
                    emitted[source] = name
            writer.end_folder()
    writer.finish({"format": fmt.FORMAT_NAME, "complete": True,
                   "counts": {**counts, "bytes": 0, "vanished": 0, "unchanged_folders": 0},
                   "skipped": plan.missing, "excluded_folders": []}, now)


def _internaldate(plan: ChainPlan, source: Source) -> int:
    """The message's INTERNALDATE: the ustar mtime of the member that holds its bytes."""
    number, offset, _, _, _ = source
    key = (number, offset)
    if key not in plan.mtimes:
        block = os.pread(plan.readers[number].fd, fmt.BLOCK, offset - fmt.BLOCK)
        plan.mtimes[key] = fmt.parse_ustar(block)["mtime"]
    return plan.mtimes[key]


class MergedStream:
    """The merged archive as a readable fd, written by a thread."""

    def __init__(self, plan: ChainPlan, blocking_factor: int, names: list[str]) -> None:
        self.read_fd, write_fd = os.pipe()
        self.error: BaseException | None = None

        def produce() -> None:
            try:
                write_merged(plan, write_fd, blocking_factor, names)
            except BaseException as exc:   # seen by the reader as a truncated stream
                self.error = exc
            finally:
                os.close(write_fd)

        self.thread = threading.Thread(target=produce, name="ims-chain-merge", daemon=True)
        self.thread.start()

    def close(self) -> None:
        os.close(self.read_fd)
        self.thread.join(timeout=10)
        if self.error is not None and not isinstance(self.error, (BrokenPipeError, OSError)):
            raise ArchiveDamaged(f"merging the chain failed: {self.error}")
