"""Durability and shared stores. ``imsrestore --sync`` is durable: every control file (dovecot-uidlist, dovecot-keywords,
subscriptions) is fsynced before it is renamed into place and its directory after (in a
folder built aside, before the folder is moved into place); a new folder's cur/ and new/,
the folder and its parent are synced.  Observed with strace on the
installed command (``-y`` names the file behind each descriptor)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import command, require

from ims.store.maildir import dirname_to_folder

STRACE = shutil.which("strace")


def traced_restore(store: Path, archive: Path, name: str, tmp_path: Path) -> list[str]:
    require(STRACE is not None, "strace (apt-get install strace)")
    log = tmp_path / "strace.log"
    result = subprocess.run(
        [STRACE, "-f", "-y", "-qq", "-o", str(log), "-e", "trace=fsync,fdatasync,rename,renameat,renameat2",
         command("imsrestore"), "--sync", "-f", str(archive), name],
        env={**os.environ, "IMS_CONFIG_DIR": str(store / "config")}, capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
    return log.read_text().splitlines()


def fsynced(lines: list[str]) -> list[str]:
    return [m.group(1) for line in lines
            if (m := re.search(r"\bfsync\(\d+<([^>]*)>\) = 0", line))]


def renamed(lines: list[str]) -> list[tuple[int, str, str]]:
    """(line number, source path, target name) of each rename into a control file."""
    found = []
    for number, line in enumerate(lines):
        m = re.search(r"renameat2?\(\d+<([^>]*)>, \"([^\"]+)\", \d+<([^>]*)>, \"([^\"]+)\"", line)
        if m and line.rstrip().endswith("= 0"):
            found.append((number, f"{m.group(1)}/{m.group(2)}", f"{m.group(3)}/{m.group(4)}"))
            continue
        m = re.search(r"\brename\(\"([^\"]+)\", \"([^\"]+)\"\) = 0", line)
        if m:
            found.append((number, m.group(1), m.group(2)))
    return found


def test_a_user_restored_whole_with_sync_is_durable(fresh_store, tmp_path):
    archive = tmp_path / "full.ims"
    subprocess.run([command("imsbackup"), "-f", str(archive), "/"], check=True,
                   env={**os.environ, "IMS_CONFIG_DIR": str(fresh_store / "config")},
                   capture_output=True)
    user = sorted((fresh_store / "partitions" / "primary").iterdir())[0]
    maildir = user / "Maildir"
    assert (maildir / "subscriptions").exists()
    shutil.rmtree(user)
    lines = traced_restore(fresh_store, archive, f"/primary/user/{user.name}", tmp_path)
    synced = fsynced(lines)
    control = [r for r in renamed(lines)
               if r[2].rsplit("/", 1)[1] in ("dovecot-uidlist", "dovecot-keywords", "subscriptions")]
    assert any(r[2].endswith("/subscriptions") for r in control), control
    # a folder built aside holds its control files under their own names: each is synced
    # before the folder is moved into place, and the folder's new parent after the move
    moves = [r for r in renamed(lines) if "/.ims-restore." in r[1] and ".ims-restore." not in r[2]]
    assert len(moves) == 1 + len([p for p in maildir.iterdir()
                                  if p.name.startswith(".") and (p / "cur").is_dir()]), moves
    with_keywords = 0
    for number, source, target in moves:
        before = fsynced(lines[:number])
        files = ["dovecot-uidlist"]
        if os.path.exists(f"{target}/dovecot-keywords"):
            files.append("dovecot-keywords")
            with_keywords += 1
        for name in files:
            assert f"{source}/{name}" in before, \
                f"{source} moved to {target} before its {name} was synced"
        assert source in before, f"{source} moved to {target} before it was synced"
        assert target.rsplit("/", 1)[0] in fsynced(lines[number + 1:]), \
            f"{target} moved into place, its parent not synced after"
    assert with_keywords, "no folder with keywords: the keywords file was not checked"
    for number, source, target in control:
        before = [m.group(1) for line in lines[:number]
                  if (m := re.search(r"\bfsync\(\d+<([^>]*)>\)", line))]
        assert source in before, f"{source} renamed to {target} before it was synced"
        directory = target.rsplit("/", 1)[0]
        after = fsynced(lines[number + 1:])
        assert directory in after, f"{directory} not synced after {target} was renamed in"
    # the folders landed: their cur/ and new/ and the Maildir that holds them
    for folder in [p for p in maildir.iterdir() if p.name.startswith(".") and p.is_dir()]:
        assert str(maildir) in synced
    assert str(user) in synced                    # the INBOX's parent, after its rename
    cur_new = {p for p in synced if p.endswith("/cur") or p.endswith("/new")}
    assert len(cur_new) >= 2, synced


def test_a_merge_with_sync_is_durable(fresh_store, tmp_path):
    config = fresh_store / "config"
    archive = tmp_path / "full.ims"
    subprocess.run([command("imsbackup"), "-f", str(archive), "/"], check=True,
                   env={**os.environ, "IMS_CONFIG_DIR": str(config)}, capture_output=True)
    user = sorted((fresh_store / "partitions" / "primary").iterdir())[1]
    folder = sorted(p for p in (user / "Maildir").iterdir()
                    if p.name.startswith(".") and (p / "cur").is_dir() and any((p / "cur").iterdir()))[0]
    victim = sorted((folder / "cur").iterdir())[0]
    victim.unlink()
    name = f"/primary/user/{user.name}/{dirname_to_folder(folder.name)}"
    lines = traced_restore(fresh_store, archive, name, tmp_path)
    synced = fsynced(lines)
    assert str(folder / "cur") in synced, synced
    assert str(folder / "dovecot-uidlist") in synced or any(
        target == str(folder / "dovecot-uidlist") for _, _, target in renamed(lines)), synced
    landed = [p for p in synced if p.startswith(str(folder / "tmp") + "/")]
    assert landed, "the restored message's data was not synced"


def test_staged_files_of_another_host_are_never_cleaned(fresh_store, tmp_path):
    """On a store shared over NFS a pid means nothing on another host: a restore removes
    only its own host's leftovers of dead processes."""
    import socket
    config = fresh_store / "config"
    archive = tmp_path / "full.ims"
    subprocess.run([command("imsbackup"), "-f", str(archive), "/"], check=True,
                   env={**os.environ, "IMS_CONFIG_DIR": str(config)}, capture_output=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    user = sorted((fresh_store / "partitions" / "primary").iterdir())[0]
    folder = sorted(p for p in (user / "Maildir").iterdir()
                    if p.name.startswith(".") and (p / "cur").is_dir())[0]
    next(iter((folder / "cur").iterdir())).unlink()          # something to merge
    here = socket.gethostname()
    theirs = [folder / "tmp" / f"ims-restore.{dead.pid}.1.other-host.example",
              user / "Maildir" / "tmp" / f".ims-restore.{dead.pid}.2.other-host.example"]
    ours = [folder / "tmp" / f"ims-restore.{dead.pid}.1.{here}"]
    theirs[0].write_bytes(b"in flight on another host")
    theirs[1].mkdir()
    ours[0].write_bytes(b"left by a killed restore here")
    result = subprocess.run([command("imsrestore"), "-f", str(archive),
                             f"/primary/user/{user.name}/{dirname_to_folder(folder.name)}"],
                            env={**os.environ, "IMS_CONFIG_DIR": str(config)}, capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
    assert all(p.exists() for p in theirs), "another host's staged files were removed"
    assert not ours[0].exists(), "this host's leftover of a dead restore was kept"
