"""The pristine-INBOX path of a folder restored whole, interrupted after its files were
moved in: the INBOX Dovecot recreated empty must stay pristine, so that the next run brings
it back whole with its archived UIDVALIDITY and UIDs (clients' caches stay valid)."""

from __future__ import annotations

import os

import pytest

from ims.archive.records import MessageRecord
from ims.store import modseq as dovecot_modseq
from ims.store import maildir_write
from ims.store.base import WholeFolder
from ims.store.maildir_write import NewFolder, Owner, is_pristine


def inbox_writer(tmp_path):
    user = tmp_path / "user"
    inbox = user / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (inbox / sub).mkdir(parents=True)
    owner = Owner(os.getuid(), os.getgid())
    parent = os.open(user, os.O_RDONLY | os.O_DIRECTORY)
    folder = NewFolder(tmp_path, ("user", "Maildir"), parent, "Maildir", os.dup(parent),
                       ".ims-restore.1.1.host", owner,
                       WholeFolder(555, 100, None, ("$Junk",), modseq=10**12), True, 1.0)
    folder.add(MessageRecord("1.M1P1.a", 7, "S", ("$Junk",), 1700000000, False, 5, "0" * 64),
               b"hello")
    return inbox, folder


def pristine(inbox) -> bool:
    fd = os.open(inbox, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return is_pristine(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("step", ["seed", "uidlist", "keywords"])
def test_an_interrupt_after_the_move_into_a_pristine_inbox_leaves_it_pristine(tmp_path,
                                                                             monkeypatch, step):
    inbox, folder = inbox_writer(tmp_path)
    if step == "seed":
        real_seed = dovecot_modseq.seed_modseq

        def interrupted(directory, *args, **kwargs):
            if os.path.samefile(f"/proc/self/fd/{directory}", inbox):
                raise KeyboardInterrupt
            return real_seed(directory, *args, **kwargs)
        monkeypatch.setattr(dovecot_modseq, "seed_modseq", interrupted)
    else:
        real = maildir_write.replace_file
        name = "dovecot-uidlist" if step == "uidlist" else "dovecot-keywords"

        def interrupted(directory, filename, *args, **kwargs):
            # the aside copy is written first; the INBOX's own copy is the one interrupted
            if filename == name and os.path.samefile(f"/proc/self/fd/{directory}", inbox):
                raise KeyboardInterrupt
            return real(directory, filename, *args, **kwargs)
        monkeypatch.setattr(maildir_write, "replace_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        folder.commit()
    folder.abort()
    assert pristine(inbox), sorted(os.listdir(inbox / "cur"))
    assert not any(n.startswith(".ims-restore") for n in os.listdir(inbox.parent))


def test_an_uninterrupted_fill_lands_with_the_archived_uids(tmp_path):
    inbox, folder = inbox_writer(tmp_path)
    landed = folder.commit()
    assert landed.messages == 1 and landed.whole
    assert (inbox / "dovecot-uidlist").read_text().startswith("3 V555 N100")
    assert "7 :1.M1P1.a" in (inbox / "dovecot-uidlist").read_text()
    assert not pristine(inbox)
