"""imsasm: NetWorker's standard ASM arguments -> placeholder paths -> backup or restore.

``imsasm -s|-r|-c [options] PATH...``: the mode comes first (uasm(8)).  Each PATH is a
placeholder of mkbackupdir's tree; it is translated into what it stands for — the server
(the whole store), a group, a user, a mailbox, or a ``.d`` directory (a folder and its
subfolders) — and:

- ``-s`` writes one archive stream (our format) per PATH to stdout: one save record per
  placeholder.  A mailbox placeholder saves that mailbox only, not its subfolders (they have
  placeholders of their own).  The partition is the user's partition in the store.
- ``-r`` reads one archive stream from stdin and restores it by the restore rules, limited
  to what PATH stands for; for a user who is gone the partition comes from the stream.
- ``-c`` reads a saved stream and compares it with the live store: messages missing from
  the store, differing in bytes or flags, and messages the store has that the stream lacks.
  Users and folders are named only by the stream's validated records; a member whose values
  are not valid is named, not compared, and makes the exit 4.
- ``-n`` dry run (save: resolve and check only; recover/compare: read and check the stream),
  ``-v`` verbose, ``-q`` quiet (no ``-v`` output), ``-b`` byte-count estimate (records,
  header bytes, data bytes).
- ``-r -m SRC=DST`` (NetWorker's relocated recover): the stream is not restored but stored
  as an archive file in DST, checked as it is stored, as ``imsrestore --where DST`` does;
  nothing in the store changes, and the ``imsrestore -f`` command to use is printed.
- The other uasm(8) options NetWorker may pass are accepted and named on stderr as not
  acted on (``NOT_ACTED``), never dropped silently.

Exclusions (``local.store.backup.exclude``) as imsbackup applies them: a directory of the
tree (server, group, user, ``.d``) is a wider name, so the excluded folders below it are left
out; a placeholder naming an excluded folder (only a stale tree has one) names it in full,
so it is saved, as imsbackup saves a folder named in full, with a note saying so.

``local.store.backup.asmfilter`` (save) and ``local.store.backup.asmrecoverfilter``
(recover), when set, are shell commands the stream passes through (Sun's imsasm used
NetWorker's undocumented ``nsrfile`` there; see docs/networker.md for what is verified).

Failure behaviour: usage errors exit 2 with one line; a path outside the backup directory,
or one naming no user or folder any more, exits 2 before any stream is written, so NetWorker
never records an empty save as complete; otherwise the backup and restore exit codes.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ims.archive import format as fmt
from ims.archive.reader import ArchiveReader
from ims.archive.writer import ArchiveWriter, RecordSink
from ims.backup import BackupOptions, run_backup
from ims.config import EVERYONE_GROUPS, Config
from ims.errors import DeviceError, ExitCode, UnknownName, UsageError, most_serious
from ims.mkbackupdir.layout import Placeholder, parse
from ims.names import Scope, UserScope, in_folder, is_excluded, select_folders
from ims.restore import session
from ims.restore.engine import RestoreOptions
from ims.restore.stored import store_stream
from ims.restore.selection import Pattern
from ims.store.maildir import LayoutError, MaildirFolderReader, MaildirStore

SAVE_FLAGS = set("nvbeouxiEq")
SAVE_WITH_VALUE = set("tfp")
RECOVER_FLAGS = set("nvuq")
RECOVER_WITH_VALUE = set("imzP")
OVERWRITE_ANSWERS = set("nNyYrR")      # recover -i: uasm's initial overwrite answer

# uasm(8) options NetWorker may pass that have nothing to act on here, and why: each one
# given is named on stderr, so that nobody believes it did something.
_GOES_ON = "imsasm goes on after an error and exits non-zero at the end"
_NOTHING_REPLACED = ("nothing in the store is overwritten or renamed: an existing folder gets"
                     " only the messages it lacks, as new mail")
NOT_ACTED = {
    "s": {"e": "the stream always ends with its trailer",
          "u": _GOES_ON,
          "x": "a placeholder stands for mailboxes, there is no file tree to cross",
          "i": "imsasm reads no .nsr directives",
          "E": "no estimate is made before the save (-b gives one instead of a save)",
          "t": "a mailbox is saved whole; NetWorker's levels choose the mailboxes by their"
               " placeholders' times",
          "f": "no directive prototype file is read",
          "p": "the stream's names come from the store, not from the placeholder's path"},
    "r": {"u": _GOES_ON,
          "i": _NOTHING_REPLACED,
          "z": _NOTHING_REPLACED,
          "P": "imsasm streams are not encrypted by NetWorker; no pass phrase is used"},
    "c": {"u": _GOES_ON,
          "i": "a compare writes nothing",
          "m": "a compare writes nothing",
          "z": "a compare writes nothing",
          "P": "imsasm streams are not encrypted by NetWorker; no pass phrase is used"},
}


@dataclass(frozen=True)
class Relocation:
    """recover ``-m SRC=DST``: the paths under SRC go to DST."""

    source: Path
    target: Path


@dataclass
class AsmRequest:
    mode: str                         # s, r or c
    dry_run: bool = False
    verbose: bool = False
    estimate: bool = False
    values: dict[str, str] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)
    relocation: Relocation | None = None
    not_acted: list[str] = field(default_factory=list)   # one line per option given


def parse_relocation(value: str) -> Relocation:
    source, sep, target = value.partition("=")
    if not sep or not source or not target:
        raise UsageError(f"-m {value}: expected SRC=DST (the recovered path, or a directory"
                         " above it, = the directory to store the recover stream in)")
    return Relocation(Path(os.path.normpath(os.path.abspath(source))),
                      Path(os.path.normpath(os.path.abspath(target))))


def parse_args(argv: list[str]) -> AsmRequest:
    """uasm-style arguments: ``-s|-r|-c`` first, then flags (combinable), then paths."""
    if not argv or argv[0][:2] not in ("-s", "-r", "-c"):
        raise UsageError("the first argument must be -s (save), -r (recover) or -c (compare)")
    request = AsmRequest(argv[0][1])
    flags = SAVE_FLAGS if request.mode == "s" else RECOVER_FLAGS
    with_value = SAVE_WITH_VALUE if request.mode == "s" else RECOVER_WITH_VALUE
    args = [argv[0][2:] and "-" + argv[0][2:]] + argv[1:]
    args = [a for a in args if a]
    quiet = False
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            request.paths.extend(args[i + 1:])
            break
        if not arg.startswith("-") or arg == "-":
            request.paths.append(arg)
            i += 1
            continue
        letters = arg[1:]
        for position, letter in enumerate(letters):
            if letter in with_value:
                value = letters[position + 1:] or (args[i + 1] if i + 1 < len(args) else None)
                if value is None:
                    raise UsageError(f"option -{letter} needs a value")
                if not letters[position + 1:]:
                    i += 1
                if letter in request.values:
                    raise UsageError(f"-{letter} given twice")
                request.values[letter] = value
                _note_not_acted(request, letter, value)
                break
            if letter not in flags:
                raise UsageError(f"unknown option -{letter} for imsasm -{request.mode}")
            if letter == "n":
                request.dry_run = True
            elif letter == "v":
                request.verbose = True
            elif letter == "q":
                quiet = True
            elif letter == "b":
                request.estimate = True
            elif letter == "o":
                raise UsageError("-o (old-style NetWorker save stream) is not supported")
            else:
                _note_not_acted(request, letter, None)
        i += 1
    if quiet:
        request.verbose = False
    if request.mode == "s" and not request.paths:
        raise UsageError("imsasm -s needs at least one path")
    answer = request.values.get("i") if request.mode != "s" else None
    if answer is not None and answer not in OVERWRITE_ANSWERS:
        raise UsageError(f"-i {answer}: expected one of {' '.join(sorted(OVERWRITE_ANSWERS))}")
    if request.mode == "r" and "m" in request.values:
        request.relocation = parse_relocation(request.values["m"])
    return request


def _note_not_acted(request: AsmRequest, letter: str, value: str | None) -> None:
    why = NOT_ACTED[request.mode].get(letter)
    if why is not None:
        given = f"-{letter} {value}" if value is not None else f"-{letter}"
        request.not_acted.append(f"{given}: not acted on: {why}")


@dataclass
class Target:
    path: str
    placeholder: Placeholder
    partition_form: bool          # Sun's /backup/<partition>/<group>/<user> tree
    relative: Path                # below the backup directory: <server>/<group>/...


class PathMapper:
    """Placeholder paths <-> what they stand for, under the configured backup directory."""

    def __init__(self, config: Config, store: MaildirStore) -> None:
        self.config = config
        self.store = store
        self.server = config.msg.servername()
        backupdir = config.msg.get("local.store.backupdir")
        self.backupdir = Path(os.path.realpath(backupdir)) if backupdir else None

    def _root_for(self, path: Path) -> Path:
        if self.backupdir is not None:
            return self.backupdir
        # No local.store.backupdir: the tree's root is the parent of the server (or, in
        # Sun's form, partition) directory on the way up.
        for ancestor in path.parents:
            if ancestor.name == self.server or ancestor.name in self.store.partition_dirs:
                return ancestor.parent
        raise UsageError(f"{path}: local.store.backupdir is not set and no server directory"
                         f" {self.server!r} is above it")

    def target(self, raw: str) -> Target:
        path = Path(os.path.realpath(os.path.abspath(raw)))
        root = self._root_for(path)
        if path != root and root not in path.parents:
            raise UsageError(f"{raw}: not under the backup directory {root}")
        try:
            placeholder = parse(list(path.relative_to(root).parts))
        except ValueError as exc:
            raise UsageError(f"{raw}: not a placeholder path: {exc}") from None
        partition_form = placeholder.top != self.server and placeholder.top in self.store.partition_dirs
        if not partition_form and placeholder.top != self.server:
            raise UsageError(f"{raw}: {placeholder.top!r} is neither this server"
                             f" ({self.server}) nor a partition")
        if placeholder.group is not None and not self.config.groups.exists(placeholder.group):
            raise UnknownName(f"{raw}: no backup group {placeholder.group!r}")
        return Target(raw, placeholder, partition_form, path.relative_to(root))

    def scope(self, target: Target) -> tuple[Scope, str]:
        """The users and folders a save of this placeholder covers, and its logical name.

        The exclusion list is applied by the backup as to any name: a directory of the tree
        is a wider name, its excluded folders are left out.  A placeholder (or ``.d``
        directory) of a folder that is itself excluded names that folder in full and saves
        it, as imsbackup does; ``Scope.warnings`` says so (the tree is stale)."""
        ph = target.placeholder
        groups = self.config.groups
        partitions = [ph.top] if target.partition_form else self.store.partitions()
        named_excluded = ph.folder is not None and is_excluded(ph.folder,
                                                               self.config.msg.exclusions())
        users: list[UserScope] = []
        for partition in partitions:
            for user in self.store.users(partition):
                if ph.user is not None and user != ph.user:
                    continue
                group = groups.group_of(user)
                if ph.group is not None and ph.group not in EVERYONE_GROUPS and group != ph.group:
                    continue
                scope = UserScope(partition, user, group, folders=None)
                if ph.folder is not None:
                    existing = self.store.folders(partition, user)
                    wanted = [f for f in existing if (in_folder(f, ph.folder) if ph.folder_prefix
                                                      else f == ph.folder)]
                    if not wanted:
                        raise UnknownName(f"{target.path}: user {user!r} has no folder"
                                          f" {ph.folder!r} any more")
                    scope = UserScope(partition, user, group, folders={ph.folder},
                                      named_folders={ph.folder} if named_excluded else set(),
                                      exact=not ph.folder_prefix)
                users.append(scope)
        if ph.user is not None and not users:
            raise UnknownName(f"{target.path}: no user {ph.user!r} in the store any more")
        notes = []
        if named_excluded:
            notes.append(f"{target.path}: folder {ph.folder!r} is in local.store.backup.exclude;"
                         " saved because its placeholder names it, as imsbackup saves a folder"
                         " named in full (mkbackupdir leaves such placeholders out: run it to"
                         " bring the tree in step)")
        # The stream's name states what it holds: a directory whose users are on several
        # partitions (or on none) is named with '*', every partition, not the first user's.
        held = {scope.partition for scope in users}
        if target.partition_form:
            partition = ph.top
        else:
            partition = held.pop() if len(held) == 1 else "*"
        return Scope(users, notes), ph.logical_name(partition)

    def pattern(self, target: Target) -> Pattern:
        ph = target.placeholder
        return Pattern(ph.top if target.partition_form else None, ph.group, ph.user, ph.folder)


def save(request: AsmRequest, config: Config, store: MaildirStore, out_fd: int,
         say: Callable[[str], None]) -> int:
    mapper = PathMapper(config, store)
    resolved = []
    for raw in request.paths:
        target = mapper.target(raw)
        resolved.append((target, *mapper.scope(target)))   # every path checked before writing
    for _, scope, _ in resolved:
        for note in scope.warnings:
            say(f"imsasm: note: {note}")
    if request.estimate:
        records = header = data = 0
        exclusions = config.msg.exclusions()
        for target, scope, logical in resolved:
            r, h, d = estimate(store, scope, exclusions)
            records, header, data = records + r, header + h, data + d
        os.write(out_fd, f"{records} {header} {data}\n".encode())
        return ExitCode.OK
    codes = [ExitCode.OK]
    for target, scope, logical in resolved:
        if request.verbose:
            say(f"imsasm -s {target.path} -> {logical} ({len(scope.users)} user(s))")
        if request.dry_run:
            continue
        codes.append(_save_one(config, store, scope, logical, out_fd))
    return most_serious(*codes)


def _save_one(config: Config, store: MaildirStore, scope: Scope, logical: str, out_fd: int) -> int:
    filter_command = config.msg.get("local.store.backup.asmfilter")
    process = None
    fd = out_fd
    if filter_command:
        process = subprocess.Popen(filter_command, shell=True, stdin=subprocess.PIPE, stdout=out_fd)
        assert process.stdin is not None
        fd = process.stdin.fileno()
    try:
        writer = ArchiveWriter(RecordSink(fd, fmt.DEFAULT_BLOCKING_FACTOR, "the save stream"))
        report = run_backup(config, store, scope, writer, BackupOptions(names=(logical,)))
    finally:
        if process is not None:
            assert process.stdin is not None
            process.stdin.close()
            if process.wait() != 0:
                raise DeviceError(f"asmfilter {filter_command!r} exited {process.returncode}")
    return ExitCode.SKIPPED if report.skipped else ExitCode.OK


def estimate(store: MaildirStore, scope: Scope, exclusions: list[str]) -> tuple[int, int, int]:
    """(records, header bytes, data bytes) of a save, from a listing and stat of each file:
    the folders the save takes, by the same selection (exclusions included)."""
    records = header = data = 0
    for user_scope in scope.users:
        all_folders = store.folders(user_scope.partition, user_scope.user)
        folders, _ = select_folders(user_scope, all_folders, exclusions)
        records += 1
        header += 2048
        for folder in folders:
            reader = store.open_folder(user_scope.partition, user_scope.user, folder)
            try:
                records += 1 + len(reader.state.messages)
                header += 2048 + 60 * len(reader.state.messages)
                for entry in reader.state.messages:
                    opened = reader.open_message(entry)
                    if opened is None:
                        continue
                    fd, st = opened
                    os.close(fd)
                    header += 1536
                    data += st.st_size + (-st.st_size % fmt.BLOCK)
            finally:
                reader.close()
    return records, header, data


def recover(request: AsmRequest, config: Config, store: MaildirStore, in_fd: int,
            say: Callable[[str], None]) -> int:
    mapper = PathMapper(config, store)
    targets = [mapper.target(raw) for raw in request.paths]
    patterns = tuple(mapper.pattern(target) for target in targets) or (Pattern(),)
    relocation = request.relocation
    if relocation is not None:
        _check_relocation(relocation, request.paths)
    filter_command = config.msg.get("local.store.backup.asmrecoverfilter")
    with _recover_filter(filter_command, in_fd) as stream_fd:
        if relocation is not None and not request.dry_run:
            labels = [str(target.relative) for target in targets]
            keep_out_of = tuple(config.msg.partitions().values()) + (
                (mapper.backupdir,) if mapper.backupdir is not None else ())
            return _relocate(relocation, labels, patterns, stream_fd, say, keep_out_of)
        reader = ArchiveReader(stream_fd, "the recover stream", None)
        options = RestoreOptions(patterns=patterns, list_only=request.dry_run)
        emit = say if request.verbose else None
        writer = session.store_writer(config, store, session.WriterSettings())
        report, _ = session.restore_archive(writer, reader, options, lambda message: True, emit)
    # as imsrestore: PATHs that matched nothing are an error when nothing else was done,
    # otherwise named as skipped (from a pipe they can only be found missing at the end)
    unmatched = [request.paths[i] for i in report.unmatched] if request.paths else []
    if unmatched and report.complete and not report.damaged:
        nothing_done = request.dry_run or not (report.messages or report.already_there
                                               or report.folders_whole or report.folders_merged)
        if nothing_done:
            raise UnknownName(f"{' '.join(unmatched)}: not in the recover stream")
        report.skipped.extend(f"{path}: not in the recover stream" for path in unmatched)
    for line in report.damaged + report.locked + report.skipped + report.notes:
        say(f"imsasm: {line}")
    if report.unresolved:
        say(f"imsasm: {len(report.unresolved)} message(s) are links to data in another save"
            " record; recover that record too, or save with imsbackup -i")
    return report.exit_code()


@contextmanager
def _recover_filter(command: str | None, in_fd: int) -> Iterator[int]:
    """The recover stream, through local.store.backup.asmrecoverfilter when one is set."""
    if not command:
        yield in_fd
        return
    process = subprocess.Popen(command, shell=True, stdin=in_fd, stdout=subprocess.PIPE)
    assert process.stdout is not None
    try:
        yield process.stdout.fileno()
    except BaseException:
        # not read any more: closed, so that the filter ends instead of waiting to write;
        # how it ends is a consequence of what is being raised
        process.stdout.close()
        process.wait()
        raise
    code = process.wait()
    process.stdout.close()
    if code != 0:
        raise DeviceError(f"asmrecoverfilter {command!r} exited {code}")


def _check_relocation(relocation: Relocation, paths: list[str]) -> None:
    """SRC must be each recovered PATH or a directory above it: a relocation meant for other
    paths is refused, never taken for a recover into the live store."""
    for raw in paths:
        absolute = Path(os.path.normpath(os.path.abspath(raw)))
        forms = (absolute, Path(os.path.realpath(absolute)))
        if not any(form == relocation.source or relocation.source in form.parents
                   for form in forms):
            raise UsageError(f"-m {relocation.source}={relocation.target}: {raw} is not"
                             f" {relocation.source} or below it")


def _relocate(relocation: Relocation, labels: list[str], patterns: tuple[Pattern, ...],
              in_fd: int, say: Callable[[str], None], keep_out_of: tuple[Path, ...]) -> int:
    """Store the recover stream as an archive file in the relocation's target, checked as
    it is stored (imsrestore --where's code: 0600, exclusive, never through a link; a cut or
    damaged stream raises ArchiveDamaged and stays as NAME.partial), and name the
    imsrestore command that restores it.  Nothing in the store is touched, and the target
    may not lie in the store or the placeholder tree."""
    stored = store_stream(in_fd, "the recover stream", relocation.target, tuple(labels), None,
                          keep_out_of)
    names = [name for name in (pattern_name(p) for p in patterns) if name]
    command = " ".join(shlex.quote(word) for word in ["imsrestore", "-f", str(stored), *names])
    say(f"imsasm: recover stream stored as {stored}; nothing in the store was changed;"
        f" restore with: {command}")
    return ExitCode.OK


def pattern_name(pattern: Pattern) -> str:
    """The logical name imsrestore selects a recover PATH's mail by ('' for all of it)."""
    parts = [part for part in (pattern.group, pattern.user, pattern.folder) if part is not None]
    if not parts and pattern.partition in (None, "*"):
        return ""
    return "/" + "/".join([pattern.partition or "*", *parts])


