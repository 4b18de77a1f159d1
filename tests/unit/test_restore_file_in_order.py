"""A whole archive file restored in order (``imsrestore -f FILE /``): read by the prefetching
child from the file's start while the parent writes; the header the child reads must be the
one the parent read (ims/restore/session.py)."""

from __future__ import annotations

import hashlib
import os

import pytest

from ims.archive import format as fmt
from ims.archive.reader import ArchiveReader
from ims.archive.writer import ArchiveWriter, RecordSink
from ims.config import Config
from ims.errors import ArchiveDamaged
from ims.restore import session
from ims.restore.engine import RestoreOptions


CREATED = 1700000000


def write_archive(path, folders: int, users: int) -> None:
    """``users`` users sharing ``folders`` folders of one message each, digests true."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    writer = ArchiveWriter(RecordSink(fd, 20, str(path)))
    writer.add_json(fmt.HEADER_NAME, fmt.HEADER, {
        "format": "ims-archive", "version": 1, "archive_id": "0" * 32, "created": CREATED,
        "since": None, "blocking_factor": 20, "names": ["/"]}, CREATED)
    data = b"Subject: x\n\nhello\n"
    encoded = fmt.message_records(1, fmt.flag_records("S", (), "2,S"), False, CREATED,
                                  b"1.M1P1.a", len(data), hashlib.sha256(data).hexdigest())
    for u in range(users):
        user = f"user{u}"
        writer.user_index.append({"partition": "primary", "user": user, "group": "g",
                                  "offset": writer.offset})
        names = [f"F{u}x{i}" for i in range(u, folders, users)]
        writer.add_json(f"primary/{user}/.ims-user.json", fmt.USER, {
            "partition": "primary", "user": user, "group": "g", "uid": 0, "gid": 0,
            "subscriptions": [], "folders": names}, CREATED)
        for name in names:
            writer.begin_folder(f"primary/{user}/{name}/.ims-folder.json", {
                "partition": "primary", "user": user, "folder": name, "unchanged_since": None,
                "uidvalidity": 555, "next_uid": 2, "guid": None, "keywords": [],
                "highest_modseq": None, "messages": [["1.M1P1.a", 1, "S", []]]}, CREATED)
            writer.add_message(f"primary/{user}/{name}/1.M1P1.a".encode(), data, CREATED,
                               encoded, 0, 0)
    writer.finish({"format": "ims-archive", "complete": True,
                   "counts": {"users": users, "folders": folders, "messages": folders,
                              "links": 0, "bytes": 0, "vanished": 0, "unchanged_folders": 0},
                   "skipped": [], "excluded_folders": []}, CREATED)
    os.close(fd)


def _restore(tmp_path, reader):
    partition = tmp_path / "store"
    partition.mkdir()
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "msg.conf").write_text(f"store.partition.primary.path = {partition}\n")
    config = Config.load(config_dir)
    store = session.open_store(config)
    writer = session.store_writer(config, store, session.WriterSettings())
    return session.restore_archive(writer, reader, RestoreOptions(), lambda message: True)


def test_a_file_restored_in_order_is_restored_whole(tmp_path):
    path = tmp_path / "a.ims"
    write_archive(path, 20, users=2)
    fd = os.open(path, os.O_RDONLY)
    try:
        report, header = _restore(tmp_path, ArchiveReader(fd, str(path), None))
    finally:
        os.close(fd)
    assert report.complete and not report.damaged, report.damaged
    assert report.folders_whole == 20


class _ChangedAfterHeader(ArchiveReader):
    """The header's bytes change in the file once the parent has read it (a file rewritten
    under the restore)."""

    def read_header(self):
        header = super().read_header()
        data = os.pread(self.fd, 4096, 0)
        at = data.index(str(CREATED).encode())
        os.pwrite(self.fd, str(CREATED + 1).encode(), at)
        return header


def test_a_header_changed_before_the_child_reads_it_is_damage(tmp_path):
    path = tmp_path / "a.ims"
    write_archive(path, 20, users=2)
    fd = os.open(path, os.O_RDWR)
    try:
        with pytest.raises(ArchiveDamaged, match="header changed while the archive was read"):
            _restore(tmp_path, _ChangedAfterHeader(fd, str(path), None))
    finally:
        os.close(fd)
    assert os.listdir(tmp_path / "store") == []
