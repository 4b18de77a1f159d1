"""Dovecot Maildir++ driver (read side).

Layout: each partition directory holds users' Maildirs under ``store.maildir.layout``
(``%u/Maildir`` by default, ``%d/%n/Maildir`` for hosted domains, where the user ID is
``local@domain``).  In a Maildir the root is INBOX and ``.A.B`` is the folder ``A/B``, with
names in IMAP modified UTF-7.  Each folder has ``cur/ new/ tmp/``, ``dovecot-uidlist``,
``dovecot-keywords`` and Dovecot's index files.

Reading a folder: ``cur/`` and ``new/`` are listed first, then the uidlist is read, so a
message delivered in between is listed without a UID rather than missed.  A message renamed
(flag change, new/ -> cur/) after the listing is found again by its base name; one that is
gone is reported as vanished (None), never as an error.

Next UID: the largest of the uidlist header's N, its last UID + 1 and ``next_uid`` in the
header of ``dovecot.index`` (docs/archive-format.md, the folder record's ``next_uid``).  Keywords are the letters a-z of the file name,
mapped through the folder's ``dovecot-keywords``; Dovecot keeps any keyword past the 26th
only in its index, which this driver does not read (documented in the guide).  The folder's
HIGHESTMODSEQ is an upper bound read from its transaction log (``ims.store.modseq``).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Iterator

from ims.errors import ConfigError
from ims.store import modseq, mutf7, uidlist
from ims.store.files import read_regular
from ims.store.base import FolderState, MessageEntry, UnstorableName, UserInfo
from ims.store.subscriptions import parse_subscriptions, read_subscriptions  # noqa: F401

INBOX = "INBOX"
_SYSTEM_FLAGS = frozenset("DFPRST")


class LayoutError(UnstorableName):
    pass


class LinkRefused(OSError):
    """A symbolic link in the store that a backup does not follow (it leads back into the
    store, or to a directory already backed up); ``strerror`` says why, naming the link."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ELOOP, message)


class Layout:
    """A ``store.maildir.layout`` pattern such as ``%u/Maildir`` or ``%d/%n/Maildir``."""

    def __init__(self, pattern: str) -> None:
        parts = [p for p in pattern.strip("/").split("/") if p]
        if not parts:
            raise LayoutError(f"empty maildir layout {pattern!r}")
        variables = [p for p in parts if "%" in p]
        for part in variables:
            if part not in ("%u", "%n", "%d"):
                raise LayoutError(f"layout component {part!r} not supported"
                                  " (a component is %u, %n, %d or a plain name)")
        names = set(variables)
        if names not in ({"%u"}, {"%n"}, {"%n", "%d"}) or len(variables) != len(names):
            raise LayoutError(f"layout {pattern!r} must use %u, or %n, or %d and %n once each")
        self.pattern = pattern
        self.parts = parts
        self.hosted = "%d" in names

    def path_of(self, partition_dir: Path, user: str) -> Path:
        local, _, domain = user.partition("@")
        if self.hosted and not domain:
            raise LayoutError(f"user {user!r} needs a domain (local@domain) in layout {self.pattern}")
        if not self.hosted and "%n" in self.parts and domain:
            raise LayoutError(f"layout {self.pattern} has no %d for user {user!r}")
        values = {"%u": user, "%n": local, "%d": domain}
        for part in self.parts:
            value = values.get(part)
            # each component is one directory level below the partition, never a way out
            if value is not None and (value in ("", ".", "..") or "/" in value
                                      or any(ord(c) < 32 or ord(c) == 127 for c in value)):
                raise LayoutError(f"user {user!r}: {part} would be {value!r}, which is not a"
                                  f" directory name (layout {self.pattern})")
        return partition_dir.joinpath(*(values.get(p, p) for p in self.parts))

    def users(self, partition_dir: Path) -> Iterator[str]:
        """Every user ID whose Maildir root exists under the partition, sorted."""
        found: list[str] = []

        # paths as strings: pathlib interns every component, and these names live for the
        # whole backup (at 10,000 users the interpreter's table of interned strings had
        # doubled: 0.9 MiB in the backup's main process and its helper)
        def walk(directory: str, index: int, values: dict[str, str]) -> None:
            if index == len(self.parts):
                if _is_dir(directory):
                    if "%u" in values:
                        found.append(values["%u"])
                    elif self.hosted:
                        found.append(f"{values['%n']}@{values['%d']}")
                    else:
                        found.append(values["%n"])
                return
            part = self.parts[index]
            if "%" not in part:
                walk(os.path.join(directory, part), index + 1, values)
                return
            try:
                entries = list(os.scandir(directory))
            except (FileNotFoundError, NotADirectoryError):
                return
            for entry in entries:
                # a link to a directory is listed too (Dovecot serves it); whether it is
                # followed is decided per user (MaildirStore.user_info), never skipped here
                # lost+found: the file system's own, at a partition that is a mount point
                # (root's, mode 0700: examining it as the mail user would stop the backup)
                if entry.name.startswith(".") or entry.name == "lost+found" \
                        or not entry.is_dir():
                    continue
                walk(os.path.join(directory, entry.name), index + 1, {**values, part: entry.name})

        walk(os.fspath(partition_dir), 0, {})
        return iter(sorted(found))


