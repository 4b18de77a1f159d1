"""Build the placeholder tree and keep it in step with the store.

One run lists every user of every partition (in parallel, ``threads`` at a time), computes
the wanted tree — a zero-length placeholder per mailbox (or per user with ``per_user``) and
a ``.nsr`` in every directory that holds placeholders, naming them for the ASM — and then
changes only what differs: new placeholders are created, those of users and folders that
are gone, or left out by ``local.store.backup.exclude`` (as imsbackup leaves them out of a
user), are removed (with directories left empty), ``.nsr`` files are rewritten only when
their content changes.  Every group of the configuration has its directory, users or not
(each is a save set of the NSR client: a user who joins an empty group must land in one);
a group directory made in a tree that existed before is reported (``new_groups``), since
the NSR client does not have it as a save set yet.  Each placeholder's mtime is set to its mailbox's last change (the
newest ctime of its ``cur/`` and ``new/``), so that NetWorker's incremental levels save the
mailboxes that changed; nothing else is touched.  It is safe to run as a savepnpc precmd
every night.

The tree is owned by the store's owner, who can plant links in it: it is walked by directory
descriptors and never through a link.  A link (or anything else) where a directory or a
placeholder belongs is refused and named, and what is below it skipped.  New directories
are 0700 and new files 0600: the tree names every user and folder.

Failure behaviour: a configuration problem raises before anything is changed; a user or
folder that cannot be listed is reported and its existing placeholders are kept (never
removed because of a read error); a refused or failing path is reported (``problems``), the
rest of the tree is still brought in step.
"""

from __future__ import annotations

import errno
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ims.config import Config
from ims.errors import ConfigError
from ims.mkbackupdir.layout import NSR_FILE, folder_to_parts
from ims.names import UserScope, select_folders
from ims.store.maildir import INBOX, MaildirStore
from ims.store.maildir_write import Owner

SAVE_SET_LIMIT = 64


@dataclass(frozen=True)
class TreeOptions:
    backupdir: Path
    server: str
    asm: str = "imsasm"
    inbox_only: bool = False       # -i
    folders_only: bool = False     # -f
    per_user: bool = False         # -u
    threads: int = 0               # 0: one per partition


@dataclass
class TreeReport:
    users: int = 0
    placeholders: int = 0
    created: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    nsr_written: int = 0
    excluded: list[str] = field(default_factory=list)   # /partition/user/folder left out
    long_names: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)    # refused or failed, one line each
    ungrouped: list[str] = field(default_factory=list)
    groups_used: set[str] = field(default_factory=set)
    new_groups: list[str] = field(default_factory=list)  # group directories new to a tree


def nsr_quote(name: str) -> str:
    """A pattern for a .nsr line: plain, or double-quoted when it holds special characters."""
    if name and all(ch.isalnum() or ch in "-_+@,=~" or ord(ch) > 127 for ch in name):
        return name
    return '"' + name.replace('\\', '\\\\').replace('"', '\\"') + '"'


def nsr_content(asm: str, names: list[str]) -> str:
    return ("# written by mkbackupdir: these placeholders are saved through the ASM\n"
            f"{asm}: {' '.join(nsr_quote(n) for n in sorted(names))}\n")


def _mailbox_time(path: Path) -> float | None:
    newest = None
    for sub in ("cur", "new"):
        try:
            ctime = os.stat(path / sub).st_ctime
        except OSError:
            continue
        newest = ctime if newest is None else max(newest, ctime)
    return newest


