"""What every command shares: running a click command with the exit-code contract, the
config directory option and the one-line error report."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import click

from ims import debuglog
from ims.errors import EXIT_CODE_TABLE, ExitCode, ImsError


class CommandResult(Exception):
    """Raised by a command body to hand its exit code to ``run``."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class Terminated(KeyboardInterrupt):
    """SIGTERM (a backup system's job timeout, ``kill``): stopped as Ctrl-C stops a run, so
    every clean-up of an interrupt runs (staged files and folders built aside removed, locks
    released), then exit 143."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def install_signal_handlers() -> None:
    """Ctrl-C raises KeyboardInterrupt and SIGTERM ``Terminated``: every clean-up runs."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)


def run(command: click.Command, argv: list[str] | None, prog: str) -> int:
    """Run a click command and return its exit code; errors become one line on stderr."""
    install_signal_handlers()
    try:
        command.main(args=argv, prog_name=prog, standalone_mode=False)
    except CommandResult as result:
        return result.code
    except ImsError as exc:
        click.echo(f"{prog}: error: {exc}", err=True)
        return int(exc.exit_code)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.format_message(), err=True)
        return int(ExitCode.USAGE)
    except click.UsageError as exc:
        msg = exc.format_message()
        click.echo(f"{prog}: usage error: {msg}", err=True)
        return int(ExitCode.USAGE)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except Terminated:
        click.echo(f"{prog}: terminated (SIGTERM)", err=True)
        return 128 + signal.SIGTERM
    except click.Abort as exc:
        if isinstance(exc.__cause__, Terminated):     # click wraps interrupts in Abort
            click.echo(f"{prog}: terminated (SIGTERM)", err=True)
            return 128 + signal.SIGTERM
        click.echo(f"{prog}: interrupted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo(f"{prog}: interrupted", err=True)
        return 130
    except Exception as exc:   # noqa: BLE001 - the contract: one line and a code, never 0 or 1
        return report_unexpected(prog, exc)
    return int(ExitCode.OK)


def report_unexpected(prog: str, exc: BaseException) -> int:
    """One line for an exception nobody foresaw, exit 7; the traceback goes to the debug
    log and, with IMS_DEBUG=1, to stderr."""
    debuglog.exception("unexpected failure")
    if os.environ.get("IMS_DEBUG", "") not in ("", "0"):
        traceback.print_exception(exc, file=sys.stderr)
    where = ""
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})"
    detail = str(exc).replace("\n", " ") or "no detail"
    click.echo(f"{prog}: internal error: {type(exc).__name__}: {detail}{where};"
               " the run is incomplete (IMS_DEBUG=1 shows the traceback)", err=True)
    return int(ExitCode.INTERNAL)


def epilog(extra: str = "", examples: str = "") -> str:
    """The end of a command's --help: ``extra`` notes, the exit-code table, then
    ``examples`` last, where the eye lands: pairs of lines, ``# what it does`` and the
    command as typed."""
    text = (extra + "\n\n" if extra else "") + EXIT_CODE_TABLE
    if examples:
        text += "\n\nExamples:\n" + "\n".join("  " + line for line in examples.splitlines())
    # \b keeps click from re-wrapping the table and the examples
    return "\b\n" + text.replace("\n\n", "\n\n\b\n")


class Seconds(click.ParamType):
    """A duration in seconds: a finite number, 0 or more (``nan`` would wait forever)."""

    name = "seconds"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds < 0:
            self.fail(f"{value!r} is not a finite number of seconds, 0 or more", param, ctx)
        return seconds


def refuse_repeats(argv: list[str], *options: str) -> None:
    """An option that must act once refuses to be given twice (click keeps the last)."""
    for option in options:
        given = [a for a in argv if a == option or a.startswith(option + "=")]
        if len(given) > 1:
            raise click.UsageError(f"{option} is given {len(given)} times; give it once")


config_dir_option = click.option(
    "--config-dir", metavar="DIR", default=None,
    help="Configuration directory (default: $IMS_CONFIG_DIR, else /etc/ims).")


def emit_json(summary: dict[str, Any], to_stderr: bool) -> None:
    stream = sys.stderr if to_stderr else sys.stdout
    stream.write(json.dumps(summary, ensure_ascii=False) + "\n")
    stream.flush()


def warn(prog: str, message: str) -> None:
    click.echo(f"{prog}: warning: {message}", err=True)


ReportFn = Callable[[str], None]
