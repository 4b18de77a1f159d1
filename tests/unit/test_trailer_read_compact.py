"""The trailer is read a chunk at a time and its index held compactly
(ims/archive/jsonstream.py, ims/archive/records.py FolderIndex/UserIndex): the same extents
as a whole parse gives, from a file and from a stream, in a few bytes a folder; a user's
folders are found without a table of every folder; damaged text is refused."""

from __future__ import annotations

import json
import os
import pickle
import random
import tracemalloc

import pytest
from test_trailer_spill import trailer_payload, write_archive

from ims.archive.reader import ArchiveReader
from ims.archive.records import FolderExtent, FolderIndex, RecordError, TrailerRecord
from ims.errors import ArchiveDamaged


def test_read_in_chunks_it_is_the_trailer_a_whole_parse_gives(tmp_path):
    path = tmp_path / "a.ims"
    write_archive(path, 3000, users=7)
    payload, reader = trailer_payload(path)          # the stream's reading (members())
    whole = TrailerRecord.decode(json.loads(payload), "whole")
    fd = os.open(path, os.O_RDONLY)
    try:
        located = ArchiveReader(fd, str(path), None).locate_trailer()   # by offset
    finally:
        os.close(fd)
    size = random.Random(4).randrange(1, 5000)
    for trailer in (reader.trailer, located, TrailerRecord.decode_stream(
            [payload[i:i + size] for i in range(0, len(payload), size)], "chunks")):
        assert trailer is not None
        assert list(trailer.folders) == list(whole.folders) and len(trailer.folders) == 3000
        assert list(trailer.users) == list(whole.users) and len(trailer.users) == 7
        assert (trailer.counts, trailer.digest, trailer.trailer_offset) == (
            whole.counts, whole.digest, whole.trailer_offset)
        assert "index" not in trailer.raw and trailer.raw["counts"] == whole.counts
    copy = pickle.loads(pickle.dumps(whole))       # the prefetching reader sends it
    assert list(copy.folders) == list(whole.folders)
    assert copy.folder("primary", "user3é", "F3x10") == FolderExtent(
        *[(e.partition, e.user, e.folder, e.offset, e.end, e.messages)
          for e in whole.folders if e.folder == "F3x10"][0])


def test_the_index_takes_a_few_bytes_a_folder():
    """70,000 folders of 10,000 users (the 1,000,000-message store): as objects the index
    took about 400 bytes a folder; held compactly under 60."""
    entries = [{"partition": "primary", "user": f"user{i // 7:05d}", "folder": f"Folder{i % 7}",
                "offset": i * 4096, "end": i * 4096 + 2048, "messages": 15}
               for i in range(70000)]
    text = json.dumps({"trailer_offset": 1, "digest": "sha256:0", "counts": {},
                       "index": entries, "users": []}).encode()
    del entries
    tracemalloc.start()
    try:
        trailer = TrailerRecord.decode_stream(
            (text[i:i + 65536] for i in range(0, len(text), 65536)), "t")
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(trailer.folders) == 70000
    assert held / 70000 < 60, held
    assert peak < 4 << 20, peak          # never the whole index as objects
    assert trailer.folders.find("primary", "user09999", "Folder6") == FolderExtent(
        "primary", "user09999", "Folder6", 69999 * 4096, 69999 * 4096 + 2048, 15)
    assert [e.folder for e in trailer.folders.of_user("primary", "user00001")] == [
        f"Folder{i}" for i in range(7)]
    assert trailer.folders.find("primary", "user00001", "Nope") is None
    assert trailer.folders.find("other", "user00001", "Folder1") is None


def test_a_users_folders_in_two_runs_are_all_found():
    index = FolderIndex()
    for user, folder in (("a", "INBOX"), ("b", "INBOX"), ("a", "Sent"), ("b", "Sent")):
        index.append(FolderExtent("p", user, folder, 0, 1, 1))
    index.complete()
    assert [e.folder for e in index.of_user("p", "a")] == ["INBOX", "Sent"]
    assert index.find("p", "b", "Sent") is not None and index[-1].user == "b"
    assert [e.user for e in index[1:3]] == ["b", "a"]
    with pytest.raises(IndexError):
        index[4]


