"""mkbackupdir on a real store: the tree, a second run that keeps it in step, options."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from conftest import run_cmd

from ims.samplestore import SampleSpec, generate


def placeholders(root: Path) -> set[str]:
    """Files below group/ level (placeholders), not the .nsr files."""
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and p.name != ".nsr" and len(p.relative_to(root).parts) >= 2}


def test_tree_and_second_run(tmp_path):
    store = tmp_path / "store"
    generate(store, SampleSpec(users=8, messages_per_user=6, partitions=2, seed=4, owner=(5000, 5000)))
    config = store / "config"
    backup = tmp_path / "b"
    result = run_cmd("mkbackupdir", "-p", str(backup), config_dir=config, check_rc=0)
    server = next(backup.iterdir())
    tree = placeholders(server)
    users = {p.split("/")[1] for p in tree}
    assert len(users) == 8 and all(p.split("/")[0] in ("groupA", "groupB", "groupC") for p in tree)
    assert any(p.endswith("/INBOX") for p in tree) and any("/Archive.d/2024" in p for p in tree)
    assert all(os.stat(p).st_uid == 5000 for p in server.rglob("*"))     # the store owner's
    assert all(os.stat(server / p).st_size == 0 for p in tree)
    assert "8 users" in result.stderr.decode()

    # the store changes: a new user, a folder gone; an unrelated file in the tree
    partition = store / "partitions" / "primary"
    gone_user = sorted(partition.iterdir())[0].name
    shutil.copytree(partition / gone_user, partition / "newbie")
    shutil.rmtree(partition / gone_user / "Maildir" / ".Trash", ignore_errors=True)
    unrelated = server / "README"
    unrelated.write_text("notes of the administrator\n")
    nsr_times = {p: p.stat().st_mtime_ns for p in server.rglob(".nsr")}
    run_cmd("mkbackupdir", "-p", str(backup), "-v", config_dir=config, check_rc=0)
    after = placeholders(server)
    assert any(p.split("/")[1] == "newbie" for p in after)
    assert not any(p.split("/")[1] == gone_user and p.endswith("/Trash") for p in after)
    assert unrelated.read_text() == "notes of the administrator\n"
    changed = [p for p, t in nsr_times.items() if p.exists() and p.stat().st_mtime_ns != t]
    assert all(gone_user in str(p) for p in changed)     # only the .nsr that had to change

    # a third run with nothing changed changes nothing
    snapshot = {p: p.stat().st_mtime_ns for p in server.rglob("*")}
    run_cmd("mkbackupdir", "-p", str(backup), config_dir=config, check_rc=0)
    assert {p: p.stat().st_mtime_ns for p in server.rglob("*")} == snapshot


def test_per_user_inbox_only_and_long_names(tmp_path):
    store = tmp_path / "store"
    generate(store, SampleSpec(users=5, messages_per_user=4, partitions=1, seed=9))
    config = store / "config"
    run_cmd("mkbackupdir", "-u", "-p", str(tmp_path / "u"), config_dir=config, check_rc=0)
    server = next((tmp_path / "u").iterdir())
    assert all(len(p.split("/")) == 2 for p in placeholders(server))
    run_cmd("mkbackupdir", "-i", "-p", str(tmp_path / "i"), config_dir=config, check_rc=0)
    assert {p.rsplit("/", 1)[1] for p in placeholders(next((tmp_path / "i").iterdir()))} == {"INBOX"}
    run_cmd("mkbackupdir", "-f", "-p", str(tmp_path / "f"), config_dir=config, check_rc=0)
    assert "INBOX" not in {p.rsplit("/", 1)[1] for p in placeholders(next((tmp_path / "f").iterdir()))}
    deep = tmp_path / ("x" * 60)
    result = run_cmd("mkbackupdir", "-p", str(deep), config_dir=config, check_rc=0)
    assert b"longer than 64 characters" in result.stderr
    assert run_cmd("mkbackupdir", "-i", "-f", "-p", str(deep), config_dir=config).returncode == 2
    assert run_cmd("mkbackupdir", "-a", "imsbackup", "-p", str(deep), config_dir=config).returncode == 2
    assert run_cmd("mkbackupdir", config_dir=config).returncode == 2       # no backupdir known
