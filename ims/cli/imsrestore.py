"""imsrestore: restore an imsbackup archive, or part of it, into the live store."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from ims import debuglog
from ims.archive import format as fmt
from ims.archive.prefetch import PrefetchReader
from ims.archive.reader import ArchiveReader
from ims.cli.common import (CommandResult, Seconds, config_dir_option, emit_json, epilog, run,
                            warn)
from ims.config import MSG_CONF, Config
from ims.config import config_dir as config_dir_path
from ims.errors import DeviceError, ExitCode, UsageError
from ims.names import validate_encoding
from ims.restore import session
from ims.restore.engine import RestoreOptions, RestoreReport
from ims.restore.plan import DEFAULT_UID_MARGIN
from ims.restore.refs import read_refs, write_refs
from ims.restore.stored import store_stream
from ims.restore.selection import not_in_archive, parse_selection, read_user_map

PROG = "imsrestore"

HELP = """Restore an imsbackup archive (FILE or - for stdin) into the live store.

NAME selects what to restore, as imsbackup names it: /, /PARTITION, /PARTITION/GROUP (the
group the archive recorded), /PARTITION/GROUP/USER, .../USER/FOLDER, or a bare user ID.
Without NAME the whole archive is restored.

A folder that is gone comes back whole with its UIDVALIDITY and UIDs; a folder that exists
gets the messages it lacks as new mail (new UIDs), under Dovecot's lock."""

EXTRA = """-v: 0 quiet, 1 a summary, 2 also each folder and message listed, 3 to 5 also a debug log
in <local.store.logdir>/imsrestore.log."""

EXAMPLES = """# the whole archive, into the live store
imsrestore -f /backup/full.ims
# one user (from a file, only that user's part of the archive is read)
imsrestore -f /backup/full.ims /primary/user/amy
# one folder from a full backup and its incrementals, oldest first
imsrestore -f /backup/full.ims -f /backup/incr1.ims /primary/user/amy/Sent
# list what an archive holds, restore nothing
imsrestore -t -f /backup/full.ims
# from a pipe, with a summary
gunzip < /backup/primary-incr.ims.gz | imsrestore -f - -v 1 /primary"""


def open_input(name: str) -> tuple[int, str]:
    if name == "-":
        if os.isatty(0):
            raise UsageError("refusing to read an archive from a terminal; use -f FILE or a pipe")
        return 0, "stdin"
    try:
        return os.open(name, os.O_RDONLY), name
    except OSError as exc:
        raise DeviceError(f"{name}: cannot open: {exc.strerror}") from None


def make_decider(answer: str | None, input_is_stdin: bool):
    def decide(message: str) -> bool:
        if answer is not None:
            return answer == "y"
        if not input_is_stdin and sys.stdin.isatty():
            return click.confirm(f"{PROG}: {message}\nContinue?", default=True, err=True)
        return True     # no terminal and no -c: go on, exit non-zero at the end
    return decide


@click.command(help=HELP, epilog=epilog(EXTRA, EXAMPLES),
               context_settings={"help_option_names": ["--help"], "max_content_width": 100})
@click.option("-f", "devices", multiple=True, required=True, metavar="FILE|-",
              help="Archive file or - for stdin (several -f: a full backup and its incrementals).")
@click.option("-b", "blocking", type=click.IntRange(1, fmt.MAX_BLOCKING_FACTOR),
              help="Blocking factor (default: the one the archive's header records); when"
                   " given, it must be the one the archive was written with.")
@click.option("-c", "answer", type=click.Choice(["y", "n"]),
              help="Answer to 'continue after an error?' given in advance.")
@click.option("-e", "encoding", default="UTF-8", show_default=True,
              help="Folder-name encoding of NAME (UTF-8 or IMAP_MODIFIED-UTF-7).")
@click.option("-h", "dump_header", is_flag=True, help="Print the archive's header and stop.")
@click.option("-i", "ignore_existing", is_flag=True,
              help="Do not check for messages already there (duplicates may result).")
