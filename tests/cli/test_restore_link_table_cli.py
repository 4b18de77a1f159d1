"""A restore remembers where a shared message's first copy went only while links to it are
still to come (ims/restore/engine.py, ``forget_linked``): the backup named a first copy in
link members until it had seen as many links as the inode had, and the restore counts the
same way.  Every link still comes back as a link, from a file and from a pipe (where a first
copy forgotten too early could not be fetched again and would be left unresolved), and a
first copy whose other links are not in the archive is kept to the end, not dropped."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import backup_in_process, run_cmd

from ims import singlecopy
from ims.archive.reader import ArchiveReader
from ims.archive.records import ArchiveHeader
from ims.restore import engine as engine_module
from ims.samplestore import SampleSpec, generate
from ims.store.maildir import MaildirStore

SHARED_BODY = b"Subject: to four users\n\nsame file, four links\n"
BODY = b"Subject: shared\n\nlinked again during the backup\n"


def link_into_users(store: Path, count: int, name: str, body: bytes) -> list[Path]:
    """One message file linked into the INBOX cur/ of ``count`` users, as LMTP delivers to
    several recipients (the same base name in each)."""
    users = sorted(user for partition in (store / "partitions").iterdir()
                   for user in partition.iterdir())[:count]
    first = users[0] / "Maildir" / "cur" / name
    first.write_bytes(body)
    for user in users[1:]:
        os.link(first, user / "Maildir" / "cur" / name)
    return [user / "Maildir" / "cur" / name for user in users]


def member_name(path: Path) -> str:
    """The archive's member name of an INBOX message file (partition/user/INBOX/key)."""
    user = path.parent.parent.parent
    return f"{user.parent.name}/{user.name}/INBOX/{path.name.partition(':')[0]}"


def remove_users(store: Path) -> None:
    for partition in (store / "partitions").iterdir():
        for user in partition.iterdir():
            shutil.rmtree(user)


@pytest.mark.parametrize("source", ["file", "pipe"])
def test_every_link_comes_back_as_a_link(fresh_store, tmp_path, source):
    paths = link_into_users(fresh_store, 4, "1700000000.M1P1.shared:2,S", SHARED_BODY)
    assert os.stat(paths[0]).st_nlink == 4
    archive = tmp_path / "full.ims"
    config = fresh_store / "config"
    run_cmd("imsbackup", "-f", str(archive), "/", config_dir=config, check_rc=0)
    remove_users(fresh_store)
    if source == "file":
        result = run_cmd("imsrestore", "-f", str(archive), "/", config_dir=config)
    else:
        with open(archive, "rb") as stream:
            result = run_cmd("imsrestore", "-f", "-", config_dir=config, stdin=stream)
    assert result.returncode == 0, result.stderr
    assert b"unresolved" not in result.stderr
    inodes = {os.stat(path).st_ino for path in paths}
    assert len(inodes) == 1 and os.stat(paths[0]).st_nlink == 4
    assert all(path.read_bytes() == SHARED_BODY for path in paths)


def test_a_first_copy_is_forgotten_after_its_last_link_and_kept_while_links_may_come(
        fresh_store, tmp_path, monkeypatch):
    """In-process, to see the table: after a whole restore, a first copy whose every link
    was in the archive is no longer remembered; one whose inode had a link the backup left
    out (a folder excluded from it) is still there, as the count never reached its links."""
    all_in = link_into_users(fresh_store, 3, "1700000000.M2P2.allin:2,S", b"all in\n")
    partly = link_into_users(fresh_store, 2, "1700000000.M3P3.partly:2,S", b"partly\n")
    outside = fresh_store / "outside-the-store"
    outside.mkdir()
    os.link(partly[0], outside / "extra-link")        # a third link the backup never sees
    config = fresh_store / "config"
    archive = tmp_path / "full.ims"
    run_cmd("imsbackup", "-f", str(archive), "/", config_dir=config, check_rc=0)
    remove_users(fresh_store)

    engines: list[engine_module.Engine] = []
    real_run = engine_module.Engine.run

    def run(self, feed):
        engines.append(self)
        return real_run(self, feed)
    monkeypatch.setattr(engine_module.Engine, "run", run)
    monkeypatch.setenv("IMS_CONFIG_DIR", str(config))
    from ims.cli import imsrestore
    assert imsrestore.main(["-f", str(archive), "/"]) == 0
    engine = engines[0]
    assert engine.forget_linked
    first_all_in = member_name(all_in[0])
    first_partly = member_name(partly[0])
    assert first_all_in not in engine.restored
    assert first_partly in engine.restored
    assert os.stat(all_in[0]).st_ino == os.stat(all_in[2]).st_ino
    assert os.stat(partly[0]).st_ino == os.stat(partly[1]).st_ino


