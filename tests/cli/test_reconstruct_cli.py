"""reconstruct through the installed command, on real files (no Dovecot): each problem is
planted, found by ``reconstruct -n`` (exit 1, named with its folder and what to do),
repaired by ``reconstruct`` (UIDVALIDITY and UIDs kept, no message file deleted), and the
repaired store checks clean (exit 0).  Index files are written here in Dovecot's layout;
tests/integration/test_disaster_recovery.py checks the same reading against a real Dovecot."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
from conftest import run_cmd

HOST = socket.gethostname()


class Store:
    """A one-partition store in Dovecot's Maildir++ layout, built file by file."""

    def __init__(self, tmp_path: Path) -> None:
        self.partition = tmp_path / "primary"
        self.partition.mkdir()
        self.config = tmp_path / "config"
        self.config.mkdir()
        (self.config / "msg.conf").write_text(
            f"store.partition.primary.path = {self.partition}\n"
            f"local.store.logdir = {tmp_path / 'log'}\n")

    def maildir(self, user: str) -> Path:
        return self.partition / user / "Maildir"

    def folder(self, user: str, folder: str = "INBOX", messages: list[tuple[int, str, str]] = (),
               uidvalidity: int | None = 1700000000, next_uid: int | None = None,
               extra_lines: list[str] = (), header: str | None = None) -> Path:
        """``messages``: (UID, base name, flags) each with a file in cur/ and a uidlist line."""
        path = self.maildir(user) if folder == "INBOX" else \
            self.maildir(user) / ("." + folder.replace("/", "."))
        for sub in ("cur", "new", "tmp"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        if folder != "INBOX":
            (path / "maildirfolder").touch()
        lines = []
        for uid, base, flags in messages:
            (path / "cur" / f"{base}:2,{flags}").write_bytes(body(base))
            lines.append(f"{uid} :{base}")
        if next_uid is None:
            next_uid = max([uid for uid, _, _ in messages] + [0]) + 1
        head = header if header is not None else \
            f"3 V{uidvalidity} N{next_uid} G0123456789abcdef0123456789abcdef"
        (path / "dovecot-uidlist").write_text("\n".join([head, *lines, *extra_lines]) + "\n")
        return path

    def run(self, *args: str, rc: int | None = None) -> dict:
        result = run_cmd("reconstruct", "--json", *args, config_dir=self.config)
        report = json.loads(result.stdout)
        if rc is not None:
            assert result.returncode == rc, (result.returncode, result.stderr.decode(), report)
        assert report["exit_code"] == result.returncode
        return report


def body(base: str) -> bytes:
    return f"From: a@example.org\nSubject: {base}\n\nbody of {base}\n".encode()


def kinds(report: dict, level: str = "problem") -> set[str]:
    listed = report["problems"] if level == "problem" else report["notices"]
    return {f["kind"] for f in listed}


def uidlist(folder: Path) -> tuple[str, list[tuple[int, str]]]:
    lines = (folder / "dovecot-uidlist").read_text().splitlines()
    return lines[0], [(int(l.split(" ", 1)[0]), l.rsplit(":", 1)[1]) for l in lines[1:]]


def header_field(folder: Path, key: str) -> int:
    head, _ = uidlist(folder)
    return next(int(f[1:]) for f in head.split()[1:] if f.startswith(key))


def bodies(folder: Path) -> list[bytes]:
    return sorted(p.read_bytes() for sub in ("cur", "new") for p in (folder / sub).iterdir())


def write_index(folder: Path, uidvalidity: int, next_uid: int, records: dict[int, int],
                indexid: int = 4242, log_indexid: int | None = None) -> None:
    """``dovecot.index`` (mail_index_header 7.3, records of 12 bytes) and a
    ``dovecot.index.log`` holding only its header, as Dovecot 2.3 lays them out."""
    header = bytearray(120)
    struct.pack_into("<BBHII", header, 0, 7, 3, 120, 120, 12)
    header[12] = 1                                          # little endian
    struct.pack_into("<IIII", header, 16, indexid, 0, uidvalidity, next_uid)
    struct.pack_into("<I", header, 32, len(records))
    struct.pack_into("<III", header, 60, 1, 40, 40)        # log seq 1, tail and head at 40
    records_bytes = b"".join(struct.pack("<IB3xI", uid, flags, 0)
                             for uid, flags in sorted(records.items()))
    (folder / "dovecot.index").write_bytes(bytes(header) + records_bytes)
    log = struct.pack("<BBHIIIIIQB3xI", 1, 3, 40, log_indexid or indexid, 1, 0, 0,
                      int(time.time()), 7, 1, 0)
    (folder / "dovecot.index.log").write_bytes(log)


def log_initial_modseq(folder: Path) -> int:
    return struct.unpack_from("<Q", (folder / "dovecot.index.log").read_bytes(), 24)[0]


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def age(path: Path, seconds: float = 600) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path)


