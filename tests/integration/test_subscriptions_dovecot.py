"""Dovecot's older ``subscriptions`` format (no ``V\\t2`` header, ``.`` between levels) through
a backup and a restore: what a client sees with LSUB / LIST (SUBSCRIBED) must not change."""

from __future__ import annotations

import imaplib
import os
import re
import shutil

import pytest
from archive_reader import read_archive
from conftest import run_cmd
from dovecot_server import MAIL_GID, MAIL_UID
from helpers import write_config

# IMAP (modified UTF-7, "/") -> our names; "Archive" and "Ärger" themselves stay unsubscribed
FOLDERS = {"Archive": "Archive", "Archive/2025": "Archive/2025", "&AMQ-rger": "Ärger",
           "&AMQ-rger/Entw&APw-rfe": "Ärger/Entwürfe", "Sent": "Sent"}
OLD_FORMAT = "Archive.2025\n&AMQ-rger.Entw&APw-rfe\nSent\nINBOX\n"
SUBSCRIBED = ["Archive/2025", "Ärger/Entwürfe", "Sent", "INBOX"]
IMAP_SUBSCRIBED = sorted(["Archive/2025", "&AMQ-rger/Entw&APw-rfe", "Sent", "INBOX"])


@pytest.fixture(scope="module")
def store(dovecot, tmp_path_factory):
    partitions = {"primary": dovecot.partition("primary")}
    for user in ("olga", "otto"):
        dovecot.add_user(user, partitions["primary"])
        client = dovecot.imap(user)
        try:
            for n, folder in enumerate(["INBOX", *FOLDERS]):
                if folder != "INBOX":
                    assert client.create(f'"{folder}"')[0] == "OK"
                message = f"From: s{n}@example.org\r\nSubject: {n}\r\n\r\nbody {n}\r\n".encode()
                assert client.append(f'"{folder}"', None,
                                     imaplib.Time2Internaldate(1700000000 + n), message)[0] == "OK"
        finally:
            client.logout()
    config = write_config(tmp_path_factory.mktemp("config"), partitions)
    return {"config": config, "partitions": partitions}


def maildir(store, user: str):
    return store["partitions"]["primary"] / user / "Maildir"


def put_subscriptions(store, user: str, text: str) -> None:
    """Write the file as a pre-V2 Dovecot left it: its mail uid, through a rename."""
    temp = maildir(store, user) / ".subscriptions.test"
    temp.write_text(text, encoding="ascii")
    os.chown(temp, MAIL_UID, MAIL_GID)
    os.replace(temp, maildir(store, user) / "subscriptions")


def subscribed(dovecot, user: str) -> tuple[list[str], list[str]]:
    """LSUB "" "*" and LIST (SUBSCRIBED) "" "*", names as IMAP sends them, sorted."""
    client = dovecot.imap(user)
    try:
        typ, lsub = client.lsub('""', "*")
        assert typ == "OK"
        typ, _ = client._simple_command("LIST", "(SUBSCRIBED)", '""', '"*"')
        assert typ == "OK"
        listed = client.untagged_responses.pop("LIST", [])
    finally:
        client.logout()

    def names(lines):
        out = []
        for line in lines:
            if not line:
                continue
            m = re.match(rb'\((?P<attrs>[^)]*)\) "/" (?P<name>.*)$', line)
            assert m, line
            name = m.group("name").decode()
            out.append(name[1:-1] if name.startswith('"') else name)
        return sorted(out)

    return names(lsub), names(listed)


def user_member(archive_path, user: str) -> dict:
    archive = read_archive(archive_path.read_bytes())
    members = [m.json() for m in archive.members if m.kind == "user"]
    return next(m for m in members if m["user"] == user)


def test_old_format_survives_backup_and_restore(dovecot, store, tmp_path):
    put_subscriptions(store, "olga", OLD_FORMAT)
    before = subscribed(dovecot, "olga")
    assert before == (IMAP_SUBSCRIBED, IMAP_SUBSCRIBED)     # Dovecot reads the old format

    archive = tmp_path / "olga.ims"
    run_cmd("imsbackup", "-f", str(archive), "/primary/user/olga", config_dir=store["config"],
            check_rc=0)
    assert user_member(archive, "olga")["subscriptions"] == SUBSCRIBED

    shutil.rmtree(maildir(store, "olga"))
    run_cmd("imsrestore", "-f", str(archive), "/primary/user/olga", config_dir=store["config"],
            check_rc=0)
    assert subscribed(dovecot, "olga") == before
    # a file that did not exist any more is written new, in the current format
    assert (maildir(store, "olga") / "subscriptions").read_text().startswith("V\t2\n\n")


def test_restore_adds_missing_names_in_the_old_format(dovecot, store, tmp_path):
    put_subscriptions(store, "otto", OLD_FORMAT)
    archive = tmp_path / "otto.ims"
    run_cmd("imsbackup", "-f", str(archive), "/primary/user/otto", config_dir=store["config"],
            check_rc=0)

    # since the backup the user unsubscribed all but two; the file is still the old one
    put_subscriptions(store, "otto", "Sent\nArchive.2025\n")
    assert subscribed(dovecot, "otto")[0] == ["Archive/2025", "Sent"]

    run_cmd("imsrestore", "-f", str(archive), "/primary/user/otto", config_dir=store["config"],
            check_rc=0)
    text = (maildir(store, "otto") / "subscriptions").read_text()
    assert text.startswith("Sent\nArchive.2025\n")           # old lines kept, no header
    assert "V\t2" not in text and "\t" not in text
    assert sorted(text.splitlines()) == sorted(OLD_FORMAT.splitlines())
    assert subscribed(dovecot, "otto") == (IMAP_SUBSCRIBED, IMAP_SUBSCRIBED)
