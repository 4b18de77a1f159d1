"""imsrestore tried as an attacker and a hurried administrator would: hostile values at the
edges of the UID space, names that select nothing, chains with a full backup in the middle
or a renamed folder, planted lock files, a reader process killed midway.  Each test's
docstring says what went wrong before the fix and what must hold (installed commands, real
files, no Dovecot)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from conftest import command, run_cmd

from ims.archive import format as fmt
from ims.archive.writer import ArchiveWriter, RecordSink

UID_MAX = 2**32 - 1


class Crafted:
    """An archive with a valid trailer and digest whose values the test chooses."""

    def __init__(self, path: Path, created: int = 1700000000, since: float | None = None) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.writer = ArchiveWriter(RecordSink(self.fd, 20, str(path)))
        self.counts = {"folders": 0, "messages": 0}
        self.writer.add_json(fmt.HEADER_NAME, fmt.HEADER, {
            "format": "ims-archive", "version": 1, "archive_id": os.urandom(16).hex(),
            "created": created, "since": since, "blocking_factor": 20, "names": ["/"]}, 0)

    def user(self, user: str, folders: list[str], subscriptions: list[str] = (),
             partition: str = "primary") -> None:
        self.writer.user_index.append({"partition": partition, "user": user, "group": "g",
                                       "offset": self.writer.offset})
        self.writer.add_json(f"{partition}/{user}/.ims-user.json", fmt.USER, {
            "partition": partition, "user": user, "group": "g", "uid": 0, "gid": 0,
            "subscriptions": list(subscriptions), "folders": folders}, 0)

    def folder(self, user: str, folder: str, listed: list[list], uidvalidity: int = 555,
               next_uid: int | None = None, partition: str = "primary") -> None:
        if next_uid is None:
            next_uid = max([m[1] or 0 for m in listed] + [0]) + 1
        self.counts["folders"] += 1
        self.writer.begin_folder(f"{partition}/{user}/{folder}/.ims-folder.json", {
            "partition": partition, "user": user, "folder": folder, "unchanged_since": None,
            "uidvalidity": uidvalidity, "next_uid": next_uid, "guid": None, "keywords": [],
            "highest_modseq": None, "messages": listed}, 0)

    def message(self, user: str, folder: str, key: str, body: bytes, uid: int | None,
                flags: str = "S", partition: str = "primary") -> None:
        records = {"IMS.type": "message", "IMS.flags": flags, "IMS.state": "cur",
                   "IMS.internaldate": "1700000000", "IMS.basename": key,
                   "IMS.size": str(len(body)), "IMS.sha256": hashlib.sha256(body).hexdigest()}
        if uid is not None:
            records["IMS.uid"] = str(uid)
        encoded = b"".join(fmt.pax_record(k, v) for k, v in records.items())
        self.writer.add_message(f"{partition}/{user}/{folder}/{key}".encode(), body, 1700000000,
                                encoded, 0, 0)
        self.counts["messages"] += 1

    def close(self) -> None:
        self.writer.finish({"format": "ims-archive", "complete": True,
                            "counts": {"users": len(self.writer.user_index), "links": 0,
                                       "bytes": 0, "vanished": 0, "unchanged_folders": 0,
                                       **self.counts},
                            "skipped": [], "excluded_folders": []}, 0)
        os.close(self.fd)


def one_message_archive(path: Path, user: str, uidvalidity: int = 555, created: int = 1700000000,
                        since: float | None = None, with_bytes: bool = True) -> None:
    archive = Crafted(path, created, since)
    archive.user(user, ["INBOX"])
    archive.folder(user, "INBOX", [["1.M1P1.a", 7, "S", []]], uidvalidity=uidvalidity)
    if with_bytes:
        archive.message(user, "INBOX", "1.M1P1.a", b"Subject: a\n\nhello\n", 7)
    archive.close()


def restore(store: Path, *args: str) -> "subprocess.CompletedProcess":  # noqa: F821
    return run_cmd("imsrestore", *args, config_dir=store / "config")


def backup(store: Path, path: Path, *args: str) -> None:
    run_cmd("imsbackup", "-f", str(path), *args, config_dir=store / "config", check_rc=0)


def maildir(store: Path, user: str) -> Path:
    return store / "partitions" / "primary" / user / "Maildir"


def uidlist_uids(folder: Path) -> tuple[int, list[int]]:
    lines = (folder / "dovecot-uidlist").read_text().splitlines()
    next_uid = int(next(f[1:] for f in lines[0].split() if f.startswith("N")))
    return next_uid, [int(line.split()[0]) for line in lines[1:] if line]


def one_line_error(result) -> None:
    assert b"Traceback" not in result.stderr, result.stderr.decode()[-600:]
    assert result.returncode in (1, 2, 3, 4, 5, 6), result.returncode


# -- names from an archive never leave the store -----------------------------------------------

def test_hosted_user_with_dotdot_domain_writes_nothing_outside_its_partition(tmp_path):
    """``joe@..`` passes ``valid_user``; with ``%d/%n/Maildir`` its Maildir would be
    ``<partition>/../joe/Maildir``.  Expected: the user is refused (named, exit 4) and nothing
    is written outside the partition.  At fault: records.valid_user / Layout.path_of."""
    partition = tmp_path / "parts" / "primary"
    partition.mkdir(parents=True)
    config = tmp_path / "config"
    config.mkdir()
    (config / "msg.conf").write_text(f"store.partition.primary.path = {partition}\n"
                                     "store.maildir.layout = %d/%n/Maildir\n"
                                     f"local.store.logdir = {tmp_path / 'log'}\n")
    archive = tmp_path / "a.ims"
    one_message_archive(archive, "joe@..")
    result = run_cmd("imsrestore", "-f", str(archive), "--json", config_dir=config)
    assert not (tmp_path / "parts" / "joe").exists(), "written outside the partition"
    assert result.returncode == 4, result.stderr


# -- values that reach dovecot-uidlist -----------------------------------------------------------

def test_member_uids_that_disagree_with_the_folder_state_never_reach_the_uidlist(fresh_store,
                                                                                 tmp_path):
    """The folder state lists UIDs 1 and 2 (validated: unique, below next_uid); the message
    members say 4000000000 for both.  The uidlist is built from the members' UIDs: two lines
    with one UID, both above N.  Checked against the Dovecot fixture: Dovecot keeps the first,
    renumbers the second to 4000000001 and jumps N there (the archived UIDs 1 and 2 are lost,
    the UID space nearly used up).  Expected: the listed UIDs are used (or the folder is refused, exit 4); never a duplicate or
    a UID at or above N.  At fault: NewFolder._uidlist_text / Engine.message."""
    archive = Crafted(tmp_path / "a.ims")
    archive.user("zed", ["INBOX"])
    archive.folder("zed", "INBOX", [["1.M1P1.a", 1, "S", []], ["1.M1P1.b", 2, "S", []]])
    archive.message("zed", "INBOX", "1.M1P1.a", b"Subject: a\n\n", 4000000000)
    archive.message("zed", "INBOX", "1.M1P1.b", b"Subject: b\n\n", 4000000000)
    archive.close()
    result = restore(fresh_store, "-f", str(tmp_path / "a.ims"), "--uid-margin", "0")
    inbox = maildir(fresh_store, "zed")
    if result.returncode == 4 and not inbox.exists():
        return
    next_uid, uids = uidlist_uids(inbox)
    assert len(uids) == len(set(uids)), (inbox / "dovecot-uidlist").read_text()
    assert all(uid < next_uid for uid in uids), (inbox / "dovecot-uidlist").read_text()


def test_a_live_folder_near_the_end_of_the_uid_space_never_gets_uids_beyond_it(fresh_store,
                                                                               tmp_path):
    """A live folder whose next UID is 2^32 - 3 can take two more messages (Dovecot calls
    4294967295 'UID too high').  Rule 2 hands out ..., 4294967295, 4294967296 and writes them
    to the uidlist; checked against the Dovecot fixture, a line above 2^32 - 1 makes Dovecot
    drop the uidlist: a new UIDVALIDITY and every message of the live folder renumbered.
    Expected: no UID above 2^32 - 2 is ever written; what does not fit is reported (non-zero
    exit).  At fault: plan.plan_merge / ExistingFolder._commit_locked."""
    inbox = maildir(fresh_store, "near")
    for sub in ("cur", "new", "tmp"):
        (inbox / sub).mkdir(parents=True)
    (inbox / "cur" / "1.M1P1.live:2,S").write_bytes(b"Subject: live\n\n")
    (inbox / "dovecot-uidlist").write_text(f"3 V9 N{UID_MAX - 2}\n{UID_MAX - 3} :1.M1P1.live\n")
    archive = Crafted(tmp_path / "a.ims")
    archive.user("near", ["INBOX"])
    keys = ["1.M1P1.v", "1.M1P1.w", "1.M1P1.x", "1.M1P1.y", "1.M1P1.z"]
    archive.folder("near", "INBOX", [[k, n, "S", []] for n, k in enumerate(keys, 1)])
    for n, key in enumerate(keys, 1):
        archive.message("near", "INBOX", key, f"Subject: {key}\n\n".encode(), n)
    archive.close()
    result = restore(fresh_store, "-f", str(tmp_path / "a.ims"))
    _, uids = uidlist_uids(inbox)
    assert max(uids) <= UID_MAX - 1, (inbox / "dovecot-uidlist").read_text()   # Dovecot's limit
    assert result.returncode != 0


# -- names that select nothing -------------------------------------------------------------------

def test_a_misspelled_folder_name_is_an_error_not_a_silent_success(fresh_store, tmp_path):
    """``/primary/user/<user>/Archiv`` (no such folder): the engine counts a name as matched
    when its *user* matches, so nothing is restored and the exit is 0 with nothing said.
    Expected: exit 2 naming the name, as for an unknown user.  At fault: Engine.begin_user
    (``report.matched``) / imsrestore's check."""
    archive = tmp_path / "full.ims"
    backup(fresh_store, archive, "/primary")
    user = sorted(p.name for p in (fresh_store / "partitions" / "primary").iterdir())[0]
    result = restore(fresh_store, "-f", str(archive), f"/primary/user/{user}/NoSuchFolderr")
    assert result.returncode == 2, result.stderr
    assert b"NoSuchFolderr" in result.stderr


