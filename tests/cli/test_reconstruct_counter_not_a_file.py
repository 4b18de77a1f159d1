"""The mail user owns the Maildir and can put a link, a FIFO or a directory where
``dovecot-uidvalidity`` should be.  ims/reconstruct.py ``read_counter`` catches only
FileNotFoundError and ValueError: the OSError from ``read_regular`` ends the whole run with
"internal error" (exit 7), so no other user is checked or repaired.  It should be named as
a problem of that user (exit 1), like a planted ``maildirsize`` or ``subscriptions``."""

from __future__ import annotations

import os

import pytest
import json

from conftest import run_cmd
from test_reconstruct_cli import Store


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path)


@pytest.mark.parametrize("plant", ["link", "fifo", "directory"])
def test_a_planted_counter_is_named_and_the_other_users_are_still_repaired(store, plant):
    store.folder("amy", messages=[(1, "1.M1P1.h", "S")])
    bob = store.folder("bob", messages=[(1, "1.M1P1.h", "S"), (2, "2.M2P1.h", "")])
    (bob / "cur" / "2.M2P1.h:2,").unlink()
    counter = store.maildir("amy") / "dovecot-uidvalidity"
    if plant == "link":
        os.symlink("/etc/shadow", counter)
    elif plant == "fifo":
        os.mkfifo(counter)
    else:
        counter.mkdir()
    result = run_cmd("reconstruct", "--json", "-n", "/", config_dir=store.config)
    assert result.returncode == 1, result.stderr.decode()      # today: 7, internal error
    report = json.loads(result.stdout)
    assert ("bob", "file-missing") in {(f["user"], f["kind"]) for f in report["problems"]}
    assert "amy" in {f["user"] for f in report["problems"]}
    report = store.run("/", rc=1)                   # amy's counter is left for the admin
    assert [l.split(" ", 1)[0] for l in (bob / "dovecot-uidlist").read_text().splitlines()[1:]] \
        == ["1"]