# -- the command -----------------------------------------------------------------------------

def test_help_lists_every_option_and_exit_code():
    out = run_cmd("reconstruct", "--help", check_rc=0).stdout.decode()
    for option in ("-n ", "-r ", "-m ", "-e ENC", "--uid-margin N", "--lock-timeout S", "-v ",
                   "--json", "--config-dir DIR"):
        assert option in out, option
    assert "-n: problems found, each listed with its folder and what to do" in out
    assert "some problems could not be repaired" in out
    assert "not released within --lock-timeout" in out
    for code in ("0  success", "1  finished", "2  usage", "3  a lock", "7  internal"):
        assert code in out, code


def test_usage_errors_exit_2_before_reading(store):
    store.folder("amy", messages=[(1, "1.M1P1.h", "S")])
    result = run_cmd("reconstruct", "-n", config_dir=store.config)
    assert result.returncode == 2 and b"no NAME given" in result.stderr
    result = run_cmd("reconstruct", "-n", "/primary/user/nobody", config_dir=store.config)
    assert result.returncode == 2 and b"nobody" in result.stderr
    result = run_cmd("reconstruct", "-n", "-m", "--uid-margin", "5", config_dir=store.config)
    assert result.returncode == 2 and b"--uid-margin" in result.stderr


def test_a_clean_folder_checks_clean_and_new_mail_is_counted(store):
    inbox = store.folder("amy", messages=[(1, "1.M1P1.h", "S"), (3, "3.M3P1.h", "")])
    (inbox / "new" / "9.M9P1.h").write_bytes(body("9.M9P1.h"))     # delivered, no UID yet
    before = (inbox / "dovecot-uidlist").read_bytes()
    report = store.run("-n", "/", rc=0)
    assert report["problems"] == [] and report["new_messages"] == 1
    assert kinds(report, "notice") == {"new-messages"}
    assert report["folders"] == 1 and report["users"] == 1
    # nothing to repair: the uidlist is left as it is, the new mail left to Dovecot
    report = store.run("/primary/user/amy", rc=0)
    assert report["actions"] == []
    assert (inbox / "dovecot-uidlist").read_bytes() == before


# -- the uidlist -------------------------------------------------------------------------------

def test_a_line_without_its_file_is_found_and_dropped(store):
    inbox = store.folder("amy", messages=[(1, "1.M1P1.h", "S"), (2, "2.M2P1.h", "S"),
                                          (5, "5.M5P1.h", "")], next_uid=6)
    (inbox / "cur" / "2.M2P1.h:2,S").unlink()
    report = store.run("-n", "/primary/user/amy/INBOX", rc=1)
    [finding] = report["problems"]
    assert finding["kind"] == "file-missing" and "2" in finding["detail"]
    assert finding["name"] == "/primary/user/amy/INBOX" and finding["path"] == str(inbox)
    assert "reconstruct /primary/user/amy/INBOX" in finding["advice"]
    report = store.run("/primary/user/amy", rc=0)
    assert report["problems"] == []
    head, lines = uidlist(inbox)
    assert lines == [(1, "1.M1P1.h"), (5, "5.M5P1.h")]
    assert header_field(inbox, "V") == 1700000000 and header_field(inbox, "N") == 6
    assert "G0123456789abcdef0123456789abcdef" in head
    store.run("-n", "/", rc=0)


