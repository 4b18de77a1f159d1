"""Two ``imsbackup -f X`` at once (a cron job and a manual run, a retried
NetWorker job): the second removes the first's ``X.partial`` while it is being written and
starts its own; the first then renames the SECOND run's half-written file to ``X`` and
exits 0; the second, at its end, finds no ``X.partial`` and dies with an internal error
(exit 7, "FileNotFoundError ... 'X.partial' -> 'X'").  Whatever copies X after the first
run's exit 0 copies an archive without a trailer; the first run's own archive is lost.

Expected: the second run refuses to take over an ``X.partial`` another live run holds (a
lock on it, exit 3 or 6), or at least the first notices its file was replaced and does not
report success, and nobody ends in exit 7.  At fault: ims/archive/device.py open_output
(unlinks a live run's partial) and OutputDevice.commit (renames by name, not checking it
is still its own file)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import command

from ims.samplestore import SampleSpec, generate


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    # large enough that a backup runs for a while
    generate(root, SampleSpec(users=60, messages_per_user=30, partitions=1, seed=25,
                              size_median=60_000))
    return root


def test_two_backups_to_the_same_file_do_not_swap_their_files(store, tmp_path):
    archive = tmp_path / "same.ims"
    partial = tmp_path / "same.ims.partial"
    env = {**os.environ, "IMS_CONFIG_DIR": str(store / "config")}
    argv = [command("imsbackup"), "-f", str(archive), "/"]
    first = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not partial.exists():
        assert first.poll() is None and time.monotonic() < deadline, "first run did not start"
        time.sleep(0.005)
    first_inode = partial.stat().st_ino
    second = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first_rc = first.wait(timeout=120)
    now_inode = archive.stat().st_ino if archive.exists() else None
    second_rc = second.wait(timeout=120)
    second_err = second.stderr.read().decode()
    first.stderr.close()
    second.stderr.close()
    if first_rc == 0:
        assert now_inode == first_inode, \
            "the first run exited 0 but X is the second run's file, still being written"
    assert second_rc != 7, f"second run: exit 7: {second_err}"
