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
INTERNALDATE as mtime.

Links: the store belongs to the mail user, who can replace any directory in it by a symbolic
link, also while a restore runs.  Every directory below the partition root is therefore
opened level by level with ``O_NOFOLLOW`` (``open_dir_under``), and every file operation
afterwards is relative to a descriptor so opened: through ``dir_fd`` arguments, or through
``/proc/self/fd/<fd>/<name>`` (the kernel resolves that prefix to the directory the
descriptor holds, whatever the path now names), where a library call wants a path.  A link
met on the way raises ``UnsafePath``, which names it; the folder is skipped and reported.
The partition directory itself is the administrator's configuration and may be a link.

Counting: ``landed`` says what is in the store, counted when it lands (a committed batch, a
folder renamed into place), never when it is staged.

Failure behaviour: ``OSError`` propagates to the engine, which reports the message or folder;
``StoreLocked`` when the lock cannot be had within the bound, after removing what the
folder had staged; ``abort`` removes a folder built aside, or the staged files of a live
folder, so an interrupted restore leaves nothing half-built.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ims.archive.records import MessageRecord
from ims.errors import StoreLocked
from ims.restore.plan import NO_ROOM_REASON, Placement, merge_next_uid, plan_merge
from ims.store import modseq as dovecot_modseq
from ims.store import uidlist
from ims.store.beneath import open_beneath
from ims.store.files import read_regular
from ims.store.base import Landed, LiveFolder, WholeFolder
from ims.store.lock import FolderLock, hostname, process_alive
from ims.store.maildir import INBOX, MaildirStore, folder_to_dirname, parse_keywords_file
from ims.signals import held
from ims.store.subscriptions import merge_subscriptions

_SYSTEM_FLAGS = "DFPRST"
_RENAME_NOREPLACE = 1
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)
INDEX_FILES = ("dovecot.index", "dovecot.index.log", "dovecot.index.log.2", "dovecot.index.cache")


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(OSError):
    """A symbolic link (or a non-directory) where the store should have a directory."""

    def __init__(self, path: Path | str) -> None:
        super().__init__(errno.ELOOP, f"{path} is a symbolic link or not a directory;"
                         " a restore does not follow links inside the store")


def anchored(fd: int) -> Path:
    """A path that names what ``fd`` holds, however the directory is reached by name now."""
    return Path(f"/proc/self/fd/{fd}")


