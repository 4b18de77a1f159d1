"""imsbackup against a real Dovecot: what the archive holds must match what IMAP reports."""

from __future__ import annotations

import imaplib
import os
import subprocess
import time
from collections import defaultdict

import pytest
from archive_reader import read_archive
from conftest import run_cmd
from helpers import (folder_members, hold_uidlist_lock, imap_folders, imap_messages,
                     member_bytes, mutf7_decode, since_arg, write_config)

USERS = {"amy": "primary", "bob": "primary", "mike": "primary", "42zed": "secondary",
         "nina": "secondary"}
UMLAUT_FOLDER = "&AMQ-rger/Entw&APw-rfe"   # Ärger/Entwürfe


def mail(n: int, extra: str = "") -> bytes:
    body = "".join(f"line {i} of message {n}\r\n" for i in range(n % 7 + 1))
    return (f"From: sender{n}@example.org\r\nSubject: test {n} {extra}\r\n"
            f"Message-ID: <m{n}@test>\r\n\r\n{body}").encode()


@pytest.fixture(scope="module")
def store(dovecot, tmp_path_factory):
    partitions = {"primary": dovecot.partition("primary"),
                  "secondary": dovecot.partition("secondary")}
    for user, partition in USERS.items():
        dovecot.add_user(user, partitions[partition])
    config = write_config(tmp_path_factory.mktemp("config"), partitions)

    # one delivery to three users on two partitions: one inode, three links
    assert all(r[0] == 250 for r in dovecot.lmtp_deliver(mail(1), ["amy", "bob", "42zed"]).values())
    for n in range(2, 8):
        dovecot.lmtp_deliver(mail(n), ["amy"])
    for n in range(8, 11):
        dovecot.lmtp_deliver(mail(n), ["bob"])
    dovecot.lmtp_deliver(mail(11), ["mike", "nina"])
    dovecot.lmtp_deliver(mail(12), ["42zed"])

    amy = dovecot.imap("amy")
    amy.select("INBOX")
    for folder in ("Sent", UMLAUT_FOLDER, "Archive/2024", "Trash"):
        assert amy.create(f'"{folder}"')[0] == "OK"
        amy.subscribe(f'"{folder}"')
    assert amy.uid("COPY", "1:3", "Sent")[0] == "OK"           # COPY makes hard links
    assert amy.uid("COPY", "2", f'"{UMLAUT_FOLDER}"')[0] == "OK"
    amy.uid("STORE", "1", "+FLAGS", r"(\Seen \Flagged $Forwarded Junk)")
    amy.uid("STORE", "2", "+FLAGS", r"(\Answered work)")
    amy.uid("STORE", "3", "+FLAGS", r"(\Draft)")
    amy.uid("STORE", "4", "+FLAGS", r"(\Deleted)")
    amy.expunge()
    amy.append("Archive/2024", r"(\Seen old)", imaplib.Time2Internaldate(1700000000), mail(20))
    amy.append("Trash", None, imaplib.Time2Internaldate(1700000100), mail(21))
    amy.logout()
    bob = dovecot.imap("bob")
    bob.select("INBOX")
    bob.uid("STORE", "1", "+FLAGS", r"(\Seen)")
    bob.logout()

    # a delivery while the uidlist is locked is saved in new/ without a UID
    bob_maildir = partitions["primary"] / "bob" / "Maildir"
    lock = hold_uidlist_lock(bob_maildir)
    try:
        dovecot.lmtp_deliver(mail(30), ["bob"])
    finally:
        lock.unlink()
    return {"config": config, "partitions": partitions}


