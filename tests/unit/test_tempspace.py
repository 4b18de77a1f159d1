"""Unnamed temporary files (ims/tempspace.py) on a real file system, and what the commands
import: the modules left out to keep every process small stay out."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ims import tempspace


def test_the_file_has_no_name_and_is_private(tmp_path, monkeypatch):
    monkeypatch.setattr(tempspace, "candidates", lambda: [str(tmp_path)])
    fd = tempspace.unnamed_file("ims-test-")
    try:
        assert os.listdir(tmp_path) == []
        os.write(fd, b"hello")
        assert os.pread(fd, 5, 0) == b"hello"
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
    finally:
        os.close(fd)
    assert tempspace.temp_dir() == str(tmp_path)


def test_without_o_tmpfile_a_named_file_is_made_exclusively_and_unlinked(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "O_TMPFILE")
    made: list[tuple[str, int]] = []
    real_open = os.open

    def watched(path, flags, mode=0o777, **kwargs):
        made.append((str(path), flags))
        return real_open(path, flags, mode, **kwargs)
    monkeypatch.setattr(tempspace.os, "open", watched)
    monkeypatch.setattr(tempspace, "candidates", lambda: [str(tmp_path)])
    fd = tempspace.unnamed_file("ims-test-")
    try:
        assert os.listdir(tmp_path) == []
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
        assert os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)
    path, flags = made[-1]
    assert Path(path).parent == tmp_path and Path(path).name.startswith("ims-test-")
    assert flags & os.O_EXCL and flags & os.O_NOFOLLOW and flags & os.O_CREAT


def test_a_directory_that_will_not_do_is_passed_over(tmp_path, monkeypatch):
    missing = tmp_path / "nosuch"
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    good = tmp_path / "good"
    good.mkdir()
    monkeypatch.setattr(tempspace, "candidates",
                        lambda: [str(missing), str(not_a_dir), str(good)])
    fd = tempspace.unnamed_file()
    os.close(fd)
    assert tempspace.temp_dir() == str(good)


def test_no_directory_at_all_raises_the_last_error(tmp_path, monkeypatch):
    monkeypatch.setattr(tempspace, "candidates", lambda: [str(tmp_path / "a"), str(tmp_path / "b")])
    with pytest.raises(FileNotFoundError):
        tempspace.unnamed_file()


def test_the_order_of_directories_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "one"))
    monkeypatch.delenv("TEMP", raising=False)
    monkeypatch.setenv("TMP", str(tmp_path / "two"))
    monkeypatch.chdir(tmp_path)
    assert tempspace.candidates() == [str(tmp_path / "one"), str(tmp_path / "two"), "/tmp",
                                      "/var/tmp", "/usr/tmp", str(tmp_path)]


@pytest.mark.parametrize("command", ["ims.cli.imsrestore", "ims.cli.imsbackup"])
def test_the_commands_do_not_import_what_they_do_not_use(command):
    """logging (imported when the debug log is set up), tempfile, shutil, random: with what
    they import, about 1.2 MiB of every restore's and backup's memory."""
    code = (f"import sys, {command}; "
            "print(' '.join(m for m in ('logging', 'tempfile', 'shutil', 'random', 'secrets')"
            " if m in sys.modules))")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout.split()
    assert found == []


def test_a_directory_on_a_full_file_system_is_passed_over(tmp_path, monkeypatch):
    """O_TMPFILE makes the inode even when no block is free: a byte written tells, and the
    next directory is taken (as tempfile's probe does)."""
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)], check=True)
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={full / 'filler'}", "bs=4k", "count=64"],
                       capture_output=True)
        good = tmp_path / "good"
        good.mkdir()
        monkeypatch.setattr(tempspace, "candidates", lambda: [str(full), str(good)])
        fd = tempspace.unnamed_file()
        try:
            assert os.fstat(fd).st_size == 0
            os.write(fd, b"x" * 100000)
        finally:
            os.close(fd)
        assert tempspace.temp_dir() == str(good)
    finally:
        subprocess.run(["umount", str(full)], check=True)
