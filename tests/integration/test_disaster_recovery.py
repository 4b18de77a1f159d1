"""docs/disaster-recovery.md walked against a real Dovecot: the "database" (index files and
the UIDVALIDITY counter) copied at one time, the Maildirs later, with deliveries, flag
changes, expunges and a new folder in between; both put back; ``reconstruct -n -m`` finds
the problems, ``reconstruct -m`` repairs them, and IMAP then shows every folder exactly as
clients last saw it (same UIDVALIDITY, same UIDs, flags and bytes, every message once), with
modseqs above the ones clients cached, and Dovecot logs no complaint.  And: a duplicate UID
and a missing file planted in a live folder are found and repaired."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from pathlib import Path

import pytest
from conftest import run_cmd
from dovecot_server import MAIL_GID, MAIL_UID
from helpers import hold_uidlist_lock, imap_folders, imap_snapshot, write_config

from ims.reconstruct import read_index

pytestmark = pytest.mark.dovecot

USERS = ("rita", "sam")
FLAG_BITS = {"R": 0x01, "F": 0x02, "T": 0x04, "S": 0x08, "D": 0x10}    # mail_index_record
DATABASE = ("dovecot.index", "dovecot.list.index", "dovecot-uidvalidity")


def mail(n: int, note: str = "") -> bytes:
    return (f"From: s{n}@example.org\r\nSubject: dr{n} {note}\r\nMessage-ID: <dr{n}@t>\r\n\r\n"
            f"body {n} {note}\r\n").encode()


@pytest.fixture(scope="module")
def store(dovecot, tmp_path_factory):
    partition = dovecot.partition("primary")
    for user in (*USERS, "tom"):
        dovecot.add_user(user, partition)
    config = write_config(tmp_path_factory.mktemp("config"), {"primary": partition})
    return {"config": config, "partition": partition}


def reconstruct(store, *args: str, rc: int) -> dict:
    result = run_cmd("reconstruct", "--json", *args, config_dir=store["config"])
    report = json.loads(result.stdout)
    assert result.returncode == rc, (result.returncode, result.stderr.decode(), report)
    return report


def kinds(report: dict) -> set[tuple[str, str, str | None]]:
    return {(f["kind"], f["user"], f["folder"]) for f in report["problems"]}


def highest_modseqs(dovecot, user: str) -> dict[str, int]:
    client = dovecot.imap(user)
    try:
        result = {}
        for folder in imap_folders(client):
            typ, data = client.status(f'"{folder}"', "(HIGHESTMODSEQ)")
            assert typ == "OK", data
            result[folder] = int(re.search(rb"HIGHESTMODSEQ (\d+)", data[0]).group(1))
        return result
    finally:
        client.logout()


def complaints(dovecot, since: int, users: tuple[str, ...]) -> list[str]:
    """Dovecot's log lines about these users since byte ``since``: errors, warnings and
    anything about corruption (a resync, a reappeared message, a lowered next UID)."""
    log = Path(dovecot.root) / "log" / "dovecot.log"
    text = log.read_bytes()[since:].decode("utf-8", "replace")
    return [line for line in text.splitlines()
            if any(f"({user})" in line or f"({user}@" in line for user in users)
            and re.search(r"Error|Panic|Fatal|Warning|orrupt|reappeared|lowered|resync", line)]


def log_size(dovecot) -> int:
    return (Path(dovecot.root) / "log" / "dovecot.log").stat().st_size


def is_database(name: str) -> bool:
    return name.startswith(DATABASE)


def copy_database(maildir: Path, target: Path) -> int:
    """The "database" of one user: every index file and the UIDVALIDITY counter, mtimes
    kept (as a snapshot or cp -a keeps them)."""
    copied = 0
    for directory, _, files in os.walk(maildir):
        for name in files:
            if is_database(name):
                source = Path(directory) / name
                destination = target / source.relative_to(maildir.parent)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, destination)
                copied += 1
    return copied


def copy_partition(maildir: Path, target: Path) -> None:
    """The "partition" part of one user: the Maildir without the database files."""
    shutil.copytree(maildir, target / maildir.name, symlinks=True,
                    ignore=lambda d, names: [n for n in names if is_database(n)])


def chown_tree(root: Path) -> None:
    for directory, dirs, files in os.walk(root):
        os.lchown(directory, MAIL_UID, MAIL_GID)
        for name in dirs + files:
            os.lchown(os.path.join(directory, name), MAIL_UID, MAIL_GID)


def change(dovecot, user: str, command: str, *args: str, folder: str = "INBOX") -> None:
    client = dovecot.imap(user)
    try:
        assert client.select(f'"{folder}"')[0] == "OK"
        assert client.uid(command, *args)[0] == "OK"
        if "\\Deleted" in " ".join(args):
            client.expunge()
    finally:
        client.logout()


def test_runbook_snapshots_of_different_times_restored_and_reconstructed(dovecot, store,
                                                                         tmp_path):
    partition = store["partition"]
    maildirs = {user: partition / user / "Maildir" for user in USERS}
    # -- a store in use: mail, folders, flags, an expunge (which leaves a uidlist line)
    for n in range(1, 13):
        dovecot.lmtp_deliver(mail(n), ["rita"] if n % 3 else ["rita", "sam"])
    client = dovecot.imap("rita")
    for folder in ("Work", "Work/2025"):
        assert client.create(f'"{folder}"')[0] == "OK"
        client.subscribe(f'"{folder}"')
    client.select("INBOX")
    client.uid("COPY", "1:4", "Work")
    client.uid("STORE", "1:3", "+FLAGS", r"(\Seen $Label1)")
    client.append('"Work/2025"', r"(\Flagged)", None, mail(40))
    client.logout()
    change(dovecot, "rita", "STORE", "5", "+FLAGS", r"(\Deleted)")
    change(dovecot, "sam", "STORE", "1:*", "+FLAGS", r"(\Seen)")
    # a healthy live store checks clean (Dovecot's expunged line is a notice)
    report = reconstruct(store, "-n", "/", rc=0)
    assert any(f["kind"] == "expunged-lines" for f in report["notices"])

    # -- the database first (index files, UIDVALIDITY counter) ...
    database = tmp_path / "database"
    assert sum(copy_database(maildirs[user], database / user) for user in USERS) > 4
    # ... then, later, the partition; meanwhile mail arrives, flags change, mail goes
    for n in range(13, 17):
        dovecot.lmtp_deliver(mail(n, "after the database"), ["rita", "sam"])
    change(dovecot, "rita", "STORE", "1:2", "-FLAGS", r"(\Seen)")
    change(dovecot, "rita", "STORE", "6", "+FLAGS", r"(\Answered \Flagged)")
    change(dovecot, "rita", "STORE", "7,8", "+FLAGS", r"(\Deleted)")
    change(dovecot, "rita", "STORE", "2", "+FLAGS", r"(\Seen)", folder="Work")
    client = dovecot.imap("rita")
    assert client.create('"Projects"')[0] == "OK"       # a UIDVALIDITY the counter copy lacks
    client.subscribe('"Projects"')
    client.append('"Projects"', None, None, mail(41))
    client.logout()
    clients_saw = {user: imap_snapshot(dovecot, user) for user in USERS}
    modseqs_seen = {user: highest_modseqs(dovecot, user) for user in USERS}
    partition_copy = tmp_path / "partition"
    for user in USERS:
        copy_partition(maildirs[user], partition_copy / user)

    # -- the disaster, and the restore of both copies
    for user in USERS:
        shutil.rmtree(maildirs[user])
    for user in USERS:
        shutil.copytree(partition_copy / user / "Maildir", maildirs[user], symlinks=True)
        shutil.copytree(database / user / "Maildir", maildirs[user], dirs_exist_ok=True)
        chown_tree(maildirs[user])
    restored_at = log_size(dovecot)

    # -- reconstruct -n -m finds what disagrees, named by folder
    report = reconstruct(store, "-n", "-m", rc=1)
    found = kinds(report)
    for folder in ("INBOX", "Work"):
        assert ("index-stale", "rita", folder) in found, found
    assert ("index-missing", "rita", "Projects") in found      # created after the database
    assert ("index-stale", "sam", "INBOX") in found
    assert ("uidvalidity-counter", "rita", None) in found
    assert all(f["path"].startswith(str(partition)) and f["advice"] for f in report["problems"])
    # a check changes nothing
    assert reconstruct(store, "-n", "-m", rc=1)["problems"] == report["problems"]

    # -- reconstruct -m repairs, while Dovecot runs; then the store checks clean
    report = reconstruct(store, "-m", rc=0)
    assert report["problems"] == [] and report["actions"]
    assert {a["kind"] for a in report["actions"]} >= {"index", "uidvalidity-counter"}
    replaced = {(f["user"], f["folder"]) for f in report["found"]
                if f["kind"] in ("index-stale", "index-missing")}
    assert ("rita", "Work/2025") not in replaced            # unchanged since the database copy
    reconstruct(store, "-n", "-m", rc=0)
    reconstruct(store, "-n", "/", rc=0)

    # -- IMAP: every folder as clients last saw it, with modseqs above what they cached
    for user in USERS:
        after = imap_snapshot(dovecot, user)
        assert after == clients_saw[user], user
        for folder, messages in ((f, v["messages"]) for f, v in after.items()
                                 if f != "<subscribed>"):
            bodies = [m[3] for m in messages.values()]
            assert len(bodies) == len(set(bodies)), (user, folder)     # each message once
        # a replaced index restarts above any modseq a client cached (QRESYNC clients
        # resync); a kept one is the very index those clients saw
        modseqs = highest_modseqs(dovecot, user)
        for folder, seen in modseqs_seen[user].items():
            if (user, folder) in replaced:
                assert modseqs[folder] > seen, (user, folder)
            else:
                assert modseqs[folder] == seen, (user, folder)
    assert complaints(dovecot, restored_at, USERS) == []
    # the indexes Dovecot rebuilt agree with the uidlists: still clean, also with -m
    reconstruct(store, "-n", "-m", rc=0)
    for user in USERS:
        for directory in [maildirs[user], *maildirs[user].glob(".*")]:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                view = read_index(fd)
            finally:
                os.close(fd)
            folder = "INBOX" if directory == maildirs[user] else \
                directory.name[1:].replace(".", "/")
            # the index as reconstruct reads it is what IMAP shows: UIDs and system flags
            expected = {uid: sum(FLAG_BITS[f] for f in message[0])
                        for uid, message in clients_saw[user][folder]["messages"].items()}
            assert view.uids is not None and {
                uid: flags & 0x1F for uid, flags in view.uids.items()} == expected, (user, folder)
    # the UIDVALIDITY counter is past every folder's: a new folder gets one of its own
    client = dovecot.imap("rita")
    assert client.create('"Fresh"')[0] == "OK"
    typ, data = client.status('"Fresh"', "(UIDVALIDITY)")
    client.logout()
    fresh = int(re.search(rb"UIDVALIDITY (\d+)", data[0]).group(1))
    assert fresh not in {v["uidvalidity"] for k, v in clients_saw["rita"].items()
                         if k != "<subscribed>"}
    assert complaints(dovecot, restored_at, USERS) == []


def test_a_duplicate_uid_and_a_missing_file_in_a_live_folder(dovecot, store):
    for n in range(50, 58):
        dovecot.lmtp_deliver(mail(n, "tom"), ["tom"])
    change(dovecot, "tom", "STORE", "1:4", "+FLAGS", r"(\Seen)")
    before = imap_snapshot(dovecot, "tom")["INBOX"]
    assert sorted(before["messages"]) == list(range(1, 9))
    inbox = store["partition"] / "tom" / "Maildir"
    # planted under Dovecot's lock, as a broken tool would: UID 6's line says 3, UID 5's
    # file is gone
    lock = hold_uidlist_lock(inbox)
    try:
        text = (inbox / "dovecot-uidlist").read_text()
        lines = text.splitlines()
        sixth = next(i for i, line in enumerate(lines) if line.startswith("6 "))
        lines[sixth] = "3 " + lines[sixth].split(" ", 1)[1]
        (inbox / "dovecot-uidlist.planted").write_text("\n".join(lines) + "\n")
        os.rename(inbox / "dovecot-uidlist.planted", inbox / "dovecot-uidlist")
        fifth = next(line for line in lines if line.startswith("5 ")).rsplit(":", 1)[1]
        [gone] = [p for p in (inbox / "cur").iterdir() if p.name.startswith(fifth)] + \
            [p for p in (inbox / "new").iterdir() if p.name.startswith(fifth)]
        gone.unlink()
    finally:
        lock.unlink()
    planted_at = log_size(dovecot)

    report = reconstruct(store, "-n", "/primary/user/tom", rc=1)
    assert {("uid-duplicate", "tom", "INBOX"), ("file-missing", "tom", "INBOX")} <= kinds(report)
    report = reconstruct(store, "/primary/user/tom", rc=0)
    assert report["problems"] == []
    reconstruct(store, "-n", "/primary/user/tom", rc=0)

    after = imap_snapshot(dovecot, "tom")["INBOX"]
    assert after["uidvalidity"] == before["uidvalidity"]
    by_body = {m[3]: uid for uid, m in after["messages"].items()}
    assert len(by_body) == len(after["messages"]) == 7            # every message once
    for uid, message in before["messages"].items():
        if uid == 5:
            assert message[3] not in by_body                      # its file is gone
        elif uid == 6:
            assert by_body[message[3]] >= before["uidnext"]       # a new UID, above all
        else:
            assert by_body[message[3]] == uid, uid                # kept (3 by the first line)
            assert after["messages"][uid][0] == message[0]        # and its flags
    assert complaints(dovecot, planted_at, ("tom",)) == []
    reconstruct(store, "-n", "-m", "/primary/user/tom", rc=0)


def test_the_other_order_an_index_newer_than_the_mail(dovecot, store, tmp_path):
    """Copies taken the other way round (Maildir first, index later): the index knows
    a message expunged after the Maildir copy and UIDs handed out after it.  Dovecot alone
    would give the expunged message a new UID ("reappeared") and could hand out those UIDs
    again; after reconstruct -m the message keeps its UID and no UID is handed out twice."""
    dovecot.add_user("uma", store["partition"])
    maildir = store["partition"] / "uma" / "Maildir"
    for n in range(60, 66):
        dovecot.lmtp_deliver(mail(n, "uma"), ["uma"])
    change(dovecot, "uma", "STORE", "1", "+FLAGS", r"(\Seen)")
    at_copy = imap_snapshot(dovecot, "uma")["INBOX"]
    copy_partition(maildir, tmp_path / "partition")
    change(dovecot, "uma", "STORE", "2", "+FLAGS", r"(\Deleted)")
    for n in range(66, 68):
        dovecot.lmtp_deliver(mail(n, "uma, later"), ["uma"])
    seen = imap_snapshot(dovecot, "uma")["INBOX"]
    assert seen["uidnext"] == 9 and 2 not in seen["messages"]
    copy_database(maildir, tmp_path / "database")
    shutil.rmtree(maildir)
    shutil.copytree(tmp_path / "partition" / "Maildir", maildir, symlinks=True)
    shutil.copytree(tmp_path / "database" / "Maildir", maildir, dirs_exist_ok=True)
    chown_tree(maildir)
    restored_at = log_size(dovecot)

    report = reconstruct(store, "-n", "-m", "/primary/user/uma", rc=1)
    found = kinds(report)
    assert {("index-stale", "uma", "INBOX"), ("next-uid", "uma", "INBOX")} <= found
    reconstruct(store, "-m", "/primary/user/uma", rc=0)
    reconstruct(store, "-n", "-m", "/primary/user/uma", rc=0)
    after = imap_snapshot(dovecot, "uma")["INBOX"]
    # the Maildir's state, every UID as it was then (UID 2 included), and a next UID past
    # every UID clients saw
    assert after["uidvalidity"] == at_copy["uidvalidity"]
    assert after["messages"] == at_copy["messages"]
    assert after["uidnext"] >= seen["uidnext"]
    assert complaints(dovecot, restored_at, ("uma",)) == []
    dovecot.lmtp_deliver(mail(68, "uma, after the restore"), ["uma"])
    newest = imap_snapshot(dovecot, "uma")["INBOX"]
    assert max(newest["messages"]) >= seen["uidnext"]
    reconstruct(store, "-n", "/primary/user/uma", rc=0)


def test_a_busy_live_store_checks_clean_and_is_left_alone(dovecot, store):
    """Deliveries, flag changes, expunges and copies all the time: a check finds nothing
    (an expunge or a rename in flight is not a problem) and a repair changes nothing."""
    users = ("vic", "wen")
    for user in users:
        dovecot.add_user(user, store["partition"])
        dovecot.lmtp_deliver(mail(70, user), [user])
        client = dovecot.imap(user)
        assert client.create('"Work"')[0] == "OK"
        client.logout()
    stop = threading.Event()
    failures: list[str] = []

    def busy(user: str) -> None:
        n = 1
        try:
            while not stop.is_set():
                n += 1
                dovecot.lmtp_deliver(mail(70 + n, user), [user])
                client = dovecot.imap(user)
                client.select("INBOX")
                client.uid("STORE", str(n - 1), "+FLAGS", r"(\Seen)")
                if n % 3 == 0:
                    client.uid("STORE", str(n - 2), "+FLAGS", r"(\Deleted)")
                    client.expunge()
                if n % 4 == 0:
                    client.uid("COPY", str(n), "Work")
                client.logout()
        except Exception as exc:       # noqa: BLE001 - reported by the test thread
            failures.append(repr(exc))

    started_at = log_size(dovecot)
    workers = [threading.Thread(target=busy, args=(user,)) for user in users]
    for worker in workers:
        worker.start()
    try:
        for run in range(8):
            args = ("-n",) if run % 2 == 0 else ()
            report = reconstruct(store, *args, "/primary/user/vic", "/primary/user/wen", rc=0)
            assert report["problems"] == [] and report["actions"] == [], report
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert failures == []
    assert complaints(dovecot, started_at, users) == []
    reconstruct(store, "-n", "/primary/user/vic", "/primary/user/wen", rc=0)


def test_a_snapshot_older_than_what_clients_saw_needs_the_uid_margin(dovecot, store, tmp_path):
    """One consistent snapshot, then mail clients saw, then the restore: the snapshot's
    uidlists would hand those UIDs out again to other messages, and its indexes restart
    modseqs below what clients cached.  ``reconstruct -m --uid-margin`` prevents both."""
    dovecot.add_user("xia", store["partition"])
    maildir = store["partition"] / "xia" / "Maildir"
    for n in range(90, 95):
        dovecot.lmtp_deliver(mail(n, "xia"), ["xia"])
    change(dovecot, "xia", "STORE", "1", "+FLAGS", r"(\Seen)")
    shutil.copytree(maildir, tmp_path / "snapshot" / "Maildir", symlinks=True)
    at_snapshot = imap_snapshot(dovecot, "xia")["INBOX"]
    for n in range(95, 97):
        dovecot.lmtp_deliver(mail(n, "xia, after the snapshot"), ["xia"])
    change(dovecot, "xia", "STORE", "2", "+FLAGS", r"(\Flagged)")
    seen = imap_snapshot(dovecot, "xia")["INBOX"]
    seen_modseq = highest_modseqs(dovecot, "xia")["INBOX"]
    assert seen["uidnext"] == 8
    shutil.rmtree(maildir)
    shutil.copytree(tmp_path / "snapshot" / "Maildir", maildir, symlinks=True)
    chown_tree(maildir)
    restored_at = log_size(dovecot)

    reconstruct(store, "-n", "-m", "/primary/user/xia", rc=0)      # consistent, and old
    report = reconstruct(store, "-m", "--uid-margin", "1000", "/primary/user/xia", rc=0)
    assert {a["kind"] for a in report["actions"]} >= {"uidlist", "index"}
    after = imap_snapshot(dovecot, "xia")["INBOX"]
    assert after["uidvalidity"] == at_snapshot["uidvalidity"]
    assert after["messages"] == at_snapshot["messages"]              # every UID kept
    assert after["uidnext"] == at_snapshot["uidnext"] + 1000
    assert highest_modseqs(dovecot, "xia")["INBOX"] > seen_modseq
    dovecot.lmtp_deliver(mail(97, "xia, after the restore"), ["xia"])
    newest = imap_snapshot(dovecot, "xia")["INBOX"]
    assert min(set(newest["messages"]) - set(after["messages"])) >= seen["uidnext"]
    assert complaints(dovecot, restored_at, ("xia",)) == []
    reconstruct(store, "-n", "-m", "/primary/user/xia", rc=0)
