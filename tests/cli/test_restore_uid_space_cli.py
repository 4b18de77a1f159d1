"""A live folder running out of UIDs: what fits lands, each message that does not is named."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from conftest import run_cmd

sys.path.insert(0, str(Path(__file__).parent))
from test_restore_hostile_cli import Crafted, maildir, uidlist_uids  # noqa: E402


def test_the_messages_that_fit_below_the_last_uid_land_and_each_one_that_does_not_is_named(
        fresh_store, tmp_path):
    """A live INBOX whose next UID is 2^32 - 3 has room for two more messages (2^32 - 3 and
    2^32 - 2); the archive has five.  ``plan_merge`` raises ``UidsExhausted`` for the third,
    ``_commit_batch`` then unlinks the *whole* batch: nothing lands (messages 0) and one line
    names the folder.  With ``--batch 1`` two land and three are named: the result depends
    on the batch size.  The guide: "rule 2 never gives a UID past it (the messages that do
    not fit are named, exit 1)".  Expected: the two that fit land, the three that do not are
    each named, exit 1.  At fault: plan.plan_merge / ExistingFolder._commit_batch."""
    inbox = maildir(fresh_store, "near")
    for sub in ("cur", "new", "tmp"):
        (inbox / sub).mkdir(parents=True)
    (inbox / "cur" / "1.M1P1.live:2,S").write_bytes(b"Subject: live\n\n")
    (inbox / "dovecot-uidlist").write_text(f"3 V9 N{2**32 - 3}\n{2**32 - 4} :1.M1P1.live\n")
    archive = Crafted(tmp_path / "a.ims")
    archive.user("near", ["INBOX"])
    keys = [f"1.M1P1.{c}" for c in "vwxyz"]
    archive.folder("near", "INBOX", [[k, n, "S", []] for n, k in enumerate(keys, 1)])
    for n, key in enumerate(keys, 1):
        archive.message("near", "INBOX", key, f"Subject: {key}\n\n".encode(), n)
    archive.close()
    result = run_cmd("imsrestore", "-f", str(tmp_path / "a.ims"), "--json",
                     config_dir=fresh_store / "config")
    summary = json.loads(result.stdout)
    _, uids = uidlist_uids(inbox)
    assert result.returncode == 1
    assert summary["messages"] == 2, summary
    assert sorted(uids) == [2**32 - 4, 2**32 - 3, 2**32 - 2]
    assert len(summary["skipped"]) == 3, summary["skipped"]