def test_one_user_id_on_two_partitions_keeps_each_partitions_folders_apart():
    """The runs are found by the user ID: the same ID on two partitions has two runs, and
    each partition's lookup gives its own folders only, also after the index travels
    (pickled, as the prefetching reader sends a trailer)."""
    index = FolderIndex()
    for partition, user, folder in (("p1", "amy", "INBOX"), ("p1", "amy", "Sent"),
                                    ("p1", "bob", "INBOX"), ("p2", "amy", "INBOX"),
                                    ("p2", "amy", "Drafts"), ("p1", "amy", "Late")):
        index.append(FolderExtent(partition, user, folder, 0, 1, 1))
    index.complete()
    for copy in (index, pickle.loads(pickle.dumps(index))):
        assert [e.folder for e in copy.of_user("p1", "amy")] == ["INBOX", "Sent", "Late"]
        assert [e.folder for e in copy.of_user("p2", "amy")] == ["INBOX", "Drafts"]
        assert copy.find("p2", "amy", "Sent") is None
        assert copy.find("p1", "amy", "Drafts") is None
        assert list(copy.of_user("p2", "bob")) == [] and list(copy.of_user("p3", "amy")) == []
        assert list(copy.of_user("p1", "INBOX")) == []      # a folder's name is no user


def test_the_two_indexes_hold_each_name_once():
    entries = [{"partition": "primary", "user": f"user{i:05d}", "folder": "INBOX",
                "offset": i, "end": i + 1, "messages": 1} for i in range(50)]
    users = [{"partition": "primary", "user": f"user{i:05d}", "group": "g", "offset": i}
             for i in range(50)]
    text = json.dumps({"trailer_offset": 1, "digest": "sha256:0", "counts": {},
                       "index": entries, "users": users}).encode()
    trailer = TrailerRecord.decode_stream([text], "t")
    assert trailer.folders._table is trailer.users._table
    assert len(trailer.folders._table.strings) == 50 + 3       # users, partition, INBOX, g
    assert trailer.folders.find("primary", "user00049", "INBOX").offset == 49
    assert [u.user for u in trailer.users][-1] == "user00049"


@pytest.mark.parametrize("text, error", [
    (b'{"trailer_offset": 1, "index": [{"partition": "p", "user": "u", "folder": "F",'
     b' "offset": 5, "end": 2, "messages": 1}]}', RecordError),       # ends before it starts
    (b'{"trailer_offset": 1, "index": [{"partition": "p", "user": "../x", "folder": "F",'
     b' "offset": 1, "end": 2, "messages": 1}]}', RecordError),       # a name that is a path
    (b'{"trailer_offset": 1, "index": [{"partition": "p", "user": "u", "folder": "F",'
     b' "offset": 1, "end": 2, "messages": 1, "x": [[]]}]}', RecordError),   # nested
    (b'{"trailer_offset": 1, "index": [], "index": []}', ArchiveDamaged),     # key twice
    (b'{"trailer_offset": 1, "index": [' + b'[' * 100000 + b']' * 100000 + b']}',
     ArchiveDamaged),                                                 # too deep to parse
    (b'{"trailer_offset": 1, "users": [{"partition": "p"', ArchiveDamaged),    # cut short
    (b'{"trailer_offset": 1} {}', ArchiveDamaged),                    # text after it
])
def test_damaged_trailer_text_is_refused(text, error):
    with pytest.raises(error):
        TrailerRecord.decode_stream([text[i:i + 7] for i in range(0, len(text), 7)], "t")
    assert issubclass(error, ArchiveDamaged)


def test_a_trailer_of_megabytes_is_located_a_window_at_a_time(tmp_path):
    """Locating a trailer of several megabytes (40,000 folders) walks back over it in fixed
    windows: beyond the index it keeps, it never holds more than a few windows of text (a
    window that grew to the trailer's size once cost 4-16 MiB at a million messages)."""
    path = tmp_path / "a.ims"
    write_archive(path, 40000, users=500)
    fd = os.open(path, os.O_RDONLY)
    tracemalloc.start()
    try:
        located = ArchiveReader(fd, str(path), None).locate_trailer()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        os.close(fd)
    assert located is not None and len(located.folders) == 40000 and len(located.users) == 500
    assert located.folders.find("primary", "user499é", "F499x39999") is not None
    assert peak - held < 3 << 20, (held, peak)