def test_one_misspelled_name_among_several_is_an_error(fresh_store, tmp_path):
    """``imsrestore -f A joe nobodyy``: joe is restored, nobodyy silently ignored (exit 0).
    Expected: exit 2 naming ``nobodyy`` (every NAME must match, as imsbackup requires)."""
    archive = tmp_path / "full.ims"
    backup(fresh_store, archive, "/primary")
    user = sorted(p.name for p in (fresh_store / "partitions" / "primary").iterdir())[0]
    result = restore(fresh_store, "-t", "-f", str(archive), user, "nobodyy")
    assert result.returncode == 2, result.stderr
    assert b"nobodyy" in result.stderr


def test_a_folder_renamed_between_full_and_incremental_comes_back_from_the_chain(fresh_store,
                                                                                tmp_path):
    """A folder renamed over IMAP (its directory renamed) keeps its cur/ and new/, so the
    incremental lists it as ``unchanged_since`` under its new name; the chain has no state for
    that name and the restore skips it, saying it is 'unchanged since an earlier backup that is
    not part of this restore' although the full backup is given.  The guide promises: 'a
    folder renamed between backups is found by its messages' base names'.  Expected: the
    renamed folder is restored with its messages (exit 0).  At fault: the backup's
    changed_since (a rename is not seen) and/or chain.merge."""
    full, incr = tmp_path / "full.ims", tmp_path / "incr.ims"
    time.sleep(1.05 - time.time() % 1)
    started = time.strftime("%Y%m%d:%H%M%S")
    backup(fresh_store, full, "/primary")
    user, folder = next((u.name, f) for u in sorted((fresh_store / "partitions" / "primary").iterdir())
                        for f in sorted((u / "Maildir").iterdir())
                        if f.name.startswith(".") and any((f / "cur").iterdir()))
    renamed = folder.with_name(".Renamed")
    os.rename(folder, renamed)
    keys = sorted(p.name.split(":")[0] for p in (renamed / "cur").iterdir())
    time.sleep(1.05)
    backup(fresh_store, incr, "-d", started, "/primary")
    shutil.rmtree(maildir(fresh_store, user))
    result = restore(fresh_store, "-f", str(full), "-f", str(incr), f"/primary/user/{user}")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name.split(":")[0] for p in (renamed / "cur").iterdir()) == keys


