"""The debug log (``-v`` three times): what the backup and the restore do, folder by folder,
in ``LOGDIR/COMMAND.log``.

The standard ``logging`` module is imported only when the log is set up: importing it (and
what it pulls in) costs every process some 0.65 MiB, and most runs never log.  Until then
``debug``, ``warning``, ``error`` and ``exception`` do nothing.

Failure behaviour: ``setup`` raises ``ConfigError`` (exit 3) naming the directory when the
log file cannot be opened; writing a line never raises (``logging``'s handlers report their
own failures to stderr and go on).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ims.errors import ConfigError

_logger: Any = None         # a logging.Logger once set up


def setup(logdir: Path, command: str) -> Path:
    """Send the log to ``LOGDIR/COMMAND.log`` (appended to); the path."""
    import logging

    global _logger
    try:
        logdir.mkdir(parents=True, exist_ok=True)
        path = logdir / f"{command}.log"
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{logdir}: cannot write the debug log: {exc.strerror}") from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(message)s"))
    logger = logging.getLogger("ims")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    _logger = logger
    return path


def enabled() -> bool:
    return _logger is not None


def debug(message: str, *args: object) -> None:
    if _logger is not None:
        _logger.debug(message, *args)


def warning(message: str, *args: object) -> None:
    if _logger is not None:
        _logger.warning(message, *args)


def error(message: str, *args: object) -> None:
    if _logger is not None:
        _logger.error(message, *args)


def exception(message: str) -> None:
    """``message`` and the traceback of the exception being handled."""
    if _logger is not None:
        _logger.exception(message)
