"""A backup taken while Dovecot delivers, flags and expunges: it exits 0 and loses nothing."""

from __future__ import annotations

import os
import random
import re
import threading
import time

from archive_reader import read_archive
from conftest import run_cmd
from helpers import write_config

USERS = ["lena", "max", "9lives"]
RUN_SECONDS = 8


def existing_messages(partition_dir) -> set[tuple[str, str]]:
    """(user, base name) of every INBOX message file present now."""
    found = set()
    for user in USERS:
        for sub in ("cur", "new"):
            directory = partition_dir / user / "Maildir" / sub
            for name in os.listdir(directory):
                found.add((user, name.split(":")[0]))
    return found


def test_backup_during_deliveries_flag_changes_and_expunges(dovecot, tmp_path):
    partition = dovecot.partition("live")
    for user in USERS:
        dovecot.add_user(user, partition)
    config = write_config(tmp_path / "config", {"live": partition})
    for n in range(300):
        recipients = USERS if n % 10 == 0 else [USERS[n % 3]]
        dovecot.lmtp_deliver(f"Subject: seed {n}\r\n\r\nbody {n}\r\n".encode(), recipients)

    stop = threading.Event()
    expunged: set[tuple[str, str]] = set()
    errors: list[BaseException] = []
    counts = {"delivered": 0, "flagged": 0, "expunged": 0}

    def guarded(fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # surfaced by the assertion below
                errors.append(exc)
        return run

    @guarded
    def deliver():
        n = 0
        while not stop.is_set():
            n += 1
            recipients = USERS[:2] if n % 4 == 0 else [random.choice(USERS)]
            dovecot.lmtp_deliver(f"Subject: live {n}\r\n\r\nlive {n}\r\n".encode(), recipients)
            counts["delivered"] += 1

    @guarded
    def flag():
        clients = {u: dovecot.imap(u) for u in USERS}
        for c in clients.values():
            c.select("INBOX")
        while not stop.is_set():
            client = clients[random.choice(USERS)]
            op = random.choice(["+FLAGS", "-FLAGS"])
            client.uid("STORE", f"{random.randint(1, 300)}", op, r"(\Seen \Flagged)")
            counts["flagged"] += 1
        for c in clients.values():
            c.logout()

    @guarded
    def expunge():
        clients = {u: dovecot.imap(u) for u in USERS}
        for c in clients.values():
            c.select("INBOX")
        while not stop.is_set():
            user = random.choice(USERS)
            client = clients[user]
            uid = random.randint(1, 400)
            typ, data = client.uid("FETCH", str(uid), "(X-GUID)")
            match = re.search(rb"X-GUID ([^ )]+)", data[0] or b"") if data and data[0] else None
            if not match:
                continue
            expunged.add((user, match.group(1).decode()))   # recorded before it goes
            client.uid("STORE", str(uid), "+FLAGS", r"(\Deleted)")
            client.uid("EXPUNGE", str(uid))
            counts["expunged"] += 1
            time.sleep(0.02)
        for c in clients.values():
            c.logout()

    threads = [threading.Thread(target=t) for t in (deliver, flag, expunge)]
    for t in threads:
        t.start()
    runs = 0
    try:
        deadline = time.monotonic() + RUN_SECONDS
        while time.monotonic() < deadline:
            before = existing_messages(partition)
            archive_path = tmp_path / f"live{runs}.ims"
            result = run_cmd("imsbackup", "-f", str(archive_path), "/live", config_dir=config)
            assert result.returncode == 0, result.stderr.decode()
            archive = read_archive(archive_path.read_bytes())
            assert archive.trailer["skipped"] == []
            archived = {(m.name.split("/")[1], m.pax["IMS.basename"])
                        for m in archive.messages() if m.name.split("/")[2] == "INBOX"}
            lost = before - archived - expunged
            assert not lost, f"run {runs}: {len(lost)} messages missing, e.g. {sorted(lost)[:3]}"
            runs += 1
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not errors, errors
    assert runs >= 3
    assert counts["delivered"] > 10 and counts["flagged"] > 10 and counts["expunged"] > 3, counts
