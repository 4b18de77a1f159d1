"""The integrations tried as a hostile store user or a hostile stream would: links planted in
mkbackupdir's tree, hostile names and a large folder in imsasm's compare, truncated and
damaged streams and a planted link in imsrestore --where, and names that match nothing in
imsasm's recover.  Each test's docstring says what went wrong before the fix and what must
hold (installed commands, real files, no NetWorker or Bacula)."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from archive_reader import read_archive
from conftest import run_cmd
from test_restore_hostile_cli import Crafted

from ims.archive.spill import SpilledList
from ims.samplestore import SampleSpec, generate

STORE_OWNER = (5000, 5000)


# -- mkbackupdir: the tree is the store user's, its links are never followed ---------------------

def make_tree(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A store owned by STORE_OWNER and its placeholder tree: (store, config, server dir)."""
    store = tmp_path / "store"
    generate(store, SampleSpec(users=4, messages_per_user=6, partitions=1, seed=4,
                               owner=STORE_OWNER))
    config = store / "config"
    backup = tmp_path / "backup"
    run_cmd("mkbackupdir", "-p", str(backup), config_dir=config, check_rc=0)
    return store, config, next(backup.iterdir())


def victim_file(tmp_path: Path) -> Path:
    """A root-only file outside the tree that must keep its content, mode and times."""
    victim = tmp_path / "victim"
    victim.write_text("root only\n")
    victim.chmod(0o600)
    os.utime(victim, (1000000, 1000000))
    return victim


def assert_victim_intact(victim: Path) -> None:
    st = os.stat(victim)
    assert victim.read_text() == "root only\n"
    assert (stat.S_IMODE(st.st_mode), st.st_uid, int(st.st_mtime)) == (0o600, 0, 1000000)


def snapshot(directory: Path) -> dict[str, tuple[int, int, int]]:
    return {str(p.relative_to(directory)): (p.lstat().st_size, p.lstat().st_mtime_ns,
                                            p.lstat().st_mode)
            for p in directory.rglob("*")}


def test_mkbackupdir_does_not_write_through_a_planted_nsr_new_link(tmp_path):
    """A ``.nsr.new`` symlink planted by the store user made mkbackupdir (root) write the .nsr
    content into the file it names and then move the link into place as ``.nsr``.
    Expected: the stale temporary name is removed without following it, the .nsr is a file
    of ours, the file outside keeps its content.  At fault: mkbackupdir/tree.py sync_tree."""
    _, config, server = make_tree(tmp_path)
    victim = victim_file(tmp_path)
    user_dir = sorted(server.rglob("INBOX"))[0].parent
    (user_dir / ".nsr").unlink()          # the next run writes it again, through .nsr.new
    os.symlink(victim, user_dir / ".nsr.new")
    os.lchown(user_dir / ".nsr.new", *STORE_OWNER)
    run_cmd("mkbackupdir", "-p", str(server.parent), config_dir=config, check_rc=0)
    assert_victim_intact(victim)
    nsr = user_dir / ".nsr"
    assert not nsr.is_symlink() and nsr.read_text().startswith("# written by mkbackupdir")
    assert not os.path.lexists(user_dir / ".nsr.new")


def test_mkbackupdir_refuses_a_symlinked_placeholder(tmp_path):
    """A placeholder replaced by a symlink to a root file made mkbackupdir set that file's
    mtime (os.utime follows links).  Expected: the link is refused and named on one line,
    exit 1, the file outside unchanged.  At fault: mkbackupdir/tree.py sync_tree."""
    _, config, server = make_tree(tmp_path)
    victim = victim_file(tmp_path)
    inbox = sorted(server.rglob("INBOX"))[0]
    inbox.unlink()
    os.symlink(victim, inbox)
    result = run_cmd("mkbackupdir", "-p", str(server.parent), config_dir=config)
    assert result.returncode == 1, result.stderr.decode()
    lines = [line for line in result.stderr.decode().splitlines() if str(inbox) in line]
    assert len(lines) == 1 and "link" in lines[0], result.stderr.decode()
    assert_victim_intact(victim)
    assert inbox.is_symlink()