def test_an_expunged_line_the_index_knows_is_a_notice(store):
    """Dovecot keeps an expunged message's line until it compacts the uidlist: with an
    index that followed the UID and dropped it, that is no problem."""
    inbox = store.folder("amy", messages=[(1, "1.M1P1.h", "S"), (2, "2.M2P1.h", "S")])
    (inbox / "cur" / "2.M2P1.h:2,S").unlink()
    write_index(inbox, 1700000000, 3, {1: 0x08})
    report = store.run("-n", "/", rc=0)
    assert kinds(report, "notice") == {"expunged-lines"}
    # the same line while the index still holds UID 2: the file went behind Dovecot's back
    write_index(inbox, 1700000000, 3, {1: 0x08, 2: 0x08})
    report = store.run("-n", "/", rc=1)
    assert kinds(report) == {"file-missing"}


def test_a_uid_listed_twice_keeps_the_first_and_renumbers_the_second(store):
    inbox = store.folder("amy", messages=[(1, "1.M1P1.h", "S"), (2, "2.M2P1.h", ""),
                                          (4, "4.M4P1.h", "")], next_uid=5)
    text = (inbox / "dovecot-uidlist").read_text().replace("4 :4.M4P1.h", "2 :4.M4P1.h")
    (inbox / "dovecot-uidlist").write_text(text)
    write_index(inbox, 1700000000, 5, {1: 8, 2: 0, 4: 0})
    before = bodies(inbox)
    report = store.run("-n", "/", rc=1)
    assert kinds(report) == {"uid-duplicate"}
    report = store.run("/", rc=0)
    _, lines = uidlist(inbox)
    assert lines == [(1, "1.M1P1.h"), (2, "2.M2P1.h"), (5, "4.M4P1.h")]
    assert header_field(inbox, "N") == 6 and header_field(inbox, "V") == 1700000000
    assert bodies(inbox) == before
    actions = " ".join(a["action"] for a in report["actions"])
    assert "4.M4P1.h: UID 2 -> 5" in actions
    # a UID given to another message: the index goes, the modseq restarts above the clock
    assert not (inbox / "dovecot.index").exists()
    assert log_initial_modseq(inbox) > time.time() * 1000 - 60_000
    store.run("-n", "/", rc=0)


def test_a_base_name_listed_twice_keeps_its_first_line(store):
    inbox = store.folder("amy", messages=[(1, "1.M1P1.h", "S"), (2, "2.M2P1.h", "")],
                         extra_lines=["3 :1.M1P1.h"], next_uid=4)
    report = store.run("-n", "/", rc=1)
    assert kinds(report) == {"name-duplicate"}
    store.run("/", rc=0)
    assert uidlist(inbox)[1] == [(1, "1.M1P1.h"), (2, "2.M2P1.h")]
    assert header_field(inbox, "N") == 4
    store.run("-n", "/", rc=0)


def test_two_files_under_one_base_name_are_renamed_never_deleted(store):
    inbox = store.folder("amy", messages=[(1, "1.M1P1.h,S=40", "S"), (2, "2.M2P1.h", "")])
    (inbox / "new" / "1.M1P1.h,S=40").write_bytes(b"a second copy\n")
    before = bodies(inbox)
    report = store.run("-n", "/", rc=1)
    assert kinds(report) == {"file-duplicate"}
    store.run("/", rc=0)
    assert bodies(inbox) == before                  # both files are still there
    assert (inbox / "cur" / "1.M1P1.h,S=40:2,S").exists()          # cur/ keeps the name
    renamed = list((inbox / "new").iterdir())
    assert [p.name for p in renamed] == ["1.M1P1.h.dup3,S=40"]   # sizes still readable
    assert uidlist(inbox)[1] == [(1, "1.M1P1.h,S=40"), (2, "2.M2P1.h"), (3, "1.M1P1.h.dup3,S=40")]
    store.run("-n", "/", rc=0)


