"""Build the placeholder tree and keep it in step with the store.

One run lists every user of every partition (in parallel, ``threads`` at a time), computes
the wanted tree — a zero-length placeholder per mailbox (or per user with ``per_user``) and
a ``.nsr`` in every directory that holds placeholders, naming them for the ASM — and then
changes only what differs: new placeholders are created, those of users and folders that
are gone are removed (with directories left empty), ``.nsr`` files are rewritten only when
their content changes.  Each placeholder's mtime is set to its mailbox's last change (the
newest ctime of its ``cur/`` and ``new/``), so that NetWorker's incremental levels save the
mailboxes that changed; nothing else is touched.  It is safe to run as a savepnpc precmd
every night.

Failure behaviour: a configuration problem raises before anything is changed; a user or
folder that cannot be listed is reported and its existing placeholders are kept (never
removed because of a read error).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ims.config import Config
from ims.mkbackupdir.layout import NSR_FILE, folder_to_parts
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
    long_names: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    ungrouped: list[str] = field(default_factory=list)


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

    def one_partition(partition: str) -> list[tuple[str, str, list[tuple[str, float | None]] | None]]:
        rows = []
        for user in store.users(partition):
            try:
                folders = store.folders(partition, user)
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
    _make_dir(options.backupdir, owner)
    _make_dir(root, owner)
    for path, mtime in sorted(placeholders.items()):
        _make_dirs(path.parent, root, owner)
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            owner.apply(fd)
            os.close(fd)
            report.created.append(str(path))
        if mtime is not None and int(os.stat(path).st_mtime) != int(mtime):
            os.utime(path, (mtime, mtime))
        save_set = str(path)
        if len(save_set) > SAVE_SET_LIMIT:
            report.long_names.append(save_set)
    report.placeholders = len(placeholders)
    for directory, names in nsr.items():
        content = nsr_content(options.asm, names)
        target = directory / NSR_FILE
        try:
            if target.read_text(encoding="utf-8") == content:
                continue
        except FileNotFoundError:
            pass
        temp = directory / (NSR_FILE + ".new")
        temp.write_text(content, encoding="utf-8")
        owner.apply(temp)
        os.replace(temp, target)
        report.nsr_written += 1
    _remove_stale(root, placeholders, nsr, protected, report)
    return report


def _remove_stale(root: Path, placeholders: dict[Path, float | None],
                  nsr: dict[Path, list[str]], protected: set[Path], report: TreeReport) -> None:
    """Remove what stands for mailboxes and users that are gone (bottom-up)."""
    keep_dirs = {root}
    for path in placeholders:
        keep_dirs.update(p for p in path.parents if root in p.parents or p == root)
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        directory = Path(dirpath)
        if any(directory == p or p in directory.parents for p in protected):
            continue
        for name in filenames:
            path = directory / name
            if name == NSR_FILE:
                if directory not in nsr:
                    path.unlink()
                continue
            if path not in placeholders and _is_placeholder(path):
                path.unlink()
                report.removed.append(str(path))
        if directory not in keep_dirs and not any(directory.iterdir()):
            directory.rmdir()


def _is_placeholder(path: Path) -> bool:
    """Only zero-length regular files are ours to remove; anything else is left alone."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return st.st_size == 0 and (path.is_file() and not path.is_symlink())


def _make_dir(path: Path, owner: Owner) -> None:
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        owner.apply(path)


def _make_dirs(path: Path, root: Path, owner: Owner) -> None:
    missing = []
    current = path
    while current != root and not current.is_dir():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        os.chmod(directory, 0o755)
        owner.apply(directory)


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

