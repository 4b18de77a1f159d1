"""Dovecot Maildir++ driver (write side): ``MaildirWriter``, the driver's ``StoreWriter``
(ims/store/base.py), and the two ways a folder is restored.  Which way, and every UID
decision, comes from ``ims.restore.plan``; this module only carries them out on disk.

``NewFolder`` (a folder that is gone, or has never handed out a UID): the folder is built
aside — message files, ``dovecot-uidlist`` with the archive's UIDVALIDITY, GUID, UIDs and
next UID, ``dovecot-keywords`` — and moved into place with one ``renameat2(RENAME_NOREPLACE)``,
so Dovecot and its clients see no folder or the whole folder, also if the restore is killed.
If the folder appeared meanwhile (a delivery created it), ``commit`` says so and the files
built aside are handed to ``ExistingFolder`` instead.  For a folder that exists but never
handed out a UID (Dovecot recreates an empty INBOX when a deleted user logs in) the files are
moved in one by one under the uidlist lock, with the uidlist written last.

``ExistingFolder`` (rule 2): message files are written to the folder's ``tmp/`` first; then,
in batches under ``dovecot-uidlist.lock``, each one not already there (same base name listed
in the uidlist) is renamed into ``cur/`` and gets the folder's next UID, appended to the
uidlist, so mail delivered meanwhile interleaves and no UID is reused.  Files are renamed
before their uidlist lines are written: a restore killed between the two leaves a file
without a line, which the next run adopts instead of duplicating.

Keyword letters are per folder: names are mapped to the target folder's
``dovecot-keywords`` (new names are added while there is a free letter; past 26 they are
dropped, as Dovecot's Maildir cannot hold them in file names).

Files get mode 0600, directories 0700 (Dovecot's own), the owner given, and the message's
INTERNALDATE as mtime.  Nothing here follows a symbolic link when creating files.

Counting: ``landed`` says what is in the store, counted when it lands (a committed batch, a
folder renamed into place), never when it is staged.

Failure behaviour: ``OSError`` propagates to the engine, which reports the message or folder;
``StoreLocked`` when the lock cannot be had within the bound, after removing what the
folder had staged; ``abort`` removes a folder built aside, or the staged files of a live
folder, so an interrupted restore leaves nothing half-built.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from ims.archive.records import MessageRecord
from ims.errors import StoreLocked
from ims.restore.plan import Placement, merge_next_uid, plan_merge
from ims.store import modseq as dovecot_modseq
from ims.store import uidlist
from ims.store.base import Landed, LiveFolder, WholeFolder
from ims.store.lock import FolderLock, process_alive
from ims.store.maildir import INBOX, MaildirStore, folder_to_dirname, parse_keywords_file
from ims.store.subscriptions import merge_subscriptions

_SYSTEM_FLAGS = "DFPRST"
_RENAME_NOREPLACE = 1
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)
_AT_FDCWD = -100
INDEX_FILES = ("dovecot.index", "dovecot.index.log", "dovecot.index.log.2", "dovecot.index.cache")


def rename_noreplace(source: Path, target: Path) -> None:
    """rename(2) that fails with FileExistsError instead of replacing (an empty) target."""
    if _renameat2 is None:
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "exists", str(target))
        os.rename(source, target)
        return
    result = _renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target),
                        _RENAME_NOREPLACE)
    if result != 0:
        code = ctypes.get_errno()
        if code in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(code, os.strerror(code), str(target))
        raise OSError(code, os.strerror(code), str(target))


@dataclass
class Owner:
    uid: int
    gid: int

    def apply(self, path: Path | int) -> None:
        if os.geteuid() != 0:
            return
        if isinstance(path, int):
            os.fchown(path, self.uid, self.gid)
        else:
            os.chown(path, self.uid, self.gid, follow_symlinks=False)


def make_dirs(path: Path, owner: Owner) -> None:
    """Create missing directories down to ``path``, mode 0700, owned by the store's owner."""
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            continue
        owner.apply(directory)