def test_uids_out_of_order_are_sorted_unchanged(store):
    inbox = store.folder("amy", messages=[(3, "3.M3P1.h", ""), (1, "1.M1P1.h", "S"),
                                          (2, "2.M2P1.h", "")], next_uid=2)
    report = store.run("-n", "/", rc=1)
    assert kinds(report) == {"uid-order", "next-uid"}
    store.run("/", rc=0)
    assert uidlist(inbox)[1] == [(1, "1.M1P1.h"), (2, "2.M2P1.h"), (3, "3.M3P1.h")]
    assert header_field(inbox, "N") == 4
    store.run("-n", "/", rc=0)


def test_a_next_uid_below_what_the_index_handed_out_is_raised(store):
    inbox = store.folder("amy", messages=[(1, "1.M1P1.h", "S"), (2, "2.M2P1.h", "")])
    write_index(inbox, 1700000000, 10, {1: 8, 2: 0})
    report = store.run("-n", "/", rc=1)
    assert kinds(report) == {"next-uid"}
    store.run("/", rc=0)
    assert header_field(inbox, "N") == 10
    assert uidlist(inbox)[1] == [(1, "1.M1P1.h"), (2, "2.M2P1.h")]
    assert (inbox / "dovecot.index").exists()       # it agrees: it stays
    store.run("-n", "/", rc=0)


def test_unreadable_lines_are_dropped_and_their_files_kept(store):
    inbox = store.folder("amy", messages=[(1, "1.M1P1.h", "S"), (2, "2.M2P1.h", "")],
                         extra_lines=["x :junk", "0 :3.M3P1.h"])
    report = store.run("-n", "/", rc=1)
    assert kinds(report) == {"uidlist-bad-line"}
    store.run("/", rc=0)
    assert uidlist(inbox)[1] == [(1, "1.M1P1.h"), (2, "2.M2P1.h")]
    store.run("-n", "/", rc=0)


# -- UIDVALIDITY ----------------------------------------------------------------------------

def test_a_missing_uidvalidity_gets_a_new_one_above_the_counter(store):
    inbox = store.folder("amy", messages=[(1, "1.M1P1.h", "S")], header="3 N2")
    work = store.folder("amy", "Work", messages=[(1, "1.M7P1.h", "")], uidvalidity=1700000100)
    maildir = store.maildir("amy")
    (maildir / "dovecot-uidvalidity").write_text(f"{1700000100:08x}")
    (maildir / f"dovecot-uidvalidity.{1700000100:08x}").touch(0o444)
    report = store.run("-n", "/", rc=1)
    [finding] = report["problems"]
    assert finding["kind"] == "uidvalidity-missing" and finding["folder"] == "INBOX"
    report = store.run("/", rc=0)
    assert header_field(inbox, "V") == 1700000101 and header_field(work, "V") == 1700000100
    assert uidlist(inbox)[1] == [(1, "1.M1P1.h")]                 # the UID is kept
    # Dovecot hands out the next one above it
    assert (maildir / "dovecot-uidvalidity").read_text() == f"{1700000101:08x}"
    assert (maildir / f"dovecot-uidvalidity.{1700000101:08x}").exists()
    assert any("clients resync" in a["action"] for a in report["actions"])
    store.run("-n", "/", rc=0)


def test_a_lost_uidlist_keeps_the_uidvalidity_the_index_knew(store):
    """Dovecot would take the index's UIDVALIDITY and give the files new UIDs above its next
    UID; reconstruct writes that down under the lock.  A folder no index knew is just one
    Dovecot has not opened yet."""
    inbox = store.folder("amy", messages=[(1, "1.M1P1.h", "S"), (2, "2.M2P1.h", "")])
    write_index(inbox, 1700000000, 3, {1: 8, 2: 0})
    (inbox / "dovecot-uidlist").unlink()
    report = store.run("-n", "/", rc=1)
    assert kinds(report) == {"uidlist-missing"}
    store.run("/", rc=0)
    assert (inbox / "dovecot-uidlist").read_text() == "3 V1700000000 N3\n"
    assert len(bodies(inbox)) == 2
    report = store.run("-n", "/", rc=0)
    assert kinds(report, "notice") == {"new-messages"}
    for name in ("dovecot-uidlist", "dovecot.index", "dovecot.index.log"):
        (inbox / name).unlink()
    report = store.run("-n", "/", rc=0)
    assert kinds(report, "notice") == {"new-messages"}


