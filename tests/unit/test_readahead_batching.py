"""The store reader's hand-overs (ims/readahead.py) and the writer's queue (ims/archive/writer.py).

The child queues items of many folders into one channel message, fills a slot with several
batches (the last one gives it back), leaves the hash to the parent when the parent waits,
and the parent writes message bytes straight from the slots with writev.  Here the slot and
batch sizes are made tiny, so a small store crosses every boundary: a message of exactly a
slot's size (and one byte either side), messages larger than a slot, hand-overs inside and
across folders, hard links whose first copy went in an earlier batch, a message that vanishes
in the middle of a batch.  Every archive must hold what the default sizes write."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import pytest
from archive_reader import read_archive

from ims import readahead
from ims.archive import writer as writer_module
from ims.archive.writer import ArchiveWriter, RecordSink
from ims.backup import BackupOptions, BackupReport, run_backup
from ims.config import Config
from ims.helper import Channel
from ims.names import resolve
from ims.readahead import StoreReadAhead
from ims.samplestore import SampleSpec, generate
from ims.store.maildir import MaildirFolderReader, MaildirStore, folder_to_dirname

SLOT = 64 << 10     # the slot size of the small runs


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("batching") / "store"
    generate(root, SampleSpec(users=4, messages_per_user=40, partitions=1, seed=3,
                              link_fraction=0.4, extra_folders=2, size_cap=40 << 10))
    inbox = next((root / "partitions").glob("*/*/Maildir"))
    # around the small slot's size (SLOT - 1 bytes and up go in chunks), several slots
    # long, empty; above the small SLOT_FILL, so slots are reclaimed while in use
    for number, size in enumerate((SLOT - 2, SLOT - 1, SLOT, 3 * SLOT + 5, 0, SLOT // 2)):
        (inbox / "cur" / f"1700000000.M{number}P9.edge:2,S").write_bytes(
            bytes((number + i) % 251 for i in range(size)))
    os.link(inbox / "cur" / "1700000000.M5P9.edge:2,S",
            inbox / "cur" / "1700000001.M5P9.twin:2,S")       # a link in the same folder
    return root


def backup(store: Path, out: Path, since: float | None = None) -> tuple[bytes, BackupReport]:
    config = Config.load(store / "config")
    maildirs = MaildirStore(config.msg.partitions(), "%u/Maildir")
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        report = run_backup(config, maildirs, resolve(["/"], config, maildirs),
                            ArchiveWriter(RecordSink(fd, 20, str(out))),
                            BackupOptions(names=("/",), since=since))
    finally:
        os.close(fd)
    return out.read_bytes(), report


def members(stream: bytes) -> list[tuple]:
    """Every member but the header and trailer, JSON members without their time."""
    archive = read_archive(stream)
    return [(m.name, m.typeflag, m.linkname, m.size, m.data, sorted(m.pax.items()),
             None if m.kind in ("user", "folder") else m.mtime)
            for m in archive.members if m.kind not in ("header", "trailer")]


def small_sizes(monkeypatch: pytest.MonkeyPatch, batch_bytes: int, batch_messages: int) -> None:
    monkeypatch.setattr(readahead, "SLOT_SIZE", SLOT)
    monkeypatch.setattr(readahead, "SLOT_FILL", SLOT // 2)   # a slot left half full, too
    monkeypatch.setattr(readahead, "BATCH_BYTES", batch_bytes)
    monkeypatch.setattr(readahead, "BATCH_MESSAGES", batch_messages)


@pytest.fixture(scope="module")
def reference(store: Path, tmp_path_factory: pytest.TempPathFactory) -> list[tuple]:
    stream, report = backup(store, tmp_path_factory.mktemp("ref") / "a.ims")
    assert report.links > 0 and report.messages > 100 and not report.skipped
    return members(stream)


@pytest.mark.parametrize("batch_bytes, batch_messages, parent_hashes", [
    (1, 1, None),               # a hand-over after every message
    (SLOT // 3, 7, None),       # several batches per slot, hand-overs inside folders
    (1 << 30, 1 << 30, None),   # only a full slot hands over: many folders per message
    (SLOT // 3, 7, True),       # every hash made by the parent
    (SLOT // 3, 7, False),      # every hash made by the child
])
def test_small_slots_and_batches_write_the_same_archive(
        store, reference, tmp_path, monkeypatch, batch_bytes, batch_messages, parent_hashes):
    small_sizes(monkeypatch, batch_bytes, batch_messages)
    if parent_hashes is not None:
        monkeypatch.setattr(StoreReadAhead, "_parent_idle", lambda self: parent_hashes)
    stream, report = backup(store, tmp_path / "a.ims")
    assert not report.skipped
    assert members(stream) == reference


def test_the_data_of_each_message_is_its_file(store, reference):
    """The reference itself: each data member holds its file's bytes; each inode is stored
    once, the other names link to the first."""
    partitions = store / "partitions" / "primary"
    stored: dict[tuple[int, int], str] = {}
    for name, typeflag, linkname, _, data, pax, _ in reference:
        if dict(pax).get("IMS.type") != "message":
            continue
        _, user, *folder, key = name.split("/")
        directory = partitions / user / "Maildir"
        if folder != ["INBOX"]:
            directory = directory / folder_to_dirname("/".join(folder))
        path = next(p for sub in ("cur", "new") for p in (directory / sub).iterdir()
                    if p.name.partition(":")[0] == key)
        st = path.stat()
        if typeflag == b"0":
            assert data == path.read_bytes() and (st.st_dev, st.st_ino) not in stored
            stored[(st.st_dev, st.st_ino)] = name
        else:
            assert stored[(st.st_dev, st.st_ino)] == linkname


def test_a_message_that_vanishes_in_a_batch_is_counted_and_the_rest_written(
        store, reference, tmp_path, monkeypatch):
    small_sizes(monkeypatch, SLOT // 3, 7)
    real_open = MaildirFolderReader.open_message
    gone = {"1700000000.M1P9.edge", "1700000000.M5P9.edge"}    # the second has a twin

    def open_message(self, entry):
        if entry.key in gone:
            return None
        return real_open(self, entry)
    monkeypatch.setattr(MaildirFolderReader, "open_message", open_message)
    stream, report = backup(store, tmp_path / "a.ims")
    assert report.vanished == 2 and not report.skipped
    written = members(stream)
    names = {m[0] for m in written}
    assert not any(name.rsplit("/", 1)[1] in gone for name in names)
    twin = next(m for m in written if m[0].endswith("1700000001.M5P9.twin"))
    assert twin[1] == b"0" and twin[4] == bytes((5 + i) % 251 for i in range(SLOT // 2))
    # the rest as the reference has it (the folder member lists the vanished too)
    kept = [m for m in reference if m[0].rsplit("/", 1)[1] not in gone
            and not m[0].endswith("twin")]
    assert [m for m in written if not m[0].endswith("twin")] == kept


def test_a_message_whose_read_fails_is_skipped_and_named(store, tmp_path, monkeypatch):
    small_sizes(monkeypatch, SLOT // 3, 7)
    real_preadv = os.preadv
    calls = 0

    def preadv(fd, buffers, offset):
        nonlocal calls
        calls += 1
        if calls == 20:
            raise OSError(errno.EIO, "Input/output error")
        return real_preadv(fd, buffers, offset)
    monkeypatch.setattr(os, "preadv", preadv)
    _, report = backup(store, tmp_path / "a.ims")
    assert len(report.skipped) == 1, report.skipped


def test_an_incremental_of_an_unchanged_store_hands_over_as_it_goes(store, tmp_path,
                                                                    monkeypatch):
    """Unchanged folders count towards a hand-over like listed messages: an incremental that
    reads nothing still sends its users a few at a time, not all in one message at the end
    (which had held every user's folders in both processes at once)."""
    small_sizes(monkeypatch, SLOT // 3, 8)
    received: list[int] = []
    real_receive = Channel.receive

    def receive(self):
        ok, message = real_receive(self)
        if ok and isinstance(message, list):
            received.append(len(message))
        return ok, message
    monkeypatch.setattr(Channel, "receive", receive)
    stream, report = backup(store, tmp_path / "i.ims", since=time.time() + 60)
    assert report.messages == 0 and not report.skipped
    users = [m for m in read_archive(stream).members if m.kind == "user"]
    assert len(users) == 4 and all(json.loads(m.data)["unchanged"] for m in users)
    assert len(received) >= 2 and max(received) <= 2, received


def test_a_slot_given_back_loses_its_pages_above_the_fill_and_keeps_the_rest(
        store, monkeypatch):
    """``_reclaim``: after a message larger than SLOT_FILL, the slot's pages above SLOT_FILL
    are released (they read as zeros again); those below are left as they were (reused as
    they are, no page faults for ordinary mail)."""
    small_sizes(monkeypatch, SLOT // 3, 7)
    reader = StoreReadAhead(None, None, [], None, 1, False)     # type: ignore[arg-type]
    fill = readahead.SLOT_FILL
    view = reader.views[1]
    view[:] = b"\xab" * SLOT
    reader._touched[1] = fill                # nothing above the fill: left alone
    assert reader._reclaim(1) == 1 and bytes(view) == b"\xab" * SLOT
    reader._touched[1] = SLOT - 2
    assert reader._reclaim(1) == 1
    assert bytes(view[:fill]) == b"\xab" * fill
    assert bytes(view[fill:]) == bytes(SLOT - fill)
    assert reader._touched[1] == fill
    reader.helper.stop()


GROWS = "1700000300.M1P7.grows"


@pytest.mark.parametrize("grown_size, whole", [(SLOT // 4, True), (3 * SLOT, False)])
def test_a_message_that_grows_while_read_is_read_again_or_named(tmp_path, monkeypatch,
                                                               grown_size, whole):
    """Before: a file that grew between its fstat and its read was archived cut at the
    slot's end, exit 0 and nothing said.  Now it is read again whole when it fits in the
    slot, else named among the skipped (exit 1), never archived short."""
    store = tmp_path / "store"
    generate(store, SampleSpec(users=1, messages_per_user=3, partitions=1, seed=1))
    path = next((store / "partitions" / "primary").iterdir()) / "Maildir" / "cur" / f"{GROWS}:2,S"
    path.write_bytes(b"Subject: x\n\nsmall\n")
    grown = b"Subject: x\n\nsmall\n" + b"y" * grown_size
    small_sizes(monkeypatch, SLOT // 3, 7)
    real_open = MaildirFolderReader.open_message

    def open_message(self, entry):
        opened = real_open(self, entry)
        if opened is not None and entry.key == GROWS:
            path.write_bytes(grown)          # after its fstat, before its read
        return opened
    monkeypatch.setattr(MaildirFolderReader, "open_message", open_message)
    stream, report = backup(store, tmp_path / "a.ims")
    stored = [m for m in read_archive(stream).members if m.name.endswith(GROWS)]
    if whole:
        assert [m.data for m in stored] == [grown] and not report.skipped
    else:
        assert stored == [] and len(report.skipped) == 1 and GROWS in report.skipped[0]
        assert "grew" in report.skipped[0]


def test_a_large_message_that_grows_while_sent_is_named(tmp_path, monkeypatch):
    """A message larger than a slot grows after its size was announced: the archive holds
    its first bytes (the announced size, with their digest) and the message is named among
    the skipped (exit 1); before it went unsaid."""
    store = tmp_path / "store"
    generate(store, SampleSpec(users=1, messages_per_user=3, partitions=1, seed=1))
    path = next((store / "partitions" / "primary").iterdir()) / "Maildir" / "cur" / f"{GROWS}:2,S"
    first = bytes(i % 251 for i in range(3 * SLOT))
    path.write_bytes(first)
    small_sizes(monkeypatch, SLOT // 3, 7)
    real_preadv = os.preadv
    grown = False

    def preadv(fd, buffers, offset):
        nonlocal grown
        if not grown and os.fstat(fd).st_size == len(first):
            grown = True
            with open(path, "ab") as more:
                more.write(b"z" * 100)
        return real_preadv(fd, buffers, offset)
    monkeypatch.setattr(os, "preadv", preadv)
    stream, report = backup(store, tmp_path / "a.ims")
    stored = [m for m in read_archive(stream).members if m.name.endswith(GROWS)]
    assert [m.data for m in stored] == [first]
    assert len(report.skipped) == 1 and "grew" in report.skipped[0], report.skipped


def test_writev_resumes_after_short_writes_and_keeps_whole_records(tmp_path, monkeypatch):
    """The queue is written whole records at a time, a short writev resumed where it
    stopped, the bytes past the last record kept as a copy (the view's memory is reused)."""
    real_writev = os.writev
    sizes: list[int] = []

    def short_writev(fd, parts):
        total = sum(len(p) for p in parts)
        count = real_writev(fd, [bytes(b"".join(parts)[:max(total // 3, 1)])])
        sizes.append(count)
        return count
    monkeypatch.setattr(os, "writev", short_writev)
    monkeypatch.setattr(writer_module, "_IOV_MAX", 5)
    out = tmp_path / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        sink = RecordSink(fd, 2, str(out))
        scratch = bytearray(3000)
        expected = bytearray()
        for round_ in range(7):
            scratch[:] = bytes((round_ * 7 + i) % 256 for i in range(3000))
            for piece in (b"", memoryview(scratch)[:1500], b"h" * 700, memoryview(scratch)[1500:]):
                sink.write(piece)
                expected += piece
            sink.settle()
            assert sink.written % 1024 == 0 and sink.queued < 1024
            assert all(not isinstance(p, memoryview) or p.obj is not scratch for p in sink.parts)
        sink.close()
    finally:
        os.close(fd)
    expected += b"\0" * (-len(expected) % 1024)
    assert out.read_bytes() == bytes(expected) and len(sizes) > 7