def make_maildir(path: Path, owner: Owner, marker: bool) -> None:
    make_dirs(path, owner)
    for sub in ("cur", "new", "tmp"):
        try:
            os.mkdir(path / sub, 0o700)
            owner.apply(path / sub)
        except FileExistsError:
            pass
    if marker:
        fd = os.open(path / "maildirfolder", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        owner.apply(fd)
        os.close(fd)


def write_file(directory: Path | int, name: str, data: bytes | memoryview, mtime: int | None,
               owner: Owner, sync: bool = False) -> str:
    """Create ``directory/name`` exclusively (never through a symlink) with ``data``;
    ``directory`` may be an open directory descriptor (the fast path of a restore)."""
    dir_fd = directory if isinstance(directory, int) else None
    path = name if dir_fd is not None else os.path.join(directory, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                 dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if mtime is not None:
            os.utime(fd, (mtime, mtime))
        owner.apply(fd)
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path, dir_fd=dir_fd)
        raise
    os.close(fd)
    return path


def replace_file(directory: Path, name: str, text: str, owner: Owner) -> None:
    """Write a small control file through a temporary name and rename (Dovecot's rule)."""
    temp = f".{name}.ims-{os.getpid()}"
    path = write_file(directory, temp, text.encode("utf-8"), None, owner)
    os.replace(path, os.path.join(directory, name))


def file_name(message: MessageRecord, letters: dict[str, str],
              as_seen: bool = False) -> tuple[str, str]:
    """(sub-directory, file name) of a message: ``new/<key>`` or ``cur/<key>:2,<flags>``;
    ``as_seen``: always in ``cur/`` (rule 2 adds messages a client has not seen as such)."""
    if message.is_new and not as_seen and not message.flags and not message.keywords:
        return "new", message.key
    flags = [f for f in message.flags if f in _SYSTEM_FLAGS]
    flags += [letters[k] for k in message.keywords if k in letters]
    return "cur", f"{message.key}:2,{''.join(sorted(set(flags)))}"


def keyword_letters(names: list[str]) -> dict[str, str]:
    return {name: chr(97 + i) for i, name in enumerate(names) if name and i < 26}


class Placed:
    """A message file restored in this run (``RestoredFile``): where it is now.  It moves
    when its folder is renamed into place or handed over to rule 2."""

    __slots__ = ("folder", "handle")

    def __init__(self, folder: "NewFolder | ExistingFolder", handle: str | Path) -> None:
        self.folder = folder
        self.handle = handle

    def path(self) -> Path:
        return self.folder.current_path(self.handle)


class NewFolder:
    """Rule 1: build the folder aside and move it into place as a whole."""

    def __init__(self, target: Path, aside: Path, owner: Owner, whole: WholeFolder,
                 is_inbox: bool, lock_timeout: float, sync: bool = False,
                 batch_size: int = 500) -> None:
        self.target = target
        self.aside = aside
        self.owner = owner
        self.whole = whole
        self.is_inbox = is_inbox
        self.lock_timeout = lock_timeout
        self.sync = sync
        self.batch_size = batch_size
        self.keywords: list[str] = list(whole.keywords)
        self.letters = keyword_letters(self.keywords)
        # message, "cur/<name>" in the aside dir, its Placed, bytes written, a hard link?
        self.placed: list[tuple[MessageRecord, str, Placed, int, bool]] = []
        self.landed = Landed()
        self._committed = False
        clean_stale(aside.parent)
        make_maildir(aside, owner, marker=not is_inbox)
        # descriptors stay valid when the folder is renamed into place
        self._dir_fds = {sub: os.open(aside / sub, os.O_RDONLY | os.O_DIRECTORY)
                         for sub in ("cur", "new")}

    def _letters_for(self, message: MessageRecord) -> dict[str, str]:
        for name in message.keywords:
            if name not in self.letters and len(self.keywords) < 26:
                self.keywords.append(name)
                self.letters[name] = chr(96 + len(self.keywords))
        return self.letters

    def add(self, message: MessageRecord, data: bytes | memoryview) -> Placed:
        sub, name = file_name(message, self._letters_for(message))
        write_file(self._dir_fds[sub], name, data, message.internaldate, self.owner, self.sync)
        return self._placed(message, f"{sub}/{name}", len(data), False)

    def add_link(self, message: MessageRecord, source: Placed) -> Placed:
        sub, name = file_name(message, self._letters_for(message))
        os.link(source.path(), name, dst_dir_fd=self._dir_fds[sub], follow_symlinks=False)
        return self._placed(message, f"{sub}/{name}", 0, True)

    def _placed(self, message: MessageRecord, relative: str, size: int, is_link: bool) -> Placed:
        placed = Placed(self, relative)
        self.placed.append((message, relative, placed, size, is_link))
        return placed

    def current_path(self, handle: str | Path) -> Path:
        return self.aside / handle

    def _uidlist_text(self) -> str:
        with_uid = sorted((m.uid, m.key) for m, _, _, _, _ in self.placed if m.uid is not None)
        header = f"3 V{self.whole.uidvalidity} N{self.whole.next_uid}"
        if self.whole.guid:
            header += f" G{self.whole.guid}"
        return "\n".join([header] + [f"{uid} :{key}" for uid, key in with_uid]) + "\n"

    def _keywords_text(self) -> str:
        return "".join(f"{i} {k}\n" for i, k in enumerate(self.keywords))

    def _close_fds(self) -> None:
        for fd in self._dir_fds.values():
            os.close(fd)
        self._dir_fds = {}

    def _count_all(self) -> None:
        for _, _, _, size, is_link in self.placed:
            self.landed.messages += 1
            self.landed.links += is_link
            self.landed.bytes += size
        self.landed.whole = True
        self.placed = []    # committed: a Placed that outlives this needs only ``aside``

    def commit(self) -> Landed:
        """Move the folder into place.  If it appeared meanwhile: still empty (Dovecot
        recreated it), the files go in under its lock; with mail, rule 2 takes them."""
        self._close_fds()
        if self.whole.uidvalidity:
            replace_file(self.aside, "dovecot-uidlist", self._uidlist_text(), self.owner)
        if self.keywords:
            replace_file(self.aside, "dovecot-keywords", self._keywords_text(), self.owner)
        if self.whole.modseq is not None:
            dovecot_modseq.seed_modseq(self.aside, self.whole.modseq, self.owner.uid,
                                       self.owner.gid, unseen=True)
        if self.sync:
            _sync_dir(self.aside / "cur")
            _sync_dir(self.aside)
        try:
            rename_noreplace(self.aside, self.target)
        except FileExistsError:
            return self._commit_into_existing()
        if self.sync:
            _sync_dir(self.target.parent)
        self.aside = self.target
        self._committed = True
        self._count_all()
        return self.landed

    def _commit_into_existing(self) -> Landed:
        lock = FolderLock(self.target, self.lock_timeout)
        lock.acquire()
        try:
            if is_pristine(self.target):
                moved: list[str] = []
                try:
                    for _, relative, _, _, _ in self.placed:
                        os.rename(self.aside / relative, self.target / relative)
                        moved.append(relative)
                except BaseException:
                    # interrupted: back where they came from, so the INBOX stays pristine and
                    # the next run restores it whole
                    for relative in moved:
                        os.rename(self.target / relative, self.aside / relative)
                    raise
                if self.keywords:
                    replace_file(self.target, "dovecot-keywords", self._keywords_text(), self.owner)
                remove_index_files(self.target)
                if self.whole.modseq is not None:
                    seed = (self.target, self.whole.modseq, self.owner.uid, self.owner.gid)
                    try:
                        dovecot_modseq.seed_modseq(*seed)
                    except FileExistsError:
                        # Dovecot reopened the INBOX meanwhile (a session, a delivery): once
                        # more, then without the seed rather than over a live log
                        remove_index_files(self.target)
                        try:
                            dovecot_modseq.seed_modseq(*seed)
                        except FileExistsError:
                            pass
                if self.whole.uidvalidity:
                    replace_file(self.target, "dovecot-uidlist", self._uidlist_text(), self.owner)
                handed_over = None
            else:
                handed_over = self._hand_over()
        finally:
            lock.release()
        if handed_over is not None:       # after the lock: rule 2 takes it itself
            self.landed = handed_over.commit()
            self.landed.merged = True
            return self.landed
        shutil.rmtree(self.aside, ignore_errors=True)
        self.aside = self.target
        self._committed = True
        self._count_all()
        return self.landed

    def _hand_over(self) -> "ExistingFolder":
        """Dovecot created the folder and delivered to it meanwhile: the built messages are
        given to rule 2 (new UIDs); every ``Placed`` follows its file."""
        other = ExistingFolder(self.target, self.owner, self.lock_timeout, True, self.sync,
                               self.batch_size, self.is_inbox)
        for message, relative, placed, size, is_link in self.placed:
            placed.folder, placed.handle = other, other.adopt(message, self.aside / relative,
                                                              size, is_link)
        self.placed = []
        shutil.rmtree(self.aside, ignore_errors=True)
        return other

    def abort(self) -> None:
        """Nothing of the folder reaches the store (an interrupted or invalid restore)."""
        self._close_fds()
        if not self._committed:
            shutil.rmtree(self.aside, ignore_errors=True)


class ExistingFolder:
    """Rule 2: add messages to a live folder under its lock, with fresh UIDs."""

    def __init__(self, path: Path, owner: Owner, lock_timeout: float, check_existing: bool = True,
                 sync: bool = False, batch_size: int = 500, is_inbox: bool = True) -> None:
        self.path = path
        self.owner = owner
        self.lock_timeout = lock_timeout
        self.check_existing = check_existing
        self.sync = sync
        self.batch_size = batch_size
        # message, its file in tmp/, bytes written, a hard link?
        self.staged: list[tuple[MessageRecord, Path, int, bool]] = []
        self.landed = Landed(merged=True)
        self.moved: dict[Path, Path] = {}     # staged path -> where the message is now
        self._counter = 0
        make_maildir(path, owner, marker=not is_inbox)
        clean_stale(path / "tmp")
        self._tmp = str(path / "tmp")

    def current_path(self, handle: str | Path) -> Path:
        return self.moved.get(Path(handle), Path(handle))

    def _stage_name(self) -> str:
        self._counter += 1
        return f"ims-restore.{os.getpid()}.{self._counter}.{socket.gethostname()}"

    def add(self, message: MessageRecord, data: bytes | memoryview) -> Placed:
        path = Path(write_file(self._tmp, self._stage_name(), data, message.internaldate,
                               self.owner, self.sync))
        return Placed(self, self._stage(message, path, len(data), False))

    def add_link(self, message: MessageRecord, source: Placed) -> Placed:
        path = self.path / "tmp" / self._stage_name()
        os.link(source.path(), path, follow_symlinks=False)
        return Placed(self, self._stage(message, path, 0, True))

    def _stage(self, message: MessageRecord, path: Path, size: int, is_link: bool) -> Path:
        """Queue a file written to tmp/; a full batch goes in under the lock at once."""
        self.staged.append((message, path, size, is_link))
        if len(self.staged) >= self.batch_size:
            self._commit_batch()
        return path

    def adopt(self, message: MessageRecord, staged: Path, size: int, is_link: bool) -> Path:
        """Take a file staged elsewhere on the same file system (a NewFolder that lost)."""
        path = self.path / "tmp" / self._stage_name()
        os.rename(staged, path)
        self.staged.append((message, path, size, is_link))
        return path

    def commit(self) -> Landed:
        self._commit_batch()
        return self.landed

    def abort(self) -> None:
        """Remove what is staged and not committed; committed batches stay (each message in
        them is complete, with its UID)."""
        staged, self.staged = self.staged, []
        _unlink_staged(staged)

    def _commit_batch(self) -> None:
        """Move the staged messages in, under the lock, each with the next UID.  When the
        lock cannot be had, everything staged is removed and ``StoreLocked`` raised."""
        if not self.staged:
            return
        lock = FolderLock(self.path, self.lock_timeout)
        try:
            lock.acquire()
        except StoreLocked:
            self.abort()
            raise
        batch, self.staged = self.staged, []
        try:
            self._commit_locked(batch)
        except BaseException:
            _unlink_staged(batch)           # what was not moved in goes (a rerun restores it)
            raise
        finally:
            lock.release()

    def _commit_locked(self, batch: list[tuple[MessageRecord, Path, int, bool]]) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            current = uidlist.read(fd)
            index_next = uidlist.index_next_uid(fd)
        finally:
            os.close(fd)
        keywords = self._keywords()
        letters = keyword_letters(keywords)
        known = current.uids if current else {}
        on_disk: dict[str, str] = {}
        for sub in ("new", "cur"):
            for name in os.listdir(self.path / sub):
                on_disk.setdefault(name.partition(":")[0], f"{sub}/{name}")
        steps, next_uid = plan_merge(
            [message.key for message, _, _, _ in batch], known, on_disk,
            merge_next_uid(current.effective_next_uid if current else 1, index_next),
            self.check_existing)
        lines: list[str] = []
        stale: set[str] = set()
        added_keywords = False
        for (message, staged, size, is_link), step in zip(batch, steps):
            if step.placement is Placement.ALREADY_THERE:
                os.unlink(staged)           # it keeps its live flags
                self.landed.already_there += 1
                self.moved[staged] = self.path / on_disk[message.key]
                continue
            if step.drop_stale_line:
                stale.add(message.key)
            if step.placement is Placement.ADOPT:
                # its file is there (a delivery still in new/, or a killed run's): it only
                # gets its UID, nothing of ours lands
                os.unlink(staged)
                final = self.path / on_disk[message.key]
                self.landed.already_there += 1
                size, is_link = -1, False
            else:
                for name in message.keywords:
                    if name not in letters and len(keywords) < 26:
                        keywords.append(name)
                        letters[name] = chr(96 + len(keywords))
                        added_keywords = True
                sub, name = file_name(message, letters, as_seen=True)
                if step.placement is Placement.COPY:
                    # -i: a second copy needs a base name of its own
                    name = name.replace(message.key, f"{message.key}.r{step.uid}", 1)
                final = self.path / sub / name
                os.rename(staged, final)
                on_disk[message.key] = f"{sub}/{name}"
            self.moved[staged] = final
            lines.append(f"{step.uid} :{final.name.partition(':')[0]}")
            if size >= 0:
                self.landed.messages += 1
                self.landed.links += is_link
                self.landed.bytes += size
        if added_keywords:
            replace_file(self.path, "dovecot-keywords",
                         "".join(f"{i} {k}\n" for i, k in enumerate(keywords)), self.owner)
        if lines:
            if self.sync:
                _sync_dir(self.path / "cur")
            if stale and current is not None:
                self._rewrite_without(stale, lines, next_uid)
            else:
                self._append_lines(current, lines)

    def _rewrite_without(self, stale: set[str], lines: list[str], next_uid: int) -> None:
        """Replace the uidlist (as Dovecot does, by rename, under the lock) without the
        lines of the given base names, with the new lines added and N raised."""
        text = (self.path / "dovecot-uidlist").read_text(encoding="utf-8", errors="surrogateescape")
        old = text.split("\n")
        if not text.endswith("\n"):
            old = old[:-1]          # an append in progress cannot happen: we hold the lock
        header = [f for f in old[0].split() if not f.startswith("N")]
        header.insert(1, f"N{next_uid}")
        kept = [line for line in old[1:] if line and line[line.rfind(":") + 1:] not in stale]
        replace_file(self.path, "dovecot-uidlist",
                     "\n".join([" ".join(header)] + kept + lines) + "\n", self.owner)

    def _keywords(self) -> list[str]:
        try:
            return parse_keywords_file((self.path / "dovecot-keywords").read_text(
                encoding="utf-8", errors="replace"))
        except FileNotFoundError:
            return []

    def _append_lines(self, current: uidlist.Uidlist | None, lines: list[str]) -> None:
        path = self.path / "dovecot-uidlist"
        if current is None:
            # Dovecot never wrote one: start it, with a UIDVALIDITY of its kind (a time)
            header = f"3 V{int(time.time())} N{int(lines[-1].split()[0]) + 1}"
            replace_file(self.path, "dovecot-uidlist", header + "\n" + "\n".join(lines) + "\n",
                         self.owner)
            return
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW)
        try:
            size = os.fstat(fd).st_size
            prefix = ""
            if size and os.pread(fd, 1, size - 1) != b"\n":
                prefix = "\n"
            os.write(fd, (prefix + "\n".join(lines) + "\n").encode("utf-8"))
            if self.sync:
                os.fsync(fd)
        finally:
            os.close(fd)




