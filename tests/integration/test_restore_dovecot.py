"""imsrestore against a real Dovecot: IMAP before the backup must equal IMAP after the restore."""

from __future__ import annotations

import imaplib
import json
import os
import shutil
import subprocess
import time

import pytest
from conftest import command, run_cmd
from helpers import imap_snapshot as snapshot
from helpers import restored_whole, write_config

USERS = {"ann": "primary", "ben": "primary", "7cat": "secondary", "dora": "primary",
         "eve": "secondary", "fred": "primary"}


def mail(n: int, note: str = "") -> bytes:
    lines = "".join(f"line {i} of {n}\r\n" for i in range(n % 5 + 1))
    return f"From: s{n}@example.org\r\nSubject: r{n} {note}\r\nMessage-ID: <r{n}@t>\r\n\r\n{lines}".encode()




@pytest.fixture(scope="module")
def store(dovecot, tmp_path_factory):
    partitions = {"primary": dovecot.partition("primary"),
                  "secondary": dovecot.partition("secondary")}
    for user, partition in USERS.items():
        dovecot.add_user(user, partitions[partition])
    config = write_config(tmp_path_factory.mktemp("config"), partitions)
    # one delivery to ann, ben and 7cat: one inode (Sun's partial-restore examples)
    dovecot.lmtp_deliver(mail(1, "shared"), ["ann", "ben", "7cat"])
    for n in range(2, 12):
        dovecot.lmtp_deliver(mail(n), [["ann", "ben", "dora", "eve", "fred"][n % 5]])
    for user in ("ann", "dora", "fred"):
        client = dovecot.imap(user)
        client.select("INBOX")
        for folder in ("Work", "Work/2025", "&AMQ-rger"):
            client.create(f'"{folder}"')
            client.subscribe(f'"{folder}"')
        client.uid("COPY", "1:*", "Work")
        client.uid("STORE", "1", "+FLAGS", r"(\Seen \Flagged $Forwarded project)")
        client.append("Work/2025", r"(\Answered later)", imaplib.Time2Internaldate(1700001000),
                      mail(50, user))
        client.append("&AMQ-rger", None, imaplib.Time2Internaldate(1700002000), mail(51, user))
        client.logout()
    return {"config": config, "partitions": partitions}


def maildir(store, user: str):
    return store["partitions"][USERS[user]] / user / "Maildir"


def backup(store, path, *names: str, since: str | None = None) -> None:
    args = ["-f", str(path), *names] if since is None else ["-d", since, "-f", str(path), *names]
    run_cmd("imsbackup", *args, config_dir=store["config"], check_rc=0)


def restore(store, *args: str, rc: int = 0, **kwargs) -> subprocess.CompletedProcess:
    return run_cmd("imsrestore", *args, config_dir=store["config"], check_rc=rc, **kwargs)


def files_owned_by_mail_uid(root) -> bool:
    return all(os.lstat(os.path.join(d, n)).st_uid == 5000
               for d, dirs, files in os.walk(root) for n in dirs + files)


def test_deleted_user_comes_back_exactly(dovecot, store, tmp_path):
    before = snapshot(dovecot, "dora")
    archive = tmp_path / "dora.ims"
    backup(store, archive, "/primary/user/dora")
    shutil.rmtree(maildir(store, "dora"))
    result = restore(store, "-f", str(archive), "--json", "/primary/groupA/dora")
    summary = json.loads(result.stdout)
    assert summary["folders_whole"] == 4 and summary["exit_code"] == 0
    assert snapshot(dovecot, "dora") == restored_whole(before)
    assert files_owned_by_mail_uid(maildir(store, "dora"))
    assert not list((maildir(store, "dora").parent).glob(".ims-restore*"))


def test_deleted_folder_comes_back_with_its_uidvalidity(dovecot, store, tmp_path):
    before = snapshot(dovecot, "fred")
    archive = tmp_path / "fred.ims"
    backup(store, archive, "/primary/user/fred")
    client = dovecot.imap("fred")
    assert client.delete('"Work/2025"')[0] == "OK"
    assert client.delete('"&AMQ-rger"')[0] == "OK"
    client.logout()
    restore(store, "-f", str(archive), "/primary/user/fred/Work/2025", "/primary/user/fred/Ärger")
    assert snapshot(dovecot, "fred") == restored_whole(before, ["Work/2025", "&AMQ-rger"])