def wanted_tree(config: Config, store: MaildirStore, options: TreeOptions, report: TreeReport
                ) -> tuple[dict[Path, float | None], dict[Path, list[str]], set[Path]]:
    """(placeholder -> mtime, directory -> placeholder names for its .nsr, protected paths)."""
    groups = config.groups
    root = options.backupdir / options.server
    placeholders: dict[Path, float | None] = {}
    nsr: dict[Path, list[str]] = {}
    protected: set[Path] = set()       # users we could not read: keep what they have
    exclusions = config.msg.exclusions()

    def one_partition(partition: str) -> list[tuple[str, str, list[tuple[str, float | None]] | None]]:
        rows = []
        for user in store.users(partition):
            try:
                # the folders a backup of the user takes, by imsbackup's own selection: an
                # excluded folder gets no placeholder, and loses the one it had
                folders, excluded = select_folders(UserScope(partition, user, groups.group_of(user)),
                                                   store.folders(partition, user), exclusions)
                report.excluded.extend(f"/{partition}/{user}/{folder}" for folder in excluded)
                mailboxes = []
                for folder in folders:
                    if options.inbox_only and folder != INBOX:
                        continue
                    if options.folders_only and folder == INBOX:
                        continue
                    mailboxes.append((folder, _mailbox_time(store.folder_dir(partition, user, folder))))
                rows.append((partition, user, mailboxes))
            except OSError as exc:
                report.errors.append(f"/{partition}/{user}: {exc.strerror or exc}")
                rows.append((partition, user, None))
        return rows

    partitions = store.partitions()
    workers = options.threads or max(1, len(partitions))
    with ThreadPoolExecutor(max_workers=min(workers, 1024)) as pool:
        results = list(pool.map(one_partition, partitions))
    for rows in results:
        for partition, user, mailboxes in rows:
            group = groups.group_of(user)
            report.groups_used.add(group)
            if group == "ungrouped":
                report.ungrouped.append(user)
            user_dir = root / group / user
            report.users += 1
            if mailboxes is None:
                protected.add(user_dir)
                continue
            if options.per_user:
                times = [t for _, t in mailboxes if t is not None]
                placeholders[user_dir] = max(times) if times else None
                nsr.setdefault(user_dir.parent, []).append(user)
                continue
            for folder, mtime in mailboxes:
                parts = folder_to_parts(folder)
                path = user_dir.joinpath(*parts)
                placeholders[path] = mtime
                nsr.setdefault(path.parent, []).append(parts[-1])
    return placeholders, nsr, protected


def sync_tree(config: Config, store: MaildirStore, options: TreeOptions, owner: Owner) -> TreeReport:
    report = TreeReport()
    placeholders, nsr, protected = wanted_tree(config, store, options, report)
    root = options.backupdir / options.server
    by_dir: dict[tuple[str, ...], list[tuple[str, float | None]]] = {}
    for path, mtime in placeholders.items():
        by_dir.setdefault(_relative(path.parent, root), []).append((path.name, mtime))
        if len(str(path)) > SAVE_SET_LIMIT:
            report.long_names.append(str(path))
    report.placeholders = len(placeholders)
    groups = config.groups.names()
    for group in groups:                # made and kept even while empty
        by_dir.setdefault((group,), [])
    base_fd = _open_backupdir(options.backupdir, owner)
    try:
        tree_existed = _exists(base_fd, options.server)
        root_fd = _open_dir(base_fd, options.server, root, owner)
    except Refused as exc:
        report.problems.append(str(exc))
        return report
    finally:
        os.close(base_fd)
    # a group directory made now in an existing tree is a group new to the configuration;
    # in a new tree every directory is new and the save sets are made after it
    before = set(os.listdir(root_fd)) if tree_existed else set(groups)
    dirs = _DirPath(root_fd, root, owner)
    try:
        for relative in sorted(by_dir):
            try:
                dir_fd = dirs.open(relative)
            except Refused as exc:
                report.problems.append(str(exc))
                continue
            if dir_fd is None:
                continue            # below a directory already refused (and named)
            directory = root.joinpath(*relative)
            for name, mtime in sorted(by_dir[relative]):
                try:
                    if _placeholder(dir_fd, name, directory / name, mtime, owner):
                        report.created.append(str(directory / name))
                except Refused as exc:
                    report.problems.append(str(exc))
                except OSError as exc:
                    report.problems.append(f"{directory / name}: {exc.strerror}")
            names = nsr.get(directory)
            if names is not None:
                try:
                    if _write_nsr(dir_fd, nsr_content(options.asm, names), owner):
                        report.nsr_written += 1
                except OSError as exc:
                    report.problems.append(f"{directory / NSR_FILE}: {exc.strerror}")
        report.new_groups = [str(root / group) for group in groups
                             if group not in before and (group,) not in dirs.refused]
        _remove_stale(root_fd, root, placeholders, nsr, protected, {(g,) for g in groups}, report)
    finally:
        dirs.close()
        os.close(root_fd)
    return report


