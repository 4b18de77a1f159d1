"""A chain restore brings back a folder that the later backups left out by
local.store.backup.exclude (it was there, not deleted), as the latest backup that held it had
it, and says so; a folder deleted before the last backup stays out."""

from __future__ import annotations

import json
import shutil
import time

from conftest import run_cmd


def messages(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)).split(":")[0]: p.read_bytes()
            for p in root.rglob("*") if p.is_file() and p.parent.name in ("cur", "new")}


def make_folder(maildir, name: str, body: bytes) -> None:
    folder = maildir / ("." + name)
    for sub in ("cur", "new", "tmp"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / "maildirfolder").touch()
    (folder / "cur" / f"1700000001.M1P1.host,S={len(body)}:2,S").write_bytes(body)


def test_a_folder_excluded_after_the_full_comes_back_from_the_full(fresh_store, tmp_path):
    config = fresh_store / "config"
    user_dir = sorted((fresh_store / "partitions" / "primary").iterdir())[0]
    maildir = user_dir / "Maildir"
    make_folder(maildir, "Keepsakes", b"Subject: keep\r\n\r\nkeep\r\n")
    make_folder(maildir, "Scratch", b"Subject: scratch\r\n\r\nscratch\r\n")
    full = tmp_path / "full.ims"
    since = time.strftime("%Y%m%d:%H%M%S")   # at or before the full backup's recorded start
    run_cmd("imsbackup", "-f", str(full), "/", config_dir=config, check_rc=0)
    time.sleep(1.1)                          # what follows is after the full backup
    run_cmd("configutil", "-o", "local.store.backup.exclude", "-v", "Keepsakes",
            config_dir=config, check_rc=0)
    shutil.rmtree(maildir / ".Scratch")                  # really deleted before the incremental
    incremental = tmp_path / "incr.ims"
    run_cmd("imsbackup", "-d", since, "-f", str(incremental), "/", config_dir=config, check_rc=0)
    before = messages(maildir)
    shutil.rmtree(maildir)

    result = run_cmd("imsrestore", "--json", "-f", str(full), "-f", str(incremental),
                     f"/primary/user/{user_dir.name}", config_dir=config)
    assert result.returncode == 0, result.stderr
    assert messages(maildir) == before                       # Keepsakes back, Scratch not
    assert any(k.startswith(".Keepsakes/") for k in before)
    notes = json.loads(result.stdout)["notes"]
    assert any("Keepsakes: excluded from the last backup" in n for n in notes), notes
    assert not (maildir / ".Scratch").exists()
