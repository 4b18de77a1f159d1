"""The restore rules, as pure functions: archived state + live state -> what to do.

Nothing here touches a file or a process, so every rule is unit-tested without Dovecot or
root (tests/unit/test_plan.py).  The engine asks ``plan_folder`` once per folder and
``plan_message_source`` once per message; a store writer asks ``plan_merge`` under the
folder's lock for each batch it adds to a live folder.

Rule 1 (whole): a folder that is gone, or has never handed out a UID, comes back as one unit
with its archived UIDVALIDITY, GUID and UIDs, provided the archive (or chain) starts with a
full backup.  Its next UID is raised above anything the folder may have handed out after the
backup (``uid_margin``), and its modseq above anything a CONDSTORE/QRESYNC client may have
cached, so clients neither see a used UID again nor keep stale flags.

Rule 2 (merge): a live folder that has handed out UIDs gets, under its lock, each message it
lacks as new mail with the folder's next UID; a message whose base name the folder lists and
whose file is there is "already there" (``-i`` skips the check); a file without a uidlist
line (left by a killed restore) gets a UID instead of a second copy; a uidlist line without
its file (an expunged message Dovecot has not compacted away) does not count as there.

Rule 3 (no full at the head): without a full backup first, an archive or chain holds only
the messages changed since some date, so a gone folder is recreated by rule 2 (new UIDs,
a new UIDVALIDITY) and the summary says why; an incremental's unchanged folder cannot be
restored at all and is named.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Container, Sequence

from ims.archive.records import UID_MAX, FolderRecord
from ims.store import modseq as dovecot_modseq
from ims.store.base import LiveFolder, WholeFolder

DEFAULT_UID_MARGIN = 100_000


class Action(enum.Enum):
    WHOLE = "whole"
    MERGE = "merge"
    SKIP = "skip"


@dataclass(frozen=True)
class FolderPlan:
    action: Action
    whole: WholeFolder | None = None     # for WHOLE
    into_sibling: bool = False           # -n: a new sibling folder instead of the live one
    note: str = ""                       # why, when not the usual (said in the summary)


def restored_next_uid(state: FolderRecord, margin: int) -> int:
    """The next UID of a folder restored whole: above the recorded next UID, the highest
    archived UID and whatever the folder may have handed out since the backup (``margin``),
    capped where Dovecot's UIDs end (it can hand out a UID only while the next one is at
    most ``UID_MAX``)."""
    base = max(state.next_uid or 1, state.highest_uid() + 1)
    return max(base, min(base + margin, UID_MAX))


def restored_modseq(recorded: int | None, now: float) -> int:
    """The lowest modseq a folder restored whole may report: above the recorded
    HIGHESTMODSEQ and above what any earlier restore handed out (a clock-based floor in
    milliseconds; see ``ims.store.modseq.restored_modseq`` for the limits)."""
    return dovecot_modseq.restored_modseq(recorded, now)


def plan_folder(state: FolderRecord, live: LiveFolder, *, has_full: bool, new_sibling: bool,
                uid_margin: int = DEFAULT_UID_MARGIN, now: float | None = None) -> FolderPlan:
    if state.messages is None:
        return FolderPlan(Action.SKIP, note=(
            "unchanged since an earlier backup, and no archive of this restore holds its"
            " state; restore it with the full backup and the incrementals before this one"
            if not has_full else
            "unchanged since an earlier backup, but no archive of the chain holds its state"
            " (moved or renamed in a way the backup could not follow); restore it from the"
            " full backup alone"))
    occupied = live.exists and not live.pristine
    if occupied and not new_sibling:
        return FolderPlan(Action.MERGE)
    if not has_full:
        return FolderPlan(Action.MERGE, into_sibling=occupied, note=(
            "no full backup at the head of the chain: its messages were added as new mail"
            " (new UIDs)"))
    if occupied:
        # a sibling is a new folder no client has cached: the archived state as it was
        return FolderPlan(Action.WHOLE, WholeFolder(
            state.uidvalidity, restored_next_uid(state, 0), state.guid, state.keywords),
            into_sibling=True)
    return FolderPlan(Action.WHOLE, WholeFolder(
        state.uidvalidity, restored_next_uid(state, uid_margin), state.guid, state.keywords,
        restored_modseq(state.highest_modseq, time.time() if now is None else now)))


# -- messages ------------------------------------------------------------------------------

class Source(enum.Enum):
    DATA = "data"                 # the member holds the bytes
    LINK = "link"                 # hard link to a file restored earlier in this run
    FETCH = "fetch"               # a link whose first copy is elsewhere in a seekable archive
    UNRESOLVED = "unresolved"     # a link whose bytes cannot be had here (pipe): references
    INVALID = "invalid"           # a link to itself


def plan_message_source(name: str, is_link: bool, linkname: str, restored: Container[str],
                        seekable: bool) -> Source:
    if not is_link:
        return Source.DATA
    if linkname == name:
        return Source.INVALID
    if linkname in restored:
        return Source.LINK
    return Source.FETCH if seekable else Source.UNRESOLVED


class Placement(enum.Enum):
    NEW = "new"                   # the staged file goes in with the next UID
    ALREADY_THERE = "already"     # the folder has it: the staged file is dropped
    ADOPT = "adopt"               # its file is there without a UID: it gets one, staged dropped
    COPY = "copy"                 # -i: a second copy, under a base name of its own
    NO_ROOM = "no-room"           # no UID left below UID_MAX: not added, named (use -n)

NO_ROOM_REASON = (f"not added: the folder has no UIDs left (Dovecot's last is {UID_MAX});"
                  " restore with -n into a new folder")


@dataclass(frozen=True, slots=True)
class MergeStep:
    placement: Placement
    uid: int | None               # the UID it gets (None when already there)
    drop_stale_line: bool = False  # the uidlist line of an expunged message goes


def plan_merge(keys: Sequence[str], listed: Container[str], on_disk: Container[str],
               next_uid: int, check_existing: bool) -> tuple[list[MergeStep], int]:
    """Rule 2 for one batch, under the folder's lock: ``listed`` are the base names with a
    uidlist line, ``on_disk`` those with a file; returns a step per key and the next UID."""
    steps: list[MergeStep] = []
    placed: set[str] = set()
    for key in keys:
        has_line = key in listed and key not in placed
        has_file = key in on_disk or key in placed
        if check_existing and (has_line and has_file or key in placed):
            steps.append(MergeStep(Placement.ALREADY_THERE, None))
            continue
        if next_uid > UID_MAX:
            # what fits has gone in; each message past the last UID is named, none lost
            # in silence and none given a UID Dovecot would refuse
            steps.append(MergeStep(Placement.NO_ROOM, None))
            continue
        if has_line and not has_file:
            steps.append(MergeStep(Placement.NEW, next_uid, drop_stale_line=True))
        elif check_existing and has_file:
            steps.append(MergeStep(Placement.ADOPT, next_uid))
        elif has_file:
            steps.append(MergeStep(Placement.COPY, next_uid))
        else:
            steps.append(MergeStep(Placement.NEW, next_uid))
        placed.add(key)
        next_uid += 1
    return steps, next_uid


def merge_next_uid(listed_next: int, index_next: int | None) -> int:
    """The next UID of a live folder: the uidlist's effective one, or the index's if higher."""
    return max(listed_next, index_next or 1)


def sibling_suffix(created: int) -> str:
    """``-n``: the sibling folder is ``<folder>_<YYYYMMDD of the backup>``."""
    return time.strftime("%Y%m%d", time.localtime(created))