def test_two_folders_with_one_uidvalidity_the_later_gets_a_new_one(store):
    inbox = store.folder("amy", messages=[(1, "1.M1P1.h", "S")], uidvalidity=1700000500)
    work = store.folder("amy", "Work", messages=[(1, "1.M2P1.h", "")], uidvalidity=1700000500)
    archive = store.folder("amy", "Archive", messages=[(1, "1.M3P1.h", "")],
                           uidvalidity=1700000600)
    report = store.run("-n", "/", rc=1)
    [finding] = report["problems"]
    assert (finding["kind"], finding["folder"]) == ("uidvalidity-duplicate", "Work")
    store.run("/", rc=0)
    assert header_field(inbox, "V") == 1700000500
    assert header_field(work, "V") == 1700000601                  # above every one in use
    assert header_field(archive, "V") == 1700000600
    assert uidlist(work)[1] == [(1, "1.M2P1.h")]
    store.run("-n", "/", rc=0)


def test_a_counter_below_a_folder_uidvalidity_is_raised(store):
    store.folder("amy", messages=[(1, "1.M1P1.h", "S")], uidvalidity=1700000200)
    maildir = store.maildir("amy")
    (maildir / "dovecot-uidvalidity").write_text(f"{1700000100:08x}")
    (maildir / f"dovecot-uidvalidity.{1700000100:08x}").touch(0o444)
    report = store.run("-n", "/", rc=1)
    assert kinds(report) == {"uidvalidity-counter"}
    store.run("/", rc=0)
    assert (maildir / "dovecot-uidvalidity").read_text() == f"{1700000200:08x}"
    assert sorted(p.name for p in maildir.glob("dovecot-uidvalidity.*")) == \
        [f"dovecot-uidvalidity.{1700000200:08x}"]
    store.run("-n", "/", rc=0)


# -- index files -------------------------------------------------------------------------------

def test_an_index_of_another_uidvalidity_goes_and_the_modseq_restarts_above(store):
    inbox = store.folder("amy", messages=[(1, "1.M1P1.h", "S")])
    write_index(inbox, 999, 2, {1: 8})
    (inbox / "dovecot.index.cache").write_bytes(b"cache")
    (store.maildir("amy") / "dovecot.list.index").write_bytes(b"list")
    report = store.run("-n", "/", rc=1)
    assert kinds(report) == {"index-stale"}
    before = time.time() * 1000
    store.run("/", rc=0)
    inbox_files = sorted(p.name for p in inbox.iterdir() if p.name.startswith("dovecot.index"))
    assert inbox_files == ["dovecot.index.log"]                  # only the seed
    assert log_initial_modseq(inbox) >= before
    assert not (store.maildir("amy") / "dovecot.list.index").exists()
    assert uidlist(inbox)[1] == [(1, "1.M1P1.h")] and header_field(inbox, "V") == 1700000000
    store.run("-n", "/", rc=0)


def test_an_index_of_another_instant_goes(store):
    inbox = store.folder("amy", messages=[(1, "1.M1P1.h", "S")])
    write_index(inbox, 1700000000, 2, {1: 8}, indexid=1, log_indexid=2)
    assert kinds(store.run("-n", "/", rc=1)) == {"index-stale"}
    store.run("/", rc=0)
    store.run("-n", "/", rc=0)


