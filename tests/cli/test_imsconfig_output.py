"""imsconfig -o FILE (and configutil's msg.conf) as root: a temporary file of its own, created
exclusively; a device, FIFO or /proc fd link written in place; links followed only when they
are root's or the invoker's."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
from conftest import run_cmd, small_tmpfs

NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
GROUPS_ARGS = ("groups", "--pattern", "groupA=[a-l].*")


@pytest.fixture
def sticky_dir():
    """A world-writable sticky directory like /tmp (pytest's tmp_path is private to root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another uid")
    path = Path(tempfile.mkdtemp(prefix="ims-sticky-"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path)


def as_nobody(*argv: str) -> None:
    subprocess.run([*NOBODY, *argv], check=True)


def test_a_link_planted_at_the_old_temporary_name_is_not_followed(sticky_dir, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    as_nobody("ln", "-s", str(victim), str(sticky_dir / ".groups.conf.tmp"))
    target = sticky_dir / "groups.conf"
    run_cmd("imsconfig", *GROUPS_ARGS, "-o", str(target), check_rc=0)
    assert victim.read_text() == "root's file\n"
    assert not target.is_symlink() and "groupA=[a-l].*" in target.read_text()
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in sticky_dir.iterdir() if p.name.startswith(".groups.conf.")] == \
        [".groups.conf.tmp"]                        # no temporary file of ours left


def test_a_link_owned_by_another_user_is_refused(sticky_dir, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    link = sticky_dir / "groups.conf"
    as_nobody("ln", "-s", str(victim), str(link))
    result = run_cmd("imsconfig", *GROUPS_ARGS, "-o", str(link))
    assert result.returncode == 2
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and str(link) in lines[0] and "uid 65534" in lines[0]
    assert victim.read_text() == "root's file\n" and link.is_symlink()


def test_a_root_link_is_written_through_and_stays_a_link(tmp_path):
    real = tmp_path / "real.conf"
    real.write_text("old\n")
    real.chmod(0o640)
    link = tmp_path / "link.conf"
    link.symlink_to("real.conf")
    run_cmd("imsconfig", *GROUPS_ARGS, "-o", str(link), check_rc=0)
    assert link.is_symlink() and "groupA=[a-l].*" in real.read_text()
    assert stat.S_IMODE(real.stat().st_mode) == 0o640          # the existing file's mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.conf", "real.conf"]


def test_a_proc_fd_link_writes_to_the_descriptor_and_stays_a_link(tmp_path):
    """-o /dev/stdout, with a link of our own standing for /dev/stdout."""
    stdout_link = tmp_path / "stdout"
    stdout_link.symlink_to("/proc/self/fd/1")
    result = run_cmd("imsconfig", *GROUPS_ARGS, "-o", str(stdout_link), check_rc=0)
    assert b"groupA=[a-l].*" in result.stdout
    assert stdout_link.is_symlink() and os.readlink(stdout_link) == "/proc/self/fd/1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stdout"]


def test_a_device_and_a_fifo_are_written_in_place(tmp_path):
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))       # a /dev/null of our own
    run_cmd("imsconfig", *GROUPS_ARGS, "-o", str(null), check_rc=0)
    assert stat.S_ISCHR(null.lstat().st_mode)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    run_cmd("imsconfig", *GROUPS_ARGS, "-o", str(fifo), check_rc=0, timeout=60)
    reader.join(60)
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and b"groupA=[a-l].*" in received[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "null"]


def test_configutil_writes_through_the_administrators_link(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "msg.conf").write_text("store.partition.primary.path = /srv/p\n")
    config = tmp_path / "config"
    config.mkdir()
    (config / "msg.conf").symlink_to(shared / "msg.conf")
    run_cmd("configutil", "-o", "local.store.backupdir", "-v", "/backup", config_dir=config,
            check_rc=0)
    assert (config / "msg.conf").is_symlink()
    assert "local.store.backupdir = /backup" in (shared / "msg.conf").read_text()


def test_a_failed_write_leaves_the_target_and_no_temporary_file(tmp_path):
    with small_tmpfs(tmp_path / "full", "64k") as full:
        target = full / "groups.conf"
        target.write_text("the old file\n")
        (full / "filler").write_bytes(b"x" * 60_000)
        try:
            (full / "filler2").write_bytes(b"x" * 60_000)
        except OSError:
            pass                                    # full now
        result = run_cmd("imsconfig", *GROUPS_ARGS, "-o", str(target))
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
        assert str(target).encode() in result.stderr
        assert target.read_text() == "the old file\n"
        assert sorted(p.name for p in full.iterdir()) == ["filler", "filler2", "groups.conf"]
    directory = tmp_path / "adir"
    directory.mkdir()
    result = run_cmd("imsconfig", *GROUPS_ARGS, "-o", str(directory))
    assert result.returncode == 2 and b"Is a directory" in result.stderr
