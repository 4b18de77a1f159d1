"""$TMPDIR fills up while the tables of shared messages (ims/spilledmap.py) write to it: the
tables go on in memory (ims/spilledmap.py ``_to_memory``).  Before: the backup named
hundreds of messages it had archived as skipped ("No space left on device", exit 1) and
archived later links as copies; the restore stopped with an internal error (exit 7)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import run_cmd

from ims.samplestore import SampleSpec, generate


@pytest.fixture
def tiny_tmpdir(tmp_path):
    """A tmpfs with one free page: tempfile's probe succeeds, the table's file fills it."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    # the suite runs as root, which may mount (a missing mount is a failure, not a skip)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(mount)], check=True)
    try:
        (mount / "fill").write_bytes(b"x" * 4096)
        yield mount
    finally:
        subprocess.run(["umount", str(mount)])


@pytest.fixture
def linked_store(tmp_path):
    root = tmp_path / "store"
    generate(root, SampleSpec(users=6, messages_per_user=150, partitions=2, seed=3,
                              link_fraction=0.4, size_cap=16 << 10))
    return root


def test_backup_with_a_full_tmpdir_reports_no_false_skips_and_keeps_links(
        linked_store, tmp_path, tiny_tmpdir):
    config = linked_store / "config"
    before = snapshot(linked_store)
    result = run_cmd("imsbackup", "--json", "-f", str(tmp_path / "a.ims"), "/",
                     config_dir=config, prefix=("env", f"TMPDIR={tiny_tmpdir}"))
    summary = json.loads(result.stdout)
    # complete: the table went on in memory, nothing named as skipped
    assert result.returncode == 0, (result.returncode, len(summary["skipped"]),
                                    summary["skipped"][:1])
    assert summary["links"] > 50
    remove_users(linked_store)
    run_cmd("imsrestore", "-f", str(tmp_path / "a.ims"), "/", config_dir=config,
            check_rc=0)
    assert snapshot(linked_store) == before         # bytes, and links as links


def test_restore_with_a_full_tmpdir_is_not_an_internal_error(linked_store, tmp_path,
                                                            tiny_tmpdir):
    config = linked_store / "config"
    before = snapshot(linked_store)
    run_cmd("imsbackup", "-f", str(tmp_path / "a.ims"), "/", config_dir=config, check_rc=0)
    remove_users(linked_store)
    result = run_cmd("imsrestore", "-f", str(tmp_path / "a.ims"), "/", config_dir=config,
                     prefix=("env", f"TMPDIR={tiny_tmpdir}"))
    # a file restore needs no $TMPDIR (it needed none before the table moved there)
    assert result.returncode == 0, result.stderr.decode()[-300:]
    assert snapshot(linked_store) == before


def snapshot(store: Path) -> tuple[dict[str, bytes], set[frozenset[str]]]:
    """(base-name path -> bytes, groups of paths sharing an inode, of 2 or more)."""
    data: dict[str, bytes] = {}
    inodes: dict[tuple[int, int], set[str]] = {}
    for partition in sorted((store / "partitions").iterdir()):
        for dirpath, dirnames, filenames in os.walk(partition):
            d = Path(dirpath)
            if d.name not in ("cur", "new"):
                continue
            for name in filenames:
                p = d / name
                rel = str(p.relative_to(store).parent.parent / name.partition(":")[0])
                data[rel] = p.read_bytes()
                st = p.stat()
                inodes.setdefault((st.st_dev, st.st_ino), set()).add(rel)
    return data, {frozenset(v) for v in inodes.values() if len(v) > 1}


def remove_users(store: Path) -> None:
    for partition in (store / "partitions").iterdir():
        for user in partition.iterdir():
            shutil.rmtree(user)


def remove_users(store: Path) -> None:
    for partition in (store / "partitions").iterdir():
        for user in partition.iterdir():
            shutil.rmtree(user)