def test_a_first_copy_added_to_a_live_folder_is_found_where_it_went(fresh_store, tmp_path):
    """The first copy goes into a folder that exists (added as new mail under its lock: it is
    staged, then moved to its final name) and its links into users restored whole after it:
    each link is made to the file where it ended up, after that folder was committed."""
    paths = link_into_users(fresh_store, 3, "1700000000.M4P4.live:2,S", b"to a live folder\n")
    config = fresh_store / "config"
    archive = tmp_path / "full.ims"
    run_cmd("imsbackup", "-f", str(archive), "/", config_dir=config, check_rc=0)
    for path in paths:
        path.unlink()                       # the first user keeps its INBOX (live folder)
    for path in paths[1:]:
        shutil.rmtree(path.parent.parent.parent)    # the others are restored whole
    result = run_cmd("imsrestore", "-f", str(archive), "/", config_dir=config)
    assert result.returncode == 0, result.stderr
    first_inbox = paths[0].parent.parent
    added = [p for sub in ("cur", "new") for p in (first_inbox / sub).iterdir()
             if p.read_bytes() == b"to a live folder\n"]
    assert len(added) == 1
    assert all(os.stat(path).st_ino == os.stat(added[0]).st_ino for path in paths[1:])


class NeverDrops(singlecopy.LinkTable):
    """The single-copy table of the early version 2 backups: an entry is never dropped."""

    def first_copy(self, st):
        found = self._first.get(singlecopy._key(st))
        return None if found is None else found[0][singlecopy._STAMP:]