def open_subdir(parent_fd: int, name: str, shown: Path | str, owner: "Owner | None" = None) -> int:
    """``name`` below ``parent_fd``, never through a link; created (0700, ``owner``) when
    missing and ``owner`` is given, else FileNotFoundError."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        if owner is None:
            raise
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePath(shown) from None
        raise
    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
        created = True
    except FileExistsError:
        created = False        # made meanwhile (a delivery): taken as it is, if a directory
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePath(shown) from None
        raise
    if created:
        owner.apply(fd)
    return fd


def open_dir_under(root: Path, parts: tuple[str, ...] | list[str],
                   owner: "Owner | None" = None) -> int:
    """A descriptor of ``root/parts...``, each level opened with O_NOFOLLOW from ``root``
    down (``root``, the partition directory, is configuration and may be a link)."""
    return open_levels(os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), parts,
                       root, owner)


def open_levels(fd: int, parts: tuple[str, ...] | list[str], shown: Path,
                owner: "Owner | None" = None) -> int:
    """Walk down from ``fd`` (which this takes over and closes) through ``parts``, each level
    opened with O_NOFOLLOW (``open_subdir``); the last level's descriptor.

    Where the path is there already, one ``openat2`` refusing links at every level opens it
    (``ims.store.beneath``); a level missing, a link or anything else on the way is left to
    the walk, which creates the missing levels or names the one at fault."""
    for part in parts:
        if part in ("", ".", "..") or "/" in part or "\0" in part:
            # names were validated where they were read; this is the last guard, for
            # the walk as for openat2 (a NUL would have cut the path short there)
            os.close(fd)
            raise OSError(errno.EINVAL, f"a level named {part!r} is not a store directory",
                          f"{shown}/{'/'.join(parts)}")
    if parts:
        try:
            whole = open_beneath(fd, "/".join(parts), _DIR_FLAGS)
        except FileNotFoundError:
            if owner is None:
                os.close(fd)
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT),
                                        str(shown.joinpath(*parts))) from None
            whole = None
        except OSError:
            whole = None
        if whole is not None:
            os.close(fd)
            return whole
    try:
        for part in parts:
            shown = shown / part
            child = open_subdir(fd, part, shown, owner)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def rename_noreplace(source_dir: int, source: str, target_dir: int, target: str,
                     shown: Path | str) -> None:
    """renameat2(RENAME_NOREPLACE): FileExistsError instead of replacing (an empty) target."""
    if _renameat2 is None:
        try:
            os.lstat(target, dir_fd=target_dir)
            raise FileExistsError(errno.EEXIST, "exists", str(shown))
        except FileNotFoundError:
            pass
        os.rename(source, target, src_dir_fd=source_dir, dst_dir_fd=target_dir)
        return
    result = _renameat2(source_dir, os.fsencode(source), target_dir, os.fsencode(target),
                        _RENAME_NOREPLACE)
    if result != 0:
        code = ctypes.get_errno()
        if code in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(code, os.strerror(code), str(shown))
        raise OSError(code, os.strerror(code), str(shown))


def stage_suffix() -> str:
    """The end of every name a restore stages: pid and host, so a cleaner on another host
    sharing the store (NFS) never takes a live restore's files for a dead one's."""
    return f"{os.getpid()}.{hostname()}"


_euid: int | None = None


def _as_root() -> bool:
    """Whether files made are given to their owner: only root can.  Asked once (a system
    call each time, on every file a restore makes); a restore never changes its uid, and
    a forked child inherits it."""
    global _euid
    if _euid is None:
        _euid = os.geteuid()
    return _euid == 0


@dataclass
class Owner:
    uid: int
    gid: int

    def apply(self, path: Path | int) -> None:
        if not _as_root():
            return
        if isinstance(path, int):
            os.fchown(path, self.uid, self.gid)
        else:
            os.chown(path, self.uid, self.gid, follow_symlinks=False)


def make_maildir(folder_fd: int, shown: Path, owner: Owner, marker: bool,
                 empty: bool = False) -> dict[str, int]:
    """``cur/ new/ tmp/`` (and ``maildirfolder``) in the folder ``folder_fd`` holds; their
    descriptors, opened without following links.  ``empty``: the folder was just made by
    this process, so each is made at once (not looked for first)."""
    subs: dict[str, int] = {}
    try:
        for sub in ("cur", "new", "tmp"):
            if empty:
                # the folder is the user's once it is given to them: anything met here was
                # planted meanwhile, and is refused as the walk refuses it
                try:
                    os.mkdir(sub, 0o700, dir_fd=folder_fd)
                    subs[sub] = os.open(sub, _DIR_FLAGS, dir_fd=folder_fd)
                except OSError as exc:
                    if exc.errno in (errno.EEXIST, errno.ELOOP, errno.ENOTDIR):
                        raise UnsafePath(shown / sub) from None
                    raise
                owner.apply(subs[sub])
            else:
                subs[sub] = open_subdir(folder_fd, sub, shown / sub, owner)
        if marker:
            fd = os.open("maildirfolder", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=folder_fd)
            owner.apply(fd)
            os.close(fd)
    except BaseException:
        close_all(subs)
        raise
    return subs


def close_all(fds: dict[str, int]) -> None:
    for fd in fds.values():
        os.close(fd)
    fds.clear()


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


def replace_file(directory: int, name: str, text: str, owner: Owner, sync: bool = False) -> None:
    """Write a small control file through a temporary name and rename (Dovecot's rule);
    ``sync``: the file's data before the rename, the directory after it."""
    temp = f".{name}.ims-restore.{stage_suffix()}"
    write_file(directory, temp, text.encode("utf-8"), None, owner, sync)
    os.replace(temp, name, src_dir_fd=directory, dst_dir_fd=directory)
    if sync:
        os.fsync(directory)


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

    def __init__(self, folder: "NewFolder | ExistingFolder", handle: str) -> None:
        self.folder = folder
        self.handle = handle

    def open_source(self) -> tuple[int, str, bool]:
        """(directory fd, file name, whether the caller closes the fd)."""
        return self.folder.locate(self.handle)

    def path(self) -> Path:
        return self.folder.shown_path(self.handle)

    def settled(self) -> tuple[Path, tuple[str, ...], str, str]:
        """Where the file is once its folder is committed: the partition directory, the
        directories below it, ``cur``/``new``/``tmp`` and the file name."""
        return self.folder.settled(self.handle)


class SettledDirs:
    """Descriptors of the last few directories holding settled first copies: the links to
    one shared message come one after another, each had opened its first copy's directory
    again level by level from the partition (five or six ``open`` calls a link).  A
    descriptor stays the directory it was opened as, wherever that is renamed later."""

    SIZE = 16

    def __init__(self) -> None:
        self._fds: dict[tuple[str, tuple[str, ...], str], int] = {}

    def get(self, root: Path, parts: tuple[str, ...], sub: str) -> int:
        key = (str(root), parts, sub)
        fd = self._fds.pop(key, None)
        if fd is None:
            fd = open_dir_under(root, parts + (sub,))
            if len(self._fds) >= self.SIZE:
                os.close(self._fds.pop(next(iter(self._fds))))
        self._fds[key] = fd             # the most recent last
        return fd

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class Settled:
    """A message file restored earlier in this run, in a folder already committed, known by
    its place alone (``MaildirWriter.unpack_restored``): no folder writer is kept alive for
    it.  Its directory is opened again level by level with O_NOFOLLOW, as a closed folder's
    files are (or taken from ``SettledDirs``, which opened it so)."""

    __slots__ = ("root", "parts", "sub", "name", "dirs")

    def __init__(self, root: Path, parts: tuple[str, ...], sub: str, name: str,
                 dirs: SettledDirs | None = None) -> None:
        self.root, self.parts, self.sub, self.name = root, parts, sub, name
        self.dirs = dirs

    def open_source(self) -> tuple[int, str, bool]:
        if self.dirs is not None:
            return self.dirs.get(self.root, self.parts, self.sub), self.name, False
        return _reopen(self.root, self.parts, self.sub, self.name)

    def path(self) -> Path:
        return self.root.joinpath(*self.parts, self.sub, self.name)


def _reopen(root: Path, parts: tuple[str, ...], sub: str, name: str) -> tuple[int, str, bool]:
    return open_dir_under(root, parts + (sub,)), name, True


class NewFolder:
    """Rule 1: build the folder aside and move it into place as a whole.

    Owns the descriptors it is given: ``target_dir`` (where ``target_name`` goes) and
    ``aside_dir`` (where it is built, as ``aside_name``)."""

    def __init__(self, root: Path, parts: tuple[str, ...], target_dir: int, target_name: str,
                 aside_dir: int, aside_name: str, owner: Owner, whole: WholeFolder,
                 is_inbox: bool, lock_timeout: float, sync: bool = False,
                 batch_size: int = 500, clean_aside: bool = True) -> None:
        """``clean_aside``: first remove what a killed restore left in ``aside_dir`` (the
        writer does it once a user, not for each folder)."""
        self.root, self.parts = root, parts
        self.shown = root.joinpath(*parts)
        self.target_dir, self.target_name = target_dir, target_name
        self.aside_dir, self.aside_name = aside_dir, aside_name
        self.owner = owner
        self.whole = whole
        self.is_inbox = is_inbox
        self.lock_timeout = lock_timeout
        self.sync = sync
        self.batch_size = batch_size
        self.keywords: list[str] = list(whole.keywords)
        self.letters = keyword_letters(self.keywords)
        # message, sub-directory, file name in the aside dir, its Placed, bytes, a hard link?
        self.placed: list[tuple[MessageRecord, str, str, Placed, int, bool]] = []
        self.landed = Landed()
        self._committed = False
        self._subs: dict[str, int] = {}
        self.aside_fd = -1
        try:
            if clean_aside:
                clean_stale(aside_dir)
            os.mkdir(aside_name, 0o700, dir_fd=aside_dir)
            self.aside_fd = os.open(aside_name, _DIR_FLAGS, dir_fd=aside_dir)
            owner.apply(self.aside_fd)
            # descriptors stay valid when the folder is renamed into place
            self._subs = make_maildir(self.aside_fd, self.shown, owner, marker=not is_inbox,
                                      empty=True)
        except BaseException:
            self.abort()
            raise

    def _letters_for(self, message: MessageRecord) -> dict[str, str]:
        for name in message.keywords:
            if name not in self.letters and len(self.keywords) < 26:
                self.keywords.append(name)
                self.letters[name] = chr(96 + len(self.keywords))
        return self.letters

    def add(self, message: MessageRecord, data: bytes | memoryview) -> Placed:
        sub, name = file_name(message, self._letters_for(message))
        write_file(self._subs[sub], name, data, message.internaldate, self.owner, self.sync)
        return self._placed(message, sub, name, len(data), False)

    def add_link(self, message: MessageRecord, source: Placed | Settled) -> Placed:
        sub, name = file_name(message, self._letters_for(message))
        link_to(source, self._subs[sub], name, self.owner)
        return self._placed(message, sub, name, 0, True)

    def _placed(self, message: MessageRecord, sub: str, name: str, size: int,
                is_link: bool) -> Placed:
        placed = Placed(self, f"{sub}/{name}")
        self.placed.append((message, sub, name, placed, size, is_link))
        return placed

    def locate(self, handle: str) -> tuple[int, str, bool]:
        sub, _, name = handle.partition("/")
        if self._subs:
            return self._subs[sub], name, False
        return _reopen(self.root, self.parts, sub, name)

    def shown_path(self, handle: str) -> Path:
        return self.shown / handle

    def settled(self, handle: str) -> tuple[Path, tuple[str, ...], str, str]:
        sub, _, name = handle.partition("/")
        return self.root, self.parts, sub, name

    def _uidlist_text(self) -> str:
        with_uid = sorted((m.uid, m.key) for m, _, _, _, _, _ in self.placed if m.uid is not None)
        header = f"3 V{self.whole.uidvalidity} N{self.whole.next_uid}"
        if self.whole.guid:
            header += f" G{self.whole.guid}"
        return "\n".join([header] + [f"{uid} :{key}" for uid, key in with_uid]) + "\n"

    def _keywords_text(self) -> str:
        return "".join(f"{i} {k}\n" for i, k in enumerate(self.keywords))

    def _close(self) -> None:
        close_all(self._subs)
        for attr in ("aside_fd", "aside_dir", "target_dir"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)

    def _count_all(self) -> None:
        for _, _, _, _, size, is_link in self.placed:
            self.landed.messages += 1
            self.landed.links += is_link
            self.landed.bytes += size
        self.landed.whole = True
        self.placed = []

    def commit(self) -> Landed:
        """Move the folder into place.  If it appeared meanwhile: still empty (Dovecot
        recreated it), the files go in under its lock; with mail, rule 2 takes them."""
        # written in place: nothing reads the folder built aside before it is moved into
        # place (after a kill, the next restore removes it whole)
        if self.whole.uidvalidity:
            write_file(self.aside_fd, "dovecot-uidlist", self._uidlist_text().encode("utf-8"),
                       None, self.owner, self.sync)
        if self.keywords:
            write_file(self.aside_fd, "dovecot-keywords", self._keywords_text().encode("utf-8"),
                       None, self.owner, self.sync)
        if self.whole.modseq is not None:
            dovecot_modseq.seed_modseq(self.aside_fd, self.whole.modseq, self.owner.uid,
                                       self.owner.gid, unseen=True)
        if self.sync:
            for fd in (self._subs["cur"], self._subs["new"], self.aside_fd):
                os.fsync(fd)
        try:
            with held():
                rename_noreplace(self.aside_dir, self.aside_name, self.target_dir,
                                 self.target_name, self.shown)
                self._committed = True
        except FileExistsError:
            return self._commit_into_existing()
        if self.sync:
            os.fsync(self.target_dir)
        self._count_all()
        self._close()
        return self.landed

    def _commit_into_existing(self) -> Landed:
        target_fd = open_subdir(self.target_dir, self.target_name, self.shown)
        handed_over: ExistingFolder | None = None
        try:
            lock = FolderLock(anchored(target_fd), self.lock_timeout, shown=self.shown)
            lock.acquire()
            try:
                if is_pristine(target_fd):
                    self._fill_pristine(target_fd)
                else:
                    handed_over = self._hand_over(target_fd)
                    target_fd = -1          # the rule-2 writer owns it now
            finally:
                lock.release()
        finally:
            if target_fd >= 0:
                os.close(target_fd)
        if handed_over is not None:       # after the lock: rule 2 takes it itself
            self.landed = handed_over.commit()
            self.landed.merged = True
            return self.landed
        self._committed = True
        self._count_all()
        self._remove_aside()
        return self.landed

    def _fill_pristine(self, target_fd: int) -> None:
        """An INBOX Dovecot recreated empty: the files go in one by one, then the control
        files, the uidlist last.  Interrupted before the uidlist is written, every file
        goes back aside, so the INBOX stays pristine and the next run restores it whole."""
        target_subs = make_maildir(target_fd, self.shown, self.owner, marker=not self.is_inbox)
        moved: list[tuple[str, str]] = []
        try:
            for _, sub, name, _, _, _ in self.placed:
                with held():        # moved and remembered as moved, or neither
                    os.rename(name, name, src_dir_fd=self._subs[sub],
                              dst_dir_fd=target_subs[sub])
                    moved.append((sub, name))
            if self.keywords:
                replace_file(target_fd, "dovecot-keywords", self._keywords_text(), self.owner,
                             self.sync)
            remove_index_files(target_fd)
            if self.whole.modseq is not None:
                seed = (target_fd, self.whole.modseq, self.owner.uid, self.owner.gid)
                try:
                    dovecot_modseq.seed_modseq(*seed)
                except FileExistsError:
                    # Dovecot reopened the INBOX meanwhile (a session, a delivery): once
                    # more, then without the seed rather than over a live log
                    remove_index_files(target_fd)
                    try:
                        dovecot_modseq.seed_modseq(*seed)
                    except FileExistsError:
                        pass
            if self.sync:
                for fd in target_subs.values():
                    os.fsync(fd)
            if self.whole.uidvalidity:
                replace_file(target_fd, "dovecot-uidlist", self._uidlist_text(), self.owner,
                             self.sync)
        except BaseException:
            with held():
                for sub, name in moved:
                    os.rename(name, name, src_dir_fd=target_subs[sub],
                              dst_dir_fd=self._subs[sub])
            raise
        finally:
            close_all(target_subs)

    def _hand_over(self, target_fd: int) -> "ExistingFolder":
        """Dovecot created the folder and delivered to it meanwhile: the built messages are
        given to rule 2 (new UIDs); every ``Placed`` follows its file."""
        other = ExistingFolder(self.root, self.parts, target_fd, self.owner, self.lock_timeout,
                               True, self.sync, self.batch_size, self.is_inbox)
        for message, sub, name, placed, size, is_link in self.placed:
            placed.folder, placed.handle = other, other.adopt(message, self._subs[sub], name,
                                                              size, is_link)
        self.placed = []
        self._remove_aside()
        return other

    def _remove_aside(self) -> None:
        close_all(self._subs)
        if self.aside_dir >= 0:
            _shutil().rmtree(self.aside_name, ignore_errors=True, dir_fd=self.aside_dir)
        self._close()

    def abort(self) -> None:
        """Nothing of the folder reaches the store (an interrupted or invalid restore).  The
        build directory goes also after a commit interrupted while removing it (once the
        folder is in place, nothing of it is left there)."""
        self._remove_aside()
        self._close()


def link_to(source: Placed | Settled, dir_fd: int, name: str, owner: Owner) -> None:
    """A hard link to a file restored earlier in this run, when it has this folder's owner;
    otherwise EXDEV, and the caller copies the bytes (one user's inode in another user's
    Maildir would be unreadable to the one and writable by the other)."""
    source_dir, source_name, owned = source.open_source()
    try:
        st = os.stat(source_name, dir_fd=source_dir, follow_symlinks=False)
        if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (owner.uid, owner.gid):
            raise OSError(errno.EXDEV, "the first copy belongs to another owner")
        os.link(source_name, name, src_dir_fd=source_dir, dst_dir_fd=dir_fd,
                follow_symlinks=False)
    finally:
        if owned:
            os.close(source_dir)


class ExistingFolder:
    """Rule 2: add messages to a live folder under its lock, with fresh UIDs.  Owns
    ``folder_fd``, the folder's descriptor."""

    def __init__(self, root: Path, parts: tuple[str, ...], folder_fd: int, owner: Owner,
                 lock_timeout: float, check_existing: bool = True, sync: bool = False,
                 batch_size: int = 500, is_inbox: bool = True) -> None:
        self.root, self.parts = root, parts
        self.shown = root.joinpath(*parts)
        self.fd = folder_fd
        self.owner = owner
        self.lock_timeout = lock_timeout
        self.check_existing = check_existing
        self.sync = sync
        self.batch_size = batch_size
        # message, its name in tmp/, bytes written, a hard link?
        self.staged: list[tuple[MessageRecord, str, int, bool]] = []
        self.landed = Landed(merged=True)
        self.moved: dict[str, tuple[str, str]] = {}     # staged name -> (sub, name) now
        self._counter = 0
        self._pending: str | None = None
        self._subs: dict[str, int] = {}
        try:
            self._subs = make_maildir(folder_fd, self.shown, owner, marker=not is_inbox)
            clean_stale(self._subs["tmp"])
            clean_stale_temps(folder_fd)
        except BaseException:
            self._close()
            raise

    def locate(self, handle: str) -> tuple[int, str, bool]:
        sub, name = self.moved.get(handle, ("tmp", handle))
        if self._subs:
            return self._subs[sub], name, False
        return _reopen(self.root, self.parts, sub, name)

    def shown_path(self, handle: str) -> Path:
        sub, name = self.moved.get(handle, ("tmp", handle))
        return self.shown / sub / name

    def settled(self, handle: str) -> tuple[Path, tuple[str, ...], str, str]:
        sub, name = self.moved.get(handle, ("tmp", handle))
        return self.root, self.parts, sub, name

    def _stage_name(self) -> str:
        self._counter += 1
        return f"ims-restore.{os.getpid()}.{self._counter}.{hostname()}"

    def add(self, message: MessageRecord, data: bytes | memoryview) -> Placed:
        # named before it exists: an interrupt between its creation and its queueing
        # leaves nothing that ``abort`` does not know
        name = self._pending = self._stage_name()
        write_file(self._subs["tmp"], name, data, message.internaldate, self.owner, self.sync)
        placed = Placed(self, self._stage(message, name, len(data), False))
        self._pending = None
        return placed

    def add_link(self, message: MessageRecord, source: Placed | Settled) -> Placed:
        name = self._pending = self._stage_name()
        link_to(source, self._subs["tmp"], name, self.owner)
        placed = Placed(self, self._stage(message, name, 0, True))
        self._pending = None
        return placed

    def _stage(self, message: MessageRecord, name: str, size: int, is_link: bool) -> str:
        """Queue a file written to tmp/; a full batch goes in under the lock at once."""
        self.staged.append((message, name, size, is_link))
        if len(self.staged) >= self.batch_size:
            self._commit_batch()
        return name

    def adopt(self, message: MessageRecord, source_dir: int, source_name: str, size: int,
              is_link: bool) -> str:
        """Take a file staged elsewhere on the same file system (a NewFolder that lost)."""
        name = self._stage_name()
        os.rename(source_name, name, src_dir_fd=source_dir, dst_dir_fd=self._subs["tmp"])
        self.staged.append((message, name, size, is_link))
        return name

    def commit(self) -> Landed:
        try:
            self._commit_batch()
        finally:
            if not self.staged:
                self._close()
        return self.landed

    def abort(self) -> None:
        """Remove what is staged and not committed; committed batches stay (each message in
        them is complete, with its UID)."""
        staged, self.staged = self.staged, []
        if self._subs:
            self._unlink_staged(staged)
            if self._pending is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._pending, dir_fd=self._subs["tmp"])
        self._close()

    def _close(self) -> None:
        close_all(self._subs)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _unlink_staged(self, staged: list[tuple[MessageRecord, str, int, bool]]) -> None:
        for _, name, _, _ in staged:
            try:
                os.unlink(name, dir_fd=self._subs["tmp"])
            except FileNotFoundError:
                pass

    def _commit_batch(self) -> None:
        """Move the staged messages in, under the lock, each with the next UID.  When the
        lock cannot be had, everything staged is removed and ``StoreLocked`` raised."""
        if not self.staged:
            return
        lock = FolderLock(anchored(self.fd), self.lock_timeout, shown=self.shown)
        try:
            lock.acquire()
        except StoreLocked:
            self.abort()
            raise
        batch, self.staged = self.staged, []
        try:
            self._commit_locked(batch)
        except BaseException:
            self._unlink_staged(batch)      # what was not moved in goes (a rerun restores it)
            raise
        finally:
            lock.release()

    def _commit_locked(self, batch: list[tuple[MessageRecord, str, int, bool]]) -> None:
        current = uidlist.read(self.fd)
        index_next = uidlist.index_next_uid(self.fd)
        keywords = self._keywords()
        letters = keyword_letters(keywords)
        known = current.uids if current else {}
        on_disk: dict[str, tuple[str, str]] = {}
        for sub in ("new", "cur"):
            for name in os.listdir(self._subs[sub]):
                on_disk.setdefault(name.partition(":")[0], (sub, name))
        steps, next_uid = plan_merge(
            [message.key for message, _, _, _ in batch], known, on_disk,
            merge_next_uid(current.effective_next_uid if current else 1, index_next),
            self.check_existing)
        tmp = self._subs["tmp"]
        # Decided first, then applied in the order that keeps the folder valid at every
        # step for Dovecot and for a rerun after an interrupt: keyword names before files
        # that use their letters; an expunged message's stale uidlist line removed before
        # its file is back (else the file would come back under that old UID, which
        # clients saw expunged); files before their lines (a file without a line is
        # adopted by the next run, with a new UID).
        moves: list[tuple[str, str, str]] = []          # staged, sub, name
        lines: list[str] = []
        stale: set[str] = set()
        added_keywords = False
        for (message, staged, size, is_link), step in zip(batch, steps):
            if step.placement is Placement.NO_ROOM:
                os.unlink(staged, dir_fd=tmp)
                self.landed.refused.append(f"{message.key}: {NO_ROOM_REASON}")
                continue
            if step.placement is Placement.ALREADY_THERE:
                os.unlink(staged, dir_fd=tmp)           # it keeps its live flags
                self.landed.already_there += 1
                self.moved[staged] = on_disk[message.key]
                continue
            if step.drop_stale_line:
                stale.add(message.key)
            if step.placement is Placement.ADOPT:
                # its file is there (a delivery still in new/, or a killed run's): it only
                # gets its UID, nothing of ours lands
                os.unlink(staged, dir_fd=tmp)
                sub, name = on_disk[message.key]
                self.landed.already_there += 1
                size, is_link = -1, False
            else:
                for keyword in message.keywords:
                    if keyword not in letters and len(keywords) < 26:
                        keywords.append(keyword)
                        letters[keyword] = chr(96 + len(keywords))
                        added_keywords = True
                sub, name = file_name(message, letters, as_seen=True)
                if step.placement is Placement.COPY:
                    # -i: a second copy needs a base name of its own
                    name = name.replace(message.key, f"{message.key}.r{step.uid}", 1)
                moves.append((staged, sub, name))
                on_disk[message.key] = (sub, name)
            self.moved[staged] = (sub, name)
            lines.append(f"{step.uid} :{name.partition(':')[0]}")
            if size >= 0:
                self.landed.messages += 1
                self.landed.links += is_link
                self.landed.bytes += size
        if added_keywords:
            replace_file(self.fd, "dovecot-keywords",
                         "".join(f"{i} {k}\n" for i, k in enumerate(keywords)), self.owner,
                         self.sync)
        if stale and current is not None:
            self._rewrite_without(stale, [], merge_next_uid(current.effective_next_uid,
                                                            index_next))
        for staged, sub, name in moves:
            os.rename(staged, name, src_dir_fd=tmp, dst_dir_fd=self._subs[sub])
        if lines:
            if self.sync:
                os.fsync(self._subs["cur"])
            self._append_lines(current, lines)

    def _read_control(self, name: str) -> str | None:
        try:
            return read_regular(name, self.fd).decode("utf-8", errors="surrogateescape")
        except FileNotFoundError:
            return None

    def _rewrite_without(self, stale: set[str], lines: list[str], next_uid: int) -> None:
        """Replace the uidlist (as Dovecot does, by rename, under the lock) without the
        lines of the given base names, with the new lines added and N raised."""
        text = self._read_control("dovecot-uidlist") or ""
        old = text.split("\n")
        if not text.endswith("\n"):
            old = old[:-1]          # an append in progress cannot happen: we hold the lock
        header = [f for f in old[0].split() if not f.startswith("N")]
        header.insert(1, f"N{next_uid}")
        kept = [line for line in old[1:] if line and line[line.rfind(":") + 1:] not in stale]
        replace_file(self.fd, "dovecot-uidlist",
                     "\n".join([" ".join(header)] + kept + lines) + "\n", self.owner, self.sync)

    def _keywords(self) -> list[str]:
        text = self._read_control("dovecot-keywords")
        return [] if text is None else parse_keywords_file(text)

    def _append_lines(self, current: uidlist.Uidlist | None, lines: list[str]) -> None:
        if current is None:
            # Dovecot never wrote one: start it, with a UIDVALIDITY of its kind (a time)
            header = f"3 V{int(time.time())} N{int(lines[-1].split()[0]) + 1}"
            replace_file(self.fd, "dovecot-uidlist", header + "\n" + "\n".join(lines) + "\n",
                         self.owner, self.sync)
            return
        fd = os.open("dovecot-uidlist", os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=self.fd)
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


