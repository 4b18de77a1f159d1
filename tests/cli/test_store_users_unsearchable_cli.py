"""A user's directory that cannot be searched (mode 000, the backup run without the
capabilities that let root pass) is never left out of a backup of everyone in silence: the
listing of the partition's users (ims/store/maildir.py ``Layout.users``) raises what it met,
and the backup stops naming the path.  (With ``os.path.isdir`` the user had simply not been
listed: exit 0, the user missing from the archive.)"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from conftest import run_cmd

from ims.store.maildir import Layout

NO_DAC = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search",
          "--inh-caps", "-dac_override,-dac_read_search")


def test_an_unsearchable_user_is_an_error_not_an_omission(tmp_path, monkeypatch):
    partition = tmp_path / "p"
    for user in ("alice", "bob"):
        (partition / user / "Maildir" / "cur").mkdir(parents=True)
    real_stat = os.stat

    def stat(path, *args, **kwargs):
        if os.fspath(path).endswith("bob/Maildir"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_stat(path, *args, **kwargs)
    monkeypatch.setattr(os, "stat", stat)
    with pytest.raises(PermissionError):
        list(Layout("%u/Maildir").users(partition))
    monkeypatch.undo()
    assert list(Layout("%u/Maildir").users(partition)) == ["alice", "bob"]
    (partition / "carol").symlink_to(partition / "gone")        # dangling: not a user
    (partition / "erin").mkdir()
    (partition / "erin" / "Maildir").symlink_to(partition / "erin" / "Maildir")  # a loop
    (partition / "dave").mkdir()                                 # no Maildir: not a user
    (partition / "lost+found").mkdir(mode=0o700)                 # the file system's own
    assert list(Layout("%u/Maildir").users(partition)) == ["alice", "bob"]


def test_a_backup_of_everyone_stops_on_an_unsearchable_user(fresh_store, tmp_path):
    partition = sorted((fresh_store / "partitions").iterdir())[0]
    victim = sorted(partition.iterdir())[0]
    victim.chmod(0)
    try:
        archive = tmp_path / "a.ims"
        result = run_cmd("imsbackup", "-f", str(archive), "/", config_dir=fresh_store / "config",
                         prefix=NO_DAC)
    finally:
        victim.chmod(0o700)
    assert result.returncode == 7, result.stderr
    assert f"{victim.name}/Maildir".encode() in result.stderr
    assert b"Permission denied" in result.stderr


def test_a_partition_that_is_a_mount_point_is_backed_up_as_the_mail_user(fresh_store,
                                                                        tmp_path):
    """A partition on a file system of its own has root's lost+found (mode 0700): a backup
    of everyone run as the mail user lists the users around it, not into it."""
    partition = sorted((fresh_store / "partitions").iterdir())[0]
    (partition / "lost+found").mkdir(mode=0o700)
    uid = 5000
    for path in [fresh_store, *fresh_store.rglob("*")]:
        if path.name != "lost+found":
            os.lchown(path, uid, uid)
    for parent in fresh_store.parents:
        if parent.stat().st_mode & 0o001 == 0:
            parent.chmod(parent.stat().st_mode | 0o001)      # traversable by the mail user
    archive = tmp_path / "out" / "a.ims"
    archive.parent.mkdir()
    os.chown(archive.parent, uid, uid)
    # the mail user must reach the installed command too: a clone under /root (0700) is not
    # (seen in a Debian 13 chroot); each parent's mode is given back afterwards
    opened: list[tuple[Path, int]] = []
    for parent in Path(sys.prefix).parents:
        mode = parent.stat().st_mode
        if mode & 0o001 == 0:
            opened.append((parent, mode))
            parent.chmod(mode | 0o001)
    try:
        result = run_cmd("imsbackup", "-f", str(archive), "/", config_dir=fresh_store / "config",
                         prefix=("setpriv", "--reuid", str(uid), "--regid", str(uid),
                                 "--clear-groups"))
    finally:
        for parent, mode in opened:
            parent.chmod(mode)
    assert result.returncode == 0, result.stderr
    assert b"lost+found" not in result.stderr
