"""Dovecot's ``subscriptions`` file: both formats read as Dovecot 2.3 reads them, merging
keeps the file's format.  The expected values come from a real Dovecot (see the integration
test and the module's docstring)."""

from __future__ import annotations

import os
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ims.errors import StoreLocked
from ims.store.maildir_write import Owner
from ims.store.subscriptions import (encode_name, merge_subscriptions, parse_subscriptions,
                                     read_subscriptions)

ME = Owner(os.getuid(), os.getgid())


# -- reading -------------------------------------------------------------------------------

def test_v2_format():
    text = "V\t2\n\nSent\nArchive\t2025\n&AMQ-rger\tEntw&APw-rfe\nINBOX\n"
    assert parse_subscriptions(text) == ["Sent", "Archive/2025", "Ärger/Entwürfe", "INBOX"]


def test_old_format_uses_the_store_separator():
    text = "Archive\nArchive.2025\n&AMQ-rger\n&AMQ-rger.Entw&APw-rfe\nINBOX\n"
    assert parse_subscriptions(text) == ["Archive", "Archive/2025", "Ärger", "Ärger/Entwürfe",
                                         "INBOX"]
    # another store's separator
    assert parse_subscriptions("Archive/2025\nA.B\n", separator="/") == ["Archive/2025", "A.B"]


def test_old_format_drops_names_with_a_slash():
    # not a Maildir++ name: Dovecot lists nothing for it and removes the line
    assert parse_subscriptions("Archive/2025\nSent\n") == ["Sent"]


def test_header_must_be_exact():
    # "V\t2" without the empty line, or another version: an old file whose first name is
    # "V\t2" (Dovecot lists it as V&AAk-2)
    assert parse_subscriptions("V\t2\nA\tB\n") == ["V\t2", "A\tB"]
    assert parse_subscriptions("V\t3\n\nSent\n") == ["V\t3", "Sent"]
    assert parse_subscriptions("V\t2\n\n") == []
    assert parse_subscriptions("") == []


def test_dot_inside_a_v2_level_separates_levels():
    assert parse_subscriptions("V\t2\n\nArchive.2025\n") == ["Archive/2025"]


def test_raw_utf8_names_are_taken_as_they_are():
    assert parse_subscriptions("Ärger.Entwürfe\n") == ["Ärger/Entwürfe"]
    assert parse_subscriptions("V\t2\n\nÄrger\tEntwürfe\n") == ["Ärger/Entwürfe"]


def test_bad_modified_utf7_is_kept_raw():
    assert parse_subscriptions("&Jjo\nSent\n") == ["&Jjo", "Sent"]


def test_lines_dovecot_ignores():
    # empty lines; a last line without its newline; a line that is not UTF-8
    assert parse_subscriptions("\n\nSent\n\n") == ["Sent"]
    assert parse_subscriptions("Sent\nArchive") == ["Sent"]
    raw = b"\xff\xfe\nSent\n".decode("utf-8", errors="surrogateescape")
    assert parse_subscriptions(raw) == ["Sent"]


def test_crlf_repeats_inbox_and_tab_escapes():
    assert parse_subscriptions("Archive.2025\r\nSent\r\n") == ["Archive/2025", "Sent"]
    assert parse_subscriptions("Sent\nSent\nsent\n") == ["Sent", "sent"]
    assert parse_subscriptions("inbox\nInbox.Sub\n") == ["INBOX", "INBOX/Sub"]
    assert parse_subscriptions("V\t2\n\nArc\x01thive\tx\n") == ["Arc\thive/x"]


def test_read_subscriptions(tmp_path):
    assert read_subscriptions(tmp_path) == []
    (tmp_path / "subscriptions").write_bytes(b"Archive.2025\n\xff\n&AMQ-rger\n")
    assert read_subscriptions(tmp_path) == ["Archive/2025", "Ärger"]


def test_read_does_not_follow_a_symlink(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("root:x:0:0\n")
    maildir = tmp_path / "Maildir"
    maildir.mkdir()
    os.symlink(secret, maildir / "subscriptions")
    with pytest.raises(OSError):
        read_subscriptions(maildir)


names_strategy = st.lists(
    st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                            blacklist_characters="/."),
                     min_size=1, max_size=8), min_size=1, max_size=3).map("/".join)
    .filter(lambda n: n.split("/")[0].lower() != "inbox"),
    max_size=6, unique=True)


@given(names_strategy, st.booleans())
def test_written_lines_read_back(names, v2):
    lines = [encode_name(name, v2) for name in names]
    assert None not in lines
    text = ("V\t2\n\n" if v2 else "") + "".join(f"{line}\n" for line in lines)
    assert parse_subscriptions(text) == names


def test_encode_name():
    assert encode_name("Ärger/Entwürfe", v2=True) == "&AMQ-rger\tEntw&APw-rfe"
    assert encode_name("Ärger/Entwürfe", v2=False) == "&AMQ-rger.Entw&APw-rfe"
    assert encode_name("INBOX", v2=False) == "INBOX"
    # names the file cannot hold: they would read back as something else
    assert encode_name("a.b", v2=False) is None
    assert encode_name("a.b", v2=True) is None
    assert encode_name("a//b", v2=True) is None