def test_a_folder_deleted_before_the_last_backup_and_named_is_said(fresh_store, tmp_path):
    """Named explicitly, a folder deleted between the full and the incremental restores
    nothing and says nothing (exit 0, no note), unlike a deleted user, which gets a note.
    Expected: a note naming the folder (or exit 2)."""
    full, incr = tmp_path / "full.ims", tmp_path / "incr.ims"
    started = time.strftime("%Y%m%d:%H%M%S")
    backup(fresh_store, full, "/primary")
    user = sorted(p.name for p in (fresh_store / "partitions" / "primary").iterdir())[0]
    gone = sorted(p for p in maildir(fresh_store, user).iterdir()
                  if p.name.startswith(".") and "." not in p.name[1:])[0]
    shutil.rmtree(gone)
    backup(fresh_store, incr, "-d", started, "/primary")
    name = gone.name[1:]
    result = restore(fresh_store, "-f", str(full), "-f", str(incr), f"/primary/user/{user}/{name}")
    assert name.encode() in result.stderr or result.returncode == 2, (result.returncode,
                                                                      result.stderr)


# -- chains --------------------------------------------------------------------------------------

def test_a_full_backup_in_the_middle_of_a_chain_heads_it(fresh_store, tmp_path):
    """Given an older incremental, then the full, then an incremental of that full: the chain
    is ordered by time, its head is the old incremental, so ``has_full`` is False and the gone
    folder comes back with a new UIDVALIDITY and new UIDs (exit 0).  Expected: the state comes
    from the last full backup on (archives before it add nothing), the folder comes back whole
    with UIDVALIDITY 555 and UID 7.  At fault: chain.order_chain (``has_full`` from the head)."""
    now = int(time.time())
    one_message_archive(tmp_path / "i1.ims", "mid", created=now - 200, since=now - 300)
    one_message_archive(tmp_path / "f.ims", "mid", created=now - 100)
    one_message_archive(tmp_path / "i2.ims", "mid", created=now, since=now - 100, with_bytes=False)
    result = restore(fresh_store, "-f", str(tmp_path / "i1.ims"), "-f", str(tmp_path / "f.ims"),
                     "-f", str(tmp_path / "i2.ims"), "--uid-margin", "0")
    assert result.returncode == 0, result.stderr
    uidlist = (maildir(fresh_store, "mid") / "dovecot-uidlist").read_text().splitlines()
    assert uidlist[0].split()[1] == "V555" and uidlist[1] == "7 :1.M1P1.a", uidlist


