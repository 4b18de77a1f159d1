"""Per-group job state for backup software that runs imsbackup as a plain reader (Bacula bpipe).

bpipe tells the reader neither the job's level nor its id, and its command line may not
contain ``:`` (so no ``-d YYYYMMDD:HHMMSS``).  The rendered Bacula configuration therefore
brackets each job with two client-side RunScripts, and the reader keeps its state in a
directory of its own per (partition, group):

``imsbackup --job-begin DIR --level %l`` (RunScript before the job)
    records the level (Full, Incremental, Differential) and removes the success marker.
``imsbackup -f - --job-state DIR NAME`` (the bpipe reader)
    takes the level; for Incremental backs up what changed since the start of the last
    successful backup of any level, for Differential since the last successful Full (a
    Full when there is none); records its own start time; writes the success marker only
    when it exits 0.
``imsbackup --job-end DIR`` (RunScript after the job, FailJobOnError)
    fails (exit 1) when the marker is missing — so a reader that exits non-zero, is killed
    or never ran makes the job end in error (JobStatus E) instead of "OK -- with warnings" —
    and otherwise promotes the recorded start time to "last successful backup".

Files in DIR: ``level``, ``started``, ``ok``, ``last``, ``last-full``.  Writes go through a
temporary name and a rename.  Failure behaviour: a missing or unreadable DIR is a usage
error (exit 2) naming it.
"""

from __future__ import annotations

import time
from pathlib import Path

from ims.errors import UsageError
from ims.outputfile import write_file

LEVELS = ("Full", "Incremental", "Differential")


def _write(path: Path, text: str) -> None:
    # replaced atomically through an exclusive temporary file, never through a planted link
    write_file(str(path), text.encode())


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


def _directory(directory: str) -> Path:
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{directory}: cannot use as job state directory: {exc.strerror}") from None
    return path


def begin(directory: str, level: str) -> None:
    if level not in LEVELS:
        raise UsageError(f"--level {level!r}: expected one of {', '.join(LEVELS)}")
    path = _directory(directory)
    (path / "ok").unlink(missing_ok=True)
    _write(path / "level", level)


def plan(directory: str) -> tuple[str, float | None, str]:
    """(level, since or None for a full backup, a note) for the reader, and record its start."""
    path = _directory(directory)
    level = _read(path / "level") or "Full"
    (path / "ok").unlink(missing_ok=True)
    started = time.time()
    since, note = None, "full backup"
    if level != "Full":
        reference = _read(path / ("last" if level == "Incremental" else "last-full"))
        if reference is None:
            level, note = "Full", f"{level} asked, but no earlier backup succeeded: full backup"
        else:
            since = float(reference.split()[0])
            note = (f"{level.lower()} since"
                    f" {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}")
    _write(path / "started", f"{started:.6f} {level}")
    return level, since, note


def succeeded(directory: str) -> None:
    _write(Path(directory) / "ok", "")


def end(directory: str) -> bool:
    path = _directory(directory)
    if not (path / "ok").exists():
        return False
    started = _read(path / "started") or f"{time.time():.6f} Full"
    _write(path / "last", started)
    if started.split()[-1] == "Full":
        _write(path / "last-full", started)
    (path / "ok").unlink(missing_ok=True)
    return True