def _read_in_order(path, locate: bool):
    """Reads the archive in order with one reader; with ``locate`` the trailer is first
    located from the end and held (as a restore from a file does)."""
    fd = os.open(path, os.O_RDONLY)
    reader = ArchiveReader(fd, str(path), None)
    located = reader.locate_trailer() if locate else None
    reader.read_header()
    try:
        for _ in reader.members():
            pass
    finally:
        os.close(fd)
    return reader, located


def test_the_trailer_read_in_order_shares_the_index_of_the_one_located(tmp_path):
    """A restore from a file holds the located trailer's index; the trailer verified at the
    end of the reading in order is checked entry by entry and shares that index instead of
    building a second one (at 1,000,000 messages some 5 MiB each)."""
    path = tmp_path / "a.ims"
    write_archive(path, 300, users=4)
    reader, located = _read_in_order(path, locate=True)
    assert located is not None and reader.trailer is not None
    assert reader.trailer.folders is located.folders and reader.trailer.users is located.users
    alone, _ = _read_in_order(path, locate=False)
    assert alone.trailer is not None and alone.trailer.folders is not located.folders
    assert list(alone.trailer.folders) == list(located.folders) and len(located.folders) == 300


def test_a_trailer_changed_between_locating_and_reading_is_damage(tmp_path):
    """The file changes under the restore (an index offset rewritten, still valid JSON, the
    digest over the members untouched): the index located first is not trusted for the
    trailer read later; the reading stops with ArchiveDamaged naming the trailer."""
    path = tmp_path / "a.ims"
    write_archive(path, 30, users=3)
    payload, _ = trailer_payload(path)
    data = path.read_bytes()
    at = data.index(payload)
    old, new = b'"messages":1,', b'"messages":2,'      # one folder's entry in the index
    assert payload.index(old) > payload.index(b'"index"')
    fd = os.open(path, os.O_RDWR)
    reader = ArchiveReader(fd, str(path), None)
    try:
        located = reader.locate_trailer()
        assert located is not None
        os.pwrite(fd, payload.replace(old, new, 1), at)
        reader.read_header()
        with pytest.raises(ArchiveDamaged, match="trailer at byte .* changed while the archive"):
            for _ in reader.members():
                pass
    finally:
        os.close(fd)


def test_a_trailer_verified_without_its_index_still_checks_every_entry():
    entries = [{"partition": "primary", "user": "u", "folder": "INBOX", "offset": 0, "end": 1,
                "messages": 1}]
    text = json.dumps({"trailer_offset": 1, "digest": "sha256:0", "counts": {},
                       "index": entries, "users": [{"partition": "primary", "user": "u",
                                                    "group": "", "offset": 0}]}).encode()
    trailer = TrailerRecord.decode_stream([text], "t", keep_index=False)
    assert len(trailer.folders) == 0 and len(trailer.users) == 0
    assert trailer.trailer_offset == 1
    bad = text.replace(b'"folder": "INBOX"', b'"folder": "../x"')
    with pytest.raises(RecordError):
        TrailerRecord.decode_stream([bad], "t", keep_index=False)


def _prefetch_in_order(fd, path, located_by):
    """A file read in order by the prefetching child from its start, as ``imsrestore -f FILE
    /`` does; the parent's own reader has read past the header (its buffer) first."""
    from ims.archive.prefetch import PrefetchReader
    prefetch = PrefetchReader(fd, str(path), None, rewind=True, located_by=located_by)
    try:
        header = prefetch.read_header()
        names = [member.name for member in prefetch.members()]
    finally:
        prefetch.close()
    return header, names, prefetch.trailer