def _is_dir(path: str) -> bool:
    """``Path.is_dir`` on a string: False where nothing (or a loop) is there, and any other
    failure raised (``os.path.isdir`` would say False for an unreadable user's directory,
    and the user would be left out of a backup of everyone without a word)."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP):
            return False
        raise


def folder_to_dirname(folder: str) -> str:
    """``A/B`` -> ``.A.B`` (mUTF-7 encoded); INBOX -> ``""`` (the Maildir root)."""
    if folder == INBOX:
        return ""
    return "." + ".".join(mutf7.encode(level) for level in folder.split("/"))


def dirname_to_folder(dirname: str) -> str:
    """``.A.B`` -> ``A/B``.  Raises ValueError for names that are not valid mUTF-7."""
    return "/".join(mutf7.decode(level) for level in dirname[1:].split("."))


def parse_keywords_file(data: str) -> list[str]:
    """``dovecot-keywords``: ``<n> <name>`` lines; index n is the letter chr(97+n)."""
    slots: dict[int, str] = {}
    for line in data.split("\n"):         # Dovecot splits at LF only, not at U+2028 & co
        number, _, name = line.rstrip("\r").partition(" ")
        if number.isdigit() and name and int(number) < 26:
            slots[int(number)] = name
    if not slots:
        return []
    return [slots.get(i, "") for i in range(max(slots) + 1)]


class MaildirFolderReader:
    """An open folder: its state as listed, and access to its message files."""

    def __init__(self, folder_dir: Path | str, name: str,
                 listed_as: tuple[int, int] | None = None) -> None:
        self.path = folder_dir
        self.folder_fd = os.open(folder_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.sub_fds: dict[str, int] = {}
        self._relisted: dict[str, str] | None = None
        try:
            st = os.fstat(self.folder_fd)
            if listed_as is not None and (st.st_dev, st.st_ino) != listed_as:
                raise LinkRefused(f"{folder_dir} was replaced (by a link or another directory)"
                                  " between its listing and its reading; not read")
            for sub in ("new", "cur"):
                try:
                    self.sub_fds[sub] = os.open(sub, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                                dir_fd=self.folder_fd)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise LinkRefused(f"{folder_dir}/{sub} is a link or not a directory;"
                                          " not followed") from None
                    raise
            # the folder's identity (StoreReader.folder_identity) from the cur/ just opened:
            # no second walk of the path per folder
            self.identity: int | None = (os.fstat(self.sub_fds["cur"]).st_ino
                                         if "cur" in self.sub_fds else None)
            self.state = self._read_state(name)
        except BaseException:
            self.close()
            raise

    def _list(self) -> dict[str, list[str]]:
        # new/ before cur/: a message moved new/ -> cur/ meanwhile is then seen at least once.
        return {sub: os.listdir(self.sub_fds[sub]) for sub in ("new", "cur") if sub in self.sub_fds}

    def _read_state(self, name: str) -> FolderState:
        listing = self._list()
        notes: list[str] = []
        problems: list[str] = []
        try:
            uids = uidlist.read(self.folder_fd)
        except uidlist.UidlistError as exc:
            notes.append(f"{self.path}/dovecot-uidlist: {exc}; messages kept without UIDs")
            uids = None
        try:
            keywords = parse_keywords_file(
                self._read_small("dovecot-keywords").decode("utf-8", "replace"))
        except FileNotFoundError:
            keywords = []
        except OSError as exc:
            # the messages are still read; only the keyword names are lost, and said so
            keywords = []
            problems.append(f"dovecot-keywords: {exc.strerror or exc}; the folder's keyword"
                            " names are not backed up")
        index_next = uidlist.index_next_uid(self.folder_fd)
        next_uid = 1
        uid_map: dict[str, int] = {}
        if uids is not None:
            next_uid = uids.effective_next_uid
            uid_map = uids.uids
            if uids.bad_lines:
                notes.append(f"{self.path}/dovecot-uidlist: {uids.bad_lines} unreadable lines")
        if index_next is not None and index_next > next_uid:
            next_uid = index_next

        flag_cache: dict[str, tuple[str, tuple[str, ...]]] = {}
        messages: list[MessageEntry] = []
        seen: set[str] = set()

        def add(sub: str, names: list[str]) -> None:
            is_new = sub == "new"
            for filename in names:
                if filename.startswith("."):
                    continue
                base, _, info = filename.partition(":")
                if base in seen:
                    continue
                seen.add(base)
                parsed = flag_cache.get(info)
                if parsed is None:
                    parsed = flag_cache[info] = _parse_info(info, keywords)
                messages.append(MessageEntry(base, uid_map.get(base), parsed[0], parsed[1],
                                             info, f"{sub}/{filename}", is_new))

        for sub in ("new", "cur"):
            add(sub, listing.get(sub, []))
        if not seen.issuperset(uid_map):
            # readdir() may miss a file renamed while the directory is read (a flag change):
            # a UID the uidlist knows but the listing lacks is looked for once more.
            # Lines of expunged messages stay in the uidlist, so most misses are harmless.
            for sub, names in self._list().items():
                add(sub, names)
        messages.sort(key=_uid_order)
        # Read last: modseqs only grow, so a bound read after the listing covers every change
        # the listing can reflect (a restore seeds the folder above it).
        highest_modseq = modseq.read_highest_modseq(self.folder_fd)
        return FolderState(
            name=name,
            uidvalidity=uids.uidvalidity if uids else None,
            next_uid=next_uid,
            guid=uids.guid if uids else None,
            keywords=keywords,
            messages=messages,
            notes=notes,
            highest_modseq=highest_modseq,
            problems=problems,
        )

    def _read_small(self, filename: str) -> bytes:
        return read_regular(filename, self.folder_fd, limit=1 << 20)

    def open_message(self, entry: MessageEntry) -> tuple[int, os.stat_result] | None:
        location = entry.location
        for _attempt in range(3):
            sub, _, filename = location.partition("/")
            try:
                # never through a link (root would archive whatever it names) and never
                # blocking on a FIFO planted under a message's name
                fd = os.open(filename, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK,
                             dir_fd=self.sub_fds[sub])
            except FileNotFoundError:
                moved = self._find_again(entry.key, location)
                if moved is None:
                    return None
                location = moved
                continue
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise OSError(errno.EINVAL, "not a regular file")
            except BaseException:
                os.close(fd)
                raise
            if location != entry.location:
                # renamed since the listing (a flag change, new/ -> cur/): fresher flags
                entry.location = location
                entry.is_new = sub == "new"
                entry.info = filename.partition(":")[2]
                entry.flags, entry.keywords = _parse_info(entry.info, self.state.keywords)
            return fd, st
        return None

    def _find_again(self, key: str, missed: str) -> str | None:
        """The message's current place after a rename, relisting the folder if needed."""
        if self._relisted is None or self._relisted.get(key) == missed:
            self._relisted = {}
            for sub, names in self._list().items():
                for filename in names:
                    self._relisted[filename.partition(":")[0]] = f"{sub}/{filename}"
        found = self._relisted.get(key)
        return None if found == missed else found

    def close(self) -> None:
        for fd in self.sub_fds.values():
            os.close(fd)
        self.sub_fds = {}
        if self.folder_fd >= 0:
            os.close(self.folder_fd)
            self.folder_fd = -1