def test_an_incremental_since_out_of_range_is_a_one_line_error(fresh_store, tmp_path):
    """``since`` 1e300 passes ``ArchiveHeader.decode`` (any non-negative number, also a float
    or JSON's Infinity); the gap message formats it and the command ends with an
    OverflowError traceback.  Expected: a one-line error with a documented code."""
    now = int(time.time())
    one_message_archive(tmp_path / "f.ims", "zed", created=now - 100)
    one_message_archive(tmp_path / "i.ims", "zed", created=now, since=1e300, with_bytes=False)
    result = restore(fresh_store, "-f", str(tmp_path / "f.ims"), "-f", str(tmp_path / "i.ims"))
    one_line_error(result)


def test_a_references_entry_with_an_absurd_internaldate_is_a_one_line_error(fresh_store, tmp_path):
    """``-r REFS``: ``internaldate`` is only checked to be an int; 10**20 reaches os.utime and
    the command ends with an OverflowError traceback.  Expected: the entry is reported (exit
    4) and left out, as refs.py's docstring says.  At fault: refs._date."""
    archive = tmp_path / "a.ims"
    one_message_archive(archive, "zed")
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps({"format": "imsrestore-refs", "version": 1}) + "\n" + json.dumps({
        "partition": "primary", "user": "zed", "folder": "INBOX", "basename": "1.M1P1.r",
        "uid": 9, "flags": "S", "keywords": [], "internaldate": 10**20, "is_new": False,
        "needs": "primary/zed/INBOX/1.M1P1.a"}) + "\n")
    result = restore(fresh_store, "-f", str(archive), "-r", str(refs))
    one_line_error(result)


