"""A line that is dropped still names a UID clients may have seen.  ims/reconstruct.py
``analyse`` drops unreadable lines (``uidlist-bad-line``) and computes the next UID from the
lines it kept: with ``9 W260`` (the " :name" part damaged) as the last line and a header
N3, the repair writes N3, so Dovecot gives the message UID 3, below the UID 9 and UIDNEXT 10
clients saw (they never look below their UIDNEXT: the message is invisible to them)."""

from __future__ import annotations

import pytest
from test_reconstruct_cli import Store, body, header_field


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path)


def test_the_uid_of_an_unreadable_line_is_never_handed_out_again(store):
    inbox = store.folder("amy", messages=[(1, "1.M1P1.h", "S"), (2, "2.M2P1.h", "")],
                         next_uid=3, extra_lines=["9 W260"])
    (inbox / "cur" / "9.M9P1.h:2,S").write_bytes(body("9.M9P1.h"))
    report = store.run("-n", "/", rc=1)
    # the unreadable line, and a next UID at or below the UID that line carried
    assert {f["kind"] for f in report["problems"]} == {"uidlist-bad-line", "next-uid"}
    store.run("/")
    assert header_field(inbox, "N") > 9, (inbox / "dovecot-uidlist").read_text()