def test_full_backup_matches_imap(dovecot, store, tmp_path):
    archive_path = tmp_path / "full.ims"
    result = run_cmd("imsbackup", "-f", str(archive_path), "--json", "/",
                     config_dir=store["config"], check_rc=0)
    archive = read_archive(archive_path.read_bytes())
    folders = folder_members(archive)
    uid_less = 0
    checked = 0
    for user, partition in USERS.items():
        client = dovecot.imap(user)
        try:
            for imap_name in imap_folders(client):
                folder = mutf7_decode(imap_name)
                state, members = folders[(partition, user, folder)]
                by_base = {m.pax["IMS.basename"]: m for m in members}
                status, messages = imap_messages(client, imap_name)
                assert state["uidvalidity"] == status["UIDVALIDITY"], (user, folder)
                no_uid = [m for m in members if "IMS.uid" not in m.pax]
                uid_less += len(no_uid)
                # Dovecot hands the UID-less messages the next UIDs when IMAP looks
                assert status["UIDNEXT"] == state["next_uid"] + len(no_uid), (user, folder)
                assert sorted(by_base) == sorted(m["guid"] for m in messages), (user, folder)
                for msg in messages:
                    member = by_base[msg["guid"]]
                    if "IMS.uid" in member.pax:
                        assert int(member.pax["IMS.uid"]) == msg["uid"]
                    else:
                        assert msg["uid"] >= state["next_uid"]
                    assert member.pax["IMS.flags"] == msg["flags"], (user, folder, msg["uid"])
                    assert sorted(member.pax["IMS.keywords"].split()) == msg["keywords"]
                    assert int(member.pax["IMS.internaldate"]) == msg["internaldate"]
                    data = member_bytes(archive, member)
                    assert data.replace(b"\n", b"\r\n") == msg["body"]
                    assert data.count(b"\n") + len(data) == msg["size"]
                    checked += 1
        finally:
            client.logout()
    assert uid_less == 1          # the delivery made under the lock
    assert checked == archive.trailer["counts"]["messages"] + archive.trailer["counts"]["links"]
    summary = __import__("json").loads(result.stdout)
    assert summary["exit_code"] == 0 and summary["messages"] == archive.trailer["counts"]["messages"]

    # subscriptions and groups recorded per user
    users = {m.json()["user"]: m.json() for m in archive.members if m.kind == "user"}
    assert "Ärger/Entwürfe" in users["amy"]["subscriptions"]
    assert users["amy"]["group"] == "groupA" and users["42zed"]["group"] == "groupC"
    assert users["nina"]["group"] == "groupB"


def test_each_shared_inode_is_stored_once(store, tmp_path):
    archive_path = tmp_path / "full.ims"
    run_cmd("imsbackup", "-f", str(archive_path), "/", config_dir=store["config"], check_rc=0)
    archive = read_archive(archive_path.read_bytes())
    inode_of: dict[str, int] = {}
    for partition, root in store["partitions"].items():
        for dirpath, _dirs, files in os.walk(root):
            if os.path.basename(dirpath) not in ("cur", "new"):
                continue
            for name in files:
                st = os.stat(os.path.join(dirpath, name))
                if st.st_nlink > 1:
                    inode_of[name.split(":")[0]] = st.st_ino
    assert inode_of, "the fixture should have made hard links"
    data_members: dict[int, int] = defaultdict(int)
    link_members: dict[int, int] = defaultdict(int)
    for member in archive.messages():
        base = member.pax["IMS.basename"]
        if base in inode_of:
            if member.typeflag == b"0":
                data_members[inode_of[base]] += 1
            else:
                link_members[inode_of[base]] += 1
    assert set(data_members) == set(inode_of.values())
    assert all(count == 1 for count in data_members.values())
    # message 1 went to amy, bob and 42zed and was copied to amy's Sent: 3 link members
    assert max(link_members.values()) >= 3

    # -i writes full copies: no link member at all
    full_copies = tmp_path / "copies.ims"
    run_cmd("imsbackup", "-i", "-f", str(full_copies), "/", config_dir=store["config"], check_rc=0)
    copies = read_archive(full_copies.read_bytes())
    assert all(m.typeflag == b"0" for m in copies.messages())
    assert len(copies.messages()) == len(archive.messages())


