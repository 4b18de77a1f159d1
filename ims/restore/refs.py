"""References files: the links a restore from a pipe could not resolve, and their completion.

A restore from a pipe cannot go back for a hard-link member whose first copy belongs to a
user or folder that was not selected; it lists such messages in a references file (JSON
lines: a header line, then one object per message with its target partition, user, folder,
base name, UID, flags, keywords, INTERNALDATE and ``needs``, the member holding the bytes)
and exits 5.  ``imsrestore -r REFS -f ARCHIVE-FILE`` then restores each listed message from
the archive file, through the same engine and plan as any restore (in a live folder: new
mail with a new UID, unless already there).

Failure behaviour: ``UsageError`` (exit 2) for a file that cannot be read or is not a
references file; an entry whose values are not valid is reported (exit 4) and left out.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ims.archive.records import (TIME_MAX, FolderRecord, MessageRecord, RecordError,
                                 UserRecord, valid_partition)
from ims.errors import UsageError
from ims.restore.engine import Engine


def write_refs(path: Path, archive_created: int | None, archive_host: str,
               unresolved: list[dict[str, Any]]) -> None:
    lines = [json.dumps({"format": "imsrestore-refs", "version": 1,
                         "archive_created": archive_created, "archive_host": archive_host})]
    lines += [json.dumps(entry, ensure_ascii=False) for entry in unresolved]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read_refs(path: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the references file: {exc.strerror}") from None
    try:
        head = json.loads(lines[0])
        if not isinstance(head, dict) or head.get("format") != "imsrestore-refs":
            raise ValueError
        entries = [json.loads(line) for line in lines[1:] if line.strip()]
    except (ValueError, IndexError):
        raise UsageError(f"{path}: not an imsrestore references file") from None
    return head, entries


def feed_refs(entries: list[dict[str, Any]]):
    """The entries as users, folders and link messages for the engine (``fetch`` gives the
    bytes by member name)."""
    def feed(engine: Engine) -> None:
        groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for number, entry in enumerate(entries, 2):
            where = f"references file line {number}"
            if not isinstance(entry, dict) or not valid_partition(entry.get("partition")) \
                    or not isinstance(entry.get("needs"), str):
                engine.report.damaged.append(f"{where}: not a valid entry: skipped")
                continue
            groups.setdefault((entry["partition"], str(entry.get("user")),
                               str(entry.get("folder"))), []).append(entry)
        for (partition, user, folder), group in groups.items():
            where = f"references file, /{partition}/{user}/{folder}"
            try:
                # the group the backup saw is not in a references file: "user" (everyone)
                user_record = UserRecord.decode({"partition": partition, "user": user,
                                                 "group": "user", "folders": [folder]}, where)
                state = FolderRecord.decode({
                    "partition": partition, "user": user, "folder": folder,
                    "uidvalidity": None, "next_uid": None, "guid": None, "keywords": [],
                    "messages": [[e.get("basename"), e.get("uid"), e.get("flags", ""),
                                  e.get("keywords", [])] for e in group]}, where)
                messages = [(e["needs"], MessageRecord(
                    listed.key, listed.uid, listed.flags, listed.keywords,
                    _date(e.get("internaldate"), where), bool(e.get("is_new")), 0, None))
                    for e, listed in zip(group, state.messages or ())]
            except RecordError as exc:
                engine.report.damaged.append(f"{exc}: skipped")
                continue
            engine.begin_user(user_record)
            engine.begin_folder(state)
            for needs, message in messages:
                name = f"{partition}/{user}/{folder}/{message.key}"
                engine.message(message, None, name, True, needs, lambda: b"")
            engine.end_user()
    return feed


def _date(value: Any, where: str) -> int:
    if type(value) is not int or not -TIME_MAX < value < TIME_MAX:
        raise RecordError(f"{where}: internaldate {value!r} is not a time")
    return value
