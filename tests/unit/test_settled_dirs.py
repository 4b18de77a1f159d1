"""Links to settled first copies take their directory from a few descriptors kept open
(ims/store/maildir_write.py SettledDirs): on a real file system, the oldest is closed past
the limit, each is opened without following a link, and ``close`` leaves none open."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ims.store.maildir_write import SettledDirs, UnsafePath


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_the_last_directories_stay_open_and_the_oldest_goes(tmp_path: Path):
    for i in range(SettledDirs.SIZE + 4):
        (tmp_path / f"u{i}" / "Maildir" / "cur").mkdir(parents=True)
    before = open_fds()
    dirs = SettledDirs()
    first = dirs.get(tmp_path, ("u0", "Maildir"), "cur")
    assert dirs.get(tmp_path, ("u0", "Maildir"), "cur") == first      # taken again, not reopened
    for i in range(1, SettledDirs.SIZE + 4):
        fd = dirs.get(tmp_path, (f"u{i}", "Maildir"), "cur")
        assert os.path.samefile(f"/proc/self/fd/{fd}", tmp_path / f"u{i}" / "Maildir" / "cur")
    assert open_fds() == before + SettledDirs.SIZE
    dirs.close()
    assert open_fds() == before


def test_a_link_on_the_way_is_refused(tmp_path: Path):
    (tmp_path / "elsewhere" / "cur").mkdir(parents=True)
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "Maildir").symlink_to(tmp_path / "elsewhere")
    dirs = SettledDirs()
    with pytest.raises((UnsafePath, OSError)):
        dirs.get(tmp_path, ("u", "Maildir"), "cur")
    dirs.close()
