"""The trailer's index is kept out of memory while a backup runs (ims/archive/spill.py), and
the trailer written is the one the whole-list JSON gave."""

from __future__ import annotations

import hashlib
import json
import os
import tracemalloc
from pathlib import Path

import pytest

from ims import tempspace
from ims.archive import format as fmt
from ims.archive import spill
from ims.archive.reader import ArchiveReader
from ims.archive.spill import SpilledList, json_text
from ims.archive.writer import ArchiveWriter, RecordSink

CREATED = 1700000000


def write_archive(path: Path, folders: int, users: int = 3) -> ArchiveWriter:
    """An archive of ``users`` users sharing ``folders`` folders (one message each)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    writer = ArchiveWriter(RecordSink(fd, 20, str(path)))
    writer.add_json(fmt.HEADER_NAME, fmt.HEADER, {
        "format": "ims-archive", "version": 1, "archive_id": "0" * 32, "created": CREATED,
        "since": None, "blocking_factor": 20, "names": ["/"]}, CREATED)
    data = b"Subject: x\n\nhello\n"
    encoded = fmt.message_records(1, fmt.flag_records("S", (), "2,S"), False, CREATED, b"1.M1P1.a",
                                  len(data), hashlib.sha256(data).hexdigest())
    for u in range(users):
        user = f"user{u}é"
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
    os.close(writer.sink.fd)
    return writer


def trailer_payload(path: Path) -> tuple[bytes, ArchiveReader]:
    fd = os.open(path, os.O_RDONLY)
    reader = ArchiveReader(fd, str(path), None)
    reader.read_header()
    for member in reader.members():       # checks the digest, offset and counts
        if member.kind == fmt.TRAILER:
            payload = os.pread(fd, member.size, member.data_offset)
    os.close(fd)
    return payload, reader


def test_a_trailer_of_many_folders_is_the_whole_list_json(tmp_path):
    """5,000 folders (the index spills to its file several times): the trailer reads back
    valid, its text is exactly json.dumps of its object (what the writer wrote when it kept
    the lists in memory), and every extent is the one of its folder."""
    path = tmp_path / "many.ims"
    write_archive(path, 5000)
    payload, reader = trailer_payload(path)
    body = json.loads(payload)
    assert payload == json_text(body)
    assert list(body)[-2:] == ["index", "users"]
    trailer = reader.trailer
    assert trailer is not None and len(trailer.folders) == 5000 and len(trailer.users) == 3
    fd = os.open(path, os.O_RDONLY)
    try:
        for extent in trailer.folders[::499]:
            members = list(reader.members_between(extent.offset, extent.end))
            assert members[0].record.folder == extent.folder
            assert [m.name for m in members[1:]] == [
                f"primary/{extent.user}/{extent.folder}/1.M1P1.a"]
    finally:
        os.close(fd)


def test_the_index_does_not_stay_in_memory(tmp_path):
    """Before: one dict per folder until the trailer (about 500 bytes each: 20,000 folders
    held some 10 MB).  Now the entries' text is in a temporary file: what the writer keeps
    stays under 1 MiB whatever the number of folders."""
    index = SpilledList()
    entry = {"partition": "primary", "user": "someone", "folder": "Archive/2024",
             "offset": 123456789, "messages": 100, "end": 123999999}
    tracemalloc.start()
    try:
        for i in range(20000):
            index.append(dict(entry, offset=i))
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    try:
        assert held < 1 << 20, held
        text = b"".join(index.chunks())
        assert len(text) == index.size
        assert json.loads(text) == [dict(entry, offset=i) for i in range(20000)]
    finally:
        index.close()


def test_the_spill_file_is_never_left_behind(tmp_path, monkeypatch):
    """The file has no name in $TMPDIR while the backup runs nor after it, and is closed
    once the trailer is written."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempspace, "candidates", lambda: [str(tmp)])
    names_seen: list[list[str]] = []
    write_out = SpilledList._write_out

    def watched(self: SpilledList) -> None:
        write_out(self)
        names_seen.append(os.listdir(tmp))
    monkeypatch.setattr(SpilledList, "_write_out", watched)
    writer = write_archive(tmp_path / "a.ims", 5000)
    assert names_seen and all(names == [] for names in names_seen)
    assert os.listdir(tmp) == []
    assert writer.index._fd is None and writer.user_index._fd is None


@pytest.mark.parametrize("where", ["missing", "unwritable"])
def test_without_a_usable_tmpdir_the_index_stays_in_memory(tmp_path, monkeypatch, where):
    """No $TMPDIR to spill to: the backup keeps the entries in memory (as before) and its
    trailer is the same."""
    good = tmp_path / "good.ims"
    write_archive(good, 3000)
    if where == "missing":
        monkeypatch.setattr(tempspace, "candidates", lambda: [str(tmp_path / "nosuch")])
    else:
        def refuse(*args, **kwargs):
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(spill.os, "pwrite", refuse)
    bad = tmp_path / "bad.ims"
    write_archive(bad, 3000)
    assert trailer_payload(bad)[0] == trailer_payload(good)[0]