@pytest.mark.parametrize("source", ["file", "pipe"])
def test_an_archive_whose_links_were_not_counted_keeps_every_first_copy(tmp_path, monkeypatch,
                                                                       source):
    """An archive whose header does not say ``links_counted`` (early version 2 backups, whose
    table kept every first copy) named a first copy in every later link, also in one made
    during the backup: the restore keeps every first copy, so that link comes back as a
    link.  Before, forgetting was decided by the format version: from a file that link came
    back as a copy, from a pipe it was left unresolved (exit 5)."""
    store = tmp_path / "store"
    generate(store, SampleSpec(users=3, messages_per_user=2, partitions=1, seed=2,
                               link_fraction=0.0))
    users = sorted((store / "partitions" / "primary").iterdir())
    paths = [u / "Maildir" / "cur" / "1700000100.M1P1.shared:2,S" for u in users]
    paths[0].write_bytes(BODY)
    os.link(paths[0], paths[1])                 # two links when the backup starts
    real_open_folder = MaildirStore.open_folder

    def open_folder(self, partition, user, folder):
        if user == users[2].name and folder == "INBOX" and not paths[2].exists():
            os.link(paths[0], paths[2])         # a delivery links it a third time
        return real_open_folder(self, partition, user, folder)
    monkeypatch.setattr(MaildirStore, "open_folder", open_folder)
    monkeypatch.setattr("ims.readahead.LinkTable", NeverDrops)
    real_encode = ArchiveHeader.encode

    def encode(self, *args):
        encoded = real_encode(self, *args)
        encoded["options"] = {k: v for k, v in encoded["options"].items()
                              if k != "links_counted"}
        return encoded
    monkeypatch.setattr(ArchiveHeader, "encode", encode)
    out = tmp_path / "a.ims"
    report = backup_in_process(store, out)
    monkeypatch.undo()
    assert report.links == 2 and not report.skipped
    remove_users(store)
    assert b"links_counted" not in out.read_bytes()[:4096]
    if source == "file":
        result = run_cmd("imsrestore", "-f", str(out), "/", config_dir=store / "config")
    else:
        result = run_cmd("imsrestore", "-f", "-", "--refs", str(tmp_path / "refs"),
                         config_dir=store / "config", input=out.read_bytes(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()[-400:]
    assert len({os.stat(p).st_ino for p in paths}) == 1


def test_a_chain_restore_brings_every_shared_message_back_as_one_file(fresh_store, tmp_path):
    """Through a chain (full + incremental), a message shared before the full backup and one
    delivered to several users between the two come back each as one file with all its links:
    the chain's feed remembers which name of a shared member it wrote first, by the member's
    place in its archive, and links the others to it."""
    import time
    config = fresh_store / "config"
    before = link_into_users(fresh_store, 3, "1700000000.M5P5.before:2,S", b"before the full\n")
    full, incremental = tmp_path / "full.ims", tmp_path / "incr.ims"
    since = time.strftime("%Y%m%d:%H%M%S")
    run_cmd("imsbackup", "-f", str(full), "/", config_dir=config, check_rc=0)
    time.sleep(1.05 - time.time() % 1)
    between = link_into_users(fresh_store, 4, "1800000000.M6P6.between:2,S", b"between\n")
    run_cmd("imsbackup", "-d", since, "-f", str(incremental), "/", config_dir=config,
            check_rc=0)
    remove_users(fresh_store)
    result = run_cmd("imsrestore", "-f", str(full), "-f", str(incremental), "/",
                     config_dir=config)
    assert result.returncode == 0, result.stderr.decode()[-400:]
    for paths, body in ((before, b"before the full\n"), (between, b"between\n")):
        assert len({os.stat(path).st_ino for path in paths}) == 1
        assert os.stat(paths[0]).st_nlink == len(paths)
        assert all(path.read_bytes() == body for path in paths)


def test_a_link_whose_first_copy_is_not_restored_is_fetched_from_the_file(fresh_store,
                                                                          tmp_path):
    """A whole restore reads the archive in order, without holding the trailer's index; a
    link whose first copy this run did not place (its user's partition is not configured
    here) is fetched by name, the index located when that link comes, not left unresolved."""
    users = [sorted(partition.iterdir())[0] for partition in
             sorted((fresh_store / "partitions").iterdir())][:2]
    assert users[0].parent != users[1].parent
    first = users[0] / "Maildir" / "cur" / "1700000000.M5P5.fetched:2,S"
    first.write_bytes(b"fetched\n")
    os.link(first, users[1] / "Maildir" / "cur" / first.name)
    config = fresh_store / "config"
    archive = tmp_path / "full.ims"
    run_cmd("imsbackup", "-f", str(archive), "/", config_dir=config, check_rc=0)
    links = [member.name for member in archive_members(archive) if member.is_link]
    paths = [user / "Maildir" / "cur" / first.name for user in users]
    linked = [path for path in paths if member_name(path) in links]
    assert len(linked) == 1                       # the user holding the link member
    other = next(path for path in paths if path != linked[0])
    user = linked[0].parent.parent.parent
    shutil.rmtree(user)
    # the first copy's partition is left out of the configuration the restore reads
    restore_config = tmp_path / "config"
    shutil.copytree(config, restore_config)
    conf = restore_config / "msg.conf"
    partition = other.parent.parent.parent.parent.name
    lines = conf.read_text().splitlines()
    kept = [line for line in lines if not line.startswith(f"store.partition.{partition}.")]
    assert len(kept) == len(lines) - 1
    text = "\n".join(kept) + "\n"
    if f"defaultpartition = {partition}" in text:
        text = text.replace(f"defaultpartition = {partition}",
                            f"defaultpartition = {user.parent.name}")
    conf.write_text(text)
    result = run_cmd("imsrestore", "-f", str(archive), "/", config_dir=restore_config)
    assert result.returncode == 1, result.stderr          # the other partition's users: skipped
    assert b"not configured" in result.stderr
    assert b"unresolved" not in result.stderr and b"not in the archive" not in result.stderr
    assert linked[0].read_bytes() == b"fetched\n"


def archive_members(archive: Path) -> list:
    fd = os.open(archive, os.O_RDONLY)
    try:
        reader = ArchiveReader(fd, str(archive), None)
        reader.read_header()
        return list(reader.members())
    finally:
        os.close(fd)