# The tree below the backup directory belongs to the store's owner, who can plant links
# and swap directories there while root runs this: everything below is reached through
# directory descriptors opened without following links, and files are created exclusively.
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted in place of a file must not hang the run
_EXISTING_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
DIR_MODE = 0o700        # the tree names every user and folder: private, like the store
FILE_MODE = 0o600
TEMP_NSR = NSR_FILE + ".new"


class Refused(Exception):
    """Something in the tree the run must not go through or touch; ``str()`` is the one
    line naming it."""


def _relative(path: Path, root: Path) -> tuple[str, ...]:
    return path.relative_to(root).parts


def _open_backupdir(path: Path, owner: Owner) -> int:
    """The backup directory itself: the administrator's path (it may be a link to another
    file system, so it is followed), created when missing."""
    try:
        try:
            return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path, DIR_MODE)
            created = True
        except FileExistsError:
            created = False
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"{path}: the backup directory cannot be used: {exc.strerror}") from None
    if created:
        owner.apply(fd)
        os.fchmod(fd, DIR_MODE)
    return fd


def _open_dir(parent: int, name: str, path: Path, owner: Owner) -> int:
    """The directory ``name`` in ``parent`` (created, the owner's, when missing), never
    through a link; raises ``Refused`` for a link or anything else that is not a directory."""
    try:
        try:
            return os.open(name, _DIR, dir_fd=parent)
        except FileNotFoundError:
            pass
        try:
            os.mkdir(name, DIR_MODE, dir_fd=parent)
            created = True
        except FileExistsError:
            created = False         # made meanwhile: opened like any other
        fd = os.open(name, _DIR, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):   # Linux says ENOTDIR for a link too
            if _is_link(parent, name):
                raise Refused(f"{path}: a symbolic link where a directory belongs; not"
                              " followed, skipped with everything below it") from None
            raise Refused(f"{path}: not a directory; skipped with everything below it") from None
        raise Refused(f"{path}: {exc.strerror}; skipped with everything below it") from None
    if created:
        try:
            owner.apply(fd)
            os.fchmod(fd, DIR_MODE)
        except BaseException:
            os.close(fd)
            raise
    return fd