def test_mkbackupdir_does_not_follow_a_symlinked_directory(tmp_path):
    """A user's directory (and, separately, a folder level ``X.d``) replaced by a symlink to
    a directory outside made mkbackupdir create placeholders and a .nsr there.  Expected:
    refused, named on one line, exit 1; nothing outside changes (no file added, a
    zero-length file there not removed)."""
    store, config, server = make_tree(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "Trash").write_bytes(b"")          # looks like a stale placeholder
    (outside / "keep").write_text("admin's file\n")
    before = snapshot(outside)
    user_dir = sorted(server.rglob("INBOX"))[0].parent
    level = next(p for p in sorted(server.rglob("Archive.d")) if user_dir not in p.parents)
    for planted in (user_dir, level):
        os.rename(planted, planted.with_name(planted.name + ".moved"))
        os.symlink(outside, planted)
    # a folder gone from the store: the run would remove its placeholder, wherever it is
    user = user_dir.name
    trash = next((store / "partitions").glob(f"*/{user}/Maildir/.Trash"), None)
    if trash is not None:
        os.rename(trash, trash.with_name("Trash-hidden"))
    result = run_cmd("mkbackupdir", "-p", str(server.parent), config_dir=config)
    assert result.returncode == 1, result.stderr.decode()
    text = result.stderr.decode()
    for planted in (user_dir, level):
        lines = [line for line in text.splitlines() if f"{planted}:" in line]
        assert len(lines) == 1 and "symbolic link" in lines[0], text
    assert snapshot(outside) == before
    assert user_dir.is_symlink() and level.is_symlink()


def test_mkbackupdir_tree_is_private(tmp_path):
    """The tree names every user and folder; it was world-readable (files 0644, directories
    0755).  Expected: new files 0600 and directories 0700, owned by the store's owner."""
    _, _, server = make_tree(tmp_path)
    for path in [server, *server.rglob("*")]:
        st = path.lstat()
        want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (want, STORE_OWNER[0]), path


# -- imsasm -c: names from the stream, each folder listed once ----------------------------------

def asm_setup(store: Path, tmp_path: Path) -> tuple[Path, str, Path]:
    """msg.conf with a backup directory, the tree built; (config, a user, its placeholder)."""
    config = store / "config"
    with open(config / "msg.conf", "a") as conf:
        conf.write(f"local.store.backupdir = {tmp_path / 'backup'}\n"
                   "local.store.backup.servername = host1\n")
    run_cmd("mkbackupdir", config_dir=config, check_rc=0)
    user = sorted(p.name for p in (store / "partitions" / "primary").iterdir())[0]
    group_dir = next(p for p in (tmp_path / "backup" / "host1").iterdir() if (p / user).is_dir())
    return config, user, group_dir / user


def test_imsasm_compare_refuses_hostile_names(fresh_store, tmp_path):
    """A folder state naming user ``../../..`` (the trailer's index left without it), and one
    in a partition this host does not have.  Before: the first was reported as a mere
    difference (exit 1), the second ended in an internal error (KeyError, exit 7).
    Expected: one line each naming the member; the invalid member makes the stream damaged
    (exit 4); nothing outside the store is listed (a Maildir planted where ``../../..``
    would lead is never reported)."""
    config = fresh_store / "config"
    user = sorted(p.name for p in (fresh_store / "partitions" / "primary").iterdir())[0]
    # <partition>/../../../Maildir: where the hostile user's INBOX would be
    escaped = (fresh_store / "partitions" / "primary" / ".." / ".." / "..").resolve() / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (escaped / sub).mkdir(parents=True, exist_ok=True)
    (escaped / "cur" / "1.M9P9.outside:2,S").write_text("Subject: outside\n\nx\n")
    archive = tmp_path / "hostile.ims"
    crafted = Crafted(archive)
    crafted.user(user, ["INBOX"])
    crafted.folder("../../..", "INBOX", [["1.M1P1.a", 7, "S", []]])
    crafted.message(user, "INBOX", "1.M1P1.a", b"Subject: a\n\nhello\n", 7)
    crafted.folder(user, "INBOX", [["1.M1P1.b", 8, "S", []]], partition="nosuch")
    crafted.message(user, "INBOX", "1.M1P1.b", b"Subject: b\n\nhello\n", 8, partition="nosuch")
    # the hostile folder's extent is the only one ended so far: the index is left without it
    crafted.writer.index = SpilledList()
    crafted.close()
    with open(archive, "rb") as stream:
        result = run_cmd("imsasm", "-c", config_dir=config, stdin=stream)
    text = result.stderr.decode()
    assert result.returncode == 4, text
    assert "Traceback" not in text and "internal error" not in text, text
    assert "outside" not in text
    assert len([line for line in text.splitlines() if "'../../..'" in line]) == 1, text
    assert len([line for line in text.splitlines() if "/nosuch/" in line
                and "not configured" in line]) == 1, text


