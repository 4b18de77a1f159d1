"""Holding Ctrl-C and SIGTERM off for a few system calls that must happen together (a lock
file linked into place and remembered as ours; a folder renamed into place and marked
committed), so an interrupt lands before or after them, never between: the clean-up code
then knows exactly what exists.  The signals are delivered when the block ends."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

_HELD = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def held() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield                       # Python runs handlers in the main thread only
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