def compare(request: AsmRequest, config: Config, store: MaildirStore, in_fd: int,
            say: Callable[[str], None]) -> int:
    """Compare a saved stream with the live store; exit 1 when they differ, 4 when the
    stream holds a member whose values are not valid (it is named and not compared).

    Names come only from the validated records (ims/archive/records.py); each live folder
    is listed once, while the stream goes through that folder's members."""
    reader = ArchiveReader(in_fd, "the compare stream", None)
    reader.read_header()
    differences = 0
    invalid = 0
    live: _LiveFolder | None = None
    data_of: dict[str, str] = {}

    def differ(line: str) -> None:
        nonlocal differences
        differences += 1
        say(f"imsasm: {line}")    # as found: a stream cut short still shows what was compared

    def leave_folder() -> None:
        nonlocal live
        if live is not None:
            for key in live.only_in_store():
                differ(f"{live.where}/{key}: in the store, not in the save")
            live.close()
            live = None

    try:
        for member in reader.members():
            if member.kind == fmt.FOLDER:
                leave_folder()
            if member.invalid is not None:
                invalid += 1
                say(f"imsasm: error: {member.invalid}: not compared")
                continue
            if member.kind == fmt.FOLDER:
                state = member.record
                where = f"/{state.partition}/{state.user}/{state.folder}"
                if request.dry_run:
                    continue
                try:
                    live = _LiveFolder(store, state.partition, state.user, state.folder, where)
                except _NotHere as exc:
                    differ(f"{where}: {exc}; not compared")
                continue
            if member.kind != fmt.MESSAGE:
                continue
            record = member.record
            sha = record.sha256 or data_of.get(member.linkname)
            if not member.is_link:
                data_of[member.name] = sha or ""
            if live is None:
                continue
            for line in live.compare(record.key, sha, record.flags):
                differ(line)
        leave_folder()
    finally:
        if live is not None:
            live.close()
    if request.verbose:
        say(f"imsasm: {differences} difference(s), {invalid} invalid member(s)")
    if invalid:
        return ExitCode.DAMAGED
    return ExitCode.SKIPPED if differences else ExitCode.OK


