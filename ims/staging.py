"""Per-group staging files for backup software without an integration (Sun's third-party
recipe): one archive per (partition, group), several at a time.

``stage(...)`` takes the (partition, group) pairs the names touch, estimates their size
(the message files' sizes plus headers), refuses to start when the staging directory has
less free space, then runs one ``imsbackup`` process per group, at most ``jobs`` at a time,
each writing ``<dir>/<partition>-<group>.ims`` through ``.partial`` and a rename (imsbackup's
own rule for regular files).  Each group is a separate stream: a message shared by users of
two groups is stored in both files.

Failure behaviour: not enough space raises ``DeviceError`` (exit 6) before anything is
written; each group's exit code is reported, and the run's code is the most serious one.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ims.errors import DeviceError, most_serious
from ims.names import Scope
from ims.store.maildir import MaildirStore

HEADER_ALLOWANCE = 1536


@dataclass
class GroupResult:
    partition: str
    group: str
    path: Path
    exit_code: int = 0
    seconds: float = 0.0
    bytes: int = 0
    error: str = ""


@dataclass
class StagingReport:
    groups: list[GroupResult] = field(default_factory=list)
    estimated: int = 0
    free: int = 0
    seconds: float = 0.0

    def exit_code(self) -> int:
        return most_serious(*(g.exit_code for g in self.groups)) if self.groups else 0


def groups_of(scope: Scope) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    for user in scope.users:
        key = (user.partition, user.group)
        if key not in seen:
            seen.append(key)
    return seen


def estimate(store: MaildirStore, scope: Scope, pairs: list[tuple[str, str]]) -> int:
    wanted = set(pairs)
    total = 0
    for user in scope.users:
        if (user.partition, user.group) not in wanted:
            continue
        for dirpath, _dirs, files in os.walk(store.maildir(user.partition, user.user)):
            if os.path.basename(dirpath) in ("cur", "new"):
                for name in files:
                    try:
                        total += os.lstat(os.path.join(dirpath, name)).st_size + HEADER_ALLOWANCE
                    except FileNotFoundError:
                        pass
    return total


def stage(store: MaildirStore, scope: Scope, directory: Path, jobs: int,
          backup_args: list[str], env: dict[str, str]) -> StagingReport:
    report = StagingReport()
    started = time.monotonic()
    pairs = groups_of(scope)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        stat = os.statvfs(directory)
    except OSError as exc:
        raise DeviceError(f"{directory}: {exc.strerror}") from None
    report.free = stat.f_bavail * stat.f_frsize
    report.estimated = estimate(store, scope, pairs)
    if report.estimated > report.free:
        raise DeviceError(f"{directory}: {report.free >> 20} MiB free, the staging files need"
                          f" about {report.estimated >> 20} MiB; nothing was written")
    import subprocess       # here: every imsbackup imports this module, few stage
    pending = [GroupResult(p, g, directory / f"{p}-{g}.ims") for p, g in pairs]
    running: list[tuple[GroupResult, subprocess.Popen, float]] = []
    while pending or running:
        while pending and len(running) < jobs:
            result = pending.pop(0)
            command = [sys.executable, "-m", "ims.cli.imsbackup", "-f", str(result.path),
                       *backup_args, f"/{result.partition}/{result.group}"]
            running.append((result, subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                                     stderr=subprocess.PIPE), time.monotonic()))
        result, process, began = running[0]
        for item in running:
            if item[1].poll() is not None:
                result, process, began = item
                break
        else:
            time.sleep(0.05)
            continue
        running.remove((result, process, began))
        _, err = process.communicate()
        result.exit_code = process.returncode
        result.seconds = time.monotonic() - began
        result.error = err.decode(errors="replace").strip().splitlines()[-1] if err.strip() else ""
        if result.path.exists():
            result.bytes = result.path.stat().st_size
        report.groups.append(result)
    report.seconds = time.monotonic() - started
    return report
