"""Maildir details: modified UTF-7, uidlist, keywords, subscriptions, flag suffixes, index header."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ims.store import mutf7, uidlist
from ims.store.maildir import (Layout, LayoutError, _parse_info, dirname_to_folder,
                               folder_to_dirname, parse_keywords_file, parse_subscriptions)


@pytest.mark.parametrize("plain, encoded", [
    ("Ärger", "&AMQ-rger"), ("Entwürfe", "Entw&APw-rfe"), ("A&B", "A&-B"),
    ("日本語", "&ZeVnLIqe-"), ("Sent", "Sent"), ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
])
def test_mutf7_known_values(plain, encoded):
    assert mutf7.encode(plain) == encoded
    assert mutf7.decode(encoded) == plain


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30))
def test_mutf7_round_trip(text):
    assert mutf7.decode(mutf7.encode(text)) == text


@pytest.mark.parametrize("bad", ["&AMQ", "caf\u00e9", "&!!-"])
def test_mutf7_rejects_malformed(bad):
    with pytest.raises(ValueError):
        mutf7.decode(bad)


def test_folder_dirnames():
    assert folder_to_dirname("INBOX") == ""
    assert folder_to_dirname("Ärger/Entwürfe") == ".&AMQ-rger.Entw&APw-rfe"
    assert dirname_to_folder(".&AMQ-rger.Entw&APw-rfe") == "Ärger/Entwürfe"
    assert dirname_to_folder(".Archive.2024") == "Archive/2024"


def test_uidlist_stale_n_and_fields():
    data = (b"3 V1795715236 N21 G57dd4b32ea70086b2841000083ecc375\n"
            b"1 :1795715306.M846222P16680.vm,S=135,W=142\n"
            b"4 W300 S290 :1795715307.M1P2.vm\n"
            b"23 :1795715308.M1P3.vm\n"
            b"24 :half-written-append")
    parsed = uidlist.parse(data)
    assert parsed.uidvalidity == 1795715236 and parsed.guid == "57dd4b32ea70086b2841000083ecc375"
    assert parsed.next_uid == 21 and parsed.effective_next_uid == 24
    assert parsed.uids == {"1795715306.M846222P16680.vm,S=135,W=142": 1,
                           "1795715307.M1P2.vm": 4, "1795715308.M1P3.vm": 23}


def test_uidlist_bad_lines_and_version():
    parsed = uidlist.parse(b"3 V1 N5\ngarbage\n2 :ok\n")
    assert parsed.bad_lines == 1 and parsed.uids == {"ok": 2}
    with pytest.raises(uidlist.UidlistError):
        uidlist.parse(b"1 1234 5\n")


def test_index_header_next_uid(tmp_path):
    # struct mail_index_header: version 7.3, little-endian flag, next_uid at offset 28
    header = struct.pack("<BBHIIB3xIIII", 7, 3, 120, 120, 12, 1, 42, 0, 1795715236, 99)
    (tmp_path / "dovecot.index").write_bytes(header + b"\0" * 100)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert uidlist.index_next_uid(fd) == 99
        (tmp_path / "dovecot.index").write_bytes(b"\x05" + header[1:])
        assert uidlist.index_next_uid(fd) is None
    finally:
        os.close(fd)


def test_keywords_and_flags():
    keywords = parse_keywords_file("0 $Forwarded\n1 Junk\n2 myKeyword\n")
    assert _parse_info("2,FSac", keywords) == ("FS", ("$Forwarded", "myKeyword"))
    assert _parse_info("2,", keywords) == ("", ())
    assert _parse_info("2,TRz", keywords) == ("RT", ())   # unknown letter: no name to keep
    assert _parse_info("", keywords) == ("", ())


def test_subscriptions_formats():
    assert parse_subscriptions("V\t2\n\nSent\nA\tB\n&AMQ-rger\tEntw&APw-rfe\n") == [
        "Sent", "A/B", "Ärger/Entwürfe"]
    # the old format uses the store's separator; "/" is not one (Dovecot drops the line)
    assert parse_subscriptions("Sent\nArchive.2024\nArchive/2024\n") == ["Sent", "Archive/2024"]


def test_layouts(tmp_path):
    hosted = Layout("%d/%n/Maildir")
    assert hosted.path_of(tmp_path, "amy@example.com") == tmp_path / "example.com/amy/Maildir"
    with pytest.raises(LayoutError):
        hosted.path_of(tmp_path, "amy")
    (tmp_path / "example.com/amy/Maildir").mkdir(parents=True)
    (tmp_path / "example.org/bob/Maildir").mkdir(parents=True)
    (tmp_path / "example.org/nomail").mkdir(parents=True)
    assert list(hosted.users(tmp_path)) == ["amy@example.com", "bob@example.org"]
    with pytest.raises(LayoutError):
        Layout("%u/%h")
    with pytest.raises(LayoutError):
        Layout("%d/Maildir")


@pytest.mark.parametrize("user", ["evil@..", "x@.", "@d", "a@b/c", "a@b\x01c", "a\nb@c", "a@b\x7f"])
def test_hosted_layout_refuses_components_that_are_not_one_directory_name(user):
    from pathlib import Path

    from ims.store.maildir import Layout, LayoutError
    with pytest.raises(LayoutError, match="not a directory name"):
        Layout("%d/%n/Maildir").path_of(Path("/p"), user)


def test_a_user_map_cannot_send_a_user_out_of_its_partition(tmp_path):
    from ims.errors import UsageError
    from ims.restore.selection import read_user_map
    for line in ("joe=joe@..", "@a.org=@..", "joe=../x", "joe=.hidden", "joe=a\x01b"):
        (tmp_path / "map").write_text(line + "\n")
        with pytest.raises(UsageError, match="map:1"):
            read_user_map(str(tmp_path / "map"))


def test_a_folder_swapped_for_a_link_after_its_listing_is_not_read(tmp_path):
    """The race a mail user could win: the folder is listed, then replaced by a link to a
    directory root may read; the reader opens by path, so it compares what it opened with
    what was listed."""
    import shutil

    from ims.store.maildir import LinkRefused, MaildirStore
    maildir = tmp_path / "p" / "joe" / "Maildir"
    for folder in ("", ".Work"):
        for sub in ("cur", "new", "tmp"):
            (maildir / folder / sub).mkdir(parents=True, exist_ok=True)
    elsewhere = tmp_path / "elsewhere"
    for sub in ("cur", "new", "tmp"):
        (elsewhere / sub).mkdir(parents=True)
    (elsewhere / "cur" / "1.M1P1.x:2,S").write_bytes(b"not joe's")
    store = MaildirStore({"p": tmp_path / "p"}, "%u/Maildir")
    store.user_info("p", "joe")
    assert store.folders("p", "joe") == ["INBOX", "Work"]
    shutil.rmtree(maildir / ".Work")
    (maildir / ".Work").symlink_to(elsewhere)
    with pytest.raises(LinkRefused, match="replaced"):
        store.open_folder("p", "joe", "Work")
    reader = store.open_folder("p", "joe", "INBOX")       # the untouched one still reads
    reader.close()
