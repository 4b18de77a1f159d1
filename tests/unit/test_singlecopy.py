"""The backup's single-copy table (ims/singlecopy.py): the same links as before, and an
inode's entry goes once all its links are in the stream."""

from __future__ import annotations

import os

from ims import singlecopy
from ims.singlecopy import LinkTable


def stat(ino: int, nlink: int, dev: int = 2049, size: int = 10,
         mtime_ns: int = 1700000000_000000001) -> os.stat_result:
    return os.stat_result((0o100600, ino, dev, nlink, 0, 0, size, 0, mtime_ns // 10**9, 0),
                          {"st_mtime_ns": mtime_ns})


def test_every_later_link_names_the_first_copy_then_the_entry_goes():
    """Before: the table kept every shared inode until the end of the backup (it grew with
    the store).  Now an inode of three links is named for the two later ones and then
    forgotten; one of two links after its one later link."""
    table = LinkTable()
    table.add(stat(7, 3), b"p/amy/INBOX/1.M1")
    table.add(stat(8, 2), b"p/amy/INBOX/1.M2")
    assert table.first_copy(stat(7, 3)) == b"p/amy/INBOX/1.M1"
    assert table.first_copy(stat(8, 2)) == b"p/amy/INBOX/1.M2"
    assert len(table) == 1
    assert table.first_copy(stat(7, 3)) == b"p/amy/INBOX/1.M1"
    assert len(table) == 0


def test_inodes_are_told_apart_by_device_and_a_single_link_is_not_kept():
    table = LinkTable()
    table.add(stat(7, 2, dev=1), b"a")
    table.add(stat(7, 1, dev=2), b"b")          # nothing can link to it
    assert len(table) == 1
    assert table.first_copy(stat(7, 2, dev=2)) is None
    assert table.first_copy(stat(7, 2, dev=1)) == b"a"


def test_a_link_made_during_the_backup_keeps_the_entry_longer():
    """A third link appears after the first copy was read (st_nlink grows): it is still
    named; an entry dropped early would only mean a second copy as data, never a loss."""
    table = LinkTable()
    table.add(stat(9, 2), b"first")
    assert table.first_copy(stat(9, 3)) == b"first"
    assert table.first_copy(stat(9, 3)) == b"first"
    assert table.first_copy(stat(9, 3)) is None


def test_an_inode_number_given_to_a_new_file_is_not_a_link_to_the_old_one():
    """Every link of a shared message is deleted during the backup and a new delivery gets
    its inode number (ext4 hands it out again at once).  Before: the new file was archived
    as a link to the old message, and restored with the old one's bytes.  Now a different
    size or modification time makes it a new file; the stale entry goes."""
    table = LinkTable()
    table.add(stat(11, 2), b"old")
    assert table.first_copy(stat(11, 2, size=99)) is None
    assert len(table) == 0
    table.add(stat(12, 2), b"old2")
    assert table.first_copy(stat(12, 2, mtime_ns=1700000000_000000002)) is None
    table.add(stat(12, 2, mtime_ns=1700000000_000000002), b"new")
    assert table.first_copy(stat(12, 2, mtime_ns=1700000000_000000002)) == b"new"


def test_two_inodes_of_one_key_never_take_each_others_name(monkeypatch):
    """The table's key is a 64-bit mix of inode and device; two inodes of the same mix are
    told apart by the inode and device kept with the name: the other inode is not named a
    link to this one's first copy, nor does it take away this one's entry."""
    monkeypatch.setattr(singlecopy, "_key", lambda st: 5)
    table = LinkTable()
    table.add(stat(21, 2, dev=1), b"first")
    assert table.first_copy(stat(33, 2, dev=4)) is None
    assert table.first_copy(stat(21, 2, dev=9)) is None
    assert len(table) == 1
    assert table.first_copy(stat(21, 2, dev=1)) == b"first"
    assert len(table) == 0
