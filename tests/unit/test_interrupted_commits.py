"""Commits interrupted at their worst moment.  The pristine-INBOX path of a folder restored
whole, interrupted after its files were moved in: the INBOX Dovecot recreated empty must
stay pristine, so that the next run brings it back whole with its archived UIDVALIDITY and
UIDs (clients' caches stay valid).  A merge interrupted after a file is back: no expunged
UID comes back to life."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ims.archive.records import MessageRecord
from ims.store import modseq as dovecot_modseq
from ims.store import maildir_write
from ims.store.base import WholeFolder
from ims.store.maildir_write import NewFolder, Owner, is_pristine


def inbox_writer(tmp_path):
    user = tmp_path / "user"
    inbox = user / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (inbox / sub).mkdir(parents=True)
    owner = Owner(os.getuid(), os.getgid())
    parent = os.open(user, os.O_RDONLY | os.O_DIRECTORY)
    folder = NewFolder(tmp_path, ("user", "Maildir"), parent, "Maildir", os.dup(parent),
                       ".ims-restore.1.1.host", owner,
                       WholeFolder(555, 100, None, ("$Junk",), modseq=10**12), True, 1.0)
    folder.add(MessageRecord("1.M1P1.a", 7, "S", ("$Junk",), 1700000000, False, 5, "0" * 64),
               b"hello")
    return inbox, folder


def pristine(inbox) -> bool:
    fd = os.open(inbox, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return is_pristine(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("step", ["seed", "uidlist", "keywords"])
def test_an_interrupt_after_the_move_into_a_pristine_inbox_leaves_it_pristine(tmp_path,
                                                                             monkeypatch, step):
    inbox, folder = inbox_writer(tmp_path)
    if step == "seed":
        real_seed = dovecot_modseq.seed_modseq

        def interrupted(directory, *args, **kwargs):
            if os.path.samefile(f"/proc/self/fd/{directory}", inbox):
                raise KeyboardInterrupt
            return real_seed(directory, *args, **kwargs)
        monkeypatch.setattr(dovecot_modseq, "seed_modseq", interrupted)
    else:
        real = maildir_write.replace_file
        name = "dovecot-uidlist" if step == "uidlist" else "dovecot-keywords"

        def interrupted(directory, filename, *args, **kwargs):
            # the aside copy is written first; the INBOX's own copy is the one interrupted
            if filename == name and os.path.samefile(f"/proc/self/fd/{directory}", inbox):
                raise KeyboardInterrupt
            return real(directory, filename, *args, **kwargs)
        monkeypatch.setattr(maildir_write, "replace_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        folder.commit()
    folder.abort()
    assert pristine(inbox), sorted(os.listdir(inbox / "cur"))
    assert not any(n.startswith(".ims-restore") for n in os.listdir(inbox.parent))


def test_an_uninterrupted_fill_lands_with_the_archived_uids(tmp_path):
    inbox, folder = inbox_writer(tmp_path)
    landed = folder.commit()
    assert landed.messages == 1 and landed.whole
    assert (inbox / "dovecot-uidlist").read_text().startswith("3 V555 N100")
    assert "7 :1.M1P1.a" in (inbox / "dovecot-uidlist").read_text()
    assert not pristine(inbox)


def test_an_interrupt_after_a_merged_file_is_back_never_revives_its_expunged_uid(tmp_path,
                                                                                monkeypatch):
    """Dovecot keeps an expunged message's uidlist line until it compacts the file.  The
    merge removes that stale line before the message's file comes back: interrupted right
    after the file's rename, the file has no line (the next run gives it a new UID), never
    the old UID that clients saw expunged."""
    from ims.store.maildir_write import ExistingFolder
    folder = tmp_path / "p" / "joe" / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (folder / sub).mkdir(parents=True)
    (folder / "cur" / "1.M1P1.kept:2,S").write_bytes(b"kept")
    (folder / "dovecot-uidlist").write_text("3 V9 N3\n1 :1.M1P1.kept\n2 :1.M2P2.gone\n")
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    writer = ExistingFolder(tmp_path / "p", ("joe", "Maildir"), fd,
                            Owner(os.getuid(), os.getgid()), 1.0)
    writer.add(MessageRecord("1.M2P2.gone", 2, "S", (), 1700000000, False, 4, "0" * 64), b"gone")
    real_rename = os.rename

    def rename_then_interrupt(*args, **kwargs):
        real_rename(*args, **kwargs)
        raise KeyboardInterrupt
    monkeypatch.setattr(maildir_write.os, "rename", rename_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        writer.commit()
    monkeypatch.setattr(maildir_write.os, "rename", real_rename)
    writer.abort()
    lines = (folder / "dovecot-uidlist").read_text().splitlines()
    assert "2 :1.M2P2.gone" not in lines, lines
    assert any(n.startswith("1.M2P2.gone") for n in os.listdir(folder / "cur"))


def test_leftovers_of_dead_restores_of_this_host_go_and_nothing_else(tmp_path):
    import socket
    import subprocess

    from ims.store.maildir_write import clean_stale, clean_stale_temps
    dead = subprocess.Popen(["true"])
    dead.wait()
    here, pid = socket.gethostname(), dead.pid
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    ours = [f"ims-restore.{pid}.3.{here}", f"ims-restore.{pid}.lock.{here}",
            f"ims-restore.{pid}.modseq-seed.{here}"]
    theirs = [f"ims-restore.{pid}.3.other.example", f"ims-restore.{os.getpid()}.4.{here}",
              "1700000000.M1P1.host:2,S"]
    for name in ours + theirs:
        (tmp / name).write_bytes(b"x")
    (tmp / f".ims-restore.{pid}.9.{here}").mkdir()
    fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
    clean_stale(fd)
    os.close(fd)
    assert sorted(os.listdir(tmp)) == sorted(theirs)
    # in a folder itself a directory is a user's folder, whatever its name: never removed
    folder = tmp_path / "Maildir"
    folder.mkdir()
    (folder / f".ims-restore.{pid}.1.{here}").mkdir()            # the folder ims-restore/…
    (folder / f".subscriptions.ims-restore.{pid}.{here}").write_bytes(b"half")
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    clean_stale_temps(fd)
    os.close(fd)
    assert os.listdir(folder) == [f".ims-restore.{pid}.1.{here}"]


def test_the_late_import_of_shutil_holds_interrupts_off():
    # Python reports an interrupt that lands inside the import machinery's lock callbacks as
    # "ignored" and goes on: a restore interrupted there had exited 0, a traceback printed
    code = """
import signal, sys
from ims.store import maildir_write
assert "shutil" not in sys.modules, "shutil was imported before it was needed"
held = []
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "shutil":
            held.append(signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []))
        return None
sys.meta_path.insert(0, Spy())
maildir_write._shutil().rmtree
print(held, signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.split() == ["[True]", "False"]