def test_after_a_restore_an_index_must_match_exactly(store):
    """A live index may lag (new mail, flag changes Dovecot has not synced yet); after a
    file-level restore (-m) it must hold exactly the uidlist's UIDs with the files' flags."""
    inbox = store.folder("amy", messages=[(1, "1.M1P1.h", "S"), (2, "2.M2P1.h", "FS"),
                                          (3, "3.M3P1.h", "")])
    write_index(inbox, 1700000000, 3, {1: 0x08, 2: 0x08})      # UID 3 and \Flagged unseen
    work = store.folder("amy", "Work", messages=[(1, "1.M5P1.h", "")], uidvalidity=1700000001)
    store.run("-n", "/", rc=0)
    report = store.run("-n", "-m", rc=1)
    assert {(f["kind"], f["folder"]) for f in report["problems"]} == {
        ("index-stale", "INBOX"), ("index-missing", "Work")}    # Work: modseqs would restart
    assert "reconstruct -m /primary/user/amy/INBOX" in report["problems"][0]["advice"]
    before = time.time() * 1000
    store.run("-m", rc=0)
    assert not (inbox / "dovecot.index").exists()
    assert log_initial_modseq(inbox) >= before and log_initial_modseq(work) >= before
    store.run("-n", "-m", rc=0)
    # an index that matches stays
    write_index(inbox, 1700000000, 4, {1: 0x08, 2: 0x0A, 3: 0})
    report = store.run("-m", rc=0)
    assert report["actions"] == [] and (inbox / "dovecot.index").exists()


def test_uid_margin_raises_every_next_uid_once(store):
    inbox = store.folder("amy", messages=[(1, "1.M1P1.h", "S"), (7, "7.M7P1.h", "")])
    work = store.folder("amy", "Work", messages=[(2, "2.M2P1.h", "")], uidvalidity=1700000001)
    write_index(inbox, 1700000000, 8, {1: 8, 7: 0})
    store.run("-m", "--uid-margin", "1000", rc=0)
    assert header_field(inbox, "N") == 1008 and header_field(work, "N") == 1003
    assert uidlist(inbox)[1] == [(1, "1.M1P1.h"), (7, "7.M7P1.h")]
    assert header_field(inbox, "V") == 1700000000
    assert not (inbox / "dovecot.index").exists()
    assert log_initial_modseq(work) > time.time() * 1000 - 60_000
    store.run("-n", "-m", rc=0)


# -- keywords, subscriptions, quota -----------------------------------------------------------

def test_an_unnamed_keyword_letter_is_named_not_guessed(store):
    inbox = store.folder("amy", messages=[(1, "1.M1P1.h", "Sab"), (2, "2.M2P1.h", "a")])
    (inbox / "dovecot-keywords").write_text("0 $Forwarded\n")
    report = store.run("-n", "/", rc=1)
    [finding] = report["problems"]
    assert finding["kind"] == "keyword-unnamed" and "b (1 files)" in finding["detail"]
    report = store.run("/", rc=1)                   # not repairable: the name is not known
    assert kinds(report) == {"keyword-unnamed"}
    assert (inbox / "cur" / "1.M1P1.h:2,Sab").exists()


def test_subscriptions_of_missing_folders_are_kept(store):
    store.folder("amy", messages=[(1, "1.M1P1.h", "S")])
    store.folder("amy", "A/B", messages=[(1, "1.M2P1.h", "")], uidvalidity=1700000001)
    subscriptions = store.maildir("amy") / "subscriptions"
    subscriptions.write_text("V\t2\n\nA\nA\tB\nGone\n")
    report = store.run("-n", "/", rc=0)
    [notice] = report["notices"]
    assert notice["kind"] == "subscription-missing-folder" and "Gone" in notice["detail"]
    assert "A" not in notice["detail"].split("(")[1]        # a parent of a folder exists
    store.run("/", rc=0)
    assert subscriptions.read_text() == "V\t2\n\nA\nA\tB\nGone\n"


def test_a_quota_file_that_no_longer_matches_is_recounted(store):
    store.folder("amy", messages=[(1, "1.M1P1.h,S=100", "S"), (2, "2.M2P1.h", "")])
    store.folder("amy", "Trash", messages=[(1, "1.M3P1.h,S=7", "")], uidvalidity=1700000001)
    quota = store.maildir("amy") / "maildirsize"
    quota.write_text("1000000S,100C\n50 1\n9 2\n")
    report = store.run("-n", "/", rc=1)
    assert kinds(report) == {"quota"}
    store.run("/", rc=0)
    size = len(body("2.M2P1.h"))
    assert quota.read_text() == f"1000000S,100C\n{100 + size + 7} 3\n"
    store.run("-n", "/", rc=0)
    quota.write_text(f"1000000S,100C\n{100 + size} 2\n")        # Trash left out: fine too
    store.run("-n", "/", rc=0)


