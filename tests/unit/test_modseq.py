"""ims.store.modseq: the HIGHESTMODSEQ bound from Dovecot's index files, the seed, the margin."""

from __future__ import annotations

import os
import stat
import struct
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ims.store import modseq
from ims.store.modseq import (LOG_NAME, PLAUSIBLE_MODSEQ, read_highest_modseq,
                              restored_modseq, seed_modseq)

# dovecot.index.log of a folder that had two APPENDs and one flag change, written by Dovecot
# 2.3.19.1 on x86-64; IMAP STATUS said HIGHESTMODSEQ 4.  There was no dovecot.index.
REAL_LOG = bytes.fromhex(
    "01032800f9b4096b020000000000000000000000f9b4096b0100000000000000010000000000000080808083"
    "00000810780000008080808940000010ffffffff000000002400000000000000010007006d61696c64697200"
    "8080808c0001001000002400000000000000000000000000f9b4096bf9b4096b8aac052cf9b4096b1ce21b2c"
    "5c00000080808086200000101800040002b4096b4c000400ffffffff80808083000008104000000080808089"
    "40000010ffffffff0000000000000000040004000100050063616368650000008080808480000010f9b4096b"
    "0000000080808083000008107800000080808084020000100100000000000000808080874000001001000000"
    "f9b4096b000000000400040001000000808080840002001001000000840100008080808c2000001054002400"
    "00c8086b01000000000000000000000000000000000000000000000000000000000000008080808300000810"
    "58000000808080874000001000000000000000002400000000000000010000008080808c0001001000002400"
    "000000000000000000000000f9b4096bf9b4096b8aac052cf9b4096b7de6232c850000008080808300000810"
    "4800000080808084020000100200000000000000808080874000001001000000f9b4096b0000000004000400"
    "01000000808080840002001002000000c4010000808080830000081068000000808080874000001000000000"
    "000000002400000000000000010000008080808c0001001000002400f9b4096bf9b4096b6c2b2e2cf9b4096b"
    "f9b4096b6c2b2e2cf9b4096b2353272c85000000808080842000001030000400030000008080808420000010"
    "4000040070020000808080850400000001000000010000000800000080808083000008105800000080808087"
    "4000001000000000000000002400000000000000010000008080808c0001001000002400f9b4096bf9b4096b"
    "6c2b2e2cf9b4096bf9b4096b8127362cf9b4096b2353272c85000000808080842000001040000400ec020000"
    "80808083000008104c0000008080808940000000ffffffff000000001000000008000800010006006d6f6473"
    "6571000080808087000100000000100004000000000000000000000000000000")
REAL_LOG_MODSEQ = 4

BOUNDARY, APPEND, FLAG_UPDATE, EXT_REC_UPDATE, MODSEQ_UPDATE = 0x80000, 0x2, 0x4, 0x200, 0x8000
EXTERNAL = 0x10000000


def size_field(size: int) -> bytes:
    """Dovecot's mail_index_uint32_to_offset: 7 bits a byte, most significant first."""
    n = size >> 2
    return bytes([0x80 | (n >> 21) & 0x7F, 0x80 | (n >> 14) & 0x7F, 0x80 | (n >> 7) & 0x7F,
                  0x80 | n & 0x7F])


def log_header(initial: int, order: str = "<", indexid: int = 0x6B09B4F9,
               hdr_size: int = 40, minor: int = 3) -> bytes:
    compat = 1 if order == "<" else 0
    return struct.pack(order + "BBHIIIIIQB3xI", 1, minor, hdr_size, indexid, 2, 0, 0,
                       0x6B09B4F9, initial, compat, 0)


def record(kind: int, payload: bytes, order: str = "<") -> bytes:
    assert len(payload) % 4 == 0
    return size_field(8 + len(payload)) + struct.pack(order + "I", kind) + payload


def flag_update(order: str = "<") -> bytes:
    return record(FLAG_UPDATE | EXTERNAL, struct.pack(order + "IIBBBB", 1, 1, 1, 0, 0, 0), order)


