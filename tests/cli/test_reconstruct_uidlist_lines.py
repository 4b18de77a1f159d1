"""Lines Dovecot reads and keeps must not be taken for lost mail.  Measured with Dovecot
2.3.19: a uidlist with CRLF line ends, and v3 lines that carry the whole file name
(``1 :<base>:2,S``), are read with every UID kept and nothing logged.  ims/reconstruct.py
``parse_uidlist`` keeps the ``\\r`` in the base name and takes the text after the *last*
colon as the base name, so ``reconstruct -n`` says "the mail is gone" and a repair drops the
lines of messages whose files are there (they come back under new UIDs)."""

from __future__ import annotations

import pytest
from test_reconstruct_cli import Store, uidlist


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path)


def test_a_crlf_uidlist_keeps_every_uid(store):
    inbox = store.folder("amy", messages=[(1, "1.M1P1.h", "S"), (2, "2.M2P1.h", "")])
    path = inbox / "dovecot-uidlist"
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    report = store.run("-n", "/")
    assert "file-missing" not in {f["kind"] for f in report["problems"]}, report["problems"]
    store.run("/")
    assert [uid for uid, _ in uidlist(inbox)[1]] == [1, 2]       # no line of a present file dropped


def test_lines_with_the_whole_file_name_keep_their_uids(store):
    inbox = store.folder("amy", messages=[(1, "1.M1P1.h,S=40", "S"), (2, "2.M2P1.h,S=40", "S"),
                                          (3, "3.M3P1.h,S=40", "")])
    (inbox / "dovecot-uidlist").write_text(
        "3 V1700000000 N4\n1 :1.M1P1.h,S=40:2,S\n2 :2.M2P1.h,S=40:2,S\n3 :3.M3P1.h,S=40:2,\n")
    report = store.run("-n", "/", rc=0)          # Dovecot reads this file as it is
    assert report["problems"] == []
    store.run("/", rc=0)
    lines = (inbox / "dovecot-uidlist").read_text().splitlines()[1:]
    assert [int(line.split(" ", 1)[0]) for line in lines] == [1, 2, 3]
