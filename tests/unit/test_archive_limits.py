"""The archive's size limits (docs/reliability.md, "Archive limits"): one set of constants
(``ims.archive.limits``) that the writer enforces and every reader checks, so that nothing is
written that cannot be read back.

Each test states the defect it was written against: before the fix the reader refused a JSON
member over 256 MiB that the writer wrote without a limit (a folder of three million
messages could be backed up but not restored), a message over 4 GiB overflowed the helper
channel's 4-byte frame length, and a message over the prefetch slot size was pickled whole
through the channel (and joined in memory, twice)."""

from __future__ import annotations

import hashlib
import mmap
import os
import shutil
import socket
import struct
import subprocess
import threading
from pathlib import Path

import pytest
from conftest import command, require, run_cmd

from ims.archive import format as fmt
from ims.archive.prefetch import PrefetchReader
from ims.archive.reader import ArchiveReader, MemberDamaged
from ims.archive.writer import ArchiveWriter, RecordSink
from ims.errors import ArchiveDamaged
from ims.helper import Channel

CREATED = 1700000000


# -- building archives ----------------------------------------------------------------------

class Archive:
    """An archive written by the project's writer: one user, folders, messages."""

    def __init__(self, path: Path, blocking: int = 20) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.writer = ArchiveWriter(RecordSink(self.fd, blocking, str(path)))
        self.counts = {"folders": 0, "messages": 0, "links": 0}
        self.writer.add_json(fmt.HEADER_NAME, fmt.HEADER, {
            "format": "ims-archive", "version": 1, "archive_id": "0" * 32, "created": CREATED,
            "since": None, "blocking_factor": blocking, "names": ["/"]}, CREATED)
        self.writer.user_index.append({"partition": "primary", "user": "amy", "group": "g",
                                       "offset": self.writer.offset})
        self.writer.add_json("primary/amy/.ims-user.json", fmt.USER, {
            "partition": "primary", "user": "amy", "group": "g", "uid": 0, "gid": 0,
            "subscriptions": [], "folders": ["INBOX"]}, CREATED)

    def folder(self, listed: list[list], folder: str = "INBOX") -> None:
        self.writer.begin_folder(f"primary/amy/{folder}/.ims-folder.json", {
            "partition": "primary", "user": "amy", "folder": folder, "unchanged_since": None,
            "uidvalidity": 555, "next_uid": len(listed) + 1, "guid": None, "keywords": [],
            "highest_modseq": None, "messages": listed}, CREATED)
        self.counts["folders"] += 1

    def message(self, key: str, data: bytes, uid: int, folder: str = "INBOX") -> None:
        encoded = fmt.message_records(uid, fmt.flag_records("S", (), "2,S"), False, CREATED,
                                      key.encode(), len(data), hashlib.sha256(data).hexdigest())
        name = f"primary/amy/{folder}/{key}".encode()
        if len(data) > 1 << 20:         # the backup's path for large messages
            self.writer.begin_large_message(name, len(data), CREATED, encoded, 0, 0)
            for start in range(0, len(data), 1 << 20):
                self.writer.add_large_chunk(data[start:start + (1 << 20)])
            assert self.writer.end_large_message()
        else:
            self.writer.add_message(name, data, CREATED, encoded, 0, 0)
        self.counts["messages"] += 1

    def close(self) -> Path:
        self.writer.finish({"format": "ims-archive", "complete": True,
                            "counts": {"users": 1, "bytes": 0, "vanished": 0,
                                       "unchanged_folders": 0, **self.counts},
                            "skipped": [], "excluded_folders": []}, CREATED)
        os.close(self.fd)
        return self.path


def read_all(reader) -> dict[str, bytes]:
    """Every message's bytes, by member name, read the way a restore reads a stream."""
    reader.read_header()
    found = {}
    for member in reader.members():
        assert member.invalid is None, member.invalid
        if member.kind == fmt.MESSAGE:
            found[member.name] = bytes(reader.read_data(member))
    return found


def feed_pipe(path: Path) -> tuple[int, threading.Thread]:
    """A pipe carrying the archive file (a restore from stdin), fed by a thread."""
    read_fd, write_fd = os.pipe()

    def feed() -> None:
        with open(path, "rb") as source, open(write_fd, "wb") as sink:
            try:
                shutil.copyfileobj(source, sink, 1 << 20)
            except BrokenPipeError:
                pass
    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    return read_fd, thread


