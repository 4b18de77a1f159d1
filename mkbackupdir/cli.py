"""mkbackupdir: build the NetWorker placeholder tree and keep it in step with the store."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ims.cli.common import CommandResult, config_dir_option, epilog, run, warn
from ims.config import Config
from ims.config import config_dir as config_dir_path
from ims.errors import ConfigError, ExitCode, UsageError
from ims.mkbackupdir.tree import SAVE_SET_LIMIT, TreeOptions, store_owner, sync_tree
from ims.store.maildir import LayoutError, MaildirStore

PROG = "mkbackupdir"

HELP = """Build the placeholder tree <backupdir>/<server>/<group>/<user>/<mailbox> that
NetWorker saves through the imsasm ASM, or bring it in step with the store: new users and
folders are added, those that are gone removed, nothing else touched. The folders of
local.store.backup.exclude get no placeholder (those they had are removed). Every backup
group has its directory, users or not; one made for a group new to an existing tree is
named, with exit 1: the NSR client must get it as a save set."""

EXAMPLES = """# build the tree in local.store.backupdir, or bring it in step, naming each change
mkbackupdir -v
# the tree in /backup, its .nsr files naming the ASM linked as site2asm
mkbackupdir -p /backup -a site2asm"""


@click.command(help=HELP, epilog=epilog(examples=EXAMPLES),
               context_settings={"help_option_names": ["--help"], "max_content_width": 100})
@click.option("-p", "backupdir", metavar="DIR", help="The tree's root (default: local.store.backupdir).")
@click.option("-a", "asm", default="imsasm", show_default=True, metavar="NAME",
              help="The ASM name written into the .nsr files (must end in 'asm').")
@click.option("-i", "inbox_only", is_flag=True, help="INBOX only.")
@click.option("-f", "folders_only", is_flag=True, help="Folders only (no INBOX).")
@click.option("-u", "per_user", is_flag=True, help="One placeholder per user instead of per mailbox.")
@click.option("-t", "threads", type=click.IntRange(1, 1024), default=None,
              help="Threads listing the store (default: one per partition).")
@click.option("-v", "verbose", is_flag=True, help="Name what was added and removed.")
@click.option("-e", "encoding", default="UTF-8", hidden=True)
@click.option("-g", "debug", is_flag=True, hidden=True)
@config_dir_option
def command(backupdir: str | None, asm: str, inbox_only: bool, folders_only: bool, per_user: bool,
            threads: int | None, verbose: bool, encoding: str, debug: bool,
            config_dir: str | None) -> None:
    if inbox_only and folders_only:
        raise UsageError("-i and -f exclude each other")
    if not asm.endswith("asm") or "/" in asm:
        raise UsageError(f"-a {asm}: NetWorker runs an external ASM only if its name ends in 'asm'")
    config = Config.load(config_dir_path(config_dir))
    root = backupdir or config.msg.get("local.store.backupdir")
    if not root:
        raise ConfigError(f"{config.msg.path}: local.store.backupdir is not set; give -p DIR")
    try:
        store = MaildirStore(config.msg.partitions(), config.msg.get("store.maildir.layout") or "")
    except LayoutError as exc:
        raise ConfigError(f"{config.msg.path}: store.maildir.layout: {exc}") from None
    options = TreeOptions(Path(root), config.msg.servername(), asm, inbox_only, folders_only,
                          per_user, threads or 0)
    report = sync_tree(config, store, options, store_owner(config, store))
    if verbose:
        for path in report.created:
            click.echo(f"{PROG}: added {path}", err=True)
        for path in report.removed:
            click.echo(f"{PROG}: removed {path}", err=True)
    if report.ungrouped:
        warn(PROG, f"{len(report.ungrouped)} user(s) match no backup group and are placed in"
             f" 'ungrouped': {', '.join(report.ungrouped[:20])}")
    for name in config.groups.custom_names():
        if name not in report.groups_used:
            warn(PROG, config.groups.empty_warning(name, store.partitions(), store.partitions()))
    if report.long_names:
        warn(PROG, f"{len(report.long_names)} save-set name(s) are longer than {SAVE_SET_LIMIT}"
             f" characters, the limit of older NetWorker releases (use a shorter -p), e.g."
             f" {report.long_names[0]}")
    for path in report.new_groups:
        # NetWorker saves only the NSR client's save sets: until this directory is one, its
        # users' mail is not saved, and savegrp still ends well -- so the run exits 1
        warn(PROG, f"{path}: a new backup group's directory, not yet a save set of the NSR"
             " client: its users are not saved until it is added (imsconfig nsradmin, then"
             " nsradmin; not needed when the save set is the backup directory itself)")
    for error in report.errors:
        warn(PROG, f"could not list {error}; its placeholders are kept as they were")
    for problem in report.problems:
        warn(PROG, problem)
    click.echo(f"{PROG}: {options.backupdir / options.server}: {report.users} users,"
               f" {report.placeholders} placeholders, {len(report.created)} added,"
               f" {len(report.removed)} removed"
               + (f", {len(report.excluded)} folder(s) left out by local.store.backup.exclude"
                  if report.excluded else ""), err=True)
    raise CommandResult(ExitCode.SKIPPED if report.errors or report.problems or report.new_groups
                        else ExitCode.OK)


def main(argv: list[str] | None = None) -> int:
    return run(command, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
