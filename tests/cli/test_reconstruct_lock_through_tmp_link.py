"""reconstruct takes dotlocks (``maildirsize.lock``, ``dovecot-uidlist.lock``) with
ims/store/lock.py ``FolderLock``, which writes the lock first as
``<folder>/tmp/ims-restore.<pid>.lock.<host>`` by *path* (``/proc/self/fd/N/tmp/...``): the
``tmp`` component is followed.  With INBOX's ``tmp/`` replaced by a link (the mail user can
do that at any moment), the quota repair (ims/reconstruct.py ``Reconstruct._quota``) makes
root create and remove a file in the directory the link points to, outside the store.
Nothing may be written outside the store (docs/guide.md §10)."""

from __future__ import annotations

import ctypes
import os
import shutil
import struct

import pytest
from test_reconstruct_cli import Store

IN_CREATE = 0x100


def created_in(directory) -> "callable":
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK)
    assert fd >= 0
    assert libc.inotify_add_watch(fd, str(directory).encode(), IN_CREATE) >= 0

    def names() -> list[str]:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return []
        found, at = [], 0
        while at < len(data):
            _, _, _, size = struct.unpack_from("iIII", data, at)
            found.append(data[at + 16:at + 16 + size].rstrip(b"\0").decode())
            at += 16 + size
        return found
    return names


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path)


def test_no_lock_file_is_written_through_a_linked_tmp(store, tmp_path):
    inbox = store.folder("amy", messages=[(1, "1.M1P1.h,S=10", "S")])
    (store.maildir("amy") / "maildirsize").write_text("0S\n99 9\n")      # to be recounted
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(inbox / "tmp")
    os.symlink(outside, inbox / "tmp")
    created = created_in(outside)
    store.run("/")
    assert created() == [], "root created files outside the store"
    assert list(outside.iterdir()) == []