# -- locks, leftovers, owners, structure, links ------------------------------------------------

def test_a_lock_of_a_dead_process_is_removed_a_live_one_is_waited_for(store):
    inbox = store.folder("amy", messages=[(1, "1.M1P1.h", "S")])
    lock = inbox / "dovecot-uidlist.lock"
    lock.write_text(f"{dead_pid()}:{HOST}")
    age(lock)
    report = store.run("-n", "/", rc=1)
    assert kinds(report) == {"stale-lock"}
    store.run("/", rc=0)
    assert not lock.exists()
    # a live holder (this test process) is never broken: the folder is not repaired, exit 3
    (inbox / "cur" / "1.M1P1.h:2,S").unlink()
    lock.write_text(f"{os.getpid()}:{HOST}")
    age(lock)
    report = store.run("-n", "/", rc=1)
    assert kinds(report) == {"file-missing"} and kinds(report, "notice") == {"lock-held"}
    report = store.run("--lock-timeout", "0.3", "/", rc=3)
    assert report["locked"] and lock.read_text() == f"{os.getpid()}:{HOST}"
    assert uidlist(inbox)[1] == [(1, "1.M1P1.h")]           # nothing written without the lock
    lock.unlink()
    store.run("/", rc=0)


def test_what_a_killed_restore_left_goes_other_hosts_files_stay(store):
    inbox = store.folder("amy", messages=[(1, "1.M1P1.h", "S")])
    work = store.folder("amy", "Work", messages=[(1, "1.M2P1.h", "")], uidvalidity=1700000001)
    pid = dead_pid()
    staged = work / "tmp" / f"ims-restore.{pid}.1.{HOST}"
    staged.write_bytes(b"half a message")
    aside = inbox / "tmp" / f".ims-restore.{pid}.2.{HOST}"
    (aside / "cur").mkdir(parents=True)
    beside = store.maildir("amy").parent / f".ims-restore.{pid}.3.{HOST}"
    beside.mkdir()
    temp = work / f".dovecot-uidlist.ims-restore.{pid}.{HOST}"
    temp.write_text("3 V1\n")
    foreign = work / "tmp" / f"ims-restore.{pid}.4.otherhost.example"
    foreign.write_bytes(b"in flight on another host")
    report = store.run("-n", "/", rc=1)
    assert kinds(report) == {"staged-leftover"}
    assert len(report["problems"]) == 4 and kinds(report, "notice") == {"staged-in-use"}
    store.run("/", rc=0)
    assert not any(p.exists() for p in (staged, aside, beside, temp))
    assert foreign.exists()
    store.run("-n", "/", rc=0)


def test_owner_and_mode_are_given_back(store):
    inbox = store.folder("amy", messages=[(1, "1.M1P1.h", "S"), (2, "2.M2P1.h", "")])
    store.run("-n", "/", rc=0)
    message = inbox / "cur" / "1.M1P1.h:2,S"
    os.chmod(message, 0o666)
    os.chown(inbox / "cur" / "2.M2P1.h:2,", 1234, 1234)
    os.chmod(inbox / "cur", 0o777)
    maildir_mode = inbox.stat().st_mode & 0o777
    report = store.run("-n", "/", rc=1)
    assert kinds(report) == {"owner-mode"}
    store.run("/", rc=0)
    assert message.stat().st_mode & 0o777 == maildir_mode & 0o666
    assert (inbox / "cur").stat().st_mode & 0o777 == maildir_mode
    st = (inbox / "cur" / "2.M2P1.h:2,").stat()
    assert (st.st_uid, st.st_gid) == (inbox.stat().st_uid, inbox.stat().st_gid)
    store.run("-n", "/", rc=0)