@click.option("-m", "map_file", metavar="MAPFILE", help="Rename users: old=new lines.")
@click.option("-n", "new_sibling", is_flag=True,
              help="Restore an existing folder into a new sibling <folder>_<backup date>.")
@click.option("-r", "refs_in", metavar="REFS", help="Restore the links listed in REFS.")
@click.option("-t", "list_only", is_flag=True, help="List the contents; restore nothing.")
@click.option("-v", "verbosity", type=click.IntRange(0, 5), default=0, show_default=True)
@click.option("--partition", metavar="P", help="Restore into partition P.")
@click.option("--where", metavar="DIR",
              help="Store the stream in DIR instead of restoring (empty or / restores).")
@click.option("--refs", "refs_out", metavar="PATH",
              help="Where to write the references file (default: the current directory).")
@click.option("--sync", is_flag=True, help="fsync every restored file and folder.")
@click.option("--lock-timeout", type=Seconds(), default=60.0, show_default=True,
              help="Seconds to wait for a folder's lock before giving up (exit 3).")
@click.option("--batch", type=click.IntRange(1), default=500, show_default=True,
              help="Messages added to an existing folder per hold of its lock.")
@click.option("--allow-gaps", is_flag=True,
              help="Restore a chain even when an incremental does not reach back to the"
                   " archive before it (mail of the gap may be missing).")