def test_existing_folder_gets_missing_mail_as_new_mail(dovecot, store, tmp_path):
    archive = tmp_path / "eve.ims"
    backup(store, archive, "/secondary/user/eve")
    before = snapshot(dovecot, "eve")["INBOX"]
    gone_uid = min(before["messages"])
    client = dovecot.imap("eve")
    client.select("INBOX")
    client.uid("STORE", str(gone_uid), "+FLAGS", r"(\Deleted)")
    client.expunge()
    client.logout()
    dovecot.lmtp_deliver(mail(60, "after the backup"), ["eve"])
    middle = snapshot(dovecot, "eve")["INBOX"]

    restore(store, "-f", str(archive), "/secondary/user/eve/INBOX")
    after = snapshot(dovecot, "eve")["INBOX"]
    assert after["uidvalidity"] == before["uidvalidity"]
    # mail that stayed, and mail that arrived since, keep their UIDs
    for uid, message in middle["messages"].items():
        assert after["messages"][uid][3] == message[3]
    # the expunged message is back once, as new mail above every UID handed out before
    returned = [uid for uid, m in after["messages"].items() if m[3] == before["messages"][gone_uid][3]]
    assert len(returned) == 1 and returned[0] >= middle["uidnext"]
    bodies = [m[3] for m in after["messages"].values()]
    assert len(bodies) == len(set(bodies)) == len(middle["messages"]) + 1
    # a second run finds everything already there
    result = restore(store, "-f", str(archive), "--json", "/secondary/user/eve/INBOX")
    assert json.loads(result.stdout)["already_there"] == len(before["messages"])
    assert snapshot(dovecot, "eve")["INBOX"] == after


def shared_file(store, user: str):
    for path in (maildir(store, user) / "cur").iterdir():
        if b"shared" in path.read_bytes():
            return path
    for path in (maildir(store, user) / "new").iterdir():
        if b"shared" in path.read_bytes():
            return path
    raise AssertionError(f"{user} has no shared message")


def test_sun_partial_restore_examples(dovecot, store, tmp_path):
    snapshots = {u: snapshot(dovecot, u) for u in ("ann", "ben", "7cat")}
    full = tmp_path / "full.ims"
    backup(store, full, "/")
    # Example 1: back up B and C, delete both, restore: one inode again, a new one
    bc = tmp_path / "bc.ims"
    backup(store, bc, "/primary/user/ben", "/secondary/user/7cat")
    shutil.rmtree(maildir(store, "ben"))
    shutil.rmtree(maildir(store, "7cat"))
    restore(store, "-f", str(bc))
    b, c, a = shared_file(store, "ben"), shared_file(store, "7cat"), shared_file(store, "ann")
    assert os.stat(b).st_ino == os.stat(c).st_ino != os.stat(a).st_ino
    assert os.stat(b).st_nlink == 2
    assert snapshot(dovecot, "ben") == restored_whole(snapshots["ben"])
    assert snapshot(dovecot, "7cat") == restored_whole(snapshots["7cat"])

    # Example 2: full backup, delete A, restore A: A's copy gets an inode of its own
    shutil.rmtree(maildir(store, "ann"))
    restore(store, "-f", str(full), "/primary/user/ann")
    assert os.stat(shared_file(store, "ann")).st_ino not in (
        os.stat(shared_file(store, "ben")).st_ino,)
    assert snapshot(dovecot, "ann") == restored_whole(snapshots["ann"])

    # Example 3 from a file: B's copy is a link to A's data; delete A and B, restore B only
    dovecot.lmtp_deliver(mail(90, "shared again"), ["ann", "ben", "7cat"])
    snapshots = {u: snapshot(dovecot, u) for u in ("ann", "ben")}
    full = tmp_path / "full2.ims"
    backup(store, full, "/")
    shutil.rmtree(maildir(store, "ann"))
    shutil.rmtree(maildir(store, "ben"))
    restore(store, "-f", str(full), "/primary/user/ben")
    assert snapshot(dovecot, "ben") == restored_whole(snapshots["ben"])

    # Example 3 from a pipe: a references file, exit 5, then -r completes it
    shutil.rmtree(maildir(store, "ben"))
    refs = tmp_path / "refs.json"
    cat = subprocess.Popen(["cat", str(full)], stdout=subprocess.PIPE)   # a pipe: no seeking
    result = run_cmd("imsrestore", "-f", "-", "--refs", str(refs), "/primary/user/ben",
                     config_dir=store["config"], stdin=cat.stdout)
    cat.stdout.close()
    cat.wait()
    assert result.returncode == 5, result.stderr
    assert str(refs) in result.stderr.decode()
    entries = refs.read_text().splitlines()[1:]
    assert len(entries) == 1 and json.loads(entries[0])["needs"].startswith("primary/ann/INBOX/")
    restore(store, "-r", str(refs), "-f", str(full))
    after = snapshot(dovecot, "ben")
    expected = restored_whole(snapshots["ben"])
    # the message restored through -r is new mail in INBOX (rule 2): same bytes, new UID
    assert {k: v for k, v in after.items() if k != "INBOX"} == \
        {k: v for k, v in expected.items() if k != "INBOX"}
    assert sorted(m[3] for m in after["INBOX"]["messages"].values()) == \
        sorted(m[3] for m in expected["INBOX"]["messages"].values())
    # A comes back from the same archive (the administrator restores it too, as Sun says)
    restore(store, "-f", str(full), "/primary/user/ann")
    assert snapshot(dovecot, "ann") == restored_whole(snapshots["ann"])


