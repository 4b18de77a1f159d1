"""QRESYNC clients after a folder is restored whole, against a real Dovecot.

A client cached the folder (UIDVALIDITY, HIGHESTMODSEQ, flags) after changes made since the
backup; the folder is deleted and restored whole.  Without a seeded modseq Dovecot starts the
restored folder at modseq 1-3 and answers ``SELECT (QRESYNC ...)`` with nothing: the client
keeps wrong flags.  With the restored folder's modseq above the cached one, Dovecot sends
every message's flags and ``VANISHED (EARLIER)`` for the UIDs that are gone.
"""

from __future__ import annotations

import imaplib
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import run_cmd
from dovecot_server import MAIL_GID, MAIL_UID
from helpers import write_config

from ims.store.base import FolderState
from ims.store.maildir import MaildirStore
from ims.store.modseq import read_highest_modseq, restored_modseq, seed_modseq

FOLDER = "Work"


def mail(n: int, note: str = "") -> bytes:
    return (f"From: q{n}@example.org\r\nSubject: q{n} {note}\r\nMessage-ID: <q{n}@t>\r\n\r\n"
            f"body {n}\r\n").encode()


# -- an IMAP client that speaks QRESYNC (RFC 7162) through imaplib's raw commands -----------

@dataclass
class Cache:
    """What a QRESYNC client keeps of a folder between sessions."""

    uidvalidity: int
    highestmodseq: int
    uidnext: int
    flags: dict[int, frozenset[str]]


@dataclass
class Resync:
    """What ``SELECT folder (QRESYNC (...))`` answered."""

    highestmodseq: int
    uidnext: int
    vanished: set[int]
    fetched: dict[int, tuple[frozenset[str], int]]    # UID -> (FLAGS, MODSEQ)


def qresync_client(dovecot, user: str) -> imaplib.IMAP4:
    client = dovecot.imap(user)
    typ, _ = client.enable("QRESYNC")
    assert typ == "OK"
    return client


def parse_flags(text: bytes) -> frozenset[str]:
    # \Recent belongs to a session, not to the message: neither stored nor restored
    return frozenset(text.decode().split()) - {"\\Recent"}


def uid_set(text: str) -> set[int]:
    result: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition(":")
        result.update(range(int(low), int(high or low) + 1))
    return result


def untagged(client: imaplib.IMAP4, kind: str) -> list[bytes]:
    return [d for d in client.untagged_responses.get(kind, []) if isinstance(d, bytes)]


def cache_folder(client: imaplib.IMAP4, folder: str) -> Cache:
    """A client's cache of the folder as it is now (a session that has it selected)."""
    typ, data = client.status(f'"{folder}"', "(UIDVALIDITY UIDNEXT HIGHESTMODSEQ)")
    assert typ == "OK", data
    values = {k.decode(): int(v) for k, v in
              re.findall(rb"(UIDVALIDITY|UIDNEXT|HIGHESTMODSEQ) (\d+)", data[0])}
    typ, data = client.uid("FETCH", "1:*", "(UID FLAGS)")
    assert typ == "OK"
    flags = {int(re.search(rb"UID (\d+)", d).group(1)):
             parse_flags(re.search(rb"FLAGS \(([^)]*)\)", d).group(1))
             for d in data if isinstance(d, bytes)}
    return Cache(values["UIDVALIDITY"], values["HIGHESTMODSEQ"], values["UIDNEXT"], flags)


def select_qresync(client: imaplib.IMAP4, folder: str, cache: Cache) -> Resync:
    known = f"1:{cache.uidnext - 1}"
    typ, data = client.select(
        f'"{folder}" (QRESYNC ({cache.uidvalidity} {cache.highestmodseq} {known}))')
    assert typ == "OK", data
    vanished: set[int] = set()
    for line in untagged(client, "VANISHED"):
        text = line.decode()
        assert text.startswith("(EARLIER) "), text     # SELECT reports earlier expunges
        vanished |= uid_set(text.split(" ", 1)[1])
    fetched: dict[int, tuple[frozenset[str], int]] = {}
    for line in untagged(client, "FETCH"):
        uid = int(re.search(rb"UID (\d+)", line).group(1))
        flags = parse_flags(re.search(rb"FLAGS \(([^)]*)\)", line).group(1))
        modseq = int(re.search(rb"MODSEQ \((\d+)\)", line).group(1))
        fetched[uid] = (flags, modseq)
    return Resync(int(untagged(client, "HIGHESTMODSEQ")[-1]), int(untagged(client, "UIDNEXT")[-1]),
                  vanished, fetched)


