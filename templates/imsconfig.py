"""imsconfig: render NetWorker (and groups) configuration from the templates.

``imsconfig res``       a savepnpc ``.res`` file for a save group (precmd runs mkbackupdir)
``imsconfig nsradmin``  nsradmin input creating the NSR group and the NSR client (save sets:
                        one per group directory, or the backup directory alone)
``imsconfig groups``    a backup-groups.conf, from patterns or split by measured size

NSR resource values are always written in double quotes with ``\\`` and ``"`` escaped.  A
line ending in ``,``, ``;`` or ``\\`` continues on the next (nsr_resource(5)): so in the .res
file, one resource, every field ends with ``;``, and in the nsradmin input each command's
last attribute has none.  Failure behaviour: bad arguments exit 2 (a value holding a control
character, which would end or corrupt a resource line, included); an output file is written
by ``ims.outputfile`` (a temporary file created exclusively, renamed; links of other users
refused).
"""

from __future__ import annotations

import re
import shlex
import string
import sys
from pathlib import Path

import click
import jinja2

from ims.cli.common import CommandResult, config_dir_option, emit_json, epilog, run, warn
from ims.config import BackupGroups, Config
from ims.config import config_dir as config_dir_path
from ims.errors import ConfigError, ExitCode, UsageError
from ims.groupsurvey import mail_size, survey
from ims.outputfile import write_file
from ims.store.maildir import LayoutError, MaildirStore

PROG = "imsconfig"
ALPHABET = string.digits + string.ascii_lowercase


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NSR_GROUP_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


