"""The imsasm entry point: NetWorker's uasm-style arguments, not click's (``-s`` must come
first, flags combine as in ``-sv``)."""

from __future__ import annotations

import os
import sys

from ims.asm.imsasm import compare, parse_args, recover, save
from ims.cli.common import Terminated, install_signal_handlers, report_unexpected
from ims.config import Config
from ims.config import config_dir as config_dir_path
from ims.errors import EXIT_CODE_TABLE, ConfigError, ImsError
from ims.store.maildir import LayoutError, MaildirStore

USAGE = """usage: imsasm -s [-nvqb] PATH...          save: one archive stream per PATH to stdout
       imsasm -r [-nvq] [-m SRC=DST] [PATH...]  recover: the stream on stdin into the store
       imsasm -c [-nvq] [PATH...]          compare: the stream on stdin with the store
PATH is a placeholder of mkbackupdir's tree. -n dry run, -v verbose, -q quiet, -b estimate
(records, header bytes, data bytes). -m SRC=DST (a relocated recover): the stream is stored
as an archive file in DST, not restored; imsasm prints the imsrestore command for it. Other
uasm(8) options are accepted and named on stderr as not acted on. The configuration
directory is $IMS_CONFIG_DIR (else /etc/ims).
"""

EXAMPLES = """Examples:
  # save amy's INBOX (NetWorker's save runs this for each placeholder)
  imsasm -s /backup/mailhost/groupA/amy/INBOX > amy-inbox.ims
  # restore what the stream holds of amy into the live store
  imsasm -r /backup/mailhost/groupA/amy < amy.ims
  # keep the stream as a file in /var/tmp/r instead (recover -d); restore it with imsrestore
  imsasm -r -m /backup/mailhost=/var/tmp/r /backup/mailhost/groupA/amy < amy.ims
"""


def say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    prog = os.path.basename(sys.argv[0]) if argv is None else "imsasm"
    if args and args[0] in ("-h", "--help"):
        sys.stdout.write(USAGE + "\n" + EXIT_CODE_TABLE + "\n\n" + EXAMPLES)
        return 0
    install_signal_handlers()
    try:
        request = parse_args(args)
        for line in request.not_acted:
            say(f"{prog}: {line}")
        config = Config.load(config_dir_path(None))
        try:
            store = MaildirStore(config.msg.partitions(), config.msg.get("store.maildir.layout") or "")
        except LayoutError as exc:
            raise ConfigError(f"{config.msg.path}: store.maildir.layout: {exc}") from None
        if request.mode == "s":
            if os.isatty(1) and not (request.dry_run or request.estimate):
                raise ConfigError("refusing to write a save stream to a terminal")
            return int(save(request, config, store, sys.stdout.fileno(), say))
        if request.mode == "r":
            return int(recover(request, config, store, sys.stdin.fileno(), say))
        return int(compare(request, config, store, sys.stdin.fileno(), say))
    except ImsError as exc:
        say(f"{prog}: error: {exc}")
        return int(exc.exit_code)
    except Terminated:
        say(f"{prog}: terminated (SIGTERM)")
        return 143
    except KeyboardInterrupt:
        say(f"{prog}: interrupted")
        return 130
    except Exception as exc:   # noqa: BLE001 - one line and exit 7, never a traceback
        return report_unexpected(prog, exc)


if __name__ == "__main__":
    sys.exit(main())