def imap_highestmodseq(client: imaplib.IMAP4, folder: str) -> int:
    typ, data = client.status(f'"{folder}"', "(HIGHESTMODSEQ)")
    assert typ == "OK", data
    return int(re.search(rb"HIGHESTMODSEQ (\d+)", data[0]).group(1))


def dovecot_complaints(dovecot, user: str) -> list[str]:
    log = Path(dovecot.root) / "log" / "dovecot.log"
    return [line for line in log.read_text(errors="replace").splitlines()
            if f"({user})" in line and re.search(r"Error|Panic|Fatal|Warning|orrupt", line)]


# -- the scenario ---------------------------------------------------------------------------

def fill_folder(dovecot, user: str) -> Path:
    """A user whose Work folder has UIDs 1-20, some with flags and keywords; returns the
    Maildir."""
    home = dovecot.add_user(user, dovecot.partition("primary"))
    client = dovecot.imap(user)
    assert client.create(f'"{FOLDER}"')[0] == "OK"
    for n in range(1, 21):
        flags = {4: r"(\Flagged proj)", 6: r"(\Answered)"}.get(n, r"(\Seen)" if n % 2 else None)
        client.append(f'"{FOLDER}"', flags, imaplib.Time2Internaldate(1700000000 + n), mail(n))
    client.logout()
    return home / "Maildir"


# (uid, STORE item, flags): every one changes the message's flags after the backup
CHANGES = [(1, "+FLAGS", r"(\Flagged)"), (2, "+FLAGS", r"(\Seen)"),
           (4, "FLAGS", r"(\Answered)"), (6, "FLAGS", r"(\Seen later)")]
EXPUNGED_AFTER = 5


def change_after_backup(dovecot, user: str) -> Cache:
    """Changes since the backup, seen by a QRESYNC client, which then caches the folder:
    flags of UIDs 1, 2, 4, 6 changed, UID 5 expunged, UID 21 delivered."""
    client = qresync_client(dovecot, user)
    client.select(f'"{FOLDER}"')
    for uid, item, flags in CHANGES:
        assert client.uid("STORE", str(uid), item, flags)[0] == "OK"
    client.uid("STORE", str(EXPUNGED_AFTER), "+FLAGS", r"(\Deleted)")
    client.expunge()
    client.logout()
    filer = dovecot.imap(user)                  # new mail filed into Work (a rule, a client)
    typ, data = filer.append(f'"{FOLDER}"', None, None, mail(21, "after the backup"))
    assert typ == "OK" and b"APPENDUID" in data[0]
    filer.logout()
    client = qresync_client(dovecot, user)
    client.select(f'"{FOLDER}"')
    cache = cache_folder(client, FOLDER)
    assert cache.uidnext == 22 and 21 in cache.flags and EXPUNGED_AFTER not in cache.flags
    client.close()
    assert client.delete(f'"{FOLDER}"')[0] == "OK"       # the folder is lost
    client.logout()
    return cache


def assert_modseq_resync(cache: Cache, resync: Resync, backed_up: dict[int, frozenset[str]]):
    """The modseq part: the client is told every restored message's flags."""
    assert resync.highestmodseq > cache.highestmodseq
    # every message of the restored folder is reported, with its restored flags and a modseq
    # above the cached one, including UID 5, which the client saw expunged and is back
    assert set(resync.fetched) == set(backed_up)
    for uid, flags in backed_up.items():
        assert resync.fetched[uid][0] == flags, uid
        assert resync.fetched[uid][1] > cache.highestmodseq, uid
    for uid, _, _ in CHANGES:
        assert cache.flags[uid] != backed_up[uid], uid          # the client had other flags
    assert EXPUNGED_AFTER in resync.fetched and EXPUNGED_AFTER not in resync.vanished
    assert resync.vanished.isdisjoint(backed_up)


# -- (a) the module on a folder built the way imsrestore builds one -------------------------

def read_backup(maildir: Path, user: str) -> tuple[FolderState, list[tuple[str, bytes, float]]]:
    """What a backup keeps of Work: its state (through the store driver, which reads the
    modseq bound) and each message's file name, bytes and mtime."""
    store = MaildirStore({"primary": maildir.parent.parent}, "%u/Maildir")
    reader = store.open_folder("primary", user, FOLDER)
    try:
        state = reader.state
        files = []
        for entry in state.messages:
            opened = reader.open_message(entry)
            assert opened is not None
            fd, st = opened
            with os.fdopen(fd, "rb") as f:
                files.append((entry.key, f.read(), st.st_mtime))
    finally:
        reader.close()
    return state, files


