"""The restore's writer opens the user's Maildir again for every folder it builds
(ims/store/maildir_write.py ``MaildirWriter.restore_whole``): when the mail user moves or
replaces the Maildir between two folders, the next folder goes where Dovecot looks now, or
is refused and named when a link stands there, never into the directory that was moved
away.  On a real file system (the writer walks it by descriptors)."""

from __future__ import annotations

import shutil

import pytest

from ims.store.base import WholeFolder
from ims.store.maildir import MaildirStore
from ims.store.maildir_write import MaildirWriter, UnsafePath

WHOLE = WholeFolder(uidvalidity=1700000000, next_uid=1, guid=None, keywords=())


def restored(writer: MaildirWriter, folder: str) -> None:
    built = writer.restore_whole("p", "joe", folder, WHOLE)
    built.commit()


@pytest.fixture
def writer(tmp_path):
    partition = tmp_path / "p"
    partition.mkdir()
    writer = MaildirWriter(MaildirStore({"p": partition}, "%u/Maildir"))
    yield writer
    writer.close()


def test_a_maildir_replaced_between_two_folders_gets_the_second(writer, tmp_path):
    user = tmp_path / "p" / "joe"
    restored(writer, "INBOX")
    restored(writer, "Archive")
    (user / "Maildir").rename(user / "Maildir.old")
    (user / "Maildir").mkdir()
    restored(writer, "Drafts")
    assert (user / "Maildir" / ".Drafts" / "dovecot-uidlist").is_file()
    assert not (user / "Maildir.old" / ".Drafts").exists()


def test_a_maildir_swapped_for_a_link_is_refused_for_the_next_folder(writer, tmp_path):
    user = tmp_path / "p" / "joe"
    elsewhere = tmp_path / "elsewhere"
    restored(writer, "INBOX")
    restored(writer, "Archive")
    (user / "Maildir").rename(elsewhere)
    (user / "Maildir").symlink_to(elsewhere)
    with pytest.raises(UnsafePath):
        restored(writer, "Drafts")
    assert not (elsewhere / ".Drafts").exists()


def test_a_maildir_removed_between_two_folders_is_made_again(writer, tmp_path):
    user = tmp_path / "p" / "joe"
    restored(writer, "INBOX")
    restored(writer, "Archive")
    shutil.rmtree(user / "Maildir")
    restored(writer, "Drafts")
    assert (user / "Maildir" / ".Drafts" / "dovecot-uidlist").is_file()
    assert (user / "Maildir" / "cur").is_dir()
