"""A shared message whose links are all deleted during the backup frees its inode number; a
new delivery to two users that gets the same number (ext4 hands it out again at once) is a
new message.  Before, the single-copy table, keyed by inode and device alone, archived it as
a hard link to the old message, and the restore gave the new message the old one's bytes
(exit 0, nothing said).  tests/unit/test_singlecopy.py checks the table's rule without
depending on the file system's choice of inode numbers."""
from __future__ import annotations

import os
import shutil

from conftest import backup_in_process, run_cmd

from ims.samplestore import SampleSpec, generate
from ims.store.maildir import MaildirStore

OLD = b"Subject: old\n\nexpunged during the backup\n"
NEW = b"Subject: new\n\ndelivered to two users during the backup\n"


def test_a_reused_inode_is_not_archived_as_a_link_to_the_old_message(tmp_path, monkeypatch):
    store = tmp_path / "store"
    generate(store, SampleSpec(users=3, messages_per_user=2, partitions=1, seed=2,
                               link_fraction=0.0))
    users = sorted((store / "partitions" / "primary").iterdir())
    old = [u / "Maildir" / "cur" / "1700000100.M1P1.old:2,S" for u in users[:2]]
    old[0].write_bytes(OLD)
    os.link(old[0], old[1])
    old_ino = os.stat(old[0]).st_ino
    new = [u / "Maildir" / "cur" / "1700000200.M2P2.new:2,S" for u in users[1:]]
    real_open_folder = MaildirStore.open_folder

    def open_folder(self, partition, user, folder):
        # (in the store reader) the first user's INBOX is archived; before the second
        # user's INBOX is listed, both links of OLD are expunged and NEW is delivered
        if user == users[1].name and folder == "INBOX" and old[1].exists():
            for path in old:
                path.unlink()
            # the delivery's file gets the freed inode number (ext4 hands it out again
            # soon; a few tries, the misses kept until the end so they are not reused)
            # (in the freed inode's own directory: ext4 hands it out again there first;
            # user 0's folders are archived already, and every try is removed)
            scratch = old[0].parent
            for attempt in range(2000):
                candidate = scratch / f"delivery.{attempt}"
                candidate.write_bytes(NEW)
                if os.stat(candidate).st_ino == old_ino:
                    os.rename(candidate, new[0])
                    break
            else:
                # no reuse this time: NEW is delivered all the same (the last try), or the
                # link below would fail, and the reader would take the folder for deleted
                os.rename(candidate, new[0])
            os.link(new[0], new[1])
            for miss in scratch.glob("delivery.*"):
                miss.unlink()
        return real_open_folder(self, partition, user, folder)
    monkeypatch.setattr(MaildirStore, "open_folder", open_folder)

    out = tmp_path / "a.ims"
    report = backup_in_process(store, out)
    monkeypatch.undo()
    # where the file system did not give the number again, the restore is checked all the
    # same (the same bytes are expected either way)
    assert report.messages > 0 and not report.skipped
    for user in users:
        shutil.rmtree(user)
    result = run_cmd("imsrestore", "-f", str(out), "/", config_dir=store / "config")
    assert result.returncode == 0, result.stderr
    assert new[0].read_bytes() == NEW and new[1].read_bytes() == NEW