def restore_whole(maildir: Path, state: FolderState, files, next_uid: int,
                  seed: bool = True) -> None:
    """As imsrestore's NewFolder does: cur/<base>:2,<flags> files, dovecot-keywords, a
    uidlist with the archive's UIDVALIDITY, GUID and UIDs, no index files, built aside on the
    same file system; then the modseq seed, then one rename into place."""
    aside = maildir.parent / f"aside-{FOLDER}"
    for sub in ("", "cur", "new", "tmp"):
        (aside / sub).mkdir(mode=0o700)
    (aside / "maildirfolder").touch()
    infos = {m.key: m.info for m in state.messages}
    uids = {m.key: m.uid for m in state.messages}
    for key, data, mtime in files:
        path = aside / "cur" / f"{key}:{infos[key] or '2,'}"
        path.write_bytes(data)
        os.utime(path, (mtime, mtime))
    if state.keywords:
        (aside / "dovecot-keywords").write_text(
            "".join(f"{i} {k}\n" for i, k in enumerate(state.keywords)))
    lines = [f"3 V{state.uidvalidity} N{next_uid} G{state.guid}"]
    lines += [f"{uids[key]} :{key}" for key, _, _ in sorted(files, key=lambda f: uids[f[0]])]
    (aside / "dovecot-uidlist").write_text("\n".join(lines) + "\n")
    for directory, subdirs, names in os.walk(aside):
        for name in [directory, *(os.path.join(directory, n) for n in subdirs + names)]:
            os.chown(name, MAIL_UID, MAIL_GID)
            os.chmod(name, 0o700 if os.path.isdir(name) else 0o600)
    if seed:
        seed_modseq(aside, restored_modseq(state.highest_modseq, time.time()), MAIL_UID,
                    MAIL_GID)
        # the folder Dovecot will open has a log and no dovecot.index
        assert sorted(n for n in os.listdir(aside) if n.startswith("dovecot.index")) == \
            ["dovecot.index.log"]
    os.rename(aside, maildir / f".{FOLDER}")


@pytest.mark.parametrize("next_uid", ["archived", "above-client"])
def test_seeded_folder_resyncs_a_qresync_client(dovecot, next_uid):
    user = {"archived": "alma", "above-client": "bert"}[next_uid]
    maildir = fill_folder(dovecot, user)
    folder_dir = maildir / f".{FOLDER}"
    # the backup reads a folder that Dovecot keeps in its log only (no dovecot.index yet)
    assert (folder_dir / "dovecot.index.log").exists()
    assert not (folder_dir / "dovecot.index").exists()
    client = dovecot.imap(user)
    at_backup = imap_highestmodseq(client, FOLDER)
    client.logout()
    state, files = read_backup(maildir, user)
    assert state.highest_modseq is not None and state.highest_modseq >= at_backup
    backed_up = {m.uid: frozenset(_imap_flags(m.flags, m.keywords)) for m in state.messages}
    assert sorted(backed_up) == list(range(1, 21)) and state.next_uid == 21

    cache = change_after_backup(dovecot, user)
    assert cache.highestmodseq > state.highest_modseq      # changed since: the margin's job

    # "archived": the uidlist's next UID is the archive's, as imsrestore writes it today;
    # "above-client": above every UID handed out since the backup
    restore_whole(maildir, state, files,
                  next_uid=state.next_uid if next_uid == "archived" else cache.uidnext)
    client = qresync_client(dovecot, user)
    resync = select_qresync(client, FOLDER, cache)
    assert_modseq_resync(cache, resync, backed_up)
    if next_uid == "archived":
        # Dovecot reports as vanished only UIDs below the folder's UIDNEXT: UID 21, handed
        # out after the backup, is not reported (and would be handed out again). That is the
        # next-UID rule's job, not the modseq's.
        assert resync.uidnext == 21 and 21 not in resync.vanished
    else:
        assert 21 in resync.vanished

    # Dovecot keeps tracking modseqs on top of the seed: a later change reaches a client
    # that resynchronises from the post-restore modseq, and nothing else does
    after_restore = Cache(cache.uidvalidity, resync.highestmodseq, resync.uidnext,
                          {uid: f for uid, (f, _) in resync.fetched.items()})
    other = dovecot.imap(user)
    other.select(f'"{FOLDER}"')
    other.uid("STORE", "7", "+FLAGS", r"(\Flagged)")
    other.uid("STORE", "8", "+FLAGS", r"(\Deleted)")
    other.expunge()
    other.logout()
    client.close()
    again = select_qresync(client, FOLDER, after_restore)
    assert again.highestmodseq > resync.highestmodseq
    assert set(again.fetched) == {7} and again.fetched[7][0] == backed_up[7] | {r"\Flagged"}
    assert again.vanished == {8}
    client.logout()
    assert dovecot_complaints(dovecot, user) == []


