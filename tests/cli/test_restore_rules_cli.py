"""imsrestore's chain rules, interruption, lock timeouts and archive values, through the
installed commands on a real file system (the sample store; no Dovecot needed)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import command, run_cmd

from ims.archive import format as fmt
from ims.archive.writer import ArchiveWriter, RecordSink


def messages(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)).split(":")[0]: p.read_bytes()
            for p in root.rglob("*") if p.is_file() and p.parent.name in ("cur", "new")}


def flags_of(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)).split(":")[0].split("/", 1)[-1]:
            p.name.partition(":")[2] for p in root.rglob("*") if p.parent.name in ("cur", "new")}


def backup(store: Path, path: Path, *args: str) -> None:
    run_cmd("imsbackup", "-f", str(path), *args, config_dir=store / "config", check_rc=0)


def restore(store: Path, *args: str, data: bytes | None = None) -> subprocess.CompletedProcess:
    return run_cmd("imsrestore", *args, config_dir=store / "config", input=data)


def since_now() -> str:
    return time.strftime("%Y%m%d:%H%M%S")


def next_second() -> None:
    """Wait for a new second: files written before it are older than a -d taken after it."""
    time.sleep(1.05 - time.time() % 1)


def maildir(store: Path, user: str, partition: str = "primary") -> Path:
    return store / "partitions" / partition / user / "Maildir"


def deliver(folder: Path, name: str, body: bytes) -> None:
    (folder / "tmp" / name).write_bytes(body)
    os.rename(folder / "tmp" / name, folder / "new" / name)


def linked_user(store: Path, archive: Path) -> str:
    """A user whose INBOX holds a link member to bytes stored under an earlier user."""
    listing = restore(store, "-t", "-f", str(archive)).stdout.decode().splitlines()
    for line in listing:
        if " -> " in line and "/INBOX/" in line:
            return line.split("/")[3]
    raise AssertionError("the sample store has no shared message")


def test_chain_for_one_user_resolves_links_to_unselected_users(fresh_store, tmp_path):
    full, incr = tmp_path / "full.ims", tmp_path / "incr.ims"
    started = since_now()
    backup(fresh_store, full, "/")
    user = linked_user(fresh_store, full)
    inbox = maildir(fresh_store, user)
    deliver(inbox, "1800000000.M1P1.late", b"Subject: late\n\nafter the full backup\n")
    before = messages(inbox)
    backup(fresh_store, incr, "-d", started, "/")
    shutil.rmtree(inbox)
    refs = tmp_path / "refs.json"
    result = restore(fresh_store, "-f", str(full), "-f", str(incr), "--refs", str(refs), "--json",
                     f"/primary/user/{user}")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["unresolved"] == 0 and not refs.exists()
    assert messages(inbox) == before


def test_chain_given_newest_first_is_put_in_order_and_says_so(fresh_store, tmp_path):
    full, incr = tmp_path / "full.ims", tmp_path / "incr.ims"
    started = since_now()
    backup(fresh_store, full, "/primary")
    user = sorted(p.name for p in (fresh_store / "partitions" / "primary").iterdir())[0]
    inbox = maildir(fresh_store, user)
    victim = sorted((inbox / "cur").iterdir())[0]
    os.rename(victim, victim.with_name(victim.name.split(":")[0] + ":2,FS"))   # a flag change
    deliver(inbox, "1800000000.M2P2.late", b"Subject: late\n\nnew mail\n")
    before_flags, before = flags_of(inbox), messages(inbox)
    backup(fresh_store, incr, "-d", started, "/primary")
    shutil.rmtree(inbox.parent)
    result = restore(fresh_store, "-f", str(incr), "-f", str(full), f"/primary/user/{user}")
    assert result.returncode == 0, result.stderr
    assert b"not given oldest first" in result.stderr
    assert messages(inbox) == before
    assert {k: v for k, v in flags_of(inbox).items() if not k.startswith("new/")} == \
        {k: v for k, v in before_flags.items() if not k.startswith("new/")}


def test_chain_with_a_gap_is_refused_naming_it_unless_allowed(fresh_store, tmp_path):
    full, incr = tmp_path / "full.ims", tmp_path / "incr.ims"
    backup(fresh_store, full, "/primary")
    time.sleep(2.1)
    backup(fresh_store, incr, "-d", since_now(), "/primary")
    user = sorted(p.name for p in (fresh_store / "partitions" / "primary").iterdir())[0]
    shutil.rmtree(maildir(fresh_store, user))
    result = restore(fresh_store, "-f", str(full), "-f", str(incr), f"/primary/user/{user}")
    assert result.returncode == 2
    assert b"is in no archive given" in result.stderr and b"--allow-gaps" in result.stderr
    assert not maildir(fresh_store, user).exists()          # nothing was done
    result = restore(fresh_store, "--allow-gaps", "-f", str(full), "-f", str(incr),
                     f"/primary/user/{user}")
    assert result.returncode == 0, result.stderr
    assert b"is in no archive given" in result.stderr
    assert maildir(fresh_store, user).is_dir()


def uidlist_header(folder: Path) -> str:
    return (folder / "dovecot-uidlist").read_text().splitlines()[0]


def test_incremental_alone_never_recreates_a_folder_under_its_old_uidvalidity(fresh_store, tmp_path):
    full, incr = tmp_path / "full.ims", tmp_path / "incr.ims"
    next_second()
    started = since_now()
    backup(fresh_store, full, "/primary")
    user = sorted(p.name for p in (fresh_store / "partitions" / "primary").iterdir())[0]
    inbox = maildir(fresh_store, user)
    old_validity = uidlist_header(inbox).split()[1]
    deliver(inbox, "1800000000.M3P3.late", b"Subject: late\n\nonly in the incremental\n")
    backup(fresh_store, incr, "-d", started, "/primary")
    shutil.rmtree(inbox.parent)
    result = restore(fresh_store, "-f", str(incr), "--json", f"/primary/user/{user}/INBOX")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["folders_whole"] == 0 and summary["messages"] == 1
    assert any("no full backup" in note for note in summary["notes"])
    assert uidlist_header(inbox).split()[1] != old_validity    # a new UIDVALIDITY
    assert list(messages(inbox)) == ["new/1800000000.M3P3.late"] or \
        list(messages(inbox)) == ["cur/1800000000.M3P3.late"]


def test_two_incrementals_without_their_full_name_the_unchanged_folders(fresh_store, tmp_path):
    incr1, incr2 = tmp_path / "incr1.ims", tmp_path / "incr2.ims"
    user = sorted(p.name for p in (fresh_store / "partitions" / "primary").iterdir())[0]
    next_second()
    started = since_now()
    # the second incremental's date no later than the first one's start: a first backup
    # that ended in the next second would otherwise leave a gap in the chain
    started2 = since_now()
    backup(fresh_store, incr1, "-d", started, "/primary")
    deliver(maildir(fresh_store, user), "1800000000.M4P4.late", b"Subject: x\n\ny\n")
    time.sleep(1.1)
    backup(fresh_store, incr2, "-d", started2, "/primary")
    shutil.rmtree(maildir(fresh_store, user).parent)
    result = restore(fresh_store, "-f", str(incr1), "-f", str(incr2), "--json",
                     f"/primary/user/{user}")
    assert result.returncode == 1, result.stderr
    skipped = json.loads(result.stdout)["skipped"]
    unchanged = [line for line in skipped if "unchanged since an earlier backup" in line]
    missing = [line for line in skipped if "its bytes are in no archive" in line]
    assert unchanged and all(f"/{user}/" in line for line in unchanged)
    assert len(unchanged) + len(missing) == len(skipped)
    assert any("/INBOX/" in line for line in missing)     # listed, but only in the full backup


def test_user_and_folder_deleted_before_the_incremental_stay_deleted(fresh_store, tmp_path):
    full, incr = tmp_path / "full.ims", tmp_path / "incr.ims"
    started = since_now()
    backup(fresh_store, full, "/primary")
    users = sorted(p.name for p in (fresh_store / "partitions" / "primary").iterdir())
    gone_user, kept = users[0], users[1]
    shutil.rmtree(maildir(fresh_store, gone_user).parent)
    folders = sorted(p for p in maildir(fresh_store, kept).iterdir() if p.name.startswith("."))
    gone_folder = folders[0]
    shutil.rmtree(gone_folder)
    backup(fresh_store, incr, "-d", started, "/primary")
    shutil.rmtree(maildir(fresh_store, kept).parent)
    result = restore(fresh_store, "-f", str(full), "-f", str(incr))
    assert result.returncode == 0, result.stderr
    assert not (fresh_store / "partitions" / "primary" / gone_user).exists()
    assert maildir(fresh_store, kept).is_dir() and not gone_folder.exists()
    # asked for by name: said, not restored, not an unknown name
    result = restore(fresh_store, "-f", str(full), "-f", str(incr), f"/primary/user/{gone_user}")
    assert result.returncode == 0, result.stderr
    assert b"not in the last backup of the chain" in result.stderr
    assert not (fresh_store / "partitions" / "primary" / gone_user).exists()


def test_misspelled_name_in_a_chain_is_a_usage_error(fresh_store, tmp_path):
    full, incr = tmp_path / "full.ims", tmp_path / "incr.ims"
    started = since_now()
    backup(fresh_store, full, "/primary")
    backup(fresh_store, incr, "-d", started, "/primary")
    result = restore(fresh_store, "-f", str(full), "-f", str(incr), "/primary/user/nobodyy")
    assert result.returncode == 2 and b"not in the archive" in result.stderr


def big_folder(store: Path, count: int) -> tuple[str, Path]:
    user = sorted(p.name for p in (store / "partitions" / "primary").iterdir())[0]
    folder = maildir(store, user) / ".Big"
    for sub in ("cur", "new", "tmp"):
        (folder / sub).mkdir(parents=True)
    (folder / "maildirfolder").write_bytes(b"")
    lines = ["3 V1700000001 N%d" % (count + 1)]
    for n in range(1, count + 1):
        key = f"1700000000.M{n}P1.big"
        (folder / "cur" / f"{key}:2,S").write_bytes(b"Subject: %d\n\n" % n + b"x" * 4000)
        lines.append(f"{n} :{key}")
    (folder / "dovecot-uidlist").write_text("\n".join(lines) + "\n")
    return user, folder


def test_interrupted_whole_folder_restore_leaves_it_absent_and_a_rerun_restores_it_whole(
        fresh_store, tmp_path):
    user, folder = big_folder(fresh_store, 2000)
    uidlist = (folder / "dovecot-uidlist").read_text()
    archive = tmp_path / "big.ims"
    backup(fresh_store, archive, f"/primary/user/{user}/Big")
    shutil.rmtree(folder)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    proc = subprocess.Popen([command("imsrestore"), "-f", str(fifo)], stderr=subprocess.PIPE,
                            env=dict(os.environ, IMS_CONFIG_DIR=str(fresh_store / "config")))
    data = archive.read_bytes()
    with open(fifo, "wb") as pipe:
        pipe.write(data[:len(data) // 2])
        pipe.flush()
        time.sleep(1.0)                       # the first half is written aside by now
        proc.send_signal(signal.SIGINT)
        assert proc.wait() == 130
    assert not folder.exists()
    assert not [p for p in maildir(fresh_store, user).rglob("*ims-restore*")]
    result = restore(fresh_store, "-f", str(archive), "--uid-margin", "0")
    assert result.returncode == 0, result.stderr
    assert (folder / "dovecot-uidlist").read_text() == uidlist      # every UID as archived


def test_lock_timeout_counts_nothing_removes_what_it_staged_and_stops(fresh_store, tmp_path):
    archive = tmp_path / "p.ims"
    backup(fresh_store, archive, "/primary")
    users = sorted(p.name for p in (fresh_store / "partitions" / "primary").iterdir())[:2]
    locks = []
    for user in users:
        inbox = maildir(fresh_store, user)
        for path in list((inbox / "cur").iterdir())[:3]:
            path.unlink()                         # to be restored by rule 2
        lock = inbox / "dovecot-uidlist.lock"
        lock.write_text(f"{os.getpid()}:{socket.gethostname()}")
        locks.append(lock)
    started = time.monotonic()
    result = restore(fresh_store, "-f", str(archive), "--lock-timeout", "3", "--json",
                     *(f"/primary/user/{u}/INBOX" for u in users))
    elapsed = time.monotonic() - started
    for lock in locks:
        lock.unlink()
    assert result.returncode == 3, result.stderr
    summary = json.loads(result.stdout)
    assert summary["messages"] == 0 and len(summary["locked"]) == 1
    assert elapsed < 5.9          # the first timeout ended the run (a second wait: >= 6 s)
    for user in users:
        assert [p.name for p in (maildir(fresh_store, user) / "tmp").iterdir()] == []


def crafted_archive(path: Path, state: dict, members: list[tuple[str, dict[str, str]]]) -> None:
    """An archive with a valid trailer and digest whose values are chosen by the test."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        writer = ArchiveWriter(RecordSink(fd, 20, str(path)))
        writer.add_json(fmt.HEADER_NAME, fmt.HEADER, {
            "format": "ims-archive", "version": 1, "created": 1700000000, "since": None,
            "blocking_factor": 20, "names": ["/"]}, 0)
        writer.user_index.append({"partition": "primary", "user": "zed", "group": "g",
                                  "offset": writer.offset})
        writer.add_json("primary/zed/.ims-user.json", fmt.USER, {
            "partition": "primary", "user": "zed", "group": "g", "uid": 0, "gid": 0,
            "subscriptions": [], "folders": ["Work"]}, 0)
        writer.begin_folder("primary/zed/Work/.ims-folder.json", {
            "partition": "primary", "user": "zed", "folder": "Work", "unchanged_since": None,
            "uidvalidity": 7, "next_uid": 3, "guid": None, "keywords": [],
            "messages": [["k1", 1, "S", []], ["k2", 2, "", []]], **state}, 0)
        import hashlib
        for key, pax in members:
            body = f"Subject: {key}\n\nbody\n".encode()
            records = {"IMS.type": "message", "IMS.uid": "1", "IMS.flags": "S",
                       "IMS.state": "cur", "IMS.internaldate": "1700000000",
                       "IMS.basename": key, "IMS.size": str(len(body)),
                       "IMS.sha256": hashlib.sha256(body).hexdigest(), **pax}
            encoded = b"".join(fmt.pax_record(k, v) for k, v in records.items())
            writer.add_message(f"primary/zed/Work/{key}".encode(), body, 1700000000, encoded, 0, 0)
        writer.finish({"format": "ims-archive", "complete": True,
                       "counts": {"users": 1, "folders": 1, "messages": len(members), "links": 0,
                                  "bytes": 0, "vanished": 0, "unchanged_folders": 0},
                       "skipped": [], "excluded_folders": []}, 0)
    finally:
        os.close(fd)