def listing(count: int) -> list[list]:
    return [[f"{1700000000 + i}.M{i}P4242.mail.example.org,S=4096,W=4180", i + 1, "S", []]
            for i in range(count)]


# -- JSON members ---------------------------------------------------------------------------

@pytest.mark.slow
def test_a_folder_of_3_7_million_messages_is_read_back(tmp_path):
    """Before: the writer wrote its 275 MB folder state, the reader refused it ("metadata of
    ... bytes"): backed up, never restorable.  Now the reader's limit is the writer's."""
    archive = Archive(tmp_path / "big.ims")
    archive.folder(listing(3_700_000))
    archive.close()
    fd = os.open(archive.path, os.O_RDONLY)
    try:
        reader = ArchiveReader(fd, "big.ims", 20)
        reader.read_header()
        folders = [m.record for m in reader.members() if m.kind == fmt.FOLDER]
        assert len(folders[0].messages) == 3_700_000
        assert reader.trailer is not None
        assert reader.trailer.folders[0].end - reader.trailer.folders[0].offset > 256 << 20
    finally:
        os.close(fd)


def test_the_writer_refuses_a_json_member_the_reader_would_refuse(tmp_path, monkeypatch):
    """Before: no limit in the writer.  Now one constant bounds both: what the writer writes
    at the limit is read back; one byte more is refused, naming the folder, before anything
    of the member is written."""
    from ims.archive import limits
    monkeypatch.setattr(limits, "MAX_JSON_MEMBER", 64 << 10)
    archive = Archive(tmp_path / "a.ims")
    fits = listing(700)
    while len(fmt_json(fits)) > limits.MAX_JSON_MEMBER:
        fits.pop()
    archive.folder(fits, folder="Fits")
    offset = archive.writer.offset
    with pytest.raises(limits.LimitExceeded) as refused:
        archive.folder(listing(2000), folder="Huge")
    assert "primary/amy/Huge" in str(refused.value)
    assert str(limits.MAX_JSON_MEMBER) in str(refused.value)
    assert isinstance(refused.value, ArchiveDamaged) and "\n" not in str(refused.value)
    assert archive.writer.offset == offset
    archive.close()
    fd = os.open(archive.path, os.O_RDONLY)
    try:
        reader = ArchiveReader(fd, "a.ims", 20)
        reader.read_header()
        folders = [m for m in reader.members() if m.kind == fmt.FOLDER]
        assert [len(m.record.messages) for m in folders] == [len(fits)]
        assert folders[0].size <= limits.MAX_JSON_MEMBER
        assert reader.json_at(reader.member_at(folders[0].offset))["folder"] == "Fits"
    finally:
        os.close(fd)


def fmt_json(listed: list[list]) -> bytes:
    import json
    return json.dumps({"partition": "primary", "user": "amy", "folder": "Fits",
                       "unchanged_since": None, "uidvalidity": 555, "next_uid": len(listed) + 1,
                       "guid": None, "keywords": [], "highest_modseq": None,
                       "messages": listed}, ensure_ascii=False, separators=(",", ":")).encode()


def test_a_json_member_over_the_limit_is_refused_by_the_reader_naming_it(tmp_path, monkeypatch):
    from ims.archive import limits
    archive = Archive(tmp_path / "a.ims")
    archive.folder(listing(2000))
    archive.close()
    monkeypatch.setattr(limits, "MAX_JSON_MEMBER", 64 << 10)
    fd = os.open(archive.path, os.O_RDONLY)
    try:
        reader = ArchiveReader(fd, "a.ims", 20)
        reader.read_header()
        with pytest.raises(ArchiveDamaged) as refused:
            list(reader.members())
        assert "INBOX/.ims-folder.json" in str(refused.value)
        assert "limit" in str(refused.value)
    finally:
        os.close(fd)


# -- messages -------------------------------------------------------------------------------

