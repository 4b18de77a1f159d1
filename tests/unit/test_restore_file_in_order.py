"""A whole archive file restored in order (``imsrestore -f FILE /``): read by the prefetching
child from the file's start while the parent writes; the header the child reads must be the
one the parent read (ims/restore/session.py)."""

from __future__ import annotations

import os

import pytest
from test_trailer_spill import CREATED, write_archive

from ims.archive.reader import ArchiveReader
from ims.config import Config
from ims.errors import ArchiveDamaged
from ims.restore import session
from ims.restore.engine import RestoreOptions


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
