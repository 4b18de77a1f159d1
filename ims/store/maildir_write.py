"""Dovecot Maildir++ driver (write side): the two ways a folder is restored.

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

Failure behaviour: ``OSError`` propagates to the engine, which reports the message or folder;
``StoreLocked`` when the lock cannot be had within the bound.
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

from ims.store import uidlist
from ims.store.lock import FolderLock, process_alive
from ims.store.maildir import INBOX, parse_keywords_file

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


@dataclass
class Message:
    """A message to restore, in store-neutral terms."""

    key: str
    uid: int | None
    flags: str
    keywords: tuple[str, ...]
    internaldate: int
    is_new: bool = False


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


def file_name(message: Message, letters: dict[str, str]) -> tuple[str, str]:
    """(sub-directory, file name) of a message: ``new/<key>`` or ``cur/<key>:2,<flags>``."""
    if message.is_new and not message.flags and not message.keywords:
        return "new", message.key
    flags = [f for f in message.flags if f in _SYSTEM_FLAGS]
    flags += [letters[k] for k in message.keywords if k in letters]
    return "cur", f"{message.key}:2,{''.join(sorted(set(flags)))}"


def keyword_letters(names: list[str]) -> dict[str, str]:
    return {name: chr(97 + i) for i, name in enumerate(names) if name and i < 26}


def folder_dir(maildir: Path, folder: str, encode) -> Path:
    return maildir if folder == INBOX else maildir / encode(folder)


class NewFolder:
    """Rule 1: build the folder aside and move it into place as a whole."""

    def __init__(self, target: Path, aside: Path, owner: Owner, state: dict, is_inbox: bool,
                 sync: bool = False) -> None:
        self.target = target
        self.aside = aside
        self.owner = owner
        self.state = state
        self.is_inbox = is_inbox
        self.sync = sync
        self.keywords: list[str] = list(state.get("keywords") or [])
        self.letters = keyword_letters(self.keywords)
        self.placed: list[tuple[Message, str]] = []   # message, "cur/<name>" in the aside dir
        clean_stale(aside.parent)
        make_maildir(aside, owner, marker=not is_inbox)
        # descriptors stay valid when the folder is renamed into place
        self._dir_fds = {sub: os.open(aside / sub, os.O_RDONLY | os.O_DIRECTORY)
                         for sub in ("cur", "new")}

    def _letters_for(self, message: Message) -> dict[str, str]:
        for name in message.keywords:
            if name not in self.letters and len(self.keywords) < 26:
                self.keywords.append(name)
                self.letters[name] = chr(96 + len(self.keywords))
        return self.letters

    def add(self, message: Message, data: bytes | memoryview) -> str:
        """Write the message; returns the handle ``current_path`` resolves later."""
        sub, name = file_name(message, self._letters_for(message))
        write_file(self._dir_fds[sub], name, data, message.internaldate, self.owner, self.sync)
        self.placed.append((message, f"{sub}/{name}"))
        return f"{sub}/{name}"

    def add_link(self, message: Message, source: Path) -> str:
        sub, name = file_name(message, self._letters_for(message))
        os.link(source, name, dst_dir_fd=self._dir_fds[sub], follow_symlinks=False)
        self.placed.append((message, f"{sub}/{name}"))
        return f"{sub}/{name}"

    def current_path(self, handle: str) -> Path:
        return self.aside / handle

    def _uidlist_text(self) -> str:
        with_uid = sorted((m.uid, m.key) for m, _ in self.placed if m.uid is not None)
        highest = with_uid[-1][0] if with_uid else 0
        next_uid = max(int(self.state.get("next_uid") or 1), highest + 1)
        header = f"3 V{self.state['uidvalidity']} N{next_uid}"
        if self.state.get("guid"):
            header += f" G{self.state['guid']}"
        return "\n".join([header] + [f"{uid} :{key}" for uid, key in with_uid]) + "\n"

    def close_fds(self) -> None:
        for fd in self._dir_fds.values():
            os.close(fd)
        self._dir_fds = {}

    def commit(self) -> bool:
        """Move the folder into place; False when it exists by now (use rule 2 instead)."""
        self.close_fds()
        if self.state.get("uidvalidity"):
            replace_file(self.aside, "dovecot-uidlist", self._uidlist_text(), self.owner)
        if self.keywords:
            replace_file(self.aside, "dovecot-keywords",
                         "".join(f"{i} {k}\n" for i, k in enumerate(self.keywords)), self.owner)
        if self.sync:
            _sync_dir(self.aside / "cur")
            _sync_dir(self.aside)
        try:
            rename_noreplace(self.aside, self.target)
        except FileExistsError:
            return False
        if self.sync:
            _sync_dir(self.target.parent)
        self.aside = self.target
        return True

    def commit_into_existing(self, lock_timeout: float) -> bool:
        """The folder exists but has never handed out a UID: move the files in under the
        lock, the uidlist last, and drop Dovecot's index.  False when it has mail by now."""
        self.close_fds()
        lock = FolderLock(self.target, lock_timeout)
        lock.acquire()
        try:
            if not is_pristine(self.target):
                return False
            for _, relative in self.placed:
                os.rename(self.aside / relative, self.target / relative)
            if self.keywords:
                replace_file(self.target, "dovecot-keywords",
                             "".join(f"{i} {k}\n" for i, k in enumerate(self.keywords)),
                             self.owner)
            remove_index_files(self.target)
            if self.state.get("uidvalidity"):
                replace_file(self.target, "dovecot-uidlist", self._uidlist_text(), self.owner)
        finally:
            lock.release()
        shutil.rmtree(self.aside, ignore_errors=True)
        self.aside = self.target
        return True

    def hand_over(self, other: "ExistingFolder") -> dict[str, Path]:
        """The folder appeared meanwhile: give the built messages to rule 2; returns where
        each file (by handle) went."""
        self.close_fds()
        moved = {relative: other.adopt(message, self.aside / relative)
                 for message, relative in self.placed}
        self.placed = []
        shutil.rmtree(self.aside, ignore_errors=True)
        return moved

    def discard(self) -> None:
        self.close_fds()
        shutil.rmtree(self.aside, ignore_errors=True)