# -- what a partial restore changes ----------------------------------------------------------------

def test_restoring_one_folder_adds_only_its_own_subscription(fresh_store, tmp_path):
    """Restoring ``.../<user>/Trash`` merges *every* subscription the user had at backup time
    into the live file, so folders the user unsubscribed since come back subscribed.
    Expected: only the subscriptions of the folders this run restored are added.  At fault:
    Engine.end_user."""
    archive = tmp_path / "full.ims"
    backup(fresh_store, archive, "/primary")
    user = next(u.name for u in sorted((fresh_store / "partitions" / "primary").iterdir())
                if len([line for line in (u / "Maildir" / "subscriptions").read_text().split("\n")
                        if line]) > 3)
    root = maildir(fresh_store, user)
    folder = sorted(p for p in root.iterdir() if p.name.startswith(".") and p.is_dir())[-1]
    (root / "subscriptions").write_text("V\t2\n\nINBOX\n")       # unsubscribed from the rest
    shutil.rmtree(folder)
    name = folder.name[1:].replace(".", "/")
    result = restore(fresh_store, "-f", str(archive), f"/primary/user/{user}/{name}")
    assert result.returncode == 0, result.stderr
    lines = (root / "subscriptions").read_text().split("\n")[2:]
    assert set(line for line in lines if line) <= {"INBOX", folder.name[1:].replace(".", "\t")}, lines


# -- the summary says what landed --------------------------------------------------------------------

def test_restoring_the_same_archive_twice_lands_nothing_the_second_time(fresh_store, tmp_path):
    """A message without a UID (delivered, still in new/) is restored whole into new/
    without a uidlist line; the second run 'adopts' it (gives it a UID) and counts it in
    ``messages`` and its size in ``bytes``, though no byte was written.  Expected: the second
    run reports messages 0 and bytes 0 (the message was already there).  At fault:
    ExistingFolder._commit_locked (Placement.ADOPT counted as landed)."""
    user = sorted(p.name for p in (fresh_store / "partitions" / "primary").iterdir())[0]
    inbox = maildir(fresh_store, user)
    (inbox / "tmp" / "1800000000.M9P9.undelivered").write_bytes(b"Subject: new\n\nno uid yet\n")
    os.rename(inbox / "tmp" / "1800000000.M9P9.undelivered", inbox / "new" / "1800000000.M9P9.undelivered")
    archive = tmp_path / "u.ims"
    backup(fresh_store, archive, f"/primary/user/{user}")
    shutil.rmtree(inbox)
    first = restore(fresh_store, "-f", str(archive), "--json")
    assert first.returncode == 0, first.stderr
    second = restore(fresh_store, "-f", str(archive), "--json")
    summary = json.loads(second.stdout)
    assert (summary["messages"], summary["bytes"]) == (0, 0), summary