def modseq_update(*values: int, order: str = "<") -> bytes:
    payload = b"".join(struct.pack(order + "III", 1, v & 0xFFFFFFFF, v >> 32) for v in values)
    return record(MODSEQ_UPDATE, payload, order)


def index_file(modseq: int | None, order: str = "<", extra_ext: bool = True) -> bytes:
    """A dovecot.index header: 120-byte base header, then extension headers."""
    exts = b""

    def ext(name: bytes, data: bytes) -> bytes:
        head = struct.pack(order + "IIHHHH", len(data), 0, 0, 0, 0, len(name)) + name
        head += b"\0" * (-len(head) % 8)
        return head + data + b"\0" * (-len(data) % 8)

    if extra_ext:
        exts += ext(b"cache", struct.pack(order + "II", 7, 9))
    if modseq is not None:
        exts += ext(b"modseq", struct.pack(order + "QII", modseq, 2, 4000))
    header_size = 120 + len(exts)
    base = struct.pack(order + "BBHIIB3xIIII", 7, 3, 120, header_size, 40,
                       1 if order == "<" else 0, 0x6B09B4F9, 0, 1795798000, 21)
    base += b"\0" * (120 - len(base))
    return base + exts


def write(folder, name: str, data: bytes) -> None:
    (folder / name).write_bytes(data)


# -- the record size encoding and a real log ------------------------------------------------

def test_real_dovecot_log_gives_what_imap_said(tmp_path):
    write(tmp_path, LOG_NAME, REAL_LOG)
    assert read_highest_modseq(tmp_path) == REAL_LOG_MODSEQ


def test_real_log_truncated_anywhere_never_raises_nor_exceeds(tmp_path):
    for end in range(len(REAL_LOG) + 1):
        write(tmp_path, LOG_NAME, REAL_LOG[:end])
        value = read_highest_modseq(tmp_path)
        assert value is None or 1 <= value <= REAL_LOG_MODSEQ, end
        if end >= 40:
            assert value is not None, end


def test_directory_fd_and_path_give_the_same(tmp_path):
    write(tmp_path, LOG_NAME, REAL_LOG)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert read_highest_modseq(fd) == read_highest_modseq(str(tmp_path)) == REAL_LOG_MODSEQ
    finally:
        os.close(fd)


# -- made-up logs ---------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["<", ">"])
def test_counts_records_that_may_raise_the_modseq(tmp_path, order):
    boundary = record(BOUNDARY | EXTERNAL, struct.pack(order + "I", 32), order)
    ext = record(EXT_REC_UPDATE, struct.pack(order + "II", 1, 0), order)
    body = boundary + flag_update(order) + ext + boundary + flag_update(order) + flag_update(order)
    write(tmp_path, LOG_NAME, log_header(100, order) + body)
    # three flag updates raise it; boundaries and extension records do not
    assert read_highest_modseq(tmp_path) == 103


def test_unknown_record_types_count_as_raising(tmp_path):
    write(tmp_path, LOG_NAME, log_header(10) + record(0x00400000, b"\0" * 4))
    assert read_highest_modseq(tmp_path) == 11


def test_modseq_update_records_raise_to_their_value(tmp_path):
    big = (7 << 32) + 5
    write(tmp_path, LOG_NAME, log_header(10) + modseq_update(3, big, 12) + flag_update())
    assert read_highest_modseq(tmp_path) == big + 2


def test_initial_modseq_zero_still_gives_at_least_one(tmp_path):
    write(tmp_path, LOG_NAME, log_header(0))
    assert read_highest_modseq(tmp_path) == 1


def test_record_being_written_ends_the_walk(tmp_path):
    torn = b"\0\0\0\0" + struct.pack("<I", FLAG_UPDATE)        # size not written yet
    write(tmp_path, LOG_NAME, log_header(50) + flag_update() + torn + flag_update())
    assert read_highest_modseq(tmp_path) == 51