def _uid_order(entry: MessageEntry) -> tuple[int, str]:
    # Messages with UIDs in UID order, then those still waiting for one.
    return (entry.uid if entry.uid is not None else 1 << 62, entry.key)


def _parse_info(info: str, keywords: list[str]) -> tuple[str, tuple[str, ...]]:
    if not info.startswith("2,"):
        return "", ()
    flags: list[str] = []
    names: list[str] = []
    for letter in info[2:]:
        if letter in _SYSTEM_FLAGS:
            flags.append(letter)
        elif "a" <= letter <= "z":
            index = ord(letter) - 97
            if index < len(keywords) and keywords[index]:
                names.append(keywords[index])
    return "".join(sorted(flags)), tuple(names)


def _canonical(dirname: str) -> bool:
    """True when a folder directory's name is the one Dovecot writes for its folder."""
    try:
        return folder_to_dirname(dirname_to_folder(dirname)) == dirname
    except ValueError:
        return False


class MaildirStore:
    """Read access to a Dovecot Maildir++ store laid out over named partitions."""

    def __init__(self, partitions: dict[str, Path], layout: str) -> None:
        self.partition_dirs = partitions
        self.layout = Layout(layout)
        self._partition_reals: dict[str, str] = {}     # partition -> with links resolved
        # directories reached through a followed link in this run, by (device, inode): a
        # second link to one of them is refused, so no mail is backed up twice
        self._followed: dict[tuple[int, int], str] = {}
        self._refused: dict[tuple[str, str], list[tuple[str, str]]] = {}
        # (device, inode) of each folder directory as listed: a directory swapped for a
        # link (or another directory) between the listing and the read is refused
        self._listed: dict[tuple[str, str, str], tuple[int, int]] = {}
        # each folder's directory and the stat of its cur/, as the last ``folders`` call
        # found them: an incremental's check of an unchanged folder then costs one more
        # stat (new/), not a walk of the path again (kept for one user at a time)
        self._cur: dict[tuple[str, str, str], tuple[str, os.stat_result]] = {}

    def partitions(self) -> list[str]:
        return sorted(self.partition_dirs)

    def users(self, partition: str) -> Iterator[str]:
        directory = self.partition_dirs[partition]
        if not directory.is_dir():
            # an unmounted disk must not look like a partition without users
            raise ConfigError(f"partition {partition!r}: {directory} is not a directory (a file"
                              f" system not mounted, or a wrong store.partition.{partition}.path)")
        return self.layout.users(directory)

    def maildir(self, partition: str, user: str) -> Path:
        return self.layout.path_of(self.partition_dirs[partition], user)

    def user_exists(self, partition: str, user: str) -> bool:
        try:
            return self.maildir(partition, user).is_dir()
        except LayoutError:
            return False

    def _partition_real(self, partition: str) -> str:
        """The partition directory with links resolved, once per run (asked per user)."""
        real = self._partition_reals.get(partition)
        if real is None:
            real = self._partition_reals[partition] = os.path.realpath(
                self.partition_dirs[partition])
        return real

    def _inside_store(self, real: str) -> bool:
        return any(real == p or real.startswith(p.rstrip("/") + "/")
                   for p in map(self._partition_real, self.partition_dirs))

    def _link_verdict(self, path: Path, expected_real: str, what: str) -> str | None:
        """None when ``path`` is a plain directory or a link this backup follows; otherwise
        why the link is refused.  Dovecot serves mail through links, so a link that leads
        out of the store (a user moved to another disk) is followed; one that leads back
        into the store (another user's mail, a loop) or to a directory already reached
        through another link would back mail up twice or under the wrong owner; one to a
        directory of another owner would let the mail user make root read what the user
        cannot."""
        real = os.path.realpath(path)
        if real == expected_real:
            return None
        if self._inside_store(real):
            return f"{what} {path} is a link into the store ({real}); not followed"
        st = os.stat(real)
        holder = os.stat(path.parent)
        if st.st_uid != holder.st_uid:
            # the backup reads as root: follow only to what the link's owner could read anyway
            return (f"{what} {path} leads to {real}, owned by uid {st.st_uid}, not by the"
                    f" owner of {path.parent} (uid {holder.st_uid}); not followed")
        seen = self._followed.setdefault((st.st_dev, st.st_ino), str(path))
        if seen != str(path):
            return f"{what} {path} leads to {real}, already backed up through {seen}; not followed"
        return None

    def refused_links(self, partition: str, user: str) -> list[tuple[str, str]]:
        """(folder name, why) for each folder link the last ``folders`` call did not follow."""
        return self._refused.pop((partition, user), [])

    def _plain_below(self, partition: str, root: Path) -> os.stat_result | None:
        """``root``'s status when no level of it below the partition directory is a link
        (it is then where the partition's resolved path says, and no verdict is needed);
        None when one is.  One ``lstat`` a level: resolving the whole path from ``/`` cost
        a call per level of the partition's own path too, for every user."""
        path = os.fspath(self.partition_dirs[partition])
        st: os.stat_result | None = None
        for level in root.relative_to(self.partition_dirs[partition]).parts:
            path = os.path.join(path, level)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                return None
        return st

    def user_info(self, partition: str, user: str) -> UserInfo:
        root = self.maildir(partition, user)
        st = self._plain_below(partition, root)
        if st is None:
            partition_real = self._partition_real(partition)
            verdict = self._link_verdict(root, os.path.join(
                partition_real, os.path.relpath(root, self.partition_dirs[partition])),
                "the Maildir")
            if verdict:
                raise LinkRefused(verdict)
            st = os.stat(root)
        self._listed[(partition, user, INBOX)] = (st.st_dev, st.st_ino)
        problems: tuple[str, ...] = ()
        try:
            subscriptions = read_subscriptions(root)
        except OSError as exc:
            # one oddity of this file (a link, a FIFO, a read error) must not cost the
            # user's mail: the mail is read, the subscriptions are named as not backed up
            if exc.errno in (errno.ELOOP, errno.EINVAL):
                subscriptions = []      # a link or a FIFO: never followed, counts as none
            else:
                subscriptions = []
                problems = (f"subscriptions: {exc.strerror or exc}; not backed up",)
        return UserInfo(partition, user, st.st_uid, st.st_gid, tuple(subscriptions), problems)

    def folders(self, partition: str, user: str) -> list[str]:
        """INBOX first, then every folder directory that holds a ``cur/``, sorted by name."""
        root = self.maildir(partition, user)
        self._cur = {}
        found: list[str] = []
        try:
            cur = os.stat(root / "cur")
            if stat.S_ISDIR(cur.st_mode):
                found.append(INBOX)
                self._cur[(partition, user, INBOX)] = (str(root), cur)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                raise               # only a missing cur/ means there is no INBOX
        names: list[str] = []
        refused: list[tuple[str, str]] = []
        holder: dict[str, str] = {INBOX: "the Maildir itself"} if found else {}
        root_real: str | None = None     # resolved only for a link (a walk of the path)
        with os.scandir(root) as scan:
            entries = [e for e in scan if e.name.startswith(".") and len(e.name) >= 2
                       and e.name != ".." and e.is_dir()]
        # Two directories can decode to one folder name (a stray ".INBOX", or a raw UTF-8
        # name beside its modified UTF-7 form): the one in Dovecot's own encoding is the
        # folder, any other is named and left out, never taken for it in silence.
        entries.sort(key=lambda e: (not _canonical(e.name), e.name))
        for entry in entries:
            try:
                name = dirname_to_folder(entry.name)
            except ValueError:
                # Not valid mUTF-7 (for example a store kept with :UTF-8): keep it as is.
                name = entry.name[1:].replace(".", "/")
            try:
                cur = os.stat(os.path.join(entry.path, "cur"))
                if not stat.S_ISDIR(cur.st_mode):
                    continue
            except (FileNotFoundError, NotADirectoryError):
                continue
            if name in holder:
                refused.append((name, f"the directory {entry.name} holds the same folder"
                                      f" name as {holder[name]}; not backed up (rename it"
                                      " or merge it into the folder)"))
                continue
            if entry.is_symlink():
                root_real = root_real or os.path.realpath(root)
                verdict = self._link_verdict(Path(entry.path),
                                             os.path.join(root_real, entry.name), "folder")
                if verdict:
                    refused.append((name, verdict))
                    continue
            seen = entry.stat()
            self._listed[(partition, user, name)] = (seen.st_dev, seen.st_ino)
            self._cur[(partition, user, name)] = (entry.path, cur)
            holder[name] = entry.name
            names.append(name)
        if refused:
            self._refused[(partition, user)] = refused
        return found + sorted(names)

    def folder_dir(self, partition: str, user: str, folder: str) -> Path:
        root = self.maildir(partition, user)
        if folder == INBOX:
            return root
        encoded = root / folder_to_dirname(folder)
        if encoded.is_dir():
            return encoded
        return root / ("." + folder.replace("/", "."))  # a :UTF-8 store keeps names raw

    def open_folder(self, partition: str, user: str, folder: str) -> MaildirFolderReader:
        # the directory the user's listing found (no walk of the path and its names again:
        # that cost more than the listing of a small folder); ``folder_dir`` otherwise
        listed = self._cur.get((partition, user, folder))
        directory = listed[0] if listed is not None else self.folder_dir(partition, user, folder)
        return MaildirFolderReader(directory, folder,
                                   self._listed.pop((partition, user, folder), None))

    def folder_identity(self, partition: str, user: str, folder: str) -> int | None:
        # a rename over IMAP renames the folder's directory; cur/ inside keeps its inode
        try:
            return os.stat(self.folder_dir(partition, user, folder) / "cur").st_ino
        except OSError:
            return None

    def unchanged_since(self, partition: str, user: str, folder: str,
                        since: float) -> tuple[bool, int | None]:
        # Delivery, COPY, a flag change (rename), new/ -> cur/ and expunge all change cur/ or
        # new/.  The folder directory itself is not looked at: Dovecot touches it with every
        # index write, which would make every folder a client opened look changed.  cur/ as
        # the listing saw it will do: the listing came after the date, so a change between
        # the two shows in its ctime, and a later one is after this backup's start (which
        # the next incremental's date covers).
        listed = self._cur.get((partition, user, folder))
        try:
            if listed is None:
                directory = str(self.folder_dir(partition, user, folder))
                cur = os.stat(os.path.join(directory, "cur"))
            else:
                directory, cur = listed
            if cur.st_ctime >= since or os.stat(os.path.join(directory, "new")).st_ctime >= since:
                return False, None
        except FileNotFoundError:
            return False, None          # read as changed: the read says what happened to it
        # not opened in this run: its listing facts are of no more use
        self._listed.pop((partition, user, folder), None)
        return True, cur.st_ino
