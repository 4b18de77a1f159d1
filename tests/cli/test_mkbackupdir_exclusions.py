"""mkbackupdir and local.store.backup.exclude: excluded folders get no placeholder, and the
placeholders of folders that become excluded are removed, as those of folders that are gone."""

from __future__ import annotations

import os
import time
from pathlib import Path

from conftest import run_cmd
from test_imsasm_cli import setup_tree

EXCLUDE = "local.store.backup.exclude = Trash%Archive/2024\n"


def excluded_dirs(maildir: Path) -> set[str]:
    """The Maildir++ directories of Trash and Archive/2024 (and their subfolders)."""
    return {p.name for p in maildir.iterdir()
            if p.name == ".Trash" or p.name.startswith((".Trash.", ".Archive.2024"))}


def test_excluded_folders_get_no_placeholders_and_lose_theirs(fresh_store, tmp_path):
    config, _, _ = setup_tree(fresh_store, tmp_path)      # made before the exclusion was set
    server = tmp_path / "backup" / "host1"
    stale = sorted(server.glob("*/*/Trash")) + sorted(server.glob("*/*/Archive.d/2024"))
    assert len(stale) >= 4, "the sample store has users with Trash and with Archive/2024"
    with open(config / "msg.conf", "a") as conf:
        conf.write(EXCLUDE)

    result = run_cmd("mkbackupdir", "-v", config_dir=config, check_rc=0)
    err = result.stderr.decode()
    assert not any(p.exists() for p in stale)
    assert all(f"removed {p}" in err for p in stale)
    assert all("Trash" not in nsr.read_text() for nsr in server.rglob(".nsr"))
    # Archive stays; the Archive.d directories that held only 2024 went with it
    assert list(server.glob("*/*/Archive")) and not list(server.glob("*/*/Archive.d"))
    assert "left out by local.store.backup.exclude" in err
    # the rest of the tree is untouched, and a second run changes nothing
    snapshot = {p: p.stat().st_mtime_ns for p in server.rglob("*")}
    again = run_cmd("mkbackupdir", "-v", config_dir=config, check_rc=0)
    assert b"mkbackupdir: removed" not in again.stderr and b"mkbackupdir: added" not in again.stderr
    assert {p: p.stat().st_mtime_ns for p in server.rglob("*")} == snapshot

    # a new tree never has them
    run_cmd("mkbackupdir", "-p", str(tmp_path / "new"), config_dir=config, check_rc=0)
    fresh = tmp_path / "new" / "host1"
    assert list(fresh.glob("*/*/INBOX"))
    assert not list(fresh.glob("*/*/Trash")) and not list(fresh.glob("*/*/Archive.d/2024"))


def test_per_user_placeholder_time_ignores_excluded_folders(fresh_store, tmp_path):
    config, user, _ = setup_tree(fresh_store, tmp_path, EXCLUDE)
    maildir = fresh_store / "partitions" / "primary" / user / "Maildir"
    assert excluded_dirs(maildir), f"{user} has an excluded folder in the sample store"
    time.sleep(1.1)             # a change to Trash, in a later second than every other change
    (maildir / ".Trash" / "cur" / "1700000000.M1P1.host:2,S").write_bytes(b"Subject: x\r\n\r\nx\r\n")
    run_cmd("mkbackupdir", "-u", "-p", str(tmp_path / "u"), config_dir=config, check_rc=0)
    placeholder = next((tmp_path / "u" / "host1").glob(f"*/{user}"))
    kept = [d for d in [maildir, *maildir.glob(".*")]
            if d.is_dir() and d.name not in excluded_dirs(maildir)]
    newest = max(os.stat(d / sub).st_ctime for d in kept for sub in ("cur", "new"))
    # NetWorker's levels must not save the user again because Trash changed
    assert int(placeholder.stat().st_mtime) == int(newest)
