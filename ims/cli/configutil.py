"""configutil: read and set msg.conf keys (configutil -o KEY [-v VALUE]; no option lists all)."""

from __future__ import annotations

import sys

import click

from ims.cli.common import CommandResult, config_dir_option, epilog, run
from ims.config import DEFAULTS, MSG_CONF, MsgConf
from ims.config import config_dir as config_dir_path
from ims.errors import ExitCode, UsageError

PROG = "configutil"


EXAMPLES = """# list every key that is set
configutil
# set a partition's path
configutil -o store.partition.primary.path -v /srv/mail/primary
# leave two folders out of every backup, then unset the key again
configutil -o local.store.backup.exclude -v 'Trash%Junk'
configutil -o local.store.backup.exclude -v ''"""


@click.command(help="Print or set msg.conf keys. Without -o, list every key that is set.",
               epilog=epilog(examples=EXAMPLES),
               context_settings={"help_option_names": ["--help"], "max_content_width": 100})
@click.option("-o", "key", metavar="KEY", help="The key to print or set.")
@click.option("-v", "value", metavar="VALUE", help="Set KEY to VALUE (an empty value unsets it).")
@config_dir_option
def command(key: str | None, value: str | None, config_dir: str | None) -> None:
    path = config_dir_path(config_dir) / MSG_CONF
    conf = MsgConf.load(path, missing_ok=value is not None)
    if key is None:
        if value is not None:
            raise UsageError("-v needs -o KEY")
        for name, current in conf.values.items():
            click.echo(f"{name} = {current}")
        raise CommandResult(ExitCode.OK)
    if value is None:
        current = conf.get(key)
        if current is None:
            click.echo(f"{PROG}: {key}: not set", err=True)
            raise CommandResult(ExitCode.OK)
        click.echo(current)
        raise CommandResult(ExitCode.OK)
    if value == "" and key not in DEFAULTS:
        conf.unset(key)
    else:
        conf.set(key, value)
    conf.save()
    raise CommandResult(ExitCode.OK)


def main(argv: list[str] | None = None) -> int:
    return run(command, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