def test_gnu_tar_lists_the_archive(store, tmp_path):
    archive_path = tmp_path / "full.ims"
    run_cmd("imsbackup", "-f", str(archive_path), "/primary/groupA/amy", config_dir=store["config"],
            check_rc=0)
    listing = subprocess.run(["tar", "-tvf", str(archive_path), "--warning=no-unknown-keyword"],
                             capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    names = [line.split(None, 5)[5] for line in listing.stdout.splitlines()]
    assert names[0] == ".ims/header.json" and names[-1] == ".ims/trailer.json"
    assert any(n.startswith("primary/amy/Ärger/Entwürfe/") for n in names)
    archive = read_archive(archive_path.read_bytes())
    assert len(names) == len(archive.members)


def test_folder_name_and_exclusions(store, tmp_path):
    config = store["config"]
    conf = config / "msg.conf"
    original = conf.read_text()
    run_cmd("configutil", "-o", "local.store.backup.exclude", "-v", "Trash%Archive",
            config_dir=config, check_rc=0)
    try:
        archive_path = tmp_path / "amy.ims"
        result = run_cmd("imsbackup", "-f", str(archive_path), "--json", "/primary/groupA/amy",
                         config_dir=config, check_rc=0)
        folders = {k[2] for k in folder_members(read_archive(archive_path.read_bytes()))}
        assert folders == {"INBOX", "Sent", "Ärger/Entwürfe"}
        summary = __import__("json").loads(result.stdout)
        assert "/primary/groupA/amy/Trash" in summary["excluded_folders"]
        assert "/primary/groupA/amy/Archive/2024" in summary["excluded_folders"]

        # named in full, an excluded folder is taken; -x takes them all
        archive_path = tmp_path / "trash.ims"
        run_cmd("imsbackup", "-f", str(archive_path), "/primary/groupA/amy/Trash",
                config_dir=config, check_rc=0)
        assert {k[2] for k in folder_members(read_archive(archive_path.read_bytes()))} == {"Trash"}
        run_cmd("imsbackup", "-x", "-f", str(archive_path), "/primary/user/amy",
                config_dir=config, check_rc=0)
        folders = {k[2] for k in folder_members(read_archive(archive_path.read_bytes()))}
        assert "Trash" in folders and "Archive/2024" in folders

        # -e IMAP_MODIFIED-UTF-7 names the folder as it is on disk
        run_cmd("imsbackup", "-e", "IMAP_MODIFIED-UTF-7", "-f", str(archive_path),
                f"/primary/groupA/amy/{UMLAUT_FOLDER}", config_dir=config, check_rc=0)
        assert {k[2] for k in folder_members(read_archive(archive_path.read_bytes()))} == {
            "Ärger/Entwürfe"}
    finally:
        conf.write_text(original)


def test_groups_partitions_and_names_file(store, tmp_path):
    config = store["config"]
    archive_path = tmp_path / "g.ims"
    run_cmd("imsbackup", "-f", str(archive_path), "/*/groupB", config_dir=config, check_rc=0)
    users = {k[1] for k in folder_members(read_archive(archive_path.read_bytes()))}
    assert users == {"mike", "nina"}
    run_cmd("imsbackup", "-f", str(archive_path), "/secondary", config_dir=config, check_rc=0)
    users = {k[1] for k in folder_members(read_archive(archive_path.read_bytes()))}
    assert users == {"42zed", "nina"}
    names = tmp_path / "names.txt"
    names.write_text("# two users and a folder\n/primary/groupA/bob\n\n/primary/user/amy/Sent\n")
    run_cmd("imsbackup", "-u", str(names), "-f", str(archive_path), "/secondary/groupC",
            config_dir=config, check_rc=0)
    keys = set(folder_members(read_archive(archive_path.read_bytes())))
    assert {(p, u) for p, u, _ in keys} == {("primary", "bob"), ("primary", "amy"), ("secondary", "42zed")}
    assert {f for p, u, f in keys if u == "amy"} == {"Sent"}


def test_incremental_takes_new_copied_and_flag_changed_messages(dovecot, store, tmp_path):
    config = store["config"]
    # -d has one-second resolution: start the "since" on a fresh second
    time.sleep(1.05 - time.time() % 1)
    since = time.time()
    time.sleep(0.05)
    dovecot.lmtp_deliver(mail(40), ["nina"])
    mike = dovecot.imap("mike")
    mike.select("INBOX")
    mike.uid("STORE", "1", "+FLAGS", r"(\Flagged)")
    mike.create("Kept")
    mike.uid("COPY", "1", "Kept")
    mike.logout()

    archive_path = tmp_path / "incr.ims"
    result = run_cmd("imsbackup", "-d", since_arg(since), "-f", str(archive_path), "--json", "/",
                     config_dir=config, check_rc=0)
    archive = read_archive(archive_path.read_bytes())
    folders = folder_members(archive)
    taken = {(k[1], k[2], m.pax["IMS.basename"]): m for k, (_, ms) in folders.items() for m in ms}
    # every folder is there, changed or not: a state member, or (unchanged) an entry of its
    # user member, with no member of its own (archive format version 2)
    unchanged = {(p, u, f) for p, u, f, _ in archive.unchanged_folders()}
    assert ("primary", "amy", "Sent") in unchanged and ("primary", "amy", "Sent") not in folders
    assert not unchanged & set(folders)
    for user in (m.json() for m in archive.members if m.kind == "user"):
        assert set(user["folders"]) == {f for p, u, f in unchanged | set(folders)
                                        if (p, u) == (user["partition"], user["user"])}
    nina_new = [k for k in taken if k[0] == "nina" and k[1] == "INBOX"]
    assert any(b"message 40" in member_bytes(archive, taken[k]) for k in nina_new)
    mike_inbox = [m for k, m in taken.items() if k[:2] == ("mike", "INBOX")]
    assert any("F" in m.pax["IMS.flags"] for m in mike_inbox)
    assert [k for k in taken if k[:2] == ("mike", "Kept")]
    # untouched users contribute no message
    assert not [k for k in taken if k[0] in ("amy", "bob", "42zed")]
    summary = __import__("json").loads(result.stdout)
    assert summary["unchanged_folders"] == len(unchanged) >= 5
    assert archive.header["since"] is not None
