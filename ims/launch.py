"""The console scripts' entry points.  Each one makes Ctrl-C and SIGTERM quiet before the
command's modules are imported (a signal during the imports would otherwise end in a Python
traceback), then hands over to the command, which installs the handlers it runs with
(``ims.cli.common.install_signal_handlers``)."""

from __future__ import annotations

import importlib
import os
import signal
import sys
from typing import Callable


def _quiet(prog: str) -> None:
    def stop(signum: int, frame: object) -> None:
        os.write(2, f"{prog}: interrupted before it started\n".encode())
        os._exit(128 + signum)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


def _launcher(prog: str, module: str) -> Callable[[], None]:
    def entry() -> None:
        _quiet(prog)
        sys.exit(importlib.import_module(module).main())
    entry.__name__ = prog
    return entry


imsbackup = _launcher("imsbackup", "ims.cli.imsbackup")
imsrestore = _launcher("imsrestore", "ims.cli.imsrestore")
configutil = _launcher("configutil", "ims.cli.configutil")
mkbackupdir = _launcher("mkbackupdir", "ims.mkbackupdir.cli")
imsasm = _launcher("imsasm", "ims.asm.cli")
imsconfig = _launcher("imsconfig", "ims.templates.imsconfig")
reconstruct = _launcher("reconstruct", "ims.cli.reconstruct")
