"""The restore's writer finds each user's owner (the owner of the user's Maildir, else of
its directory, else of the partition) once per user in turn, and does not keep every user
of the store to the end of the run (ims/store/maildir_write.py ``MaildirWriter.owner``):
after its table is cleared, an owner found again is still the user's own."""

from __future__ import annotations

import os

from ims.store.maildir import MaildirStore
from ims.store.maildir_write import MaildirWriter, Owner


def test_owners_are_each_users_own_and_the_table_stays_small(tmp_path):
    partition = tmp_path / "p"
    partition.mkdir()
    os.chown(partition, 4000, 4000)
    users = [f"user{i:04d}" for i in range(1100)]
    for i, user in enumerate(users[:-1]):
        maildir = partition / user / "Maildir"
        maildir.mkdir(parents=True)
        os.chown(maildir, 5000 + i, 6000 + i)
    writer = MaildirWriter(MaildirStore({"p": partition}, "%u/Maildir"))
    for i, user in enumerate(users[:-1]):
        assert writer.owner("p", user) == Owner(5000 + i, 6000 + i)
        assert len(writer._owners) <= 1025
    assert writer.owner("p", users[-1]) == Owner(4000, 4000)       # no Maildir yet
    assert writer.owner("p", users[0]) == Owner(5000, 6000)        # found again, the same
    assert len(writer._owners) < 1100