def test_chain_of_full_and_two_incrementals(dovecot, store, tmp_path):
    full, incr1, incr2 = (tmp_path / n for n in ("full.ims", "incr1.ims", "incr2.ims"))
    since1 = time.strftime("%Y%m%d:%H%M%S")      # each incremental: since the last one started
    backup(store, full, "/primary/user/fred")
    time.sleep(1.05 - time.time() % 1)
    dovecot.lmtp_deliver(mail(70, "after full"), ["fred"])
    client = dovecot.imap("fred")
    client.select("INBOX")
    uids = sorted(int(u) for u in client.uid("SEARCH", "ALL")[1][0].split())
    client.uid("STORE", str(uids[0]), "+FLAGS", r"(\Deleted)")
    client.expunge()
    client.uid("STORE", str(uids[1]), "+FLAGS", r"(\Flagged chained)")
    client.logout()
    since2 = time.strftime("%Y%m%d:%H%M%S")
    backup(store, incr1, "/primary/user/fred", since=since1)
    time.sleep(1.05 - time.time() % 1)
    dovecot.lmtp_deliver(mail(71, "after incr1"), ["fred"])
    client = dovecot.imap("fred")
    client.select("Work")
    client.uid("STORE", "1:*", "+FLAGS", r"(\Seen)")
    client.logout()
    backup(store, incr2, "/primary/user/fred", since=since2)
    last = snapshot(dovecot, "fred")

    shutil.rmtree(maildir(store, "fred"))
    restore(store, "-f", str(full), "-f", str(incr1), "-f", str(incr2), "/primary/user/fred")
    assert snapshot(dovecot, "fred") == restored_whole(last)


def test_killed_restore_run_again_ends_like_a_clean_one(dovecot, store, tmp_path):
    for n in range(300):
        dovecot.lmtp_deliver(mail(1000 + n, "bulk " * (n % 50)), ["ben"])
    before = snapshot(dovecot, "ben")
    archive = tmp_path / "ben.ims"
    backup(store, archive, "/primary/user/ben")
    shutil.rmtree(maildir(store, "ben"))
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    env = dict(os.environ, IMS_CONFIG_DIR=str(store["config"]))
    proc = subprocess.Popen([command("imsrestore"), "-f", str(fifo)], env=env,
                            stderr=subprocess.PIPE)
    data = archive.read_bytes()
    with open(fifo, "wb") as pipe:
        pipe.write(data[:len(data) // 2])
        pipe.flush()
        time.sleep(0.5)
        proc.kill()                       # SIGKILL, mid-stream
        proc.wait()
    # nothing half-done is visible: the INBOX built aside never got into place
    assert not maildir(store, "ben").exists() or snapshot(dovecot, "ben") != before
    restore(store, "-f", str(archive))
    assert snapshot(dovecot, "ben") == restored_whole(before)
    leftovers = [p for p in maildir(store, "ben").parent.rglob("*ims-restore*")]
    assert leftovers == []
    assert not list(maildir(store, "ben").rglob("dovecot-uidlist.lock"))


def test_restore_while_dovecot_delivers_into_the_same_folder(dovecot, store, tmp_path):
    archive = tmp_path / "ann.ims"
    backup(store, archive, "/primary/user/ann/INBOX")
    client = dovecot.imap("ann")
    client.select("INBOX")
    client.uid("STORE", "1:*", "+FLAGS", r"(\Deleted)")
    client.expunge()
    client.logout()
    restored_bodies = [m[3] for m in snapshot(dovecot, "ann")["INBOX"]["messages"].values()]
    assert restored_bodies == []
    done = []

    def deliver():
        for n in range(300):
            dovecot.lmtp_deliver(mail(5000 + n, "concurrent"), ["ann"])
        done.append(True)

    import threading
    thread = threading.Thread(target=deliver)
    thread.start()
    result = restore(store, "-f", str(archive), "--batch", "1", "--json", "/primary/user/ann/INBOX")
    thread.join()
    assert done
    after = snapshot(dovecot, "ann")["INBOX"]["messages"]
    bodies = [m[3] for m in after.values()]
    assert len(bodies) == len(set(bodies))                     # nothing twice
    concurrent = [b for b in bodies if b"concurrent" in b]
    assert len(concurrent) == 300                               # every delivery there
    assert json.loads(result.stdout)["messages"] == len(after) - 300   # every restored one too
    assert len(after) == len(set(after))


def test_migration_pipe_to_another_partition_and_name(dovecot, store, tmp_path):
    dovecot.add_user("gail", store["partitions"]["secondary"])
    before = snapshot(dovecot, "dora")
    mapfile = tmp_path / "map"
    mapfile.write_text("# migrate\ndora=gail\n")
    env = dict(os.environ, IMS_CONFIG_DIR=str(store["config"]))
    backup_proc = subprocess.Popen([command("imsbackup"), "-f", "-", "/primary/user/dora"],
                                   stdout=subprocess.PIPE, env=env)
    result = subprocess.run([command("imsrestore"), "-f", "-", "-m", str(mapfile),
                             "--partition", "secondary"], stdin=backup_proc.stdout, env=env,
                            capture_output=True)
    backup_proc.stdout.close()
    assert backup_proc.wait() == 0 and result.returncode == 0, result.stderr
    assert snapshot(dovecot, "gail") == restored_whole(before)
