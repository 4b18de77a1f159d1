"""A store path opened in one ``openat2`` call (ims/store/beneath.py) refuses what the walk
level by level refuses (a link at any level, a file where a directory was, a climb out of
the start), and ``open_dir_under`` gives the same answers with the call and without it (a
kernel or sandbox that lacks it), on a real file system."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from ims.store import beneath
from ims.store.maildir_write import Owner, UnsafePath, make_maildir, open_dir_under

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "u" / "amy" / "Maildir" / ".Sent" / "cur").mkdir(parents=True)
    (tmp_path / "outside" / "cur").mkdir(parents=True)
    return tmp_path


@pytest.fixture(params=["openat2", "walk"])
def way(request, monkeypatch) -> str:
    if request.param == "walk":
        monkeypatch.setattr(beneath, "_usable", False)
    return request.param


def test_openat2_is_used_here():
    # the machines the suite runs on have it: the tests below exercise both ways
    fd = beneath.open_beneath(os.open("/", _DIR), "proc", _DIR)
    assert fd is not None
    os.close(fd)


def test_the_path_is_opened(tree: Path, way: str):
    fd = open_dir_under(tree, ("u", "amy", "Maildir", ".Sent", "cur"))
    try:
        assert os.path.samefile(f"/proc/self/fd/{fd}", tree / "u/amy/Maildir/.Sent/cur")
    finally:
        os.close(fd)


@pytest.mark.parametrize("level", ["amy", "Maildir", ".Sent", "cur"])
def test_a_link_at_any_level_is_refused_and_named(tree: Path, way: str, level: str):
    parts = ("u", "amy", "Maildir", ".Sent", "cur")
    at = tree.joinpath(*parts[:parts.index(level) + 1])
    os.rename(at, tree / "moved")
    at.symlink_to(tree / "outside" if level == "cur" else tree / "moved")
    with pytest.raises(UnsafePath) as raised:
        open_dir_under(tree, parts)
    assert str(at) in str(raised.value)


def test_a_file_where_a_directory_was_is_refused(tree: Path, way: str):
    (tree / "u/amy/Maildir/.Sent/cur").rmdir()
    (tree / "u/amy/Maildir/.Sent/cur").write_text("not a directory")
    with pytest.raises(UnsafePath):
        open_dir_under(tree, ("u", "amy", "Maildir", ".Sent", "cur"))


def test_a_missing_level_is_not_found_without_an_owner(tree: Path, way: str):
    with pytest.raises(FileNotFoundError):
        open_dir_under(tree, ("u", "amy", "Maildir", ".Drafts", "cur"))
    assert not (tree / "u/amy/Maildir/.Drafts").exists()


def test_a_missing_level_is_made_with_an_owner(tree: Path, way: str):
    owner = Owner(os.getuid(), os.getgid())
    fd = open_dir_under(tree, ("u", "amy", "Maildir", ".Drafts", "cur"), owner)
    os.close(fd)
    assert (tree / "u/amy/Maildir/.Drafts/cur").is_dir()
    assert (tree / "u/amy/Maildir/.Drafts").stat().st_mode & 0o777 == 0o700


def test_nothing_above_the_start_is_reached(tree: Path):
    start = os.open(tree / "u", _DIR)
    try:
        for path in ("../outside", "amy/../../outside", str(tree / "outside")):
            with pytest.raises(OSError) as raised:
                beneath.open_beneath(start, path, _DIR)
            assert raised.value.errno == errno.EXDEV
    finally:
        os.close(start)


def test_no_descriptor_is_left_open(tree: Path, way: str):
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        os.close(open_dir_under(tree, ("u", "amy", "Maildir")))
        with pytest.raises(FileNotFoundError):
            open_dir_under(tree, ("u", "bob", "Maildir"))
        (tree / "u/amy/Maildir/.Sent/cur").rename(tree / "cur-aside")
        (tree / "u/amy/Maildir/.Sent/cur").symlink_to(tree / "outside")
        with pytest.raises(UnsafePath):
            open_dir_under(tree, ("u", "amy", "Maildir", ".Sent", "cur"))
        (tree / "u/amy/Maildir/.Sent/cur").unlink()
        (tree / "cur-aside").rename(tree / "u/amy/Maildir/.Sent/cur")
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("parts", [("u", "..", "..", "outside"), ("..",), ("u", "."),
                                   ("u", "amy/../../.."), ("u", "amy\0/../.."), ("u", "")])
def test_a_level_that_climbs_or_hides_a_path_is_refused(tree: Path, way: str, parts):
    # names are validated where an archive's records are read; this is the last guard
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError) as raised:
        open_dir_under(tree / "u" / "amy", parts)
    assert raised.value.errno == errno.EINVAL
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_nul_is_refused_by_the_one_call_too(tree: Path):
    start = os.open(tree, _DIR)
    try:
        with pytest.raises(ValueError):
            beneath.open_beneath(start, "u/amy\0/../../outside", _DIR)
    finally:
        os.close(start)


@pytest.mark.parametrize("planted", ["link", "file", "directory"])
def test_a_sub_directory_planted_in_a_new_folder_is_refused_and_named(tmp_path: Path,
                                                                       planted: str):
    # a folder built aside belongs to the mail user once given to them: a cur/ made there
    # meanwhile is met by the restore's mkdir
    folder = tmp_path / "aside"
    folder.mkdir()
    if planted == "link":
        (folder / "cur").symlink_to(tmp_path)
    elif planted == "file":
        (folder / "cur").write_text("x")
    else:
        (folder / "cur").mkdir()
    fd = os.open(folder, _DIR)
    try:
        with pytest.raises(UnsafePath) as raised:
            make_maildir(fd, Path("/store/u/amy/Maildir/.Sent"), Owner(os.getuid(), os.getgid()),
                         marker=True, empty=True)
        assert "/store/u/amy/Maildir/.Sent/cur" in str(raised.value)
    finally:
        os.close(fd)
    assert not (folder / "new").exists()
