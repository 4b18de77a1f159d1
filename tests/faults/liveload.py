#!/usr/bin/env python3
"""Live-load campaign: imsbackup and imsrestore against a real Dovecot under load
(docs/reliability.md, "Live load").

A throwaway Dovecot (tests/dovecot_server.py) serves a few users.  Worker threads run a
fixed number of operations — LMTP deliveries (some to several users: hard links), IMAP
APPENDs, flag changes (UID STORE) and expunges (STORE \\Deleted + UID EXPUNGE) — while an
administrator thread, over and over, backs up the partition (``imsbackup -f FILE /live``)
and restores the same users:

- a deleted folder: the folder is deleted over IMAP and restored from the last backup; it
  must come back whole, with its UIDVALIDITY and UIDs (nothing else touches it);
- a merge: the last backup of a user's INBOX or Work folder is restored into the live
  folder while deliveries, appends and flag changes go on (the expunger leaves that folder
  alone meanwhile); what was expunged since the backup comes back once, as new mail.

Every delivered, appended, expunged and restored message is tracked by its Message-ID in a
model (per user and folder, how many copies should exist).  Checked:

- every message that should exist exists exactly once, and no other (IMAP, at the end);
- UIDs are never reused: per folder and UIDVALIDITY, a UID always names the same
  Message-ID, and a message that appears between two snapshots has a UID at or above the
  UIDNEXT of the first (IMAP snapshots after each administrator step);
- every imsbackup exits 0 with a verified archive; every imsrestore exits 0;
- Dovecot's log has no Panic, Fatal, Error, Corrupted or Warning lines (each one is
  reported; none is excused);
- archives taken under load restore (``--partition fresh`` and a user map) into a fresh
  part of the store served by the same Dovecot to a consistent state: every archived
  message with a UID is there under that UID with its Message-ID, every other archived
  message once, no duplicates, the archived UIDVALIDITY.

    nice -n 10 .venv/bin/python tests/faults/liveload.py --ops 3000 --seed 1

Exit 0 when nothing was found, 1 with findings (printed), 2 on a setup problem.
Needs root and Dovecot (dovecot-core, dovecot-imapd, dovecot-lmtpd).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import imaplib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from archive_reader import read_archive  # noqa: E402  (tests/ on the path first)

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

BIN = Path(sys.executable).parent
USERS = ["lena", "max", "9lives", "ivy"]
LOAD_FOLDERS = ["INBOX", "Work"]               # deliveries/appends, flags, expunges
RESTORE_FOLDERS = ["Archive", "Old"]           # touched only by delete + restore
LOG_PATTERN = re.compile(r"Panic|Fatal|Error|Corrupt|Warning", re.IGNORECASE)
MSGID = re.compile(rb"Message-ID:\s*<([^>]+)>", re.IGNORECASE)
COMMAND_TIMEOUT = 300


class Findings:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.lock = threading.Lock()

    def add(self, text: str) -> None:
        with self.lock:
            self.items.append(text)
        print(f"  FINDING: {text}", flush=True)


@dataclass
class Model:
    """How many copies of each Message-ID each (user, folder) should hold."""

    counts: dict[tuple[str, str], collections.Counter] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter))
    lock: threading.Lock = field(default_factory=threading.Lock)
    paused: set[tuple[str, str]] = field(default_factory=set)   # expunger keeps out

    def add(self, user: str, folder: str, msgid: str) -> None:
        with self.lock:
            self.counts[(user, folder)][msgid] += 1

    def remove(self, user: str, folder: str, msgid: str) -> None:
        with self.lock:
            self.counts[(user, folder)][msgid] -= 1


class UidWatch:
    """Per (user, folder, UIDVALIDITY): UID -> Message-ID ever seen, and the UIDNEXT of the
    last snapshot; a UID naming two messages, or a new message below the last UIDNEXT, is a
    finding."""

    def __init__(self, findings: Findings) -> None:
        self.seen: dict[tuple[str, str, int], dict[int, str]] = collections.defaultdict(dict)
        self.last: dict[tuple[str, str], tuple[int, int, set[int]]] = {}
        self.findings = findings
        self.lock = threading.Lock()
        self.observations = 0

    def observe(self, user: str, folder: str, uidvalidity: int, uid: int, msgid: str) -> None:
        with self.lock:
            self.observations += 1
            known = self.seen[(user, folder, uidvalidity)]
            if uid in known and known[uid] != msgid:
                self.findings.add(f"UID reused: {user}/{folder} UIDVALIDITY {uidvalidity} UID {uid}"
                                  f" named <{known[uid]}>, now <{msgid}>")
            known[uid] = msgid

    def snapshot(self, user: str, folder: str, uidvalidity: int, uidnext: int,
                 uids: dict[int, str]) -> None:
        for uid, msgid in uids.items():
            self.observe(user, folder, uidvalidity, uid, msgid)
        with self.lock:
            previous = self.last.get((user, folder))
            if previous and previous[0] == uidvalidity:
                below = sorted(u for u in uids if u not in previous[2] and u < previous[1])
                if below:
                    self.findings.add(f"{user}/{folder}: new message(s) with UID below the UIDNEXT"
                                      f" {previous[1]} seen before: {below[:5]}")
                if uidnext < previous[1]:
                    self.findings.add(f"{user}/{folder}: UIDNEXT went back from {previous[1]} to"
                                      f" {uidnext}")
            self.last[(user, folder)] = (uidvalidity, uidnext, set(uids))

    def forget_folder(self, user: str, folder: str) -> None:
        """The folder was deleted: its next incarnation starts a new UIDNEXT history (its
        UID -> Message-ID mapping stays: a restored folder must name the same messages)."""
        with self.lock:
            self.last.pop((user, folder), None)


def message(n: int, rng: random.Random, recipients: list[str]) -> tuple[str, bytes]:
    msgid = f"load.{n}@ims.test"
    lines = "".join(f"line {i} {rng.random()}\r\n" for i in range(rng.randrange(1, 40)))
    raw = (f"From: load@example.org\r\nTo: {', '.join(r + '@example.com' for r in recipients)}\r\n"
           f"Subject: load {n}\r\nMessage-ID: <{msgid}>\r\n\r\n{lines}").encode()
    return msgid, raw


def folder_contents(client: imaplib.IMAP4, folder: str) -> tuple[int, int, dict[int, str]] | None:
    """(UIDVALIDITY, UIDNEXT, UID -> Message-ID) of a folder, None if it does not exist."""
    typ, data = client.select(f'"{folder}"', readonly=True)
    if typ != "OK":
        return None
    typ, status = client.status(f'"{folder}"', "(UIDNEXT UIDVALIDITY)")
    values = dict(re.findall(rb"(UIDNEXT|UIDVALIDITY) (\d+)", status[0]))
    uids: dict[int, str] = {}
    typ, data = client.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    for item in data or []:
        if not isinstance(item, tuple):
            continue
        uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
        found = MSGID.search(item[1])
        uids[uid] = found.group(1).decode() if found else f"<none:{uid}>"
    client.close()
    return int(values[b"UIDVALIDITY"]), int(values[b"UIDNEXT"]), uids


def run_tool(name: str, args: list[str], config: Path) -> tuple[int | None, str, str, float]:
    started = time.monotonic()
    env = {k: v for k, v in os.environ.items() if k != "IMS_DEBUG"}
    env["IMS_CONFIG_DIR"] = str(config)
    try:
        proc = subprocess.run([str(BIN / name), *args], capture_output=True, env=env,
                              timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        return None, "", "timed out", time.monotonic() - started
    return (proc.returncode, proc.stdout.decode("utf-8", "replace"),
            proc.stderr.decode("utf-8", "replace"), time.monotonic() - started)


def archive_folders(path: Path) -> dict[tuple[str, str], dict]:
    """(user, folder) -> {"uidvalidity", "uids": {uid: msgid}, "plain": [msgid of messages
    without a UID]} from an archive, read with the independent reader of the tests."""
    archive = read_archive(path.read_bytes())
    by_name = archive.by_name()
    result: dict[tuple[str, str], dict] = {}
    states: dict[tuple[str, str], dict] = {}
    for member in archive.members:
        if member.kind == "folder":
            state = member.json()
            key = (state["user"], state["folder"])
            states[key] = state
            result[key] = {"uidvalidity": state["uidvalidity"], "uids": {}, "plain": [],
                           "listed": len(state["messages"] or [])}
        elif member.kind == "message":
            _, user, folder_and_name = member.name.split("/", 2)
            folder = folder_and_name.rsplit("/", 1)[0]
            data = by_name[member.linkname].data if member.typeflag == b"1" else member.data
            found = MSGID.search(data[:4096])
            msgid = found.group(1).decode() if found else "<none>"
            entry = result[(user, folder)]
            if "IMS.uid" in member.pax:
                entry["uids"][int(member.pax["IMS.uid"])] = msgid
            else:
                entry["plain"].append(msgid)
    return result


def add_users(server, users: list[tuple[str, Path]]) -> None:
    """``DovecotServer.add_user`` for several (user, partition directory) with one wait for
    Dovecot to re-read its passwd-file (it waits a second per call while the server runs)."""
    pid, server.pid = server.pid, None
    try:
        for user, partition_dir in users:
            server.add_user(user, partition_dir)
    finally:
        server.pid = pid
    if pid is not None:
        time.sleep(1.02 - time.time() % 1)
        os.utime(server.users_file)


class Campaign:
    def __init__(self, server, work: Path, ops: int, seed: int, findings: Findings,
                 rate: float = 60.0) -> None:
        self.server = server
        self.rate = rate
        self.next_slot = 0.0
        self.work = work
        self.ops_total = ops
        self.rng = random.Random(seed)
        self.seed = seed
        self.findings = findings
        self.model = Model()
        self.uids = UidWatch(findings)
        self.ops_done = collections.Counter()
        self.ops_lock = threading.Lock()
        self.next_message = 0
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.archives: list[Path] = []
        self.admin_counts = collections.Counter()
        self.shim = None
        with contextlib.suppress(Exception):
            import faults       # the fault campaign's shim: signals at an exact call
            self.shim = faults.build_eio_shim(work)
        self.partition = server.partition("live")
        self.fresh = server.partition("fresh")
        self.config = work / "config"
        self.config.mkdir(parents=True, exist_ok=True)
        (self.config / "msg.conf").write_text(
            f"store.partition.live.path = {self.partition}\n"
            f"store.partition.fresh.path = {self.fresh}\n"
            f"local.store.backup.exclude = \nlocal.store.logdir = {work / 'log'}\n")

    # -- operations --------------------------------------------------------------------------

    def take_op(self, kind: str) -> bool:
        """One operation of the budget, paced at ``rate`` a second so that the administrator's
        backups and restores overlap the whole load."""
        with self.ops_lock:
            if sum(self.ops_done.values()) >= self.ops_total or self.stop.is_set():
                return False
            self.ops_done[kind] += 1
            now = time.monotonic()
            self.next_slot = max(self.next_slot + 1.0 / self.rate, now)
            wait = self.next_slot - now
        if wait > 0:
            time.sleep(wait)
        return True

    def new_message(self, rng: random.Random, recipients: list[str]) -> tuple[str, bytes]:
        with self.ops_lock:
            self.next_message += 1
            n = self.next_message
        return message(n, rng, recipients)

    def guarded(self, name: str, body) -> threading.Thread:
        def run() -> None:
            try:
                body()
            except Exception as exc:  # noqa: BLE001 - reported as a harness error
                import traceback
                self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
                traceback.print_exc()
                self.stop.set()
        return threading.Thread(target=run, name=name, daemon=True)

    def deliverer(self, seed: int) -> None:
        rng = random.Random(seed)
        clients: dict[str, imaplib.IMAP4] = {}
        while True:
            if rng.random() < 0.8:
                if not self.take_op("deliver"):
                    break
                recipients = rng.sample(USERS, rng.choice([1, 1, 1, 2, 3]))
                msgid, raw = self.new_message(rng, recipients)
                for user in recipients:     # before it lands: the model never lags the store
                    self.model.add(user, "INBOX", msgid)
                replies = self.server.lmtp_deliver(raw, recipients)
                for user in recipients:
                    if replies.get(user, (0,))[0] != 250:
                        self.model.remove(user, "INBOX", msgid)
                        self.findings.add(f"LMTP delivery to {user} refused: {replies.get(user)}")
            else:
                if not self.take_op("append"):
                    break
                user = rng.choice(USERS)
                msgid, raw = self.new_message(rng, [user])
                client = clients.get(user) or self.server.imap(user)
                clients[user] = client
                self.model.add(user, "Work", msgid)
                typ, data = client.append('"Work"', r"(\Seen)", None, raw)
                if typ != "OK":
                    self.model.remove(user, "Work", msgid)
                    self.findings.add(f"APPEND to {user}/Work failed: {data}")
        for client in clients.values():
            with contextlib.suppress(Exception):
                client.logout()

    def flagger(self, seed: int) -> None:
        rng = random.Random(seed)
        clients = {u: self.server.imap(u) for u in USERS}
        try:
            while self.take_op("flag"):
                user, folder = rng.choice(USERS), rng.choice(LOAD_FOLDERS)
                client = clients[user]
                if client.select(f'"{folder}"')[0] != "OK":
                    continue
                typ, data = client.uid("SEARCH", "ALL")
                uids = data[0].split() if typ == "OK" and data and data[0] else []
                if not uids:
                    continue
                chosen = b",".join(rng.sample(uids, min(len(uids), rng.choice([1, 1, 3]))))
                flags = rng.choice([r"(\Seen)", r"(\Flagged)", r"(\Answered $Label1)", "(todo)"])
                client.uid("STORE", chosen.decode(), rng.choice(["+FLAGS", "-FLAGS"]), flags)
        finally:
            for client in clients.values():
                with contextlib.suppress(Exception):
                    client.logout()

    def expunger(self, seed: int) -> None:
        rng = random.Random(seed)
        clients = {u: self.server.imap(u) for u in USERS}
        try:
            while True:
                user, folder = rng.choice(USERS), rng.choice(LOAD_FOLDERS)
                with self.model.lock:
                    if (user, folder) in self.model.paused:
                        continue_later = True
                    else:
                        continue_later = False
                        self.model.paused.add((user, folder, "expunger"))  # type: ignore[arg-type]
                if continue_later:
                    time.sleep(0.01)
                    continue
                try:
                    if not self.take_op("expunge"):
                        break
                    self.expunge_one(clients[user], user, folder, rng)
                finally:
                    with self.model.lock:
                        self.model.paused.discard((user, folder, "expunger"))  # type: ignore[arg-type]
                time.sleep(rng.uniform(0, 0.01))
        finally:
            for client in clients.values():
                with contextlib.suppress(Exception):
                    client.logout()

    def expunge_one(self, client: imaplib.IMAP4, user: str, folder: str, rng: random.Random) -> None:
        if client.select(f'"{folder}"')[0] != "OK":
            return
        typ, status = client.status(f'"{folder}"', "(UIDVALIDITY)")
        uidvalidity = int(re.search(rb"UIDVALIDITY (\d+)", status[0]).group(1))
        typ, data = client.uid("SEARCH", "ALL")
        uids = data[0].split() if typ == "OK" and data and data[0] else []
        if not uids:
            return
        uid = rng.choice(uids).decode()
        typ, data = client.uid("FETCH", uid, "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        item = next((i for i in data or [] if isinstance(i, tuple)), None)
        if item is None:
            return
        found = MSGID.search(item[1])
        msgid = found.group(1).decode() if found else f"<none:{uid}>"
        self.uids.observe(user, folder, uidvalidity, int(uid), msgid)
        self.model.remove(user, folder, msgid)
        client.uid("STORE", uid, "+FLAGS", r"(\Deleted)")
        typ, data = client.uid("EXPUNGE", uid)
        if typ != "OK":
            self.model.add(user, folder, msgid)
            self.findings.add(f"UID EXPUNGE {uid} in {user}/{folder} failed: {data}")

    # -- the administrator -------------------------------------------------------------------

    def snapshot_all(self, client_for) -> None:
        for user in USERS:
            client = client_for(user)
            for folder in LOAD_FOLDERS + RESTORE_FOLDERS:
                contents = folder_contents(client, folder)
                if contents is not None:
                    self.uids.snapshot(user, folder, *contents)

    def backup(self, index: int | str) -> Path | None:
        path = self.work / f"load-{index}.ims"
        rc, out, err, seconds = run_tool("imsbackup", ["-f", str(path), "--json", "/live"], self.config)
        self.admin_counts["backup"] += 1
        if rc != 0:
            self.findings.add(f"imsbackup under load: exit {rc}: {err.strip()[:300]}")
            return None
        try:
            summary = json.loads(out)
            self.admin_counts["vanished"] += summary.get("vanished", 0)
        except ValueError:
            self.findings.add(f"imsbackup --json printed no JSON: {out[:200]}")
        rc, _, err, _ = run_tool("imsrestore", ["-t", "-f", str(path)], self.config)
        if rc != 0:
            self.findings.add(f"imsrestore -t of an archive taken under load: exit {rc}: {err[:300]}")
        return path

    def restore_deleted_folder(self, archive: Path, contents: dict, user: str, folder: str,
                               client: imaplib.IMAP4) -> None:
        archived = contents.get((user, folder))
        if archived is None:
            return
        typ, data = client.delete(f'"{folder}"')
        if typ != "OK":
            self.findings.add(f"IMAP DELETE {user}/{folder}: {data}")
            return
        self.uids.forget_folder(user, folder)
        rc, _, err, _ = run_tool("imsrestore", ["-f", str(archive), f"/live/user/{user}/{folder}"],
                                 self.config)
        self.admin_counts["restore deleted folder"] += 1
        if rc != 0:
            self.findings.add(f"imsrestore of the deleted folder {user}/{folder}: exit {rc}: {err[:300]}")
            return
        now = folder_contents(client, folder)
        if now is None:
            self.findings.add(f"{user}/{folder}: not there after its restore")
            return
        uidvalidity, uidnext, uids = now
        if uidvalidity != archived["uidvalidity"]:
            self.findings.add(f"{user}/{folder}: UIDVALIDITY {uidvalidity} after the restore, the"
                              f" archive has {archived['uidvalidity']}")
        if {u: m for u, m in uids.items() if u in archived["uids"]} != archived["uids"]:
            self.findings.add(f"{user}/{folder}: restored UIDs differ from the archive's")
        expected = collections.Counter(archived["uids"].values()) + collections.Counter(archived["plain"])
        if collections.Counter(uids.values()) != expected:
            self.findings.add(f"{user}/{folder}: after the restore {sorted(uids.values())[:5]}..."
                              f" instead of the archived {sorted(expected)[:5]}...")
        with self.model.lock:
            model = +self.model.counts[(user, folder)]
        if collections.Counter(uids.values()) != model:
            self.findings.add(f"{user}/{folder}: the restored folder differs from what it held"
                              f" ({len(uids)} messages, expected {sum(model.values())})")
        self.uids.snapshot(user, folder, uidvalidity, uidnext, uids)

    def merge(self, archive: Path, contents: dict, user: str, folder: str,
              client: imaplib.IMAP4, kill: tuple[str, float, int, int] | None = None) -> None:
        """Restore the archived folder into the live one (rule 2).  ``kill``: (signal, after
        seconds, --batch): that restore is killed first, then run again to the end."""
        archived = contents.get((user, folder))
        if archived is None:
            return
        # the expunger leaves the folder alone while its backup is merged back
        while True:
            with self.model.lock:
                if (user, folder, "expunger") not in self.model.paused:
                    self.model.paused.add((user, folder))
                    break
            time.sleep(0.005)
        try:
            if kill is not None:
                self.killed_restore(archive, user, folder, *kill)
            rc, out, err, _ = run_tool("imsrestore", ["-f", str(archive), "--json",
                                                      f"/live/user/{user}/{folder}"], self.config)
            self.admin_counts["merge"] += 1
            if rc != 0:
                self.findings.add(f"imsrestore merging into {user}/{folder} under load: exit {rc}:"
                                  f" {err[:300]}")
                return
            summary = json.loads(out) if out.strip() else {}
            self.admin_counts["merged messages"] += summary.get("messages", 0)
            with self.model.lock:
                counts = self.model.counts[(user, folder)]
                for msgid in list(archived["uids"].values()) + archived["plain"]:
                    if counts[msgid] < 1:
                        counts[msgid] = 1           # expunged since the backup: back once
            now = folder_contents(client, folder)
            if now is not None:
                self.uids.snapshot(user, folder, *now)
                present = collections.Counter(now[2].values())
                doubled = sorted(m for m, n in present.items() if n > 1)
                if doubled:
                    self.findings.add(f"{user}/{folder}: doubled after a merge: {doubled[:5]}")
                missing = sorted(m for m in set(archived["uids"].values()) if m not in present)
                if missing:
                    self.findings.add(f"{user}/{folder}: archived messages missing after a merge:"
                                      f" {missing[:5]}")
        finally:
            with self.model.lock:
                self.model.paused.discard((user, folder))

    def killed_restore(self, archive: Path, user: str, folder: str, sig: str, after: float,
                       batch: int, at_rename: int) -> None:
        """A merge killed midway: at its ``at_rename``-th rename (the commit steps, placed
        by the fault campaign's LD_PRELOAD shim when a C compiler exists), else ``after``
        seconds past its start-up."""
        env = {k: v for k, v in os.environ.items() if k != "IMS_DEBUG"}
        env["IMS_CONFIG_DIR"] = str(self.config)
        number = {"KILL": 9, "TERM": 15, "INT": 2}[sig]
        if self.shim is not None:
            env.update(LD_PRELOAD=str(self.shim), IMSF_KILL_OP="rename",
                       IMSF_KILL_AT=str(at_rename), IMSF_KILL_SIG=str(number))
        proc = subprocess.Popen([str(BIN / "imsrestore"), "-f", str(archive), "--batch", str(batch),
                                 f"/live/user/{user}/{folder}"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=env)
        if self.shim is None:
            # past the start-up: once the archive is open (a Ctrl-C during Python's imports
            # is the fault campaign's business)
            deadline = time.monotonic() + 30
            while proc.poll() is None and time.monotonic() < deadline \
                    and not self.has_open(proc.pid, archive):
                time.sleep(0.002)
            time.sleep(after)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(number)
        _, err = proc.communicate(timeout=COMMAND_TIMEOUT)
        self.admin_counts[f"merge killed by SIG{sig}"] += 1
        if proc.returncode not in (-number, 128 + number, 0):
            self.findings.add(f"imsrestore killed by SIG{sig}: exit {proc.returncode}: {err.decode()[-300:]}")
        if b"Traceback (most recent call last)" in err:
            self.findings.add(f"imsrestore killed by SIG{sig}: traceback: {err.decode()[-300:]}")

    @staticmethod
    def has_open(pid: int, path: Path) -> bool:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                        return True
        except OSError:
            pass
        return False

    def admin(self) -> None:
        rng = random.Random(self.seed * 7 + 1)
        clients: dict[str, imaplib.IMAP4] = {}

        def client_for(user: str) -> imaplib.IMAP4:
            if user not in clients:
                clients[user] = self.server.imap(user)
            return clients[user]
        index = 0
        try:
            while not self.load_done():
                index += 1
                archive = self.backup(index)
                self.snapshot_all(client_for)
                if archive is None:
                    continue
                self.archives.append(archive)
                contents = archive_folders(archive)
                user = rng.choice(USERS)
                action = ["deleted-folder", "merge", "killed-merge"][index % 3]
                if action == "deleted-folder":
                    self.restore_deleted_folder(archive, contents, user, rng.choice(RESTORE_FOLDERS),
                                                client_for(user))
                else:
                    # an older backup: more of its mail has been expunged since
                    older = rng.choice(self.archives)
                    kill = None
                    if action == "killed-merge":
                        kill = (rng.choice(["KILL", "TERM", "INT"]), rng.uniform(0, 0.3),
                                rng.choice([1, 2, 5]), rng.randrange(1, 8))
                    self.merge(older, archive_folders(older), user, rng.choice(LOAD_FOLDERS),
                               client_for(user), kill)
                self.snapshot_all(client_for)
        finally:
            for client in clients.values():
                with contextlib.suppress(Exception):
                    client.logout()

    def backupper(self) -> None:
        """Backups of the whole partition, one after another, overlapping the restores."""
        index = 0
        while not self.load_done():
            index += 1
            archive = self.backup(f"b{index}")
            if archive is not None:
                self.archives.append(archive)

    def load_done(self) -> bool:
        with self.ops_lock:
            return sum(self.ops_done.values()) >= self.ops_total or self.stop.is_set()

    # -- the run -----------------------------------------------------------------------------

    def seed_store(self) -> None:
        # the users of the archives restored into the fresh partition, too
        add_users(self.server, [(u, self.partition) for u in USERS]
                  + [(f"r{n}-{u}", self.fresh) for n in range(3) for u in USERS])
        rng = random.Random(self.seed)
        for _ in range(3 * len(USERS)):
            recipients = rng.sample(USERS, rng.choice([1, 2]))
            msgid, raw = self.new_message(rng, recipients)
            for user in recipients:
                self.model.add(user, "INBOX", msgid)
            self.server.lmtp_deliver(raw, recipients)
        for user in USERS:
            client = self.server.imap(user)
            for folder in ["Work"] + RESTORE_FOLDERS:
                client.create(f'"{folder}"')
                client.subscribe(f'"{folder}"')
            for folder in ["Work"] + RESTORE_FOLDERS * 4:
                msgid, raw = self.new_message(rng, [user])
                client.append(f'"{folder}"', rng.choice([None, r"(\Seen)", r"(\Flagged old)"]),
                              None, raw)
                self.model.add(user, folder, msgid)
            client.logout()

    def run(self) -> dict:
        started = time.monotonic()
        self.seed_store()
        threads = [self.guarded("deliverer-1", lambda: self.deliverer(self.seed * 11 + 1)),
                   self.guarded("deliverer-2", lambda: self.deliverer(self.seed * 11 + 2)),
                   self.guarded("flagger", lambda: self.flagger(self.seed * 11 + 3)),
                   self.guarded("expunger", lambda: self.expunger(self.seed * 11 + 4)),
                   self.guarded("admin", self.admin),
                   self.guarded("backupper", self.backupper)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=3600)
            if t.is_alive():
                self.errors.append(f"{t.name} did not finish")
        load_seconds = time.monotonic() - started
        self.final_checks()
        self.restore_checks()
        self.log_check()
        return {"ops": dict(self.ops_done), "admin": dict(self.admin_counts),
                "uid_observations": self.uids.observations, "archives": len(self.archives),
                "load_seconds": round(load_seconds, 1),
                "seconds": round(time.monotonic() - started, 1),
                "findings": len(self.findings.items), "harness_errors": self.errors}

    def final_checks(self) -> None:
        """Every message the model holds exists once, and nothing else."""
        for user in USERS:
            client = self.server.imap(user)
            try:
                for folder in LOAD_FOLDERS + RESTORE_FOLDERS:
                    contents = folder_contents(client, folder)
                    with self.model.lock:
                        expected = +self.model.counts[(user, folder)]
                    if contents is None:
                        if expected:
                            self.findings.add(f"{user}/{folder}: gone at the end")
                        continue
                    self.uids.snapshot(user, folder, *contents)
                    present = collections.Counter(contents[2].values())
                    missing = expected - present
                    extra = present - expected
                    if missing:
                        self.findings.add(f"{user}/{folder}: {sum(missing.values())} message(s)"
                                          f" missing at the end: {sorted(missing)[:5]}")
                    if extra:
                        self.findings.add(f"{user}/{folder}: {sum(extra.values())} message(s) too"
                                          f" many at the end: {sorted(extra)[:5]}")
            finally:
                client.logout()

    def restore_checks(self) -> None:
        """Archives taken under load restore, into a fresh partition under other user names,
        to the state they record."""
        if not self.archives:
            self.findings.add("no archive was taken under load")
            return
        picks = sorted({0, len(self.archives) // 2, len(self.archives) - 1})
        for number, index in enumerate(picks):
            archive = self.archives[index]
            contents = archive_folders(archive)
            mapping = {u: f"r{number}-{u}" for u in USERS}
            map_file = self.work / f"map-{number}"
            map_file.write_text("".join(f"{a}={b}\n" for a, b in mapping.items()))
            rc, _, err, _ = run_tool("imsrestore", ["-f", str(archive), "-m", str(map_file),
                                                    "--partition", "fresh"], self.config)
            self.admin_counts["fresh restores"] += 1
            if rc != 0:
                self.findings.add(f"restore of {archive.name} into a fresh partition: exit {rc}:"
                                  f" {err[:300]}")
                continue
            for user in USERS:
                client = self.server.imap(mapping[user])
                try:
                    for (owner, folder), archived in contents.items():
                        if owner != user:
                            continue
                        now = folder_contents(client, folder)
                        if now is None:
                            self.findings.add(f"{archive.name}: {mapping[user]}/{folder} missing")
                            continue
                        uidvalidity, _, uids = now
                        if uidvalidity != archived["uidvalidity"]:
                            self.findings.add(f"{archive.name}: {mapping[user]}/{folder}"
                                              f" UIDVALIDITY {uidvalidity}, archived"
                                              f" {archived['uidvalidity']}")
                        wrong = {u: (m, uids.get(u)) for u, m in archived["uids"].items()
                                 if uids.get(u) != m}
                        if wrong:
                            self.findings.add(f"{archive.name}: {mapping[user]}/{folder}: archived"
                                              f" UIDs not restored as archived:"
                                              f" {list(wrong.items())[:3]}")
                        present = collections.Counter(uids.values())
                        doubled = sorted(m for m, n in present.items() if n > 1)
                        if doubled:
                            self.findings.add(f"{archive.name}: {mapping[user]}/{folder}: duplicates"
                                              f" {doubled[:5]}")
                        expected = collections.Counter(archived["uids"].values()) + \
                            collections.Counter(archived["plain"])
                        if present != expected:
                            self.findings.add(f"{archive.name}: {mapping[user]}/{folder}: restored"
                                              f" {sum(present.values())} messages, archived"
                                              f" {sum(expected.values())}")
                finally:
                    client.logout()

    def log_check(self) -> None:
        log = self.server.root / "log" / "dovecot.log"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        bad = [line for line in lines if LOG_PATTERN.search(line)]
        self.log_lines = len(lines)
        for line in bad[:20]:
            self.findings.add(f"Dovecot log: {line.strip()[:300]}")
        if len(bad) > 20:
            self.findings.add(f"Dovecot log: {len(bad) - 20} more such lines")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=3000, help="deliveries, appends, flag"
                        " changes and expunges in all")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=60.0, help="operations a second (paced)")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json", type=Path, help="write the summary and findings here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("liveload: needs root (Dovecot's mail uid)", file=sys.stderr)
        return 2
    from dovecot_server import DOVECOT, DovecotServer
    if not Path(DOVECOT).exists() or shutil.which("doveadm") is None:
        print("liveload: Dovecot is not installed", file=sys.stderr)
        return 2
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ims-liveload-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    server = DovecotServer()
    findings = Findings()
    summary: dict = {}
    try:
        server.start()
        summary = run_campaign(server, work, args.ops, args.seed, findings, args.rate)
    finally:
        server.stop()
        if not args.keep and not findings.items:
            shutil.rmtree(server.root, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"liveload: kept {work} and {server.root}")
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "findings": findings.items}, indent=1))
    if summary.get("harness_errors"):
        return 2
    return 1 if findings.items else 0


def run_campaign(server, work: Path, ops: int, seed: int, findings: Findings,
                 rate: float = 60.0) -> dict:
    """Run the campaign against a started ``DovecotServer`` (the tests pass theirs)."""
    campaign = Campaign(server, work, ops, seed, findings, rate)
    summary = campaign.run()
    summary["dovecot_log_lines"] = getattr(campaign, "log_lines", 0)
    summary["finding_texts"] = findings.items
    return summary


if __name__ == "__main__":
    sys.exit(main())