# -- merging -------------------------------------------------------------------------------

def test_merge_into_a_new_file_writes_v2(tmp_path):
    merge_subscriptions(tmp_path, ["Sent", "Archive/2025", "Ärger"], ME)
    assert (tmp_path / "subscriptions").read_text() == "V\t2\n\nSent\nArchive\t2025\n&AMQ-rger\n"
    assert not (tmp_path / "subscriptions.lock").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["subscriptions"]   # no temp file left


def test_merge_keeps_the_old_format(tmp_path):
    path = tmp_path / "subscriptions"
    path.write_text("Sent\nArchive.2025\n")
    merge_subscriptions(tmp_path, ["Archive/2025", "Ärger/Entwürfe", "INBOX"], ME)
    assert path.read_text() == "Sent\nArchive.2025\n&AMQ-rger.Entw&APw-rfe\nINBOX\n"
    assert parse_subscriptions(path.read_text()) == ["Sent", "Archive/2025", "Ärger/Entwürfe",
                                                     "INBOX"]


def test_merge_keeps_v2(tmp_path):
    path = tmp_path / "subscriptions"
    path.write_text("V\t2\n\nSent\n")
    merge_subscriptions(tmp_path, ["Archive/2025", "Sent"], ME)
    assert path.read_text() == "V\t2\n\nSent\nArchive\t2025\n"


def test_an_existing_empty_file_is_old_format(tmp_path):
    # Dovecot reads an empty file as old format and SUBSCRIBE keeps it so
    path = tmp_path / "subscriptions"
    path.write_text("")
    merge_subscriptions(tmp_path, ["Archive/2025"], ME)
    assert path.read_text() == "Archive.2025\n"


def test_merge_is_idempotent_and_does_not_rewrite(tmp_path):
    path = tmp_path / "subscriptions"
    path.write_text("Sent\nArchive.2025\n")
    merge_subscriptions(tmp_path, ["Ärger"], ME)
    after_first = path.read_text()
    inode = path.stat().st_ino
    merge_subscriptions(tmp_path, ["Ärger", "Sent", "Archive/2025"], ME)
    assert path.read_text() == after_first
    assert path.stat().st_ino == inode          # not rewritten at all
    merge_subscriptions(tmp_path, [], ME)
    assert path.stat().st_ino == inode


def test_merge_keeps_existing_lines_as_they_are(tmp_path):
    # repeats and names Dovecot reads as raw UTF-8 stay; "inbox" is already the INBOX
    path = tmp_path / "subscriptions"
    path.write_text("Sent\nSent\nÄrger\ninbox\n")
    merge_subscriptions(tmp_path, ["Ärger", "INBOX", "inbox", "Work"], ME)
    assert path.read_text() == "Sent\nSent\nÄrger\ninbox\nWork\n"


def test_merge_drops_what_dovecot_drops_when_it_rewrites(tmp_path):
    path = tmp_path / "subscriptions"
    path.write_bytes(b"Sent\n\xff\nArch")   # a line that is not UTF-8, an unfinished line
    merge_subscriptions(tmp_path, ["Work"], ME)
    assert path.read_bytes() == b"Sent\nWork\n"


def test_merge_leaves_out_names_the_format_cannot_hold(tmp_path):
    merge_subscriptions(tmp_path, ["a.b", "", "x//y", "Sent"], ME)
    assert (tmp_path / "subscriptions").read_text() == "V\t2\n\nSent\n"


def test_merge_never_writes_through_a_symlink(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("Sent\n")
    maildir = tmp_path / "Maildir"
    maildir.mkdir()
    os.symlink(target, maildir / "subscriptions")
    with pytest.raises(OSError):
        merge_subscriptions(maildir, ["Work"], ME)
    assert target.read_text() == "Sent\n"
    assert (maildir / "subscriptions").is_symlink()
    assert not (maildir / "subscriptions.lock").exists()


def test_merge_waits_for_dovecots_lock(tmp_path):
    # a live process (this one) holds Dovecot's dotlock: never broken, the merge gives up
    lock = tmp_path / "subscriptions.lock"
    lock.write_text(f"{os.getpid()}:{socket.gethostname()}")
    (tmp_path / "subscriptions").write_text("Sent\n")
    with pytest.raises(StoreLocked):
        merge_subscriptions(tmp_path, ["Work"], ME, lock_timeout=0.2)
    assert (tmp_path / "subscriptions").read_text() == "Sent\n"
    assert lock.exists()


def test_merge_breaks_a_stale_lock(tmp_path):
    # the pid of a finished child: dead, and the lock is older than 2 s
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    lock = tmp_path / "subscriptions.lock"
    lock.write_text(f"{pid}:{socket.gethostname()}")
    os.utime(lock, (0, 0))
    merge_subscriptions(tmp_path, ["Work"], ME, lock_timeout=1)
    assert (tmp_path / "subscriptions").read_text() == "V\t2\n\nWork\n"
    assert not lock.exists()