def _imap_flags(letters: str, keywords: tuple[str, ...]) -> set[str]:
    names = {"D": r"\Draft", "F": r"\Flagged", "R": r"\Answered", "S": r"\Seen", "T": r"\Deleted"}
    return {names[c] for c in letters if c in names} | set(keywords)


def test_unseeded_folder_leaves_a_qresync_client_stale(dovecot):
    """The defect, kept as a check that the scenario shows it: no seed, no resync."""
    user = "cleo"
    maildir = fill_folder(dovecot, user)
    state, files = read_backup(maildir, user)
    cache = change_after_backup(dovecot, user)
    restore_whole(maildir, state, files, next_uid=state.next_uid, seed=False)
    client = qresync_client(dovecot, user)
    resync = select_qresync(client, FOLDER, cache)
    client.logout()
    assert resync.highestmodseq < cache.highestmodseq
    assert resync.fetched == {} and resync.vanished == set()


def test_bound_is_never_below_what_imap_reports(dovecot):
    """read_highest_modseq against STATUS HIGHESTMODSEQ over random changes, first with the
    log only, then once Dovecot has written dovecot.index."""
    user = "dina"
    maildir = fill_folder(dovecot, user)
    folder_dir = maildir / f".{FOLDER}"
    rnd = random.Random(7)
    client = dovecot.imap(user)
    watcher = dovecot.imap(user)            # a second session keeps the folder open
    watcher.select(f'"{FOLDER}"')
    seen_without_index = seen_with_index = 0
    worst = 0
    for step in range(400):
        client.select(f'"{FOLDER}"')
        choice = rnd.random()
        if choice < 0.25:
            client.append(f'"{FOLDER}"', None, None, mail(100 + step))
        elif choice < 0.85:
            client.uid("STORE", f"{rnd.randint(1, 20)}:*", rnd.choice(["+FLAGS", "-FLAGS"]),
                       rnd.choice([r"(\Seen)", r"(\Flagged k1)", "(k2)"]))
        else:
            client.uid("STORE", str(rnd.randint(1, 20 + step // 4)), "+FLAGS", r"(\Deleted)")
            client.expunge()
        if step % 20 == 0:
            watcher.noop()
        if step % 10 == 9:
            reported = imap_highestmodseq(client, FOLDER)
            bound = read_highest_modseq(folder_dir)
            assert bound is not None and bound >= reported, (step, reported, bound)
            worst = max(worst, bound - reported)
            if (folder_dir / "dovecot.index").exists():
                seen_with_index += 1
            else:
                seen_without_index += 1
    client.logout()
    watcher.logout()
    assert seen_without_index and seen_with_index, (seen_without_index, seen_with_index)
    assert worst < 2 * reported + 10        # an over-estimate, but not a wild one


# -- (b) end to end through imsbackup and imsrestore ----------------------------------------

def end_to_end(dovecot, tmp_path, user: str) -> tuple[Cache, Resync, dict[int, frozenset[str]]]:
    maildir = fill_folder(dovecot, user)
    config = write_config(tmp_path / "config", {"primary": dovecot.partition("primary")})
    client = dovecot.imap(user)
    client.select(f'"{FOLDER}"')
    backed_up = cache_folder(client, FOLDER).flags
    client.logout()
    archive = tmp_path / "a.ims"
    run_cmd("imsbackup", "-f", str(archive), f"/primary/user/{user}", config_dir=config,
            check_rc=0)
    cache = change_after_backup(dovecot, user)
    assert not (maildir / f".{FOLDER}").exists()
    run_cmd("imsrestore", "-f", str(archive), f"/primary/user/{user}/{FOLDER}",
            config_dir=config, check_rc=0)
    client = qresync_client(dovecot, user)
    resync = select_qresync(client, FOLDER, cache)
    client.logout()
    assert dovecot_complaints(dovecot, user) == []
    return cache, resync, backed_up


def test_imsrestore_of_a_deleted_folder_resyncs_qresync_flags(dovecot, tmp_path):
    cache, resync, backed_up = end_to_end(dovecot, tmp_path, "gina")
    assert_modseq_resync(cache, resync, backed_up)


def test_imsrestore_of_a_deleted_folder_reports_mail_delivered_since_as_vanished(
        dovecot, tmp_path):
    cache, resync, backed_up = end_to_end(dovecot, tmp_path, "hugo")
    assert_modseq_resync(cache, resync, backed_up)
    # UID 21 arrived after the backup: the client must be told it is gone, which Dovecot
    # does only if the restored folder's next UID is above it (and then never reuses it)
    assert 21 in resync.vanished and resync.uidnext > 21