def _exists(parent: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _is_link(parent: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
    except OSError:
        return False


class _DirPath:
    """Descriptors of the directories from the tree's root down to the one in use.  The
    directories are visited in sorted order, so only the changed end of the path is
    reopened, and only a path's worth of descriptors is open at a time."""

    def __init__(self, root_fd: int, root: Path, owner: Owner) -> None:
        self.root_fd = root_fd
        self.root = root
        self.owner = owner
        self.names: list[str] = []
        self.fds: list[int] = []
        self.refused: list[tuple[str, ...]] = []

    def open(self, relative: tuple[str, ...]) -> int | None:
        """The directory's descriptor; None below a directory refused before."""
        if any(relative[:len(r)] == r for r in self.refused):
            return None
        keep = 0
        while keep < min(len(self.names), len(relative)) and self.names[keep] == relative[keep]:
            keep += 1
        for fd in self.fds[keep:]:
            os.close(fd)
        del self.names[keep:], self.fds[keep:]
        for name in relative[keep:]:
            parent = self.fds[-1] if self.fds else self.root_fd
            here = (*self.names, name)
            try:
                fd = _open_dir(parent, name, self.root.joinpath(*here), self.owner)
            except Refused:
                self.refused.append(here)
                raise
            self.names.append(name)
            self.fds.append(fd)
        return self.fds[-1] if self.fds else self.root_fd

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.names, self.fds = [], []


def _check_placeholder(st: os.stat_result, path: Path) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise Refused(f"{path}: a symbolic link where a placeholder belongs; not followed,"
                      " left alone")
    # a hard link would carry the times set here to a file elsewhere
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        raise Refused(f"{path}: not a placeholder (not a plain file, or a file with other"
                      " links); left alone")


def _placeholder(dir_fd: int, name: str, path: Path, mtime: float | None, owner: Owner) -> bool:
    """Create the placeholder, or set its mtime to its mailbox's; True when created."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        fd = os.open(name, _NEW_FILE, FILE_MODE, dir_fd=dir_fd)
        try:
            owner.apply(fd)
            if mtime is not None:
                os.utime(fd, (mtime, mtime))
        finally:
            os.close(fd)
        return True
    _check_placeholder(st, path)
    if mtime is not None and int(st.st_mtime) != int(mtime):
        fd = os.open(name, _EXISTING_FILE, dir_fd=dir_fd)
        try:
            _check_placeholder(os.fstat(fd), path)      # what was opened, not what was named
            os.utime(fd, (mtime, mtime))
        finally:
            os.close(fd)
    return False


def _write_nsr(dir_fd: int, content: str, owner: Owner) -> bool:
    """Write the directory's .nsr when its content differs; True when written."""
    data = content.encode("utf-8")
    if _read_nsr(dir_fd, len(data) + 1) == data:
        return False
    try:
        os.unlink(TEMP_NSR, dir_fd=dir_fd)      # a stale one, or a planted link: not followed
    except FileNotFoundError:
        pass
    fd = os.open(TEMP_NSR, _NEW_FILE, FILE_MODE, dir_fd=dir_fd)
    try:
        owner.apply(fd)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        os.unlink(TEMP_NSR, dir_fd=dir_fd)
        raise
    os.close(fd)
    # a rename replaces whatever is at .nsr (a planted link included) without following it
    os.replace(TEMP_NSR, NSR_FILE, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    return True


def _read_nsr(dir_fd: int, limit: int) -> bytes | None:
    try:
        fd = os.open(NSR_FILE, _EXISTING_FILE, dir_fd=dir_fd)
    except OSError:
        return None                 # missing, or a link: written anew
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit)
    finally:
        os.close(fd)


def _remove_stale(root_fd: int, root: Path, placeholders: dict[Path, float | None],
                  nsr: dict[Path, list[str]], protected: set[Path],
                  group_dirs: set[tuple[str, ...]], report: TreeReport) -> None:
    """Remove what stands for mailboxes and users that are gone (bottom-up), and the
    directories left empty, except ``group_dirs``; ``os.fwalk`` never enters a link, and
    every removal is by name in a directory descriptor, which never follows one either."""
    wanted = {_relative(p, root) for p in placeholders}
    nsr_dirs = {_relative(d, root) for d in nsr}
    guarded = [_relative(p, root) for p in protected]
    keep_dirs: set[tuple[str, ...]] = {(), *group_dirs}
    for parts in wanted:
        keep_dirs.update(parts[:i] for i in range(1, len(parts)))

    def is_guarded(parts: tuple[str, ...]) -> bool:
        return any(parts[:len(g)] == g for g in guarded)

    for dirpath, dirnames, filenames, dir_fd in os.fwalk(".", topdown=False, dir_fd=root_fd):
        here = Path(dirpath).parts
        if is_guarded(here):
            continue
        for name in filenames:
            parts = (*here, name)
            try:
                if name == NSR_FILE:
                    if here not in nsr_dirs:
                        os.unlink(name, dir_fd=dir_fd)
                    continue
                if parts not in wanted and not is_guarded(parts) and _is_placeholder(dir_fd, name):
                    os.unlink(name, dir_fd=dir_fd)
                    report.removed.append(str(root.joinpath(*parts)))
            except OSError as exc:
                report.problems.append(f"{root.joinpath(*parts)}: {exc.strerror}")
        for name in dirnames:
            parts = (*here, name)
            if parts not in keep_dirs and not is_guarded(parts):
                try:
                    os.rmdir(name, dir_fd=dir_fd)
                except OSError:
                    pass    # not empty (a file of the administrator's) or a link: left


def _is_placeholder(dir_fd: int, name: str) -> bool:
    """Only zero-length regular files are ours to remove; anything else is left alone."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == 0


def store_owner(config: Config, store: MaildirStore) -> Owner:
    msg = config.msg
    uid, gid = msg.get("local.store.uid"), msg.get("local.store.gid")
    if uid and gid and uid.isdigit() and gid.isdigit():
        return Owner(int(uid), int(gid))
    for partition in store.partitions():
        for user in store.users(partition):
            st = os.stat(store.maildir(partition, user))
            return Owner(st.st_uid, st.st_gid)
    st = os.stat(next(iter(store.partition_dirs.values())))
    return Owner(st.st_uid, st.st_gid)