def test_imsasm_compare_lists_each_folder_once(tmp_path, monkeypatch):
    """Compare opened and listed the live folder again for every message (quadratic: 2,000
    messages took 6.8 s).  Expected: each folder opened once, and the directory listings
    bounded by the folders, not the messages; the comparison still finds a changed flag,
    a missing message and one present only in the store."""
    from ims.asm import imsasm
    from ims.config import Config
    from ims.store.maildir import MaildirStore

    store = tmp_path / "store"
    generate(store, SampleSpec(users=1, messages_per_user=300, partitions=1, seed=5))
    config = store / "config"
    archive = tmp_path / "a.ims"
    run_cmd("imsbackup", "-f", str(archive), "/", config_dir=config, check_rc=0)
    maildir = next((store / "partitions" / "primary").iterdir()) / "Maildir"
    cur = sorted((maildir / "cur").iterdir())
    assert len(cur) >= 3, "the sample user has mail in INBOX"
    cur[0].unlink()                                            # missing from the store
    base, _, _ = cur[1].name.partition(":")
    cur[1].rename(cur[1].with_name(base + ":2,FS"))           # flags changed
    (maildir / "new" / "1.M77P77.extra").write_text("Subject: extra\n\nx\n")   # store only
    messages = sum(1 for m in read_archive(archive.read_bytes()).members if m.kind == "message")

    opened: dict[tuple[str, str, str], int] = {}
    listings = 0
    real_open_folder, real_listdir = MaildirStore.open_folder, os.listdir

    def open_folder(self, partition, user, folder):
        opened[(partition, user, folder)] = opened.get((partition, user, folder), 0) + 1
        return real_open_folder(self, partition, user, folder)

    def listdir(path="."):
        nonlocal listings
        listings += 1
        return real_listdir(path)

    monkeypatch.setattr(MaildirStore, "open_folder", open_folder)
    monkeypatch.setattr(os, "listdir", listdir)
    monkeypatch.setenv("IMS_CONFIG_DIR", str(config))
    cfg = Config.load(config)
    live = MaildirStore(cfg.msg.partitions(), cfg.msg.get("store.maildir.layout") or "")
    said: list[str] = []
    fd = os.open(archive, os.O_RDONLY)
    try:
        code = imsasm.compare(imsasm.AsmRequest("c"), cfg, live, fd, said.append)
    finally:
        os.close(fd)
    assert code == 1
    assert opened and set(opened.values()) == {1}, opened
    assert messages > 10 * len(opened)
    assert listings <= 4 * len(opened), (listings, len(opened))
    text = "\n".join(said)
    assert f"{cur[0].name.partition(':')[0]}: in the save, not in the store" in text
    assert f"{base}: flags" in text
    assert "1.M77P77.extra: in the store, not in the save" in text


# -- imsrestore --where: checked while stored, private, never through a link ---------------------

def where_name(data: bytes, label: str) -> str:
    created = read_archive(data).header["created"]
    return f"{label}.{time.strftime('%Y%m%d-%H%M%S', time.gmtime(created))}.full.ims"


def backup_stream(store: Path) -> bytes:
    return run_cmd("imsbackup", "-f", "-", "/primary", config_dir=store / "config",
                   check_rc=0).stdout