def is_pristine(folder_fd: int) -> bool:
    """True when the folder has never handed out a UID: no uidlist (or next UID 1 and no
    line) and no message file."""
    try:
        current = uidlist.read(folder_fd)
    except uidlist.UidlistError:
        return False
    if current is not None and (current.uids or current.effective_next_uid > 1):
        return False
    for sub in ("cur", "new"):
        try:
            fd = os.open(sub, _DIR_FLAGS, dir_fd=folder_fd)
        except FileNotFoundError:
            continue
        except OSError:
            return False            # a link or a file where cur/ should be: not ours to fill
        try:
            if any(not n.startswith(".") for n in os.listdir(fd)):
                return False
        finally:
            os.close(fd)
    return True


# Every name a restore gives what it stages: ``ims-restore.<pid>.<n>.<host>`` (a message),
# ``.ims-restore.<pid>.<n>.<host>`` (a folder built aside), ``ims-restore.<pid>.lock.<host>``
# and ``ims-restore.<pid>.modseq-seed.<host>``, ``.<file>.ims-restore.<pid>.<host>`` (a
# control file on its way in).
_STAGED = re.compile(r"\.?(?:(?P<file>[a-z][a-z-]*)\.)?ims-restore\.(?P<pid>\d+)\."
                     r"(?:(?:\d+|lock|modseq-seed)\.)?(?P<host>.+)\Z")