class _NotHere(Exception):
    """The folder a folder state names cannot be found in this store (str: why)."""


class _LiveFolder:
    """The live folder the stream is going through: opened and listed once."""

    def __init__(self, store: MaildirStore, partition: str, user: str, folder: str,
                 where: str) -> None:
        if partition not in store.partition_dirs:
            raise _NotHere(f"partition {partition!r} is not configured here")
        self.where = where
        try:
            self.reader: MaildirFolderReader | None = store.open_folder(partition, user, folder)
        except LayoutError as exc:
            raise _NotHere(str(exc)) from None
        except OSError:
            self.reader = None          # gone: every saved message is missing from the store
        messages = self.reader.state.messages if self.reader is not None else []
        self.entries = {entry.key: entry for entry in messages}
        self.seen: set[str] = set()

    def compare(self, key: str, sha: str | None, flags: str) -> list[str]:
        self.seen.add(key)
        entry = self.entries.get(key)
        opened = self.reader.open_message(entry) if entry is not None and self.reader else None
        if opened is None:
            return [f"{self.where}/{key}: in the save, not in the store"]
        fd, _ = opened
        digest = hashlib.sha256()
        try:
            while chunk := os.read(fd, 1 << 20):
                digest.update(chunk)
        finally:
            os.close(fd)
        lines = []
        if digest.hexdigest() != sha:
            lines.append(f"{self.where}/{key}: bytes differ")
        if entry.flags != flags:        # open_message refreshes them after a rename
            lines.append(f"{self.where}/{key}: flags {flags} saved, {entry.flags} in the store")
        return lines

    def only_in_store(self) -> list[str]:
        return sorted(self.entries.keys() - self.seen)

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