@pytest.mark.parametrize("data", [
    b"", b"\x01", b"garbage " * 10, log_header(5)[:23], b"\x02" + log_header(5)[1:],
    log_header(5, indexid=0), log_header(5, hdr_size=20), b"\xff" * 4096,
])
def test_garbage_logs_give_none(tmp_path, data):
    write(tmp_path, LOG_NAME, data)
    assert read_highest_modseq(tmp_path) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_after_a_header_never_raise(tmp_path_factory, tail):
    folder = tmp_path_factory.mktemp("log")
    write(folder, LOG_NAME, log_header(7) + tail)
    value = read_highest_modseq(folder)
    assert value is not None and value >= 7


@pytest.mark.parametrize("chunk", [8, 13, 50, 64, 1 << 20])
def test_records_crossing_read_chunks(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(modseq, "_CHUNK", chunk)
    body = flag_update() * 5 + modseq_update(1, 900, 3) + flag_update() * 2
    write(tmp_path, LOG_NAME, log_header(1) + body)
    assert read_highest_modseq(tmp_path) == 900 + 1 + 2
    write(tmp_path, LOG_NAME, REAL_LOG)
    assert read_highest_modseq(tmp_path) == REAL_LOG_MODSEQ


def test_a_maximal_log_is_walked_whole(tmp_path):
    # Dovecot rotates its log at 1 MiB at the latest; this one is larger than a read
    write(tmp_path, LOG_NAME, log_header(1) + flag_update() * 70000 + modseq_update(10**6))
    assert read_highest_modseq(tmp_path) == 10**6 + 1


# -- dovecot.index --------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["<", ">"])
def test_index_alone_gives_its_modseq_header(tmp_path, order):
    write(tmp_path, "dovecot.index", index_file(4242, order))
    assert read_highest_modseq(tmp_path) == 4242


def test_index_without_modseq_extension_and_no_log_gives_none(tmp_path):
    write(tmp_path, "dovecot.index", index_file(None))
    assert read_highest_modseq(tmp_path) is None


def test_log_counts_on_top_of_the_index(tmp_path):
    write(tmp_path, "dovecot.index", index_file(500))
    write(tmp_path, LOG_NAME, log_header(400) + flag_update() * 3)
    assert read_highest_modseq(tmp_path) == 503


def test_corrupt_log_falls_back_to_the_index(tmp_path):
    write(tmp_path, "dovecot.index", index_file(500))
    write(tmp_path, LOG_NAME, log_header(400, indexid=0) + flag_update())
    assert read_highest_modseq(tmp_path) == 500


def test_index_truncated_anywhere_never_raises(tmp_path):
    data = index_file(4242)
    for end in range(len(data)):
        write(tmp_path, "dovecot.index", data[:end])
        assert read_highest_modseq(tmp_path) is None, end


def test_nothing_indexed_gives_none(tmp_path):
    assert read_highest_modseq(tmp_path) is None
    assert read_highest_modseq(tmp_path / "missing") is None
    assert read_highest_modseq(-1) is None


def test_symlinks_are_not_followed(tmp_path):
    real = tmp_path / "elsewhere"
    real.mkdir()
    write(real, LOG_NAME, REAL_LOG)
    write(real, "dovecot.index", index_file(4242))
    folder = tmp_path / "folder"
    folder.mkdir()
    os.symlink(real / LOG_NAME, folder / LOG_NAME)
    os.symlink(real / "dovecot.index", folder / "dovecot.index")
    assert read_highest_modseq(folder) is None


def test_a_directory_in_place_of_the_log_gives_none(tmp_path):
    (tmp_path / LOG_NAME).mkdir()
    assert read_highest_modseq(tmp_path) is None


# -- seeding --------------------------------------------------------------------------------

def test_seed_writes_a_header_only_log_that_reads_back(tmp_path):
    seed_modseq(tmp_path, 1_795_798_149_072, os.getuid(), os.getgid())
    path = tmp_path / LOG_NAME
    data = path.read_bytes()
    assert len(data) == 40
    order = "<" if sys.byteorder == "little" else ">"
    major, minor, hdr_size, indexid, file_seq = struct.unpack_from(order + "BBHII", data)
    assert (major, minor, hdr_size, file_seq) == (1, 3, 40, 1) and indexid != 0
    assert struct.unpack_from(order + "Q", data, 24)[0] == 1_795_798_149_072
    assert data[32] == (1 if sys.byteorder == "little" else 0)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.stat().st_nlink == 1
    assert read_highest_modseq(tmp_path) == 1_795_798_149_072
    assert sorted(os.listdir(tmp_path)) == [LOG_NAME]       # no temporary file left


def test_seed_through_a_directory_fd(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        seed_modseq(fd, 77, os.getuid(), os.getgid())
    finally:
        os.close(fd)
    assert read_highest_modseq(tmp_path) == 77


def test_seed_never_replaces_a_log(tmp_path):
    write(tmp_path, LOG_NAME, REAL_LOG)
    with pytest.raises(FileExistsError):
        seed_modseq(tmp_path, 10**12, os.getuid(), os.getgid())
    assert (tmp_path / LOG_NAME).read_bytes() == REAL_LOG
    assert sorted(os.listdir(tmp_path)) == [LOG_NAME]


def test_seed_does_not_write_through_a_symlink(tmp_path):
    target = tmp_path / "target"
    folder = tmp_path / "folder"
    folder.mkdir()
    os.symlink(target, folder / LOG_NAME)                  # dangling
    with pytest.raises(FileExistsError):
        seed_modseq(folder, 10**12, os.getuid(), os.getgid())
    assert not target.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_seed_owns_the_log_to_the_mail_user(tmp_path):
    seed_modseq(tmp_path, 5, 5000, 5001)
    st_ = (tmp_path / LOG_NAME).stat()
    assert (st_.st_uid, st_.st_gid) == (5000, 5001)


@pytest.mark.parametrize("bad", [0, -1, 1 << 63])
def test_seed_rejects_values_outside_the_imap_range(tmp_path, bad):
    with pytest.raises(ValueError):
        seed_modseq(tmp_path, bad, os.getuid(), os.getgid())
    assert not (tmp_path / LOG_NAME).exists()


# -- the margin rule ------------------------------------------------------------------------

NOW = 1_732_000_000.25      # 2024-11-19


def test_margin_is_restore_time_in_milliseconds_for_ordinary_folders():
    assert restored_modseq(None, NOW) == 1_732_000_000_251
    assert restored_modseq(42, NOW) == 1_732_000_000_251
    assert restored_modseq(0, NOW) == 1_732_000_000_251


def test_margin_is_above_a_recorded_value_that_is_already_higher():
    # a folder restored (seeded from the clock) and backed up again, restored with a
    # clock that is a little behind: still above what was recorded
    assert restored_modseq(1_732_000_500_000, NOW) == 1_732_000_500_001


def test_a_second_restore_of_the_same_backup_starts_above_the_first():
    first = restored_modseq(42, NOW)
    # the first restored folder then gets up to 1000 changes a second for an hour
    seen_by_clients = first + 3600 * 1000 - 1
    assert restored_modseq(42, NOW + 3600) > seen_by_clients


def test_implausible_recorded_values_are_ignored():
    assert restored_modseq(PLAUSIBLE_MODSEQ, NOW) == 1_732_000_000_251
    assert restored_modseq((1 << 64) - 1, NOW) == 1_732_000_000_251
    assert restored_modseq(PLAUSIBLE_MODSEQ - 1, NOW) == PLAUSIBLE_MODSEQ


def test_margin_stays_exact_for_javascript_clients_for_centuries():
    assert restored_modseq(None, 8_000_000_000) < 2 ** 53    # year 2223