def _shutil() -> ModuleType:
    """``shutil``, imported when first needed (with what it imports, 0.5 MiB in every
    restore), with Ctrl-C and SIGTERM held off: an interrupt that lands inside the import
    machinery is reported by Python as "ignored" and lost, and the run would go on to exit 0
    with a traceback printed; held, it lands once the import is done, as an interrupt."""
    with held():
        import shutil
    return shutil


def _stale(name: str) -> bool:
    """A leftover of a dead restore of this host (another host's pids mean nothing here)."""
    match = _STAGED.match(name)
    if match is None or match["host"] != hostname():
        return False
    pid = int(match["pid"])
    return pid != os.getpid() and not process_alive(pid)


def clean_stale(dir_fd: int) -> None:
    """Remove what a killed restore of this host left in a directory only restores write
    to by these names (a ``tmp/``, the directory above a Maildir)."""
    try:
        names = os.listdir(dir_fd)
    except FileNotFoundError:
        return
    for name in names:
        if not _stale(name):
            continue
        try:
            st = os.lstat(name, dir_fd=dir_fd)
            if stat.S_ISDIR(st.st_mode):
                _shutil().rmtree(name, ignore_errors=True, dir_fd=dir_fd)
            else:
                os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass


def clean_stale_temps(folder_fd: int) -> None:
    """In a folder itself (where a user's folder could carry any name): only regular files
    of the ``.<file>.ims-restore.<pid>.<host>`` kind, never a directory."""
    for name in os.listdir(folder_fd):
        match = _STAGED.match(name)
        if match is None or match["file"] is None or not _stale(name):
            continue
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISREG(os.lstat(name, dir_fd=folder_fd).st_mode):
                os.unlink(name, dir_fd=folder_fd)