def test_a_folder_missing_its_directories_gets_them(store):
    store.folder("amy", messages=[(1, "1.M1P1.h", "S")])
    work = store.folder("amy", "Work", messages=[(1, "1.M2P1.h", "")], uidvalidity=1700000001)
    (work / "maildirfolder").unlink()
    (work / "tmp").rmdir()
    lost = store.maildir("amy") / ".Lost"
    (lost / "new").mkdir(parents=True)              # mail IMAP cannot see: no cur/
    (lost / "new" / "5.M5P1.h").write_bytes(body("5.M5P1.h"))
    report = store.run("-n", "/", rc=1)
    found = {(f["folder"], f["kind"]) for f in report["problems"]}
    assert found == {("Work", "structure"), ("Lost", "structure")}
    store.run("/", rc=0)
    for folder in (work, lost):
        assert all((folder / name).exists() for name in ("cur", "new", "tmp", "maildirfolder"))
    assert (lost / "new" / "5.M5P1.h").read_bytes() == body("5.M5P1.h")
    store.run("-n", "/", rc=0)


def test_links_are_refused_and_named_never_followed(store, tmp_path):
    inbox = store.folder("amy", messages=[(1, "1.M1P1.h", "S")])
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("root's")
    os.symlink(outside / "secret", inbox / "cur" / "2.M2P1.h:2,S")
    os.symlink(outside, store.maildir("amy") / ".Linked")
    report = store.run("-n", "/", rc=1)
    assert kinds(report) == {"not-a-file", "link"}
    assert any(".Linked" in f["detail"] for f in report["problems"])
    report = store.run("/", rc=1)
    assert kinds(report) == {"not-a-file", "link"}
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]     # nothing written there
    assert (outside / "secret").read_text() == "root's"
    assert (inbox / "cur" / "2.M2P1.h:2,S").is_symlink()             # named, not removed


def test_a_named_folder_alone_or_with_its_subfolders(store):
    store.folder("amy", messages=[(1, "1.M1P1.h", "S")])
    store.folder("amy", "Work", messages=[(1, "1.M2P1.h", "")], uidvalidity=1700000001)
    sub = store.folder("amy", "Work/2025", messages=[(1, "1.M3P1.h", "")],
                       uidvalidity=1700000002)
    (sub / "cur" / "1.M3P1.h:2,").unlink()
    report = store.run("-n", "/primary/user/amy/Work", rc=0)
    assert report["folders"] == 1
    report = store.run("-n", "-r", "/primary/user/amy/Work", rc=1)
    assert report["folders"] == 2 and {f["folder"] for f in report["problems"]} == {"Work/2025"}
    store.run("-r", "/primary/user/amy/Work", rc=0)
    store.run("-n", "amy", rc=0)


def test_a_store_with_every_problem_is_repaired_without_losing_a_message(store):
    inbox = store.folder("amy", messages=[(3, "3.M3P1.h", ""), (1, "1.M1P1.h", "S"),
                                          (2, "2.M2P1.h", "F")], next_uid=2,
                         extra_lines=["2 :9.M9P1.h", "4 :gone.M4P1.h"])
    (inbox / "cur" / "9.M9P1.h:2,S").write_bytes(body("9.M9P1.h"))
    (inbox / "new" / "1.M1P1.h").write_bytes(b"twin")
    (inbox / "new" / "10.M10P1.h").write_bytes(body("10.M10P1.h"))
    write_index(inbox, 1700000000, 4, {1: 8, 2: 2, 3: 0})
    work = store.folder("amy", "Work", messages=[(1, "1.M5P1.h", "")], uidvalidity=1700000000)
    os.chmod(work / "cur" / "1.M5P1.h:2,", 0o660)    # group write: more than the Maildir
    before = bodies(inbox) + bodies(work)
    report = store.run("-n", "/", rc=1)
    assert kinds(report) >= {"uid-order", "uid-duplicate", "file-missing", "file-duplicate",
                             "uidvalidity-duplicate", "owner-mode"}
    store.run("/", rc=0)
    assert bodies(inbox) + bodies(work) == before
    _, lines = uidlist(inbox)
    uids = [uid for uid, _ in lines]
    assert uids == sorted(set(uids))                        # unique and in order
    assert dict((b, u) for u, b in lines)["1.M1P1.h"] == 1  # the first line keeps its UID
    assert header_field(inbox, "N") > max(uids)
    store.run("-n", "/", rc=0)
