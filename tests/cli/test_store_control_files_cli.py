"""Dovecot's control files in the user's Maildir are read by root: never through a link,
never blocking on a FIFO, regular files only (ims/store/files.py).  The cases, as found:

* Backup: ``dovecot-keywords`` that is a link to a root-only file puts that file's
  ``<n> <word>`` lines into the archive (folder keywords, message keywords): root read a
  file for the user.  (``dovecot-uidlist`` and ``dovecot.index`` are read the same way, a
  link to ``/dev/zero`` reads without end.)
* Backup: a FIFO planted as ``dovecot-keywords``, ``dovecot-uidlist``, ``dovecot.index`` or
  ``subscriptions`` hangs the backup forever (every user after it is not backed up).
* Restore into a live folder: a FIFO as ``dovecot-uidlist``, ``dovecot.index`` or
  ``subscriptions`` hangs the restore forever - for the last two while it holds
  ``dovecot-uidlist.lock`` / ``subscriptions.lock``, so Dovecot's deliveries wait too.

Expected: the oddity is named and the run goes on; nothing of the linked file in the
archive."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import command

from ims.samplestore import SampleSpec, generate

SECRET = "ROOTONLYSECRETWORD"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    generate(root, SampleSpec(users=3, messages_per_user=6, partitions=1, seed=23))
    return root


def bounded(name: str, *args: str, store: Path, timeout: float = 10.0) -> int | None:
    """Run a command; None if it was still running after ``timeout`` (then it and its
    helper are killed, so a FIFO never leaves a process behind)."""
    proc = subprocess.Popen([command(name), *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "IMS_CONFIG_DIR": str(store / "config")})
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None


def first_user(store: Path) -> Path:
    return sorted((store / "partitions" / "primary").iterdir())[0]


def test_a_linked_keywords_file_does_not_put_a_root_only_file_in_the_archive(store, tmp_path):
    secret = tmp_path / "root-only"
    secret.write_text(f"0 {SECRET}\n")
    secret.chmod(0o600)
    inbox = first_user(store) / "Maildir"
    (inbox / "dovecot-keywords").unlink(missing_ok=True)
    (inbox / "dovecot-keywords").symlink_to(secret)
    message = sorted((inbox / "cur").iterdir())[0]
    message.rename(inbox / "cur" / (message.name.partition(":")[0] + ":2,Sa"))
    archive = tmp_path / "full.ims"
    code = bounded("imsbackup", "-f", str(archive), "/", store=store)
    assert code is not None
    leaked = SECRET.encode() in archive.read_bytes()
    assert not leaked, f"a root-only file's line is in the archive (backup exit {code})"


@pytest.mark.parametrize("name", ["dovecot-keywords", "dovecot-uidlist", "dovecot.index",
                                  "subscriptions"])
def test_a_fifo_control_file_does_not_hang_the_backup(store, tmp_path, name):
    inbox = first_user(store) / "Maildir"
    (inbox / name).unlink(missing_ok=True)
    os.mkfifo(inbox / name)
    started = time.monotonic()
    code = bounded("imsbackup", "-f", str(tmp_path / "full.ims"), "/", store=store)
    assert code is not None, f"imsbackup hung on a FIFO named {name} ({time.monotonic() - started:.0f} s)"
    # a folder whose uidlist or keywords cannot be read is skipped and named; the index is
    # only a next-UID hint and subscriptions count as none (guide §7): neither costs mail
    assert code == (0 if name in ("dovecot.index", "subscriptions") else 1)


@pytest.mark.parametrize("name", ["dovecot-uidlist", "dovecot.index", "subscriptions"])
def test_a_fifo_control_file_does_not_hang_a_restore_into_a_live_folder(store, tmp_path, name):
    archive = tmp_path / "full.ims"
    assert bounded("imsbackup", "-f", str(archive), "/", store=store) == 0
    user = first_user(store)
    inbox = user / "Maildir"
    sorted((inbox / "cur").iterdir())[0].unlink()          # to come back by rule 2
    (inbox / name).unlink(missing_ok=True)
    os.mkfifo(inbox / name)
    code = bounded("imsrestore", "-f", str(archive), "--lock-timeout", "2",
                   f"/primary/user/{user.name}", store=store)
    assert code is not None, f"imsrestore hung on a FIFO named {name}"
    assert code == (0 if name == "dovecot.index" else 1)
    assert not list(inbox.glob("*.lock")), "a lock was left behind"
