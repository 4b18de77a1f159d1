"""imsbackup: back up the message store, or parts of it, to a file, a device or a pipe."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import click

from ims import debuglog
from ims.archive import format as fmt
from ims.archive.device import open_output
from ims.archive.writer import ArchiveWriter, RecordSink
from ims.backup import BackupOptions, BackupReport, run_backup, stderr_is_terminal, summary
from ims.cli.common import (CommandResult, config_dir_option, emit_json, epilog, run,
                            warn)
from ims.config import Config
from ims.config import config_dir as config_dir_path
from ims.errors import ConfigError, ExitCode, UsageError, most_serious
from ims import jobstate
from ims.names import resolve, validate_encoding
from ims.signals import held
from ims.staging import stage
from ims.store.maildir import LayoutError, MaildirStore

PROG = "imsbackup"

HELP = """Back up the message store, or parts of it, to FILE, a device or - (stdout).

NAME is a logical name: / (whole store), /PARTITION, /PARTITION/GROUP,
/PARTITION/GROUP/USER, /PARTITION/GROUP/USER/FOLDER[/SUB...], * as PARTITION for
every partition, or a bare user ID.  The predefined group 'user' (alias ALL) holds
every user."""

EXTRA = """-d selects every message stored, copied or flag-changed at or after that local
time (TZ respected); the state of every folder in scope is always written.
-x backs up the folders of local.store.backup.exclude too (the exclusion list is
ignored for this run).  -l (tape autoload) is accepted for compatibility; it does nothing
and says so on stderr."""

EXAMPLES = """# the whole store, to a file
imsbackup -f /backup/full.ims /
# what changed since 26 November 2026 in partition primary, compressed
imsbackup -f - -d 20261126 /primary | gzip > /backup/primary-incr.ims.gz
# one backup group, to a tape in records of 64 x 512 bytes
imsbackup -f /dev/nst0 -b 64 /primary/groupA
# one user (the group 'user' holds everyone)
imsbackup -f /backup/amy.ims /primary/user/amy"""


def parse_since(text: str) -> float:
    date, _, clock = text.partition(":")
    try:
        if len(date) != 8 or (clock and len(clock) != 6):
            raise ValueError
        parsed = time.strptime(date + (clock or "000000"), "%Y%m%d%H%M%S")
    except ValueError:
        raise UsageError(f"-d {text}: expected YYYYMMDD or YYYYMMDD:HHMMSS") from None
    return time.mktime(parsed)


def read_names_file(path: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the names file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    names: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "//" in line:
            raise ConfigError(f"{path}:{lineno}: malformed logical name {line!r}")
        names.append(line)
    return names


@click.command(help=HELP, epilog=epilog(EXTRA, EXAMPLES),
               context_settings={"help_option_names": ["--help"], "max_content_width": 100})
@click.option("-f", "device", metavar="FILE|-", help="Archive file, device, or - for stdout.")
@click.option("-b", "blocking", type=click.IntRange(1, fmt.MAX_BLOCKING_FACTOR),
              default=fmt.DEFAULT_BLOCKING_FACTOR, show_default=True,
              help="Blocking factor: writes are 512 x N bytes.")
@click.option("-d", "since", metavar="YYYYMMDD[:HHMMSS]", help="Incremental: only what changed since.")
@click.option("-e", "encoding", default="UTF-8", show_default=True,
              help="Folder-name encoding on the command line (UTF-8 or IMAP_MODIFIED-UTF-7).")
@click.option("-u", "names_file", metavar="FILE", help="Read logical names from FILE, one a line.")
@click.option("-m", "link_min", type=click.IntRange(1), default=2, show_default=True,
              metavar="LINKCOUNT", help="Only files with at least this many links join the single-copy table.")
@click.option("-i", "full_copies", is_flag=True, help="Full copies: no hard-link members.")
@click.option("-v", "verbose", is_flag=True, help="Name each folder on stderr.")
@click.option("-g", "debug", is_flag=True, help="Debug log to <logdir>/imsbackup.log.")
@click.option("-x", "ignore_exclusions", is_flag=True, help="Ignore local.store.backup.exclude.")
@click.option("-l", "autoload", is_flag=True,
              help="Accepted for compatibility (Sun's tape autoload); does nothing, and says so.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary (stderr when -f -).")
@click.option("--staging", metavar="DIR", help="One archive per (partition, group) of the names, in DIR.")
@click.option("-j", "jobs", type=click.IntRange(1, 64), default=2, show_default=True,
              help="With --staging: groups backed up at the same time.")
@click.option("--job-state", metavar="DIR", help="Level and since-time from DIR (Bacula bpipe reader).")
@click.option("--job-begin", metavar="DIR", help="Start a job: record --level in DIR and stop.")
@click.option("--level", metavar="LEVEL", help="With --job-begin: Full, Incremental or Differential.")
@click.option("--job-end", metavar="DIR", help="End a job: exit 1 unless its reader succeeded.")
@config_dir_option
@click.argument("names", nargs=-1)
def command(device: str | None, blocking: int, since: str | None, encoding: str,
            names_file: str | None, link_min: int, full_copies: bool, verbose: bool, debug: bool,
            ignore_exclusions: bool, autoload: bool, as_json: bool, staging: str | None, jobs: int,
            job_state: str | None, job_begin: str | None, level: str | None,
            job_end: str | None, config_dir: str | None, names: tuple[str, ...]) -> None:
    if job_begin:
        jobstate.begin(job_begin, level or "")
        raise CommandResult(ExitCode.OK)
    if job_end:
        if not jobstate.end(job_end):
            click.echo(f"{PROG}: error: {job_end}: the reader of this job did not succeed (no"
                       " success marker): the backup is not complete, see the job log", err=True)
            raise CommandResult(ExitCode.SKIPPED)
        raise CommandResult(ExitCode.OK)
    if staging and device:
        raise UsageError("--staging writes its own files: give it without -f")
    if not staging and not device:
        raise UsageError("-f FILE|- is required (or --staging DIR)")
    encoding = validate_encoding(encoding)
    if autoload:
        warn(PROG, "-l (tape autoload) is accepted for compatibility with Sun's imsbackup and"
                   " does nothing: load the next tape with your changer's own tools")
    all_names = list(names) + (read_names_file(names_file) if names_file else [])
    if not all_names:
        raise UsageError("no logical name given (use / for the whole store)")
    since_epoch = parse_since(since) if since else None
    if job_state:
        if since:
            raise UsageError("--job-state decides the since-time itself: no -d with it")
        job_level, since_epoch, note = jobstate.plan(job_state)
        since = None if since_epoch is None else time.strftime("%Y%m%d:%H%M%S",
                                                               time.localtime(since_epoch))
        click.echo(f"{PROG}: {job_state}: {note}", err=True)
    config = Config.load(config_dir_path(config_dir))
    if debug:
        log_path = debuglog.setup(config.logdir(), PROG)
        if verbose:
            click.echo(f"{PROG}: debug log in {log_path}", err=True)
    try:
        store = MaildirStore(config.msg.partitions(), config.msg.get("store.maildir.layout") or "")
    except LayoutError as exc:
        raise ConfigError(f"{config.msg.path}: store.maildir.layout: {exc}") from None
    scope = resolve(all_names, config, store, encoding)
    for message in scope.warnings:
        warn(PROG, message)
    options = BackupOptions(names=tuple(all_names), since=since_epoch, since_text=since,
                            link_min=link_min, full_copies=full_copies,
                            ignore_exclusions=ignore_exclusions, blocking_factor=blocking)
    if staging:
        raise CommandResult(_stage(store, scope, Path(staging), jobs, blocking, since, link_min,
                                   full_copies, ignore_exclusions, config_dir, as_json))

    output = open_output(device)
    sink = RecordSink(output.fd, blocking, device if device != "-" else "stdout")
    writer = ArchiveWriter(sink)
    progress = _progress_printer(verbose, stderr_is_terminal())
    try:
        report = run_backup(config, store, scope, writer, options, progress)
    except BaseException:
        if output.temp_path:
            click.echo(f"{PROG}: the incomplete archive is left in {output.temp_path}", err=True)
        output.close()
        raise
    # the point of no return: the archive is complete, so an interrupt from here on would
    # only make a good archive look failed (it is ignored; the run ends normally)
    with held():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    output.commit()
    if progress is not None and stderr_is_terminal():
        click.echo("", err=True)
    for message in report.warnings[len(scope.warnings):]:
        warn(PROG, message)
    for item in report.skipped:
        warn(PROG, f"skipped {item}")
    code = most_serious(ExitCode.SKIPPED if report.skipped else ExitCode.OK)
    if verbose:
        click.echo(f"{PROG}: {report.messages} messages, {report.links} links,"
                   f" {report.bytes} bytes, {report.vanished} vanished,"
                   f" {len(report.skipped)} skipped, {report.folders} folders"
                   f" in {report.seconds:.1f} s" + (
                       f"; backup group(s) matching no user: {', '.join(report.empty_groups)}"
                       if report.empty_groups else ""), err=True)
    if as_json:
        emit_json(summary(report, code), to_stderr=output.is_stdout)
    if job_state and code == ExitCode.OK:
        jobstate.succeeded(job_state)
    raise CommandResult(code)


def _stage(store: MaildirStore, scope, directory: Path, jobs: int, blocking: int,
           since: str | None, link_min: int, full_copies: bool, ignore_exclusions: bool,
           config_dir: str | None, as_json: bool) -> int:
    args = ["-b", str(blocking), "-m", str(link_min)]
    args += ["-d", since] if since else []
    args += ["-i"] if full_copies else []
    args += ["-x"] if ignore_exclusions else []
    env = dict(os.environ)
    if config_dir:
        env["IMS_CONFIG_DIR"] = config_dir
    report = stage(store, scope, directory, jobs, args, env)
    for group in report.groups:
        state = "ok" if group.exit_code == 0 else f"exit {group.exit_code}: {group.error}"
        click.echo(f"{PROG}: /{group.partition}/{group.group} -> {group.path}"
                   f" ({group.bytes >> 20} MiB, {group.seconds:.1f} s) {state}", err=True)
    code = report.exit_code()
    if as_json:
        emit_json({"exit_code": code, "seconds": round(report.seconds, 3),
                   "estimated_bytes": report.estimated, "free_bytes": report.free,
                   "groups": [{"partition": g.partition, "group": g.group, "file": str(g.path),
                               "exit_code": g.exit_code, "bytes": g.bytes,
                               "seconds": round(g.seconds, 3), "error": g.error}
                              for g in report.groups],
                   "empty_groups": list(scope.empty_groups)}, to_stderr=False)
    return code


def _progress_printer(verbose: bool, on_terminal: bool):
    if not verbose and not on_terminal:
        return None
    last = [0.0]

    def show(report: BackupReport, logical: str) -> None:
        if verbose:
            click.echo(f"{PROG}: {logical}", err=True)
        elif on_terminal:
            now = time.monotonic()
            if now - last[0] >= 0.25:
                last[0] = now
                sys.stderr.write(f"\r{report.folders} folders, {report.messages} messages,"
                                 f" {report.bytes / 1048576:.1f} MiB   ")
                sys.stderr.flush()
    return show


def main(argv: list[str] | None = None) -> int:
    return run(command, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