def _unlink_staged(staged: list[tuple[MessageRecord, Path, int, bool]]) -> None:
    for _, path, _, _ in staged:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def is_pristine(path: Path) -> bool:
    """True when the folder has never handed out a UID: no uidlist (or next UID 1 and no
    line) and no message file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return True
    try:
        try:
            current = uidlist.read(fd)
        except uidlist.UidlistError:
            return False
    finally:
        os.close(fd)
    if current is not None and (current.uids or current.effective_next_uid > 1):
        return False
    for sub in ("cur", "new"):
        try:
            if any(not n.startswith(".") for n in os.listdir(path / sub)):
                return False
        except FileNotFoundError:
            pass
    return True


def clean_stale(directory: Path) -> None:
    """Remove what a killed restore left in a ``tmp/``: ``ims-restore.<pid>.*`` of dead pids."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        parts = name.lstrip(".").split(".")
        if len(parts) < 3 or parts[0] != "ims-restore" or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid == os.getpid() or process_alive(pid):
            continue
        path = directory / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def remove_index_files(path: Path) -> None:
    for name in INDEX_FILES:
        try:
            os.unlink(path / name)
        except FileNotFoundError:
            pass


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- the driver's StoreWriter ------------------------------------------------------------------

class MaildirWriter:
    """``ims.store.base.StoreWriter`` for a Dovecot Maildir++ store.

    Owners: every file and directory made belongs to ``local.store.uid``/``gid`` when both are
    set, else to the owner of the user's existing Maildir, else of its partition directory."""

    def __init__(self, store: MaildirStore, owner: Owner | None = None,
                 lock_timeout: float = 60.0, sync: bool = False, batch_size: int = 500) -> None:
        self.store = store
        self.configured_owner = owner
        self.lock_timeout = lock_timeout
        self.sync = sync
        self.batch_size = batch_size
        self._owners: dict[tuple[str, str], Owner] = {}
        self._partition_owners: dict[str, Owner] = {}
        self._maildirs: dict[tuple[str, str], Path] = {}
        self._counter = 0

    def has_partition(self, partition: str) -> bool:
        return partition in self.store.partition_dirs

    def owner(self, partition: str, user: str) -> Owner:
        key = (partition, user)
        if key not in self._owners:
            self._owners[key] = self.configured_owner or self._owner_from_store(partition, user)
        return self._owners[key]

    def _owner_from_store(self, partition: str, user: str) -> Owner:
        maildir = self.store.maildir(partition, user)
        for path in (maildir, maildir.parent):
            try:
                st = os.lstat(path)
                return Owner(st.st_uid, st.st_gid)
            except FileNotFoundError:
                continue
        if partition not in self._partition_owners:
            st = os.stat(self.store.partition_dirs[partition])
            self._partition_owners[partition] = Owner(st.st_uid, st.st_gid)
        return self._partition_owners[partition]

    def _maildir(self, partition: str, user: str) -> Path:
        key = (partition, user)
        if key not in self._maildirs:
            if len(self._maildirs) > 1024:      # users come one after another
                self._maildirs.clear()
            self._maildirs[key] = self.store.maildir(partition, user)
        return self._maildirs[key]

    def folder_path(self, partition: str, user: str, folder: str) -> Path:
        maildir = self._maildir(partition, user)
        return maildir if folder == INBOX else maildir / folder_to_dirname(folder)

    def live_folder(self, partition: str, user: str, folder: str) -> LiveFolder:
        path = self.folder_path(partition, user, folder)
        exists = path.is_dir()
        return LiveFolder(exists, is_pristine(path) if exists else True)

    def free_sibling(self, partition: str, user: str, folder: str, suffix: str) -> str:
        base = f"{folder}_{suffix}"
        candidate, n = base, 1
        while os.path.lexists(self.folder_path(partition, user, candidate)):
            n += 1
            candidate = f"{base}_{n}"
        return candidate

    def prepare_user(self, partition: str, user: str) -> None:
        make_dirs(self.store.maildir(partition, user).parent, self.owner(partition, user))

    def _maildir_for(self, partition: str, user: str, folder: str) -> Path:
        maildir = self._maildir(partition, user)
        if folder != INBOX and not maildir.is_dir():
            # an INBOX to hang the folder on
            make_maildir(maildir, self.owner(partition, user), marker=False)
        return maildir

    def restore_whole(self, partition: str, user: str, folder: str,
                      whole: WholeFolder) -> NewFolder:
        maildir = self._maildir_for(partition, user, folder)
        self._counter += 1
        aside_dir = maildir.parent if folder == INBOX else maildir / "tmp"
        aside = aside_dir / f".ims-restore.{os.getpid()}.{self._counter}"
        return NewFolder(self.folder_path(partition, user, folder), aside,
                         self.owner(partition, user), whole, folder == INBOX, self.lock_timeout,
                         self.sync, self.batch_size)

    def add_to_folder(self, partition: str, user: str, folder: str,
                      check_existing: bool) -> ExistingFolder:
        self._maildir_for(partition, user, folder)
        return ExistingFolder(self.folder_path(partition, user, folder),
                              self.owner(partition, user), self.lock_timeout, check_existing,
                              self.sync, self.batch_size, folder == INBOX)

    def add_subscriptions(self, partition: str, user: str, names: list[str]) -> None:
        maildir = self.store.maildir(partition, user)
        if names and maildir.is_dir():
            merge_subscriptions(maildir, names, self.owner(partition, user),
                                lock_timeout=self.lock_timeout)

    def read_file(self, restored: Placed) -> bytes:
        return restored.path().read_bytes()