def test_where_truncated_stream_exits_4_and_leaves_no_archive(fresh_store, tmp_path):
    """A stream cut short was stored under its final name with exit 0, so Bacula's restore
    job looked good.  Expected: exit 4, one line naming the kept ``.partial`` file; no file
    under the final name."""
    data = backup_stream(fresh_store)
    side = tmp_path / "side"
    name = where_name(data, "primary")
    result = run_cmd("imsrestore", "-f", "-", "--where", str(side), "/primary",
                     input=data[:len(data) // 2])
    text = result.stderr.decode()
    assert result.returncode == 4, text
    assert not (side / name).exists()
    assert (side / (name + ".partial")).exists()
    assert len(text.strip().splitlines()) == 1 and f"{side / name}.partial" in text, text


def test_where_damaged_message_exits_4(fresh_store, tmp_path):
    """One message's bytes changed in the stream (its SHA-256 no longer matches): stored as
    good before.  Expected: exit 4, no file under the final name."""
    data = bytearray(backup_stream(fresh_store))
    message = next(m for m in read_archive(bytes(data)).members if m.kind == "message"
                   and m.size > 10)
    position = bytes(data).find(message.data, message.offset)
    assert position > message.offset
    data[position] ^= 0x01
    side = tmp_path / "side"
    result = run_cmd("imsrestore", "-f", "-", "--where", str(side), "/primary", input=bytes(data))
    assert result.returncode == 4, result.stderr.decode()
    assert not list(side.glob("*.ims"))


def test_where_good_stream_is_private(fresh_store, tmp_path):
    """The stored archive holds every user's mail; it was created 0644 (readable by any local
    user).  Expected: exit 0, the file 0600, byte for byte the stream, no .partial left."""
    data = backup_stream(fresh_store)
    side = tmp_path / "side"
    run_cmd("imsrestore", "-f", "-", "--where", str(side), "/primary", input=data, check_rc=0)
    stored = side / where_name(data, "primary")
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert stored.read_bytes() == data
    assert not list(side.glob("*.partial"))


def test_where_does_not_follow_a_planted_partial_link(fresh_store, tmp_path):
    """A symlink planted at the ``.partial`` name made imsrestore write the stream into the
    file it names.  Expected: the link is never followed (nor removed: a partial name that
    is taken is another run's), the file outside keeps its content, the archive is stored
    under the next free name."""
    data = backup_stream(fresh_store)
    side = tmp_path / "side"
    side.mkdir()
    victim = victim_file(tmp_path)
    name = where_name(data, "primary")
    os.symlink(victim, side / (name + ".partial"))
    run_cmd("imsrestore", "-f", "-", "--where", str(side), "/primary", input=data, check_rc=0)
    assert_victim_intact(victim)
    stored = side / name.replace(".ims", "-2.ims")
    assert stored.read_bytes() == data and not stored.is_symlink()
    assert not (side / name).exists() and (side / (name + ".partial")).is_symlink()


# -- imsasm -r: names that match nothing -------------------------------------------------------

def test_imsasm_recover_names_a_path_not_in_the_stream(fresh_store, tmp_path):
    """Recovering two placeholders from a stream that holds only one of them exited 0, as if
    both had come back (``report.matched`` is true as soon as one matched).  Expected, as
    imsrestore: the missing one is named as skipped and the exit is 1; only names that
    match nothing exit 2."""
    config, user, placeholder = asm_setup(fresh_store, tmp_path)
    saved = run_cmd("imsasm", "-s", str(placeholder), config_dir=config, check_rc=0).stdout
    others = [p for p in sorted((tmp_path / "backup" / "host1").glob("*/*"))
              if p.is_dir() and p.name != user]
    assert others, "the store has a second user"
    other = others[0]
    maildir = fresh_store / "partitions" / "primary" / user / "Maildir"
    inbox = sorted((maildir / "cur").iterdir())[0]
    inbox.unlink()                                   # something to bring back
    result = run_cmd("imsasm", "-r", str(placeholder), str(other), config_dir=config,
                     input=saved)
    text = result.stderr.decode()
    assert result.returncode == 1, text
    assert len([line for line in text.splitlines() if str(other) in line
                and "not in the recover stream" in line]) == 1, text
    assert any(p.name.partition(":")[0] == inbox.name.partition(":")[0]
               for p in (maildir / "cur").iterdir())
    result = run_cmd("imsasm", "-r", str(other), config_dir=config, input=saved)
    assert result.returncode == 2 and b"not in the recover stream" in result.stderr