class ExistingFolder:
    """Rule 2: add messages to a live folder under its lock, with fresh UIDs."""

    def __init__(self, path: Path, owner: Owner, lock_timeout: float, check_existing: bool = True,
                 sync: bool = False, batch_size: int = 500) -> None:
        self.path = path
        self.owner = owner
        self.lock_timeout = lock_timeout
        self.check_existing = check_existing
        self.sync = sync
        self.batch_size = batch_size
        self.staged: list[tuple[Message, Path]] = []
        self.already_there = 0
        self.moved: dict[Path, Path] = {}     # staged path -> where the message is now
        self._counter = 0
        make_maildir(path, owner, marker=False)
        clean_stale(path / "tmp")
        self._tmp = str(path / "tmp")

    def current_path(self, handle: Path) -> Path:
        return self.moved.get(handle, handle)

    def _stage_name(self) -> str:
        self._counter += 1
        return f"ims-restore.{os.getpid()}.{self._counter}.{socket.gethostname()}"

    def add(self, message: Message, data: bytes | memoryview) -> Path:
        return self._staged(message, Path(write_file(
            self._tmp, self._stage_name(), data, message.internaldate, self.owner, self.sync)))

    def add_link(self, message: Message, source: Path) -> Path:
        path = self.path / "tmp" / self._stage_name()
        os.link(source, path, follow_symlinks=False)
        return self._staged(message, path)

    def _staged(self, message: Message, path: Path) -> Path:
        """Queue a file written to tmp/; a full batch goes in under the lock at once."""
        self.staged.append((message, path))
        if len(self.staged) >= self.batch_size:
            self.commit()
        return path

    def adopt(self, message: Message, staged: Path) -> Path:
        """Take a file staged elsewhere on the same file system (a NewFolder that lost)."""
        path = self.path / "tmp" / self._stage_name()
        os.rename(staged, path)
        self.staged.append((message, path))
        return path

    def commit(self) -> None:
        """Move the staged messages in, under the lock, each with the next UID."""
        if not self.staged:
            return
        batch, self.staged = self.staged, []
        lock = FolderLock(self.path, self.lock_timeout)
        lock.acquire()
        try:
            self._commit_locked(batch)
        finally:
            lock.release()

    def _commit_locked(self, batch: list[tuple[Message, Path]]) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            current = uidlist.read(fd)
            index_next = uidlist.index_next_uid(fd)
        finally:
            os.close(fd)
        keywords = self._keywords()
        letters = keyword_letters(keywords)
        known = current.uids if current else {}
        next_uid = max(current.effective_next_uid if current else 1, index_next or 1)
        on_disk: dict[str, str] = {}
        for sub in ("new", "cur"):
            for name in os.listdir(self.path / sub):
                on_disk.setdefault(name.partition(":")[0], f"{sub}/{name}")
        lines: list[str] = []
        stale: set[str] = set()
        added_keywords = False
        for message, staged in batch:
            if message.key in known and message.key not in on_disk:
                # Dovecot leaves an expunged message's line behind until it compacts the
                # uidlist: a line without a file is not "there".  The line goes, so that the
                # base name is listed once, with its new UID.
                stale.add(message.key)
            elif self.check_existing and message.key in known:
                os.unlink(staged)           # already there: it keeps its live flags
                self.already_there += 1
                self.moved[staged] = self.path / on_disk[message.key]
                continue
            existing = on_disk.get(message.key)
            if existing is not None and self.check_existing:
                # a file without a uidlist line: left by a restore that was killed (or just
                # delivered); give it its UID rather than a second copy
                os.unlink(staged)
                final = self.path / existing
            else:
                for name in message.keywords:
                    if name not in letters and len(keywords) < 26:
                        keywords.append(name)
                        letters[name] = chr(96 + len(keywords))
                        added_keywords = True
                sub, name = file_name(Message(message.key, None, message.flags, message.keywords,
                                              message.internaldate), letters)
                final = self.path / sub / name
                if existing is not None:    # -i: a second copy needs a base name of its own
                    final = self.path / sub / name.replace(message.key, message.key + ".r"
                                                           + str(next_uid), 1)
                os.rename(staged, final)
                on_disk[message.key] = f"{sub}/{final.name}"
            self.moved[staged] = final
            key = final.name.partition(":")[0]
            lines.append(f"{next_uid} :{key}")
            next_uid += 1
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