def nsr_quote(value: object) -> str:
    text = str(value)
    if _CONTROL.search(text):
        # the options are checked first (check_text names them); this is the last guard
        raise UsageError(f"an NSR attribute value cannot hold a control character: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def check_text(what: str, value: str | None) -> None:
    """Refuse a value holding a control character (``\\r``, ``\\n``, NUL, ...): in a resource
    file it would end the line or read as something else.  ``what`` names the option."""
    if value is not None and _CONTROL.search(value):
        raise UsageError(f"{what} {value!r}: holds a control character")


def check_group(group: str) -> None:
    """The NetWorker group: the .res file is named after it, so one rule for every command."""
    check_text("--group", group)
    if not _NSR_GROUP_NAME.fullmatch(group):
        raise UsageError(f"--group {group!r}: a NetWorker group name is letters, digits, . _ -")


def backup_root(given: str | None, config_dir: str | None, config: Config | None = None) -> str:
    """The placeholder tree's root: ``--backupdir``, else local.store.backupdir (of
    ``config``, else of the configuration loaded from ``config_dir``)."""
    if given is not None:
        check_text("--backupdir", given)
        if not given:
            raise UsageError("--backupdir '': an empty directory name")
        return given
    config = config or Config.load(config_dir_path(config_dir))
    root = config.msg.get("local.store.backupdir")
    if not root:
        raise ConfigError(f"{config.msg.path}: local.store.backupdir is not set; give --backupdir")
    check_text(f"{config.msg.path}: local.store.backupdir", root)
    return root


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("ims.templates", "."),
                             autoescape=False, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["nsr"] = nsr_quote
    return env


def render(name: str, **values: object) -> str:
    return environment().get_template(name).render(**values)


def write_output(text: str, output: str | None) -> None:
    if output in (None, "-"):
        click.echo(text, nl=False)
        return
    write_file(output, text.encode("utf-8"))


def load(config_dir: str | None, groups_file: str | None = None) -> tuple[Config, MaildirStore]:
    config = Config.load(config_dir_path(config_dir), Path(groups_file) if groups_file else None)
    try:
        store = MaildirStore(config.msg.partitions(), config.msg.get("store.maildir.layout") or "")
    except LayoutError as exc:
        raise ConfigError(f"{config.msg.path}: store.maildir.layout: {exc}") from None
    return config, store


MKBACKUPDIR_PLACE = "@mkbackupdir"

EXAMPLES = {
    "main": """Examples:
  # the savepnpc .res file of the save group mailgroup
  imsconfig res --group mailgroup -o /nsr/res/mailgroup.res
  # nsradmin input creating the NSR group and this host's NSR client
  imsconfig nsradmin --server nwserver --group mailgroup -o mailgroup.nsradmin""",
    "res": f"""Examples:
  # mkbackupdir as the precmd, by its full path
  imsconfig res --group mailgroup --mkbackupdir /opt/ims/.venv/bin/mkbackupdir -o /nsr/res/mailgroup.res
  # Sun's example: a command of your own first, then mkbackupdir
  imsconfig res --group mailgroup --precmd "echo mkbackupdir started" --precmd {MKBACKUPDIR_PLACE}""",
    "nsradmin": """Examples:
  # one save set per backup group, saved in parallel; then: nsradmin -s nwserver -i mailgroup.nsradmin
  imsconfig nsradmin --server nwserver --group mailgroup -o mailgroup.nsradmin
  # the backup directory as the only save set, one session
  imsconfig nsradmin --server nwserver --group mailgroup --save-sets single""",
    "groups": """Examples:
  # four groups of first letters holding about the same amount of mail
  imsconfig groups --split 4 -o /etc/ims/backup-groups.conf
  # groups from patterns
  imsconfig groups --pattern groupA='[a-l].*' --pattern groupB='[m-z].*'""",
    "show-groups": """Examples:
  # the installed backup-groups.conf
  imsconfig show-groups
  # a candidate file, counts only
  imsconfig show-groups --groups-file /tmp/new-groups.conf --no-users
  imsconfig show-groups --json""",
    "bacula": """Examples:
  # the FileSets and Jobs for the director, included with @/etc/bacula/ims-mail.conf
  imsconfig bacula --client mailhost-fd --storage File1 --pool Full -o /etc/bacula/ims-mail.conf""",
}


def examples(name: str) -> str:
    """An epilog ending in examples; ``\\b`` keeps click from re-wrapping them."""
    return "\b\n" + EXAMPLES[name]


@click.group(help="Render configuration for NetWorker and for backup groups.",
             epilog=epilog() + "\n\n" + examples("main"),
             context_settings={"help_option_names": ["--help"]})
def command() -> None:
    pass


@command.command("res", help="A savepnpc .res file for /nsr/res/<GROUP>.res.  The precmds run"
                 f" in the order given; mkbackupdir first unless a --precmd {MKBACKUPDIR_PLACE}"
                 " puts it elsewhere.", epilog=examples("res"))
@click.option("--group", required=True, help="The NetWorker save group (the file's name).")
@click.option("--mkbackupdir", "mkbackupdir_path", default="mkbackupdir", show_default=True,
              help="The mkbackupdir command to run as precmd.")
@click.option("--backupdir", help="-p for mkbackupdir (default: local.store.backupdir).")
@click.option("--precmd", multiple=True,
              help=f"A further precmd (repeatable); {MKBACKUPDIR_PLACE} stands for mkbackupdir's.")
@click.option("--pstcmd", multiple=True, help="A pstcmd (repeatable; default /bin/true).")
@click.option("--timeout", help='When the pstcmds run at the latest, e.g. "12:00pm" or "3 hours".')
@click.option("--abort-precmd-with-group", type=click.Choice(["yes", "no"]))
@click.option("-o", "output", metavar="FILE", help="Write to FILE (default: stdout).")
@config_dir_option
def res_command(group: str, mkbackupdir_path: str, backupdir: str | None, precmd: tuple[str, ...],
                pstcmd: tuple[str, ...], timeout: str | None, abort_precmd_with_group: str | None,
                output: str | None, config_dir: str | None) -> None:
    check_group(group)
    check_commands(mkbackupdir_path, precmd, pstcmd)
    check_text("--timeout", timeout)
    backupdir = backup_root(backupdir, config_dir)
    # savepnpc runs a precmd through a shell: each word quoted, so a path with a space or a
    # shell character stays one word
    run_mkbackupdir = shlex.join([mkbackupdir_path, "-p", backupdir])
    text = render("savepnpc.res.j2", precmds=precmds(precmd, run_mkbackupdir),
                  pstcmds=list(pstcmd) or ["/bin/true"], timeout=timeout,
                  abort_precmd_with_group=None if abort_precmd_with_group is None
                  else abort_precmd_with_group == "yes")
    write_output(text, output)
    raise CommandResult(ExitCode.OK)


def check_commands(mkbackupdir_path: str, precmd: tuple[str, ...], pstcmd: tuple[str, ...]) -> None:
    """Refuse what savepnpc would run as something other than meant: an empty command, and a
    word starting with '@' that is not exactly the placeholder (``'@mkbackupdir '`` would be
    run as a command of that name, and mkbackupdir then first, not where it was put)."""
    check_text("--mkbackupdir", mkbackupdir_path)
    if not mkbackupdir_path.strip():
        raise UsageError("--mkbackupdir '': an empty command")
    for option, commands in (("--precmd", precmd), ("--pstcmd", pstcmd)):
        for command in commands:
            check_text(option, command)
            if not command.strip():
                raise UsageError(f"{option} {command!r}: an empty command")
            if command.startswith("@") and (option == "--pstcmd" or command != MKBACKUPDIR_PLACE):
                raise UsageError(f"{option} {command!r}: only --precmd {MKBACKUPDIR_PLACE}, exactly,"
                                 " may start with '@' (it stands for mkbackupdir's precmd)")


def precmds(given: tuple[str, ...], run_mkbackupdir: str) -> list[str]:
    """The precmds in the order given, mkbackupdir's where the placeholder stands (else first):
    Sun's example runs its own command before mkbackupdir."""
    places = given.count(MKBACKUPDIR_PLACE)
    if places > 1:
        raise UsageError(f"--precmd {MKBACKUPDIR_PLACE} given {places} times; mkbackupdir runs once")
    if places == 0:
        return [run_mkbackupdir, *given]
    return [run_mkbackupdir if command == MKBACKUPDIR_PLACE else command for command in given]


@command.command("nsradmin", help="nsradmin input creating the NSR group and NSR client.",
                 epilog=examples("nsradmin"))
@click.option("--server", required=True, help="The NetWorker server.")
@click.option("--client", help="The client's name (default: this host's name).")
@click.option("--group", required=True, help="The NetWorker group.")
@click.option("--schedule", default="Full Every Friday", show_default=True)
@click.option("--browse-policy", default="Month", show_default=True)
@click.option("--retention-policy", default="Quarter", show_default=True)
@click.option("--parallelism", type=click.IntRange(1), default=4, show_default=True)
@click.option("--start-time", default="2:00", show_default=True)
@click.option("--remote-access", default="", help="user@host allowed to recover.")
@click.option("--backupdir", help="The placeholder tree's root (default: local.store.backupdir).")
@click.option("--save-sets", type=click.Choice(["groups", "single"]), default="groups",
              show_default=True, help="groups: one save set per backup group (each group of"
              " backup-groups.conf and ungrouped; ALL without the file), saved in parallel;"
              " single: the backup directory alone, one session.")
@click.option("-o", "output", metavar="FILE", help="Write to FILE (default: stdout).")
@config_dir_option
def nsradmin_command(server: str, client: str | None, group: str, schedule: str,
                     browse_policy: str, retention_policy: str, parallelism: int,
                     start_time: str, remote_access: str, backupdir: str | None,
                     save_sets: str, output: str | None, config_dir: str | None) -> None:
    check_group(group)
    for option, value in (("--server", server), ("--client", client), ("--schedule", schedule),
                          ("--browse-policy", browse_policy),
                          ("--retention-policy", retention_policy),
                          ("--start-time", start_time), ("--remote-access", remote_access)):
        check_text(option, value)
    config = Config.load(config_dir_path(config_dir))
    root = backup_root(backupdir, config_dir, config)
    servername = config.msg.servername()
    check_text(f"{config.msg.path}: local.store.backup.servername", servername)
    if save_sets == "single":                  # Sun: "for a single session backup, use /backup"
        paths = [root]
    else:
        # every group of the configuration, users or not: mkbackupdir keeps a directory for
        # each, and a user who joins a group that had none is then already in a save set
        server_dir = Path(root) / servername
        paths = [str(server_dir / name) for name in config.groups.names()]
    text = render("nsradmin.j2", server=server, client=client or servername,
                  group=group, save_sets=paths, schedule=schedule,
                  browse_policy=browse_policy, retention_policy=retention_policy,
                  parallelism=parallelism, start_time=start_time, remote_access=remote_access)
    write_output(text, output)
    raise CommandResult(ExitCode.OK)


@command.command("groups", help="A backup-groups.conf from patterns, or split by size.",
                 epilog=examples("groups"))
@click.option("--pattern", "patterns", multiple=True, metavar="NAME=REGEX",
              help="A group as NAME=REGEX (repeatable).")
@click.option("--split", type=click.IntRange(1, len(ALPHABET)), metavar="N",
              help="Split the store's users into N groups of similar size.")
@click.option("--prefix", default="group", show_default=True, help="Name prefix with --split.")
@click.option("-o", "output", metavar="FILE", help="Write to FILE (default: stdout).")
@config_dir_option
def groups_command(patterns: tuple[str, ...], split: int | None, prefix: str,
                   output: str | None, config_dir: str | None) -> None:
    if bool(patterns) == bool(split):
        raise UsageError("give either --pattern NAME=REGEX ... or --split N")
    if patterns:
        groups = []
        for item in patterns:
            name, sep, regex = item.partition("=")
            if not sep:
                raise UsageError(f"--pattern {item!r}: expected NAME=REGEX")
            groups.append((name, regex, ""))
        note = "from patterns"
    else:
        config, store = load(config_dir)
        groups = split_by_size(measure(store), split, prefix)
        note = f"{split} groups of similar size, measured from the store"
    text = render("backup-groups.conf.j2", groups=groups, note=note)
    BackupGroups.parse(text, Path(output or "<output>"))      # refuse to write a broken file
    write_output(text, output)
    raise CommandResult(ExitCode.OK)


@command.command("show-groups", help="Each backup group with its users per partition, the"
                 " users in no group (ungrouped), and the messages and bytes of each group, read"
                 " from the store; a group that matches no user is flagged EMPTY.  Checks the"
                 " installed backup-groups.conf or, with --groups-file, a candidate one.",
                 epilog=examples("show-groups"))
@click.option("--groups-file", metavar="FILE",
              help="Check FILE instead of the installed backup-groups.conf.")
@click.option("--no-users", is_flag=True, help="Counts only, no user IDs.")
@click.option("--no-sizes", is_flag=True, help="Do not read the mail (faster on a large store).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@config_dir_option
def show_groups_command(groups_file: str | None, no_users: bool, no_sizes: bool, as_json: bool,
                        config_dir: str | None) -> None:
    config, store = load(config_dir, groups_file)
    result = survey(config.groups, store, sizes=not no_sizes)
    if as_json:
        emit_json(result.as_json(), to_stderr=False)
    else:
        click.echo(result.as_text(users=not no_users, sizes=not no_sizes), nl=False)
    for name in result.empty_groups():
        warn(PROG, config.groups.empty_warning(name, result.partitions, result.partitions))
    for line in result.unreadable:
        warn(PROG, f"cannot read {line} (left out of the sizes)")
    raise CommandResult(ExitCode.SKIPPED if result.unreadable else ExitCode.OK)


@command.command("bacula", help="Bacula FileSets and Jobs (bpipe), one per (partition, group).",
                 epilog=examples("bacula"))
@click.option("--client", required=True, help="The Bacula Client resource of this host.")
@click.option("--storage", required=True, help="The director's Storage resource.")
@click.option("--pool", required=True, help="The Pool the jobs write to.")
@click.option("--messages", default="Standard", show_default=True)
@click.option("--schedule", help="A Schedule resource for the jobs.")
@click.option("--jobdefs", default="ims-mail", show_default=True, help="Name of the JobDefs written.")
@click.option("--max-jobs", type=click.IntRange(1), default=4, show_default=True,
              help="Maximum Concurrent Jobs of the JobDefs.")
@click.option("--state-dir", default="/var/lib/ims/bacula", show_default=True,
              help="Where each group's job state lives on the client.")
@click.option("--imsbackup", "imsbackup_path", help="Path of imsbackup on the client"
              " (default: the one beside this imsconfig).")
@click.option("--imsrestore", "imsrestore_path", help="Path of imsrestore on the client.")
@click.option("-o", "output", metavar="FILE", help="Write to FILE (default: stdout).")
@config_dir_option
def bacula_command(client: str, storage: str, pool: str, messages: str, schedule: str | None,
                   jobdefs: str, max_jobs: int, state_dir: str, imsbackup_path: str | None,
                   imsrestore_path: str | None, output: str | None, config_dir: str | None) -> None:
    config, store = load(config_dir)
    here = Path(sys.argv[0]).resolve().parent
    imsbackup = imsbackup_path or str(here / "imsbackup")
    imsrestore = imsrestore_path or str(here / "imsrestore")
    config_arg = f" --config-dir {config_dir}" if config_dir else ""
    for name in (client, storage, pool, messages, jobdefs, schedule or "x"):
        # unquoted in the resources: quoted names kept Bacula 9.6 from running jobs concurrently
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
            raise UsageError(f"{name!r}: a Bacula resource name here is letters, digits, . _ -")
    for value in (imsbackup, imsrestore, state_dir, config_arg):
        # bpipe splits its string at ':' and Bacula's quoting cannot hold '"'
        if ":" in value or '"' in value or "\n" in value:
            raise UsageError(f"{value!r}: a bpipe command line cannot hold ':' or '\"'")
    groups = []
    for partition in store.partitions():
        # every group of the configuration, users or not: a user who joins a group that had
        # none on this partition is then already in a job (an empty group's job saves an
        # archive without users, with a warning)
        for group in config.groups.names():
            logical = f"/{partition}/{group}"
            state = f"{state_dir}/{partition}-{group}"
            groups.append({
                "partition": partition, "group": group, "state": state,
                "fileset": f"ims-{partition}-{group}", "job": f"ims-backup-{partition}-{group}",
                "reader": f"{imsbackup}{config_arg} -f - --job-state {state} {logical}",
                "writer": f"{imsrestore}{config_arg} -f - --where=%w {logical}",
            })
    text = render("bacula.conf.j2", groups=groups, client=client, storage=storage, pool=pool,
                  messages=messages, schedule=schedule, jobdefs=jobdefs, max_jobs=max_jobs,
                  imsbackup=imsbackup, config_arg=config_arg)
    write_output(text, output)
    raise CommandResult(ExitCode.OK)


def measure(store: MaildirStore) -> dict[str, int]:
    """Bytes of mail per user (the sum of message file sizes)."""
    sizes: dict[str, int] = {}
    for partition in store.partitions():
        for user in store.users(partition):
            try:
                total = mail_size(store, partition, user)[1]
            except OSError:
                total = 0           # unreadable: it weighs nothing in a split
            sizes[user] = sizes.get(user, 0) + total + 1
    return sizes


def split_by_size(sizes: dict[str, int], count: int, prefix: str) -> list[tuple[str, str, str]]:
    """Contiguous ranges of first characters (0-9, then a-z, case-insensitive) with similar
    total size.  Ranges, not lists of IDs, so users created later find their group; IDs
    starting with anything else fall in 'ungrouped'."""
    weight = {ch: 0 for ch in ALPHABET}
    for user, size in sizes.items():
        first = user[:1].lower()
        if first in weight:
            weight[first] += size
    total = sum(weight.values()) or 1
    ranges: list[list[str]] = [[]]
    running = 0
    for index, ch in enumerate(ALPHABET):
        left = len(ALPHABET) - index
        groups_left = count - len(ranges)
        if ranges[-1] and groups_left > 0 and (running >= total * len(ranges) / count
                                               or left <= groups_left):
            ranges.append([])
        ranges[-1].append(ch)
        running += weight[ch]
    result = []
    for number, chars in enumerate(ranges, 1):
        low, high = chars[0], chars[-1]
        cls = low if low == high else f"{low}-{high}"
        if low.isdigit() != high.isdigit():
            cls = f"{low}-9a-{high}"
        size = sum(weight[c] for c in chars)
        users = sum(1 for u in sizes if u[:1].lower() in chars)
        result.append((f"{prefix}{number}", f"(?i)[{cls}].*",
                       f"{users} users, {size * 100 // total} % of the mail today"))
    return result


def main(argv: list[str] | None = None) -> int:
    return run(command, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
