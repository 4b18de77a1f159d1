"""imsasm on a real store without NetWorker: save/recover round trip, filters, dry run."""

from __future__ import annotations

import gzip
import shutil

from archive_reader import read_archive
from conftest import run_cmd


def setup_tree(store, tmp_path, extra: str = "") -> tuple:
    config = store / "config"
    with open(config / "msg.conf", "a") as conf:
        conf.write(f"local.store.backupdir = {tmp_path / 'backup'}\n"
                   f"local.store.backup.servername = host1\n{extra}")
    run_cmd("mkbackupdir", config_dir=config, check_rc=0)
    user = sorted(p.name for p in (store / "partitions" / "primary").iterdir())[0]
    group_dir = next(p for p in (tmp_path / "backup" / "host1").iterdir() if (p / user).is_dir())
    return config, user, group_dir / user


def test_save_and_recover_a_user_through_a_filter(fresh_store, tmp_path):
    config, user, placeholder = setup_tree(fresh_store, tmp_path,
                                           "local.store.backup.asmfilter = gzip -c\n"
                                           "local.store.backup.asmrecoverfilter = gzip -dc\n")
    saved = run_cmd("imsasm", "-s", str(placeholder), config_dir=config, check_rc=0).stdout
    archive = read_archive(gzip.decompress(saved))            # the filter really ran
    assert {m.json()["user"] for m in archive.members if m.kind == "user"} == {user}
    maildir = fresh_store / "partitions" / "primary" / user / "Maildir"
    before = sorted(p.name for p in maildir.rglob("*") if p.parent.name in ("cur", "new"))
    shutil.rmtree(maildir)
    dry = run_cmd("imsasm", "-r", "-n", str(placeholder), config_dir=config, input=saved, check_rc=0)
    assert not maildir.exists() and dry.returncode == 0
    run_cmd("imsasm", "-r", str(placeholder), config_dir=config, input=saved, check_rc=0)
    assert sorted(p.name for p in maildir.rglob("*") if p.parent.name in ("cur", "new")) == before


def test_mailbox_placeholder_saves_that_mailbox_only(fresh_store, tmp_path):
    config, _, _ = setup_tree(fresh_store, tmp_path)
    levels = [p for p in sorted((tmp_path / "backup").rglob("Archive.d"))
              if p.with_name("Archive").is_file()]
    assert levels, "the sample store has users with both Archive and Archive/2024"
    mailbox = levels[0].with_name("Archive")
    saved = read_archive(run_cmd("imsasm", "-s", str(mailbox), config_dir=config, check_rc=0).stdout)
    assert {m.json()["folder"] for m in saved.members if m.kind == "folder"} == {"Archive"}
    tree = read_archive(run_cmd("imsasm", "-s", str(levels[0]), config_dir=config,
                                check_rc=0).stdout)
    assert {m.json()["folder"] for m in tree.members if m.kind == "folder"} == {"Archive", "Archive/2024"}


def test_dry_run_writes_no_stream(fresh_store, tmp_path):
    config, user, placeholder = setup_tree(fresh_store, tmp_path)
    result = run_cmd("imsasm", "-s", "-n", "-v", str(placeholder / "INBOX"), config_dir=config,
                     check_rc=0)
    assert result.stdout == b"" and b"-> /primary/" in result.stderr
