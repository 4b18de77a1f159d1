"""Exit codes and the exceptions that own them: the one table every command uses.

The integrations (imsasm, savepnpc, Bacula bpipe, staging) read nothing but these codes,
so they are a contract: change them only with the design.

Failure behaviour: an ``ImsError`` raised anywhere ends the command with its ``exit_code``
and a one-line message on stderr.  Per-item problems are not exceptions: the engines collect
them as ``Skipped`` records and the command exits 1 at the end.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    SKIPPED = 1
    USAGE = 2
    LOCKED = 3
    DAMAGED = 4
    UNRESOLVED_LINKS = 5
    DEVICE = 6
    INTERNAL = 7


EXIT_CODE_TABLE = """\
Exit codes (the same for every ims command):
  0  success; messages expunged by the server during a backup are counted, not errors
  1  finished, but some items were skipped (listed); otherwise complete
  2  usage or configuration error; nothing was done
  3  a lock was not released within the bound ("store locked")
  4  archive damaged or incomplete (no valid trailer, digest mismatch, wrong blocking factor)
  5  unresolved links: a references file was written; run imsrestore -r
  6  device error: the archive could not be written or read (ENOSPC, EIO, broken pipe)
  7  internal error: an unexpected failure stopped the run; it is incomplete
     (IMS_DEBUG=1 prints the traceback)
  128+N killed by signal N
When several apply, the most serious wins: 7, 2, 6, 4, 3, 5, 1."""

# Most serious first: the order of the exit-code table's last line (docs/guide.md §4).
_SEVERITY = [ExitCode.INTERNAL, ExitCode.USAGE, ExitCode.DEVICE, ExitCode.DAMAGED, ExitCode.LOCKED,
             ExitCode.UNRESOLVED_LINKS, ExitCode.SKIPPED, ExitCode.OK]


def most_serious(*codes: int) -> int:
    """The code that wins when several apply; signal codes (>=128) win over all."""
    signal_codes = [c for c in codes if c >= 128]
    if signal_codes:
        return signal_codes[0]
    for code in _SEVERITY:
        if code in codes:
            return int(code)
    return int(ExitCode.OK)


class ImsError(Exception):
    """An error that ends the command; ``str()`` is the one-line message."""

    exit_code: ExitCode = ExitCode.USAGE


class UsageError(ImsError):
    exit_code = ExitCode.USAGE


class ConfigError(ImsError):
    """A configuration file is missing, unreadable or malformed (names file and line)."""

    exit_code = ExitCode.USAGE


class UnknownName(ImsError):
    """A logical name (partition, group, user, folder) does not exist."""

    exit_code = ExitCode.USAGE


class DeviceError(ImsError):
    """The archive device could not be opened, written or read."""

    exit_code = ExitCode.DEVICE


class ArchiveDamaged(ImsError):
    exit_code = ExitCode.DAMAGED


class StoreLocked(ImsError):
    exit_code = ExitCode.LOCKED


class HelperDied(ArchiveDamaged):
    """A helper process we forked (store reader, archive reader) ended without an answer
    (killed, out of memory): what it had not yet handed over is missing, so the run is
    incomplete (exit 4); a backup's archive gets no trailer."""


class InternalError(ImsError):
    """An unexpected failure (a bug, or a system error nobody foresaw)."""

    exit_code = ExitCode.INTERNAL