@pytest.mark.parametrize("state, members, words", [
    ({"uidvalidity": "7\n8"}, [("k1", {})], "uidvalidity"),
    ({"messages": [["k1", -5, "S", []]]}, [("k1", {})], "uid -5"),
    ({"messages": [["k1", 2**40, "S", []]]}, [("k1", {})], "uid"),
    ({"messages": [["k1", 1, "S", []], ["k1", 2, "S", []]]}, [("k1", {})], "listed twice"),
    ({"next_uid": "three"}, [("k1", {})], "next_uid"),
    ({}, [("k1", {}), ("k1", {"IMS.uid": "2"})], "listed twice in its folder"),
    ({}, [("k1", {}), ("k2", {"IMS.uid": "-5"})], "IMS.uid"),
    ({}, [("k1", {}), ("k2", {"IMS.uid": str(2**40)})], "IMS.uid"),
    ({}, [("k1", {}), ("k2", {"IMS.internaldate": "noon"})], "k2"),
])
def test_bad_values_from_an_archive_write_nothing_of_their_folder(fresh_store, tmp_path, state,
                                                                   members, words):
    archive = tmp_path / "crafted.ims"
    crafted_archive(archive, state, members)
    result = restore(fresh_store, "-f", str(archive), "--json")
    assert result.returncode == 4, result.stderr
    text = " ".join(json.loads(result.stdout)["damaged"])
    assert words in text and "Work" in text
    assert b"Traceback" not in result.stderr
    assert not (fresh_store / "partitions" / "primary" / "zed" / "Maildir" / ".Work").exists()