@click.option("--uid-margin", type=click.IntRange(0, 1 << 30), default=DEFAULT_UID_MARGIN,
              show_default=True,
              help="How far above its archived next UID a folder restored whole starts"
                   " handing out UIDs (covers mail that arrived after the backup).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@config_dir_option
@click.argument("names", nargs=-1)
def command(devices: tuple[str, ...], blocking: int | None, answer: str | None, encoding: str,
            dump_header: bool, ignore_existing: bool, map_file: str | None, new_sibling: bool,
            refs_in: str | None, list_only: bool, verbosity: int, partition: str | None,
            where: str | None, refs_out: str | None, sync: bool, lock_timeout: float,
            batch: int, allow_gaps: bool, uid_margin: int, as_json: bool,
            config_dir: str | None, names: tuple[str, ...]) -> None:
    encoding = validate_encoding(encoding)
    if len(devices) > 1 and (where or refs_in or dump_header or "-" in devices):
        raise UsageError("several -f (a chain) are restored from files, without --where, -r, -h")
    device = devices[0]
    patterns = parse_selection(list(names), encoding)
    user_map = read_user_map(map_file) if map_file else {}
    fd, device_name = open_input(device)
    started = time.monotonic()

    if where not in (None, "", "/"):
        # a host without a store (only keeping streams) has no configuration: nothing to
        # keep out of then
        directory = config_dir_path(config_dir)
        partitions = Config.load(directory).msg.partitions() if (directory / MSG_CONF).exists() \
            else {}
        target = store_stream(fd, device_name, Path(where), names, blocking,
                              keep_out_of=tuple(partitions.values()))
        click.echo(f"{PROG}: archive stored as {target}; restore with: imsrestore -f {target}"
                   f" {' '.join(names)}".rstrip(), err=True)
        if as_json:
            emit_json({"exit_code": 0, "stored": str(target), "messages": 0, "bytes": 0,
                       "seconds": round(time.monotonic() - started, 3)}, to_stderr=False)
        raise CommandResult(ExitCode.OK)

    reader = ArchiveReader(fd, device_name, blocking)
    if dump_header:
        header = reader.read_header()
        click.echo(json.dumps(header.raw, indent=2, ensure_ascii=False))
        raise CommandResult(ExitCode.OK)

    config = Config.load(config_dir_path(config_dir))
    if verbosity >= 3:
        debuglog.setup(config.logdir(), PROG)
    store = session.open_store(config)
    session.check_partition(store, partition)
    writer = session.store_writer(config, store, session.WriterSettings(lock_timeout, sync, batch))
    options = RestoreOptions(patterns=tuple(patterns), ignore_existing=ignore_existing,
                             new_sibling=new_sibling, user_map=user_map, partition=partition,
                             list_only=list_only, uid_margin=uid_margin)
    decide = make_decider(answer, device == "-")
    emit = (lambda line: click.echo(line)) if list_only else (
        (lambda line: click.echo(f"{PROG}: {line}", err=True)) if verbosity >= 2 else None)

    if len(devices) > 1:
        readers = [reader] + [ArchiveReader(open_input(d)[0], d, blocking) for d in devices[1:]]
        report, header = session.restore_chain(writer, readers, options, decide, allow_gaps, emit,
                                               list(names))
        source_name = " ".join(devices)
    elif refs_in:
        reader.require_seekable("-r")
        _, entries = read_refs(refs_in)
        report, header = session.restore_refs(writer, reader, entries, options, decide)
        source_name = device_name
    else:
        if not reader.seekable and not list_only:
            # a stream: parse and check it in a second process while this one writes files
            reader = PrefetchReader(fd, device_name, blocking)
        try:
            report, header = session.restore_archive(writer, reader, options, decide, emit,
                                                     list(names))
        finally:
            if isinstance(reader, PrefetchReader):
                reader.close()
        source_name = device_name
    unmatched = [names[i] for i in report.unmatched] if names and not refs_in else []
    if unmatched and report.complete and not report.damaged:
        nothing_done = list_only or not (report.messages or report.already_there
                                         or report.folders_whole or report.folders_merged)
        if nothing_done:
            raise UsageError(not_in_archive(unmatched, source_name))
        # from a pipe a NAME can only be found missing at the end, after the others landed
        report.skipped.extend(not_in_archive([name], source_name) for name in unmatched)

    refs_path = None
    if report.unresolved:
        refs_path = Path(refs_out) if refs_out else Path.cwd() / time.strftime(
            "imsrestore-refs-%Y%m%d-%H%M%S.json")
        write_refs(refs_path, header.created, header.host, report.unresolved)
        click.echo(f"{PROG}: {len(report.unresolved)} message(s) need a copy stored elsewhere"
                   f" in the archive; references written to {refs_path}; complete with:"
                   f" imsrestore -r {refs_path} -f ARCHIVE-FILE", err=True)
    for line in report.notes:
        click.echo(f"{PROG}: note: {line}", err=True)
    for line in report.damaged:
        click.echo(f"{PROG}: error: {line}", err=True)
    for line in report.locked:
        click.echo(f"{PROG}: error: {line}", err=True)
    for line in report.skipped:
        warn(PROG, f"skipped {line}")
    code = report.exit_code()
    if verbosity >= 1:
        click.echo(f"{PROG}: {report.messages} messages ({report.links} as hard links),"
                   f" {report.bytes} bytes, {report.already_there} already there,"
                   f" {report.folders_whole} folders restored whole,"
                   f" {report.folders_merged} merged, in {report.seconds:.1f} s", err=True)
    if as_json:
        emit_json(summary(report, code, refs_path), to_stderr=list_only)
    raise CommandResult(code)


def summary(report: RestoreReport, code: int, refs_path: Path | None) -> dict:
    return {
        "exit_code": code, "messages": report.messages, "bytes": report.bytes,
        "links": report.links, "already_there": report.already_there,
        "folders_whole": report.folders_whole, "folders_merged": report.folders_merged,
        "unresolved": len(report.unresolved), "refs": str(refs_path) if refs_path else None,
        "damaged": report.damaged, "locked": report.locked, "skipped": report.skipped,
        "notes": report.notes,
        "complete": report.complete, "seconds": round(report.seconds, 3),
    }


def main(argv: list[str] | None = None) -> int:
    return run(command, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