def remove_index_files(folder_fd: int) -> None:
    for name in INDEX_FILES:
        try:
            os.unlink(name, dir_fd=folder_fd)
        except FileNotFoundError:
            pass


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
        self._maildirs: dict[tuple[str, str], tuple[str, ...]] = {}
        self._counter = 0
        self._settled_dirs = SettledDirs()
        self._cleaned: set[tuple[str, str, bool]] = set()

    def has_partition(self, partition: str) -> bool:
        return partition in self.store.partition_dirs

    def owner(self, partition: str, user: str) -> Owner:
        key = (partition, user)
        if key not in self._owners:
            # users come one after another: the table stays small (kept for the whole run it
            # had held every user's name, some 2 MiB at 10,000 users, and through pathlib's
            # interning of those names the interpreter's table of interned strings too)
            if len(self._owners) > 1024:
                self._owners.clear()
            self._owners[key] = self.configured_owner or self._owner_from_store(partition, user)
        return self._owners[key]

    def _owner_from_store(self, partition: str, user: str) -> Owner:
        root, parts = self._place(partition, user)
        for levels in (parts, parts[:-1]):
            try:
                fd = open_dir_under(root, levels)
            except FileNotFoundError:
                continue
            try:
                st = os.fstat(fd)
            finally:
                os.close(fd)
            return Owner(st.st_uid, st.st_gid)
        if partition not in self._partition_owners:
            st = os.stat(self.store.partition_dirs[partition])
            self._partition_owners[partition] = Owner(st.st_uid, st.st_gid)
        return self._partition_owners[partition]

    def _place(self, partition: str, user: str, folder: str = INBOX) -> tuple[Path, tuple[str, ...]]:
        """The partition directory and the levels below it down to the folder."""
        root = self.store.partition_dirs[partition]
        key = (partition, user)
        if key not in self._maildirs:
            if len(self._maildirs) > 1024:      # users come one after another
                self._maildirs.clear()
            self._maildirs[key] = self.store.maildir(partition, user).relative_to(root).parts
        parts = self._maildirs[key]
        return root, parts if folder == INBOX else parts + (folder_to_dirname(folder),)

    def folder_path(self, partition: str, user: str, folder: str) -> Path:
        root, parts = self._place(partition, user, folder)
        return root.joinpath(*parts)

    def live_folder(self, partition: str, user: str, folder: str) -> LiveFolder:
        root, parts = self._place(partition, user, folder)
        try:
            fd = open_dir_under(root, parts)
        except FileNotFoundError:
            return LiveFolder(False, True)
        try:
            return LiveFolder(True, is_pristine(fd))
        finally:
            os.close(fd)

    def free_sibling(self, partition: str, user: str, folder: str, suffix: str) -> str:
        base = f"{folder}_{suffix}"
        candidate, n = base, 1
        while os.path.lexists(self.folder_path(partition, user, candidate)):
            n += 1
            candidate = f"{base}_{n}"
        return candidate

    def prepare_user(self, partition: str, user: str) -> None:
        root, parts = self._place(partition, user)
        os.close(open_dir_under(root, parts[:-1], self.owner(partition, user)))

    def _open_maildir(self, partition: str, user: str) -> tuple[int, dict[str, int]]:
        """The user's Maildir (an INBOX to hang folders on), made when missing."""
        root, parts = self._place(partition, user)
        fd = open_dir_under(root, parts, self.owner(partition, user))
        try:
            return fd, make_maildir(fd, root.joinpath(*parts), self.owner(partition, user),
                                    marker=False)
        except BaseException:
            os.close(fd)
            raise

    def restore_whole(self, partition: str, user: str, folder: str,
                      whole: WholeFolder) -> NewFolder:
        root, parts = self._place(partition, user, folder)
        owner = self.owner(partition, user)
        self._counter += 1
        aside_name = f".ims-restore.{os.getpid()}.{self._counter}.{hostname()}"
        # what a killed restore left aside is removed once a user and place, not a folder
        cleaned = (partition, user, folder == INBOX)
        if folder == INBOX:
            target_dir = open_dir_under(root, parts[:-1], owner)
            aside_dir = os.dup(target_dir)
        else:
            # opened again for each folder, from the partition down: the mail user may have
            # moved, replaced or linked the Maildir since the last one (a descriptor kept
            # for the user's folders would have put them where Dovecot no longer looks)
            target_dir, subs = self._open_maildir(partition, user)
            aside_dir = subs.pop("tmp")
            close_all(subs)
        built = NewFolder(root, parts, target_dir, parts[-1], aside_dir, aside_name, owner,
                          whole, folder == INBOX, self.lock_timeout, self.sync, self.batch_size,
                          clean_aside=cleaned not in self._cleaned)
        if len(self._cleaned) > 1024:       # users come one after another
            self._cleaned.clear()
        self._cleaned.add(cleaned)
        return built

    def add_to_folder(self, partition: str, user: str, folder: str,
                      check_existing: bool) -> ExistingFolder:
        if folder != INBOX:
            fd, subs = self._open_maildir(partition, user)
            close_all(subs)
            os.close(fd)
        root, parts = self._place(partition, user, folder)
        fd = open_dir_under(root, parts, self.owner(partition, user))
        return ExistingFolder(root, parts, fd, self.owner(partition, user), self.lock_timeout,
                              check_existing, self.sync, self.batch_size, folder == INBOX)

    def add_subscriptions(self, partition: str, user: str, names: list[str]) -> None:
        if not names:
            return
        root, parts = self._place(partition, user)
        try:
            fd = open_dir_under(root, parts)
        except FileNotFoundError:
            return
        try:
            clean_stale_temps(fd)
            with contextlib.suppress(OSError):
                tmp = open_subdir(fd, "tmp", root.joinpath(*parts, "tmp"))
                try:
                    clean_stale(tmp)
                finally:
                    os.close(tmp)
            merge_subscriptions(anchored(fd), names, self.owner(partition, user),
                                lock_timeout=self.lock_timeout, sync=self.sync,
                                shown=root.joinpath(*parts))
        finally:
            os.close(fd)

    def pack_restored(self, restored: Placed) -> bytes:
        """A file restored in a folder now committed, as bytes (``unpack_restored``): the
        restore keeps these for shared messages whose links are still to come."""
        root, parts, sub, name = restored.settled()
        return b"\0".join(os.fsencode(part) for part in (str(root), *parts, sub, name))

    def unpack_restored(self, packed: bytes) -> Settled:
        root, *parts, sub, name = (os.fsdecode(part) for part in packed.split(b"\0"))
        return Settled(Path(root), tuple(parts), sub, name, self._settled_dirs)

    def close(self) -> None:
        """Closes the descriptors kept for links to settled first copies."""
        self._settled_dirs.close()

    def read_file(self, restored: Placed | Settled) -> bytes:
        dir_fd, name, owned = restored.open_source()
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        finally:
            if owned:
                os.close(dir_fd)
        with os.fdopen(fd, "rb") as handle:
            return handle.read()