def test_a_file_read_in_order_by_the_child_is_read_from_its_start(tmp_path):
    path = tmp_path / "a.ims"
    write_archive(path, 30, users=3)
    fd = os.open(path, os.O_RDONLY)
    try:
        parent = ArchiveReader(fd, str(path), None)
        first = parent.read_header()
        alone = ArchiveReader(os.open(path, os.O_RDONLY), str(path), None)
        alone.read_header()
        expected = [member.name for member in alone.members()]
        os.close(alone.fd)
        assert os.lseek(fd, 0, os.SEEK_CUR) > 0         # the parent's buffer read on
        header, names, trailer = _prefetch_in_order(fd, path, parent)
    finally:
        os.close(fd)
    assert header == first and names == expected and trailer is not None


def test_a_trailer_changed_between_locating_and_the_childs_reading_is_damage(tmp_path):
    """As above, with the reading in order done by the prefetching child: the parent's
    located trailer and the child's verified one are compared by the SHA-256 of their text."""
    path = tmp_path / "a.ims"
    write_archive(path, 30, users=3)
    payload, _ = trailer_payload(path)
    at = path.read_bytes().index(payload)
    old, new = b'"messages":1,', b'"messages":2,'
    fd = os.open(path, os.O_RDWR)
    try:
        parent = ArchiveReader(fd, str(path), None)
        parent.read_header()
        located = parent.locate_trailer()
        assert located is not None
        _, names, _ = _prefetch_in_order(fd, path, parent)     # unchanged: no error
        assert names
        os.pwrite(fd, payload.replace(old, new, 1), at)
        with pytest.raises(ArchiveDamaged, match="trailer at byte .* changed while the archive"):
            _prefetch_in_order(fd, path, parent)
    finally:
        os.close(fd)


def test_a_whole_archive_restore_locates_the_trailer_with_its_users_alone(tmp_path):
    """``imsrestore -f FILE /`` checks its NAME against the users and fetches links by a
    trailer located again later: at the start it keeps the users' entries, not the folders'
    (some 4 MiB at 1,000,000 messages); every entry is still checked."""
    path = tmp_path / "a.ims"
    write_archive(path, 300, users=4)
    fd = os.open(path, os.O_RDONLY)
    try:
        reader = ArchiveReader(fd, str(path), None)
        slim = reader.locate_trailer(keep_index=False, keep_users=True)
        whole = reader.locate_trailer()
    finally:
        os.close(fd)
    assert slim is not None and whole is not None
    assert len(slim.folders) == 0 and len(whole.folders) == 300
    assert [(u.partition, u.user) for u in slim.users] == [(u.partition, u.user) for u in whole.users]
    assert len(slim.users) == 4


def test_a_file_replaced_by_another_archive_under_the_restore_is_damage(tmp_path):
    """The parent located one archive's trailer (to check NAMEs, to fetch links); the file is
    then rewritten in place with another archive whose trailer lies elsewhere: the child
    verifies that one, and the two are not the same trailer (before, only a trailer at the
    same offset was compared, and mail of two archives could be restored with exit 0)."""
    first, second = tmp_path / "a.ims", tmp_path / "b.ims"
    write_archive(first, 30, users=3)
    write_archive(second, 12, users=2)
    path = tmp_path / "work.ims"
    path.write_bytes(first.read_bytes())
    fd = os.open(path, os.O_RDWR)
    try:
        parent = ArchiveReader(fd, str(path), None)
        parent.read_header()
        assert parent.locate_trailer(keep_index=False, keep_users=True) is not None
        data = second.read_bytes()
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        with pytest.raises(ArchiveDamaged, match="changed while the archive was read"):
            _prefetch_in_order(fd, path, parent)
    finally:
        os.close(fd)


def test_a_file_entered_past_its_start_is_read_as_a_stream(tmp_path):
    """``-f -`` from a file whose descriptor is past byte 0 (the archive starts there):
    offsets in the archive count from its start, so it is not read by offset."""
    path = tmp_path / "wrapped.ims"
    inner = tmp_path / "a.ims"
    write_archive(inner, 10, users=2)
    path.write_bytes(bytes(10240) + inner.read_bytes())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 10240, os.SEEK_SET)
        reader = ArchiveReader(fd, "stdin", None)
        assert not reader.seekable and reader.locate_trailer() is None
        reader.read_header()
        names = [member.name for member in reader.members()]
    finally:
        os.close(fd)
    assert reader.trailer is not None and len(names) > 10
