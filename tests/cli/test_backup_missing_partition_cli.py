"""A configured partition whose directory is missing (a disk not mounted, a
mistyped ``store.partition.X.path``) is backed up as an empty partition: exit 0, no
warning, its users silently absent from the archive.

Expected: the partition is named (configuration error, exit 2, or skipped and named, exit 1)
- an unmounted store must not make a "successful" backup.  (The restore, for its part, names
every user of that partition "No such file or directory", exit 1.)  At fault:
ims/store/maildir.py Layout.users (FileNotFoundError of the partition directory itself is
taken for "no users"), reached from ims/backup.py / ims/readahead.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cmd

from ims.samplestore import SampleSpec, generate


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    generate(root, SampleSpec(users=6, messages_per_user=4, partitions=2, seed=26))
    return root


@pytest.mark.parametrize("names", [("/",), ("/secondary",)])
def test_a_missing_partition_directory_is_not_a_successful_backup(store, tmp_path, names):
    shutil.move(store / "partitions" / "secondary", tmp_path / "unmounted")
    result = run_cmd("imsbackup", "--json", "-f", str(tmp_path / "full.ims"), *names,
                     config_dir=store / "config")
    assert result.returncode in (1, 2), (result.returncode, result.stdout.decode()[:300])
    assert "secondary" in result.stderr.decode()
