"""Faults during a restore (found by the fault-injection campaign, tests/faults/): a full
disk and locks left by crashed runs.  After each, a rerun gives the store a clean restore
gives: folders come back whole with their archived UIDs, and no lock stays behind."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from conftest import command, run_cmd, small_tmpfs

from ims.samplestore import SampleSpec, generate


def uidlist_uids(folder: Path) -> dict[str, int]:
    lines = (folder / "dovecot-uidlist").read_text().splitlines()[1:]
    return {line.split(":", 1)[1]: int(line.split()[0]) for line in lines}


def scratch_config(tmp_path: Path, partition: Path) -> Path:
    config = tmp_path / "dst-config"
    config.mkdir()
    (config / "msg.conf").write_text(f"store.partition.primary.path = {partition}\n"
                                     f"local.store.logdir = {tmp_path / 'log'}\n")
    return config


def test_a_folder_that_could_not_be_written_whole_is_absent_and_comes_back_whole(tmp_path):
    source = tmp_path / "src"
    generate(source, SampleSpec(users=3, messages_per_user=20, partitions=1, seed=7))
    archive = tmp_path / "a.ims"
    run_cmd("imsbackup", "-f", str(archive), "/", config_dir=source / "config", check_rc=0)
    with small_tmpfs(tmp_path / "dst", "4m") as partition:
        config = scratch_config(tmp_path, partition)
        # about 1 MiB free: some folders land, one is cut by ENOSPC
        subprocess.run(["fallocate", "-l", "3m", str(partition / "filler")], check=True)
        first = run_cmd("imsrestore", "--json", "-f", str(archive), "/", config_dir=config)
        assert first.returncode == 1, first.stderr.decode()
        cut = [line for line in json.loads(first.stdout)["skipped"] if "not restored" in line]
        assert cut, json.loads(first.stdout)
        # every folder in place has all of its archived messages (no half folder)
        for uidlist in partition.rglob("dovecot-uidlist"):
            folder = uidlist.parent
            src = source / "partitions" / "primary" / folder.relative_to(partition)
            assert set(uidlist_uids(folder)) == set(uidlist_uids(src)), folder
        (partition / "filler").unlink()
        second = run_cmd("imsrestore", "--json", "-f", str(archive), "/", config_dir=config)
        assert second.returncode == 0, second.stderr.decode()
        for uidlist in (source / "partitions" / "primary").rglob("dovecot-uidlist"):
            folder = uidlist.parent
            restored = partition / folder.relative_to(source / "partitions" / "primary")
            archived, now = uidlist_uids(folder), uidlist_uids(restored)
            # every archived UID kept; a message still in new/ without a UID may have been
            # given the folder's next one by the rerun, as Dovecot would give it
            assert {k: v for k, v in now.items() if k in archived} == archived, restored
            for key in set(now) - set(archived):
                assert any(p.name == key for p in (folder / "new").iterdir()), key
        assert not list(partition.rglob("*.lock"))


def test_an_empty_lock_older_than_dovecots_stale_timeout_is_taken_over(fresh_store, tmp_path):
    config = fresh_store / "config"
    archive = tmp_path / "a.ims"
    run_cmd("imsbackup", "-f", str(archive), "/", config_dir=config, check_rc=0)
    inbox = sorted((fresh_store / "partitions" / "primary").iterdir())[0] / "Maildir"
    victim = sorted((inbox / "cur").iterdir())[0]
    victim.unlink()
    lock = inbox / "dovecot-uidlist.lock"
    lock.write_bytes(b"")                       # a crash between create and write
    fresh = run_cmd("imsrestore", "--lock-timeout", "1", "-f", str(archive),
                    f"/primary/user/{inbox.parent.name}", config_dir=config)
    assert fresh.returncode == 3, fresh.stderr.decode()   # a young lock may be someone's
    old = time.time() - 3600
    os.utime(lock, (old, old))
    taken = run_cmd("imsrestore", "--lock-timeout", "5", "-f", str(archive),
                    f"/primary/user/{inbox.parent.name}", config_dir=config)
    assert taken.returncode == 0, taken.stderr.decode()
    assert any(p.name.startswith(victim.name.partition(":")[0]) for p in (inbox / "cur").iterdir())
    assert not lock.exists()


def test_no_lock_file_is_ever_seen_empty(fresh_store, tmp_path):
    """The lock is written under a temporary name and linked into place: watch it."""
    config = fresh_store / "config"
    archive = tmp_path / "a.ims"
    run_cmd("imsbackup", "-f", str(archive), "/", config_dir=config, check_rc=0)
    for user in (fresh_store / "partitions").rglob("Maildir"):
        for sub in ("cur", "new"):
            for message in (user / sub).iterdir():
                message.unlink()
    seen_empty = []
    result = subprocess.Popen([command("imsrestore"), "-f", str(archive), "/"],
                              env={**os.environ, "IMS_CONFIG_DIR": str(config)},
                              stderr=subprocess.PIPE)
    while result.poll() is None:
        for lock in (fresh_store / "partitions").rglob("*.lock"):
            try:
                if lock.stat().st_size == 0:
                    seen_empty.append(lock)
            except FileNotFoundError:
                pass
    assert result.returncode == 0, result.stderr.read().decode()
    assert not seen_empty


def test_a_damaged_message_is_named_in_the_debug_log_only_when_asked_for(tmp_path):
    """-v 3 sets up the debug log (ims/debuglog.py imports logging only then): a message
    whose bytes do not match its SHA-256 is a WARNING line of imsrestore.log naming it;
    without -v 3 no log is written."""
    source = tmp_path / "src"
    generate(source, SampleSpec(users=2, messages_per_user=5, partitions=1, seed=3))
    archive = tmp_path / "a.ims"
    run_cmd("imsbackup", "-f", str(archive), "/", config_dir=source / "config", check_rc=0)
    data = bytearray(archive.read_bytes())
    at = data.index(b"Subject:")
    data[at] ^= 0x20                        # one byte of one message's data
    archive.write_bytes(bytes(data))
    for verbose, dst in (([], "quiet"), (["-v", "3"], "logged")):
        partition = tmp_path / dst
        partition.mkdir()
        config = tmp_path / f"{dst}-config"
        config.mkdir()
        (config / "msg.conf").write_text(f"store.partition.primary.path = {partition}\n"
                                         f"local.store.logdir = {tmp_path / f'{dst}-log'}\n")
        result = run_cmd("imsrestore", *verbose, "-f", str(archive), "/", config_dir=config)
        assert result.returncode == 4, result.stderr.decode()
        assert b"SHA-256 mismatch" in result.stderr, result.stderr.decode()
    assert not (tmp_path / "quiet-log").exists()
    log = (tmp_path / "logged-log" / "imsrestore.log").read_text()
    assert "WARNING" in log and "SHA-256 mismatch" in log, log