def test_the_writer_refuses_a_message_over_the_size_limit():
    """Before: any size was written.  Now a message over ``MAX_MESSAGE_SIZE`` (64 GiB) is
    refused by name, before its header is written."""
    sink_fd = os.open(os.devnull, os.O_WRONLY)
    try:
        writer = ArchiveWriter(RecordSink(sink_fd, 20, "null"))
        size = (64 << 30) + 1
        encoded = fmt.message_records(1, fmt.flag_records("", (), "2,"), False, CREATED,
                                      b"1.M1P1.a", size, "0" * 64)
        with pytest.raises(ArchiveDamaged) as refused:
            writer.begin_large_message(b"primary/amy/INBOX/1.M1P1.a", size, CREATED, encoded,
                                       0, 0)
        assert "primary/amy/INBOX/1.M1P1.a" in str(refused.value)
        assert writer.offset == 0 and not writer.sink.queued
    finally:
        os.close(sink_fd)


def hostile_message_member(size: int) -> bytes:
    """A message member header claiming ``size`` bytes of data (which do not follow), built
    past the writer's own limit: that is the damage."""
    from ims.archive import limits
    encoded = fmt.message_records(1, fmt.flag_records("", (), "2,"), False, CREATED,
                                  b"1.M1P1.a", size, "0" * 64)
    saved, limits.MAX_MESSAGE_SIZE = limits.MAX_MESSAGE_SIZE, 1 << 62
    try:
        return fmt.member_headers(b"primary/amy/INBOX/1.M1P1.a", size, CREATED, fmt.REGULAR,
                                  encoded=encoded)
    finally:
        limits.MAX_MESSAGE_SIZE = saved


def test_a_member_claiming_more_than_the_message_limit_ends_reading(tmp_path):
    """Before: a damaged size of 2^60 was taken at its word (a restore from a file tried to
    read it, from a pipe read to the end).  Now no member may be larger than the largest
    message: its size field is damaged, and so is where the next member starts.  A link
    member whose ``IMS.size`` claims more is invalid (the stream is still in step)."""
    archive = Archive(tmp_path / "a.ims")
    archive.folder([["1.M1P1.a", 1, "S", []]])
    archive.message("1.M1P1.a", b"first\n", 1)
    offset = archive.writer.offset
    archive.writer.sink.write(hostile_message_member(1 << 60))
    archive.writer.offset += len(hostile_message_member(1 << 60))
    archive.counts["messages"] += 1
    archive.close()
    for how in ("file", "pipe"):
        fd, feeder = feed_pipe(archive.path) if how == "pipe" else \
            (os.open(archive.path, os.O_RDONLY), None)
        reader = ArchiveReader(fd, "a", 20)
        try:
            reader.read_header()
            names = []
            with pytest.raises(ArchiveDamaged) as refused:
                for member in reader.members():
                    names.append(member.name)
            assert names[-1] == "primary/amy/INBOX/1.M1P1.a"
            assert f"at byte {offset}" in str(refused.value)
            assert f"{1 << 60}" in str(refused.value) and "limit" in str(refused.value)
        finally:
            os.close(fd)
            if feeder is not None:
                feeder.join()

    from ims.archive.records import MessageRecord, RecordError
    pax = {"IMS.type": "message", "IMS.basename": "1.M1P1.a", "IMS.size": str((64 << 30) + 1),
           "IMS.flags": "", "IMS.state": "cur"}
    with pytest.raises(RecordError, match="limit"):
        MessageRecord.decode(pax, "primary/amy/INBOX/1.M1P1.a", 0, CREATED, is_link=True)


def test_a_message_over_the_slot_size_is_not_pickled_through_the_channel(tmp_path, monkeypatch):
    """Before: a message over the prefetch slot (8 MiB) went inline, pickled whole, in one
    frame (over 4 GiB: struct.error, the reader child died).  Now it comes in slot-sized
    chunks: no frame carries message bytes."""
    frames = []
    receive = Channel._exact

    def recording(self, count):
        frames.append(count)
        return receive(self, count)
    monkeypatch.setattr(Channel, "_exact", recording)
    big = os.urandom(20 << 20)
    archive = Archive(tmp_path / "a.ims")
    archive.folder([["1.M1P1.a", 1, "S", []], ["2.M2P2.a", 2, "S", []]])
    archive.message("1.M1P1.a", big, 1)
    archive.message("2.M2P2.a", b"Subject: small\n\nhi\n", 2)
    archive.close()
    fd, feeder = feed_pipe(archive.path)
    reader = PrefetchReader(fd, "stdin", 20)
    try:
        found = read_all(reader)
    finally:
        reader.close()
        os.close(fd)
        feeder.join()
    assert found["primary/amy/INBOX/1.M1P1.a"] == big
    assert found["primary/amy/INBOX/2.M2P2.a"] == b"Subject: small\n\nhi\n"
    assert max(frames) < 1 << 20, max(frames)