def test_an_empty_message_is_not_counted_as_a_hard_link(fresh_store, tmp_path):
    """``links`` is counted as 'size == 0', so a 0-byte message with data is a link in the
    summary.  Expected: links 0.  At fault: NewFolder._count_all, ExistingFolder."""
    archive = Crafted(tmp_path / "a.ims")
    archive.user("empt", ["INBOX"])
    archive.folder("empt", "INBOX", [["1.M1P1.e", 1, "S", []]])
    archive.message("empt", "INBOX", "1.M1P1.e", b"", 1)
    archive.close()
    summary = json.loads(restore(fresh_store, "-f", str(tmp_path / "a.ims"), "--json").stdout)
    assert (summary["messages"], summary["links"]) == (1, 0), summary


# -- interruption ----------------------------------------------------------------------------------

def test_a_lock_file_that_is_a_fifo_does_not_hang_the_restore_past_its_timeout(fresh_store,
                                                                              tmp_path):
    """Anyone with the mail uid can put a FIFO (or a symlink to /dev/zero) where
    ``dovecot-uidlist.lock`` goes; ``FolderLock`` reads its holder with ``Path.read_text()``
    (follows symlinks, blocks on a FIFO), so root's restore hangs forever, whatever
    ``--lock-timeout``.  Expected: exit 3 after about the timeout.  At fault:
    ims/store/lock.py _remove_if_stale/_holder (open O_NOFOLLOW|O_NONBLOCK, regular files only,
    bounded read)."""
    import subprocess
    archive = tmp_path / "full.ims"
    backup(fresh_store, archive, "/primary")
    user = sorted(p.name for p in (fresh_store / "partitions" / "primary").iterdir())[0]
    inbox = maildir(fresh_store, user)
    next((inbox / "cur").iterdir()).unlink()                 # to be restored by rule 2
    os.mkfifo(inbox / "dovecot-uidlist.lock")
    started = time.monotonic()
    try:
        result = run_cmd("imsrestore", "-f", str(archive), "--lock-timeout", "1",
                         f"/primary/user/{user}/INBOX", config_dir=fresh_store / "config",
                         timeout=30)    # a hang lasts for ever; a slow start is not one
    except subprocess.TimeoutExpired:
        raise AssertionError("imsrestore hung on a FIFO lock file past --lock-timeout 1")
    assert result.returncode == 3, result.stderr
    # about the timeout: 1 s of waiting and the start (under 2 s on a busy machine)
    assert time.monotonic() - started < 8


