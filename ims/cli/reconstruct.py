"""reconstruct: check the store's folders (-n) or repair them; parse, call, report."""

from __future__ import annotations

import sys

import click

from ims import reconstruct as rc
from ims.cli.common import (CommandResult, Seconds, config_dir_option, emit_json, epilog,
                            refuse_repeats, run)
from ims.config import Config
from ims.config import config_dir as config_dir_path
from ims.errors import UsageError
from ims.names import validate_encoding

PROG = "reconstruct"

HELP = """Check the store's folders and repair what is safe to repair, while Dovecot runs.

NAME selects what to check, as imsbackup names it: / (the whole store), /PARTITION,
/PARTITION/GROUP, /PARTITION/user/USER, /PARTITION/user/USER/FOLDER (that folder; with -r
its subfolders too), or a bare user ID.

Checked in every folder: uidlist lines without their file and files without a line (new
mail), UIDs or base names listed twice, UIDs out of order, a next UID at or below a used one,
a missing UIDVALIDITY or one shared by two folders of a user, index files that disagree with
the uidlist, keyword letters without a name, stale locks, files a killed imsrestore left,
owner and mode, cur/ new/ tmp/ maildirfolder; per user: the UIDVALIDITY counter,
subscriptions of folders that do not exist, the maildirsize quota file.

A repair keeps UIDVALIDITY and UIDs wherever possible, never deletes a message file, rewrites
dovecot-uidlist under Dovecot's lock, removes index files that disagree (Dovecot rebuilds
them; the modseq restarts above any a client saw), says what it did, then checks again."""

EXTRA = """What reconstruct's codes mean:
  0  -n: the folders checked are clean (notices, such as new mail, do not count);
     repair: every problem found was repaired and the store now checks clean
  1  -n: problems found, each listed with its folder and what to do;
     repair: some problems could not be repaired (listed), the rest were
  2  a NAME that does not exist, a bad option or configuration; nothing was read
  3  a folder's lock was not released within --lock-timeout: that folder was not
     repaired (the others were)"""

EXAMPLES = """# check the whole store, change nothing
reconstruct -n /
# repair one folder (Dovecot may keep running)
reconstruct /primary/user/amy/INBOX
# after restoring the store from a snapshot or file-level copy: check, then repair
reconstruct -m -n /
reconstruct -m /"""


@click.command(help=HELP, epilog=epilog(EXTRA, EXAMPLES),
               context_settings={"help_option_names": ["--help"], "max_content_width": 100})
@click.option("-n", "check_only", is_flag=True,
              help="Check only: list the problems, change nothing.")
@click.option("-r", "recursive", is_flag=True,
              help="A named folder's subfolders too.")
@click.option("-m", "restored", is_flag=True,
              help="After a file-level restore: the whole store (or the NAMEs), and index files"
                   " must match their uidlist exactly (UIDs and flags), else they go.")
@click.option("-e", "encoding", default="UTF-8", show_default=True, metavar="ENC",
              help="Folder-name encoding of NAME (UTF-8 or IMAP_MODIFIED-UTF-7).")
@click.option("--uid-margin", type=click.IntRange(0, 1 << 30), default=None, metavar="N",
              help="With -m, once, after restoring a snapshot older than what clients saw:"
                   " raise every folder's next UID by N and restart its modseq above the"
                   " clock (its index files go).")
@click.option("--lock-timeout", type=Seconds(), default=60.0, show_default=True,
              metavar="S",
              help="Seconds to wait for a folder's lock before giving up on it (exit 3).")
@click.option("-v", "verbose", is_flag=True, help="Also list the notices.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report on stdout.")
@config_dir_option
@click.argument("names", nargs=-1)
def command(check_only: bool, recursive: bool, restored: bool, encoding: str,
            uid_margin: int | None, lock_timeout: float, verbose: bool, as_json: bool,
            config_dir: str | None, names: tuple[str, ...]) -> None:
    encoding = validate_encoding(encoding)
    if uid_margin is not None and (check_only or not restored):
        raise UsageError("--uid-margin goes with -m and repairs (not with -n)")
    if not names:
        if not restored:
            raise UsageError("no NAME given (use / for the whole store, or -m)")
        names = ("/",)
    config = Config.load(config_dir_path(config_dir))
    options = rc.Options(repair=not check_only, restored=restored, recursive=recursive,
                         lock_timeout=lock_timeout, uid_margin=uid_margin)
    report = rc.reconstruct(config, list(names), options, encoding)
    code = report.exit_code()
    if as_json:
        emit_json(summary(report, code), to_stderr=False)
    else:
        for line in rc.iter_lines(report):
            if verbose or not line.startswith("notice"):
                click.echo(line)
    for message in report.locked:
        click.echo(f"{PROG}: error: {message}; that folder was not repaired", err=True)
    problems = len(report.problems())
    what = (f"{problems} problems " + ("found" if check_only else "remain")) if problems \
        else "clean"
    click.echo(f"{PROG}: {report.folders} folders of {report.users} users checked,"
               f" {len(report.actions)} repairs, {what}"
               f" ({len(report.notices())} notices, {report.new_messages} new messages)"
               f" in {report.seconds:.1f} s", err=True)
    raise CommandResult(code)


def summary(report: rc.Report, code: int) -> dict:
    return {
        "exit_code": code,
        "mode": "repair" if report.options.repair else "check",
        "restored": report.options.restored,
        "users": report.users, "folders": report.folders,
        "new_messages": report.new_messages,
        "problems": [f.to_json() for f in report.problems()],
        "notices": [f.to_json() for f in report.notices()],
        "found": [f.to_json() for f in report.found],
        "actions": [a.to_json() for a in report.actions],
        "locked": report.locked,
        "seconds": round(report.seconds, 3),
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        refuse_repeats(args, "--uid-margin")     # a margin is applied once, as given
    except click.UsageError as exc:
        click.echo(f"{PROG}: usage error: {exc.format_message()}", err=True)
        return 2
    return run(command, args, PROG)


if __name__ == "__main__":
    sys.exit(main())