def test_channel_frames_carry_a_64_bit_length():
    """Before: ``!I``, so a frame over 4 GiB could not be sent.  Now the length is 8 bytes."""
    import pickle
    left, right = socket.socketpair()
    try:
        Channel(left).send(b"x" * 1000)
        (length,) = struct.unpack("!Q", right.recv(8))
        assert 1000 < length < 1100
        payload = b""
        while len(payload) < length:
            payload += right.recv(length - len(payload))
        assert pickle.loads(payload) == b"x" * 1000
        frame = pickle.dumps(("batch", 1, []))
        right.sendall(struct.pack("!Q", len(frame)) + frame)
        assert Channel(left).receive() == (True, ("batch", 1, []))
    finally:
        left.close()
        right.close()


BIG = 70 << 20      # above the size kept in memory (limits.MESSAGE_IN_MEMORY)


@pytest.fixture(scope="module")
def big_archive(tmp_path_factory) -> tuple[Path, bytes, Path]:
    """An archive with a 70 MiB message and a copy with one byte of that message changed."""
    root = tmp_path_factory.mktemp("big")
    data = os.urandom(BIG)
    archive = Archive(root / "a.ims")
    archive.folder([["1.M1P1.a", 1, "S", []], ["2.M2P2.a", 2, "S", []]])
    archive.message("1.M1P1.a", data, 1)
    archive.message("2.M2P2.a", b"after\n", 2)
    archive.close()
    damaged = root / "damaged.ims"
    raw = bytearray(archive.path.read_bytes())
    raw[raw.find(data[:64]) + BIG // 2] ^= 1
    damaged.write_bytes(bytes(raw))
    return archive.path, data, damaged


@pytest.mark.parametrize("how", ["file", "pipe", "prefetch", "by offset"])
def test_a_message_above_the_memory_bound_arrives_whole_as_a_mapping(big_archive, how):
    """A message over ``MESSAGE_IN_MEMORY`` reaches the store writer as a mapping of a file
    (the archive itself, or a temporary copy of a stream), never as bytes in memory."""
    path, data, _ = big_archive
    key = "primary/amy/INBOX/1.M1P1.a"
    fd, feeder = feed_pipe(path) if how in ("pipe", "prefetch") else \
        (os.open(path, os.O_RDONLY), None)
    reader = PrefetchReader(fd, "stdin", 20) if how == "prefetch" else ArchiveReader(fd, "a", 20)
    try:
        if how == "by offset":
            trailer = reader.locate_trailer()
            extent = trailer.folders[0]
            members = list(reader.members_between(extent.offset, extent.end))
            view = reader.data_at(next(m for m in members if m.name == key))
        else:
            reader.read_header()
            view = None
            for member in reader.members():
                if member.name == key:
                    view = reader.read_data(member)
                    assert isinstance(view, memoryview) and isinstance(view.obj, mmap.mmap)
                    assert hashlib.sha256(view).digest() == hashlib.sha256(data).digest()
                    view.release()
            assert reader.trailer is not None
            return
        assert isinstance(view.obj, mmap.mmap) and bytes(view) == data
    finally:
        if isinstance(reader, PrefetchReader):
            reader.close()
        os.close(fd)
        if feeder is not None:
            feeder.join()


@pytest.mark.parametrize("how", ["file", "pipe", "prefetch"])
def test_a_damaged_large_message_is_reported_and_reading_goes_on(big_archive, how):
    path, _, damaged = big_archive
    fd, feeder = feed_pipe(damaged) if how != "file" else (os.open(damaged, os.O_RDONLY), None)
    reader = PrefetchReader(fd, "stdin", 20) if how == "prefetch" else ArchiveReader(fd, "a", 20)
    try:
        reader.read_header()
        seen = []
        for member in reader.members():
            if member.kind == fmt.MESSAGE:
                try:
                    seen.append((member.name, bytes(reader.read_data(member))))
                except MemberDamaged as exc:
                    seen.append((member.name, "damaged"))
                    assert "SHA-256" in str(exc)
        assert seen == [("primary/amy/INBOX/1.M1P1.a", "damaged"),
                        ("primary/amy/INBOX/2.M2P2.a", b"after\n")]
    finally:
        if isinstance(reader, PrefetchReader):
            reader.close()
        os.close(fd)
        if feeder is not None:
            feeder.join()


def test_a_large_message_skipped_by_the_restore_leaves_the_stream_in_step(big_archive):
    """The prefetching child sends a large message's chunks whether or not the restore reads
    them; a member it skips is drained, and the next member is read correctly."""
    path, _, _ = big_archive
    fd, feeder = feed_pipe(path)
    reader = PrefetchReader(fd, "stdin", 20)
    try:
        reader.read_header()
        names = []
        for member in reader.members():
            names.append(member.name)
            if member.name.endswith("2.M2P2.a"):
                assert bytes(reader.read_data(member)) == b"after\n"
        assert reader.trailer is not None and names[-1] == fmt.TRAILER_NAME
    finally:
        reader.close()
        os.close(fd)
        feeder.join()


# -- through the installed commands ---------------------------------------------------------

FIVE_GIB = 5 << 30


def sparse_message(path: Path) -> str:
    """A 5 GiB message that costs no disk: a sparse file with a few marks (at the start,
    across the 4 GiB boundary, at the end); returns its SHA-256."""
    with open(path, "wb") as out:
        out.write(b"Subject: huge\n\n")
        out.seek((4 << 30) - 8)
        out.write(b"across the 4 GiB line")
        out.seek(FIVE_GIB - 4)
        out.write(b"end\n")
    assert path.stat().st_size == FIVE_GIB
    return file_sha256(path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(16 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.slow
def test_a_five_gib_message_is_backed_up_and_restored_in_bounded_memory(fresh_store, tmp_path):
    """Before: backed up fine, but a restore joined it in memory (twice) and, from a pipe,
    pickled it into one channel frame over 4 GiB (struct.error: the reader child died, exit
    4).  Now: restored from a pipe and from a file, with each command's data segment limited
    to 1 GiB (``prlimit --data``), byte for byte."""
    require(shutil.which("prlimit") is not None, "prlimit (util-linux)")
    free = shutil.disk_usage(tmp_path).free
    if free < 3 * FIVE_GIB + (2 << 30):
        pytest.skip(f"needs 17 GiB free in {tmp_path}, has {free >> 30} GiB")
    user = sorted(p.name for p in (fresh_store / "partitions" / "primary").iterdir())[0]
    key = "1767225600.M1P1.sample"
    source = fresh_store / "partitions" / "primary" / user / "Maildir" / "new" / key
    expected = sparse_message(source)
    config = fresh_store / "config"
    spool = tmp_path / "spool"
    spool.mkdir()
    env = dict(os.environ, IMS_CONFIG_DIR=str(config), TMPDIR=str(spool))
    limit = ("prlimit", f"--data={1 << 30}")
    # restored into the other partition: the source stays where the backup reads it
    target = fresh_store / "partitions" / "secondary" / user
    assert not target.exists()

    def check_restored() -> None:
        restored = target / "Maildir" / "new" / key
        assert restored.stat().st_size == FIVE_GIB and file_sha256(restored) == expected
        shutil.rmtree(target)

    # a pipe: imsbackup -f - | imsrestore -f -
    backup = subprocess.Popen([*limit, command("imsbackup"), "-f", "-", f"/primary/user/{user}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    restore = subprocess.run([*limit, command("imsrestore"), "-f", "-", "--partition",
                              "secondary"], stdin=backup.stdout, capture_output=True, env=env)
    backup.stdout.close()
    backup_rc = backup.wait()
    assert restore.returncode == 0, restore.stderr.decode()
    assert backup_rc == 0, backup.stderr.read().decode()
    check_restored()
    assert not os.listdir(spool)            # the spooled copy is gone

    # a file: listed, then restored in order and by the trailer's index
    archive = tmp_path / "big.ims"
    run_cmd("imsbackup", "-f", str(archive), f"/primary/user/{user}", config_dir=config,
            check_rc=0, prefix=limit)
    listed = run_cmd("imsrestore", "-t", "-f", str(archive), config_dir=config, prefix=limit)
    assert listed.returncode == 0 and key.encode() in listed.stdout, listed.stderr.decode()
    for selection in ((), (f"/primary/user/{user}",)):
        result = run_cmd("imsrestore", "-f", str(archive), "--partition", "secondary",
                         *selection, config_dir=config, prefix=limit)
        assert result.returncode == 0, result.stderr.decode()
        check_restored()