def test_a_reader_child_killed_midway_is_no_traceback_and_no_half_folder(fresh_store, tmp_path):
    """A restore from a pipe reads in a forked child.  When the child dies (the OOM killer;
    or Ctrl-C in a shell where imsrestore runs with SIGINT ignored — the child resets SIGINT
    to SIG_DFL), the parent gets ECONNRESET from ``Channel._exact`` and ends with a
    ConnectionResetError traceback (exit 1); when it gets EOF instead, the dead child is taken
    for a stream cut short and the folder in progress is committed half-built under its
    archived UIDVALIDITY.  Expected: a one-line error with a documented code, and the folder
    being built whole left absent (a rerun restores it whole).  At fault: ims/helper.py
    Channel._exact, ims/archive/prefetch.py (a dead child is not a truncated stream)."""
    import signal
    import subprocess
    user = sorted(p.name for p in (fresh_store / "partitions" / "primary").iterdir())[0]
    folder = maildir(fresh_store, user) / ".Big"
    for sub in ("cur", "new", "tmp"):
        (folder / sub).mkdir(parents=True)
    (folder / "maildirfolder").write_bytes(b"")
    lines = ["3 V1700000001 N1001"]
    for n in range(1, 1001):
        key = f"1700000000.M{n}P1.big"
        (folder / "cur" / f"{key}:2,S").write_bytes(b"Subject: %d\n\n" % n + b"x" * 4000)
        lines.append(f"{n} :{key}")
    (folder / "dovecot-uidlist").write_text("\n".join(lines) + "\n")
    archive = tmp_path / "big.ims"
    backup(fresh_store, archive, f"/primary/user/{user}/Big")
    shutil.rmtree(folder)
    data = archive.read_bytes()
    proc = subprocess.Popen([command("imsrestore"), "-f", "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, IMS_CONFIG_DIR=str(fresh_store / "config")))
    proc.stdin.write(data[:len(data) // 2])
    proc.stdin.flush()
    time.sleep(1.0)
    child = int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0])
    os.kill(child, signal.SIGKILL)
    try:
        proc.stdin.write(data[len(data) // 2:])
        proc.stdin.close()
    except BrokenPipeError:
        pass
    _, err = proc.communicate(timeout=30)
    assert b"Traceback" not in err, err.decode()[-500:]
    assert proc.returncode in (4, 130, 137), (proc.returncode, err)
    assert not folder.exists(), "a half-built folder was committed under its archived UIDVALIDITY"


def test_a_later_merge_keeps_the_names_of_a_folders_keywords(fresh_store, tmp_path):
    """``valid_keyword`` lets non-ASCII through (U+2028 here; IMAP keywords are 7-bit atoms),
    and ``parse_keywords_file`` splits ``dovecot-keywords`` with ``str.splitlines()`` (which
    also breaks at U+2028, U+0085, \\x1c-\\x1e), unlike Dovecot (\\n only).  A later restore
    into the folder reads keyword 0 as ``x`` and rewrites the file, renaming the live keyword
    of every message carrying letter ``a``.  Expected: such a keyword is refused where the
    record is parsed (exit 4), or the file is read as Dovecot reads it, so the live name stays.
    At fault: records.valid_keyword, maildir.parse_keywords_file."""
    odd = "x\u2028y"
    first = Crafted(tmp_path / "k1.ims")
    first.user("kw", ["INBOX"])
    first.writer.begin_folder("primary/kw/INBOX/.ims-folder.json", {
        "partition": "primary", "user": "kw", "folder": "INBOX", "unchanged_since": None,
        "uidvalidity": 5, "next_uid": 2, "guid": None, "keywords": [odd],
        "messages": [["1.M1P1.a", 1, "S", [odd]]]}, 0)
    first.counts["folders"] += 1
    body = b"Subject: a\n\n"
    records = {"IMS.type": "message", "IMS.uid": "1", "IMS.flags": "S", "IMS.keywords": odd,
               "IMS.state": "cur", "IMS.internaldate": "1700000000", "IMS.basename": "1.M1P1.a",
               "IMS.size": str(len(body)), "IMS.sha256": hashlib.sha256(body).hexdigest()}
    first.writer.add_message(b"primary/kw/INBOX/1.M1P1.a", body, 1700000000,
                             b"".join(fmt.pax_record(k, v) for k, v in records.items()), 0, 0)
    first.counts["messages"] += 1
    first.close()
    result = restore(fresh_store, "-f", str(tmp_path / "k1.ims"))
    if result.returncode == 4:
        return                                       # refused where parsed: fine
    inbox = maildir(fresh_store, "kw")
    records_c = Crafted(tmp_path / "k3.ims")
    records_c.user("kw", ["INBOX"])
    records_c.writer.begin_folder("primary/kw/INBOX/.ims-folder.json", {
        "partition": "primary", "user": "kw", "folder": "INBOX", "unchanged_since": None,
        "uidvalidity": 5, "next_uid": 3, "guid": None, "keywords": ["c"],
        "messages": [["1.M1P1.c", 2, "S", ["c"]]]}, 0)
    records_c.counts["folders"] += 1
    body = b"Subject: c\n\n"
    records = {"IMS.type": "message", "IMS.uid": "2", "IMS.flags": "S", "IMS.keywords": "c",
               "IMS.state": "cur", "IMS.internaldate": "1700000000", "IMS.basename": "1.M1P1.c",
               "IMS.size": str(len(body)), "IMS.sha256": hashlib.sha256(body).hexdigest()}
    records_c.writer.add_message(b"primary/kw/INBOX/1.M1P1.c", body, 1700000000,
                                 b"".join(fmt.pax_record(k, v) for k, v in records.items()), 0, 0)
    records_c.counts["messages"] += 1
    records_c.close()
    assert restore(fresh_store, "-f", str(tmp_path / "k3.ims")).returncode == 0
    names = (inbox / "dovecot-keywords").read_text(encoding="utf-8").split("\n")
    assert names[0] == f"0 {odd}", names


def test_a_folder_restored_whole_near_the_uid_limit_keeps_dovecot_able_to_assign_a_uid(
        fresh_store, tmp_path):
    """``restored_next_uid`` caps the raised next UID at 2^32 - 1.  Dovecot 2.3 asserts
    ``next_uid < (uint32_t)-1`` when it gives a UID to new mail (maildir-uidlist.c:1959) and
    calls a line with UID 4294967295 'UID too high': with ``N4294967295`` in the restored
    uidlist, the first SELECT that meets a message without a UID (one restored to new/, or
    the next delivery) panics the imap process (checked against the Dovecot fixture), every
    time: the folder cannot be opened.  Expected: N at most 2^32 - 2 (and UID 2^32 - 1 refused
    where records are parsed).  At fault: plan.restored_next_uid (UID_MAX as the cap)."""
    archive = Crafted(tmp_path / "a.ims")
    archive.user("high", ["INBOX"])
    archive.folder("high", "INBOX", [["1.M1P1.a", 5, "S", []], ["1.M1P1.n", None, "", []]],
                   next_uid=4294967000)
    archive.message("high", "INBOX", "1.M1P1.a", b"Subject: a\n\n", 5)
    archive.message("high", "INBOX", "1.M1P1.n", b"Subject: n\n\n", None, flags="")
    archive.close()
    result = restore(fresh_store, "-f", str(tmp_path / "a.ims"))
    assert result.returncode == 0, result.stderr
    next_uid, _ = uidlist_uids(maildir(fresh_store, "high"))
    assert next_uid <= 2**32 - 2, next_uid


def test_a_link_to_bytes_the_archive_does_not_hold_is_damage_not_a_references_file(
        fresh_store, tmp_path):
    """From a file the archive is all there is: a hard-link member whose target is in no
    member cannot be completed by ``imsrestore -r``; it is damage (exit 4), named."""
    path = tmp_path / "a.ims"
    archive = Crafted(path)
    archive.user("lonely", ["INBOX"])
    archive.folder("lonely", "INBOX", [["1.M1P1.a", 7, "S", []]])
    records = {"IMS.type": "message", "IMS.flags": "S", "IMS.state": "cur", "IMS.uid": "7",
               "IMS.internaldate": "1700000000", "IMS.basename": "1.M1P1.a", "IMS.size": "5",
               "IMS.links": "2"}
    encoded = b"".join(fmt.pax_record(k, v) for k, v in records.items())
    archive.writer.add_link(b"primary/lonely/INBOX/1.M1P1.a", b"primary/nobody/INBOX/1.M9P9.x",
                            1700000000, encoded, 0, 0)
    archive.counts["messages"] += 1
    archive.close()
    result = run_cmd("imsrestore", "--json", "-f", str(path), config_dir=fresh_store / "config",
                     cwd=tmp_path)
    one_line_error(result)
    assert result.returncode == 4, result.stderr.decode()
    assert "not in the archive" in result.stderr.decode()
    assert not list(tmp_path.glob("imsrestore-refs-*"))
