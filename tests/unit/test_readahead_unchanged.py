"""An incremental's unchanged folder costs the store reader one stat after the listing and
nothing on its channel but an entry of the user's item (ims/readahead.py,
ims/store/maildir.py)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from ims.config import Config
from ims.names import resolve
from ims.readahead import StoreReadAhead, UserItem
from ims.samplestore import SampleSpec, generate
from ims.store.maildir import MaildirStore


@pytest.fixture
def store(tmp_path: Path) -> tuple[Config, MaildirStore, float]:
    """A sample store, and a since-time after every change made to it."""
    generate(tmp_path / "store", SampleSpec(users=3, messages_per_user=6, partitions=1, seed=5))
    config = Config.load(tmp_path / "store" / "config")
    time.sleep(0.02)
    since = time.time()
    return config, MaildirStore(config.msg.partitions(), "%u/Maildir"), since


def items_sent(config: Config, store: MaildirStore, since: float) -> list[object]:
    """What the reader's child sends for the whole store, read in this process."""
    readahead = StoreReadAhead(store, resolve(["/"], config, store), [], since, 2, False)
    sent: list[object] = []
    readahead._put = sent.append            # type: ignore[method-assign]
    readahead._free = [0, 1, 2]
    try:
        for user_scope in readahead.scope.users:
            readahead._read_user(user_scope)
    finally:
        readahead.stop()
    return sent


def test_an_unchanged_store_sends_one_item_per_user_naming_its_folders(store):
    config, maildirs, since = store
    sent = items_sent(config, maildirs, since)
    assert sent and all(isinstance(item, UserItem) for item in sent)
    for item in sent:
        assert [folder for folder, _ in item.unchanged] == item.folders
        for folder, identity in item.unchanged:
            assert identity == os.stat(maildirs.folder_dir(item.partition, item.user, folder)
                                       / "cur").st_ino


def test_a_changed_folder_is_read_and_the_others_stay_entries(store):
    config, maildirs, since = store
    partition, user = "primary", next(maildirs.users("primary"))
    inbox = maildirs.folder_dir(partition, user, "INBOX")
    time.sleep(0.05)        # file times come from a clock a tick coarser than time.time()
    (inbox / "new" / "1767225601.M1P1.late").write_bytes(b"Subject: late\n\nx\n")
    sent = items_sent(config, maildirs, since)
    first = sent[0]
    assert isinstance(first, UserItem) and first.user == user
    assert "INBOX" not in dict(first.unchanged) and len(first.unchanged) == len(first.folders) - 1
    assert type(sent[1]).__name__ == "FolderItem" and sent[1].folder == "INBOX"


def test_the_check_of_a_listed_folder_costs_one_stat(store, monkeypatch):
    """cur/ as the listing saw it, then new/: one system call per folder, and the identity
    from the same look."""
    _, maildirs, since = store
    user = next(maildirs.users("primary"))
    folders = maildirs.folders("primary", user)
    calls: list[str] = []
    real_stat = os.stat

    def counting_stat(path, *args, **kwargs):
        calls.append(str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counting_stat)
    for folder in folders:
        unchanged, identity = maildirs.unchanged_since("primary", user, folder, since)
        assert unchanged and identity is not None
    assert len(calls) == len(folders) and all(c.endswith("/new") for c in calls)


def test_changed_vanished_and_unlisted_folders(store):
    """A folder changed before the listing is changed; one deleted after it is looked at
    again (read, and found vanished); a folder this store object did not list is looked up
    afresh, with the same answers."""
    _, maildirs, since = store
    user = next(maildirs.users("primary"))
    touched = "INBOX"
    time.sleep(0.05)        # file times come from a clock a tick coarser than time.time()
    os.utime(maildirs.folder_dir("primary", user, touched) / "cur")     # sets its ctime
    folders = maildirs.folders("primary", user)
    others = [f for f in folders if f != "INBOX"]
    gone = others[0]
    shutil.rmtree(maildirs.folder_dir("primary", user, gone))
    assert maildirs.unchanged_since("primary", user, gone, since) == (False, None)
    assert maildirs.unchanged_since("primary", user, touched, since) == (False, None)
    fresh = MaildirStore(maildirs.partition_dirs, "%u/Maildir")
    assert fresh.unchanged_since("primary", user, touched, since) == (False, None)
    for folder in others[1:]:
        assert fresh.unchanged_since("primary", user, folder, since) == \
            maildirs.unchanged_since("primary", user, folder, since)
        assert fresh.unchanged_since("primary", user, folder, since)[0]
