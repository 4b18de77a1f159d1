#!/usr/bin/env python3
"""Fuzzing campaign for imsrestore (docs/reliability.md, "Fuzzing").

Damaged archives, made from real ones (a small sample store, ``ims.samplestore``, backed up
by the installed ``imsbackup``), go through ``imsrestore -t`` (list) and through a restore
into a scratch store, read from a file or from a pipe.  The damage: bit flips, overwritten
bytes, truncation, zeroed blocks, reordered, doubled and dropped members, members spliced in
from another archive, garbage; hostile names and pax keys, huge sizes, bad values in the JSON
members, members of the wrong type; a wrong blocking factor.  Most damage is *raw* (the
archive's digest no longer matches); some is *sealed*: the archive is rebuilt around the
damage with a valid digest and trailer, so that only the checks of each value stand between
it and the store.

Each case must hold the contract:

- no traceback (``Traceback`` on stderr, or an exception escaping the command), every
  stderr line ``imsrestore: ...`` (one line per error), no hang (a time limit per case), no
  process left behind, no file left in $TMPDIR;
- no write outside the store: a snapshot of the tree around it (the configuration, the
  archive itself, sibling directories, a decoy directory that links planted in the store
  point to) is the same before and after;
- a documented exit code with its meaning: for raw damage 4, or the intact archive's code
  with exactly the intact archive's result (the damage was in bytes nobody reads, such as
  padding); for sealed damage 0, 1, 4 or 5 (2 when a NAME was given); 2 only when nothing
  was written; never 3, 6 or 7;
- whatever the code, every message file in the store holds bytes some message of the sample
  store held (a damaged message is never restored).

For speed each case is a forked child that runs the command's entry point in-process
(``ims.cli.imsrestore.main``) with its output in files and an alarm; one case in
``--subprocess-every`` runs the installed ``imsrestore`` instead.  The parent kills the
case's process group when it overruns.

    nice -n 10 .venv/bin/python tests/faults/fuzz.py --cases 10000 --seed 1
    .venv/bin/python tests/faults/fuzz.py --work W --seed 1 --case 1234     # one case again

Prints counts per mutation kind and outcome; exits 1 on any violation (each printed with
its seed, case number and a command that runs it again; the archive and the case are
saved under ``<work>/failures``, and ``--replay <work>/failures/CASE.json`` runs it again
whatever the fuzzer's version), 0 otherwise, 2 on a setup problem.  Violations that are
known issues of files outside ``ims/archive`` (``KNOWN``) are counted and shown apart
unless ``--strict``.  Root is not needed.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ims.archive import format as fmt
from ims.archive.reader import EndOfArchive, Member, parse_member
from ims.archive.writer import ArchiveWriter

BIN = Path(sys.executable).parent
ESCAPED = 99                # the child's code when an exception escaped the entry point
TIMEOUT = 30.0              # seconds per case
PARTITIONS = ("primary", "secondary")


# -- archives as members ---------------------------------------------------------------------

@dataclass
class Piece:
    """One member of an archive: its raw bytes and what they say."""

    start: int
    data_start: int
    end: int                    # past the data's padding
    member: Member

    @property
    def kind(self) -> str:
        return self.member.kind


@dataclass
class Base:
    """An intact archive to damage."""

    name: str
    data: bytes
    blocking: int
    pieces: list[Piece]
    tail: int                   # where the end-of-archive blocks start
    names: list[str]            # logical names it holds (users and folders)

    def piece_data(self, piece: Piece) -> bytes:
        return self.data[piece.data_start:piece.data_start + piece.member.size]

    def body(self, piece: Piece) -> Any:
        return json.loads(self.piece_data(piece))


def split(data: bytes) -> tuple[list[Piece], int]:
    pieces = []
    position = 0
    while True:
        cursor = position

        def read(count: int) -> bytes:
            nonlocal cursor
            chunk = data[cursor:cursor + count]
            if len(chunk) < count:
                raise fmt.FormatError("short")
            cursor += count
            return chunk
        try:
            member, _ = parse_member(read, position)
        except EndOfArchive:
            return pieces, position
        size = 0 if member.is_link else member.size
        end = member.data_offset + size + len(fmt.padding(size))
        pieces.append(Piece(position, member.data_offset, end, member))
        position = end


class MemorySink:
    """What ``ArchiveWriter`` needs of a ``RecordSink``, kept in memory."""

    def __init__(self, blocking: int) -> None:
        self.record_size = fmt.BLOCK * blocking
        self.buffer = bytearray()

    def write(self, data) -> None:
        self.buffer += data

    def close(self) -> None:
        self.buffer += b"\0" * (-len(self.buffer) % self.record_size)


@dataclass
class Logical:
    """A member to seal into an archive: JSON members carry ``payload`` (raw JSON bytes),
    messages ``data``; ``records`` are the pax records beyond path/linkpath/size."""

    kind: str
    name: str
    typeflag: bytes
    records: list[tuple[str, str]]
    mtime: int
    payload: bytes = b""
    data: bytes = b""
    linkname: str = ""
    uid: int = 0
    gid: int = 0


_GENERATED = {"path", "linkpath", "size", "uid", "gid", "mtime"}


def logical(base: Base, piece: Piece) -> Logical:
    member = piece.member
    records = [(k, v) for k, v in member.pax.items() if k not in _GENERATED]
    item = Logical(member.kind, member.name, member.typeflag, records, member.mtime,
                   linkname=member.linkname)
    if member.kind in (fmt.HEADER, fmt.USER, fmt.FOLDER, fmt.TRAILER):
        item.payload = base.piece_data(piece)
    elif not member.is_link:
        item.data = base.piece_data(piece)
    return item


def seal(items: list[Logical], blocking: int, counts_delta: int = 0) -> tuple[bytes, int]:
    """An archive of ``items`` with a valid digest, trailer offset and counts (the trailer
    of ``items``, if any, gives skipped/excluded; it is written last whatever its place),
    and the offset of its trailer."""
    sink = MemorySink(blocking)
    writer = ArchiveWriter(sink)   # type: ignore[arg-type]
    counts = collections.Counter()
    trailer: dict[str, Any] = {"format": "ims-archive", "complete": True}
    for item in items:
        if item.kind == fmt.TRAILER and item.typeflag == fmt.REGULAR:
            try:
                old = json.loads(item.payload)
                if isinstance(old, dict):
                    trailer.update({k: v for k, v in old.items()
                                    if k not in ("digest", "trailer_offset", "index", "users")})
            except (ValueError, RecursionError):
                pass
            continue
        body: Any = None
        if item.payload:
            try:
                body = json.loads(item.payload)
            except (ValueError, RecursionError):
                body = None
        if item.kind == fmt.FOLDER and item.typeflag == fmt.REGULAR:
            writer.end_folder()
            names = body if isinstance(body, dict) else {}
            writer._folder = {"partition": names.get("partition"), "user": names.get("user"),
                              "folder": names.get("folder"), "offset": writer.offset,
                              "messages": 0}
            counts["folders"] += 1
        elif item.kind == fmt.USER and item.typeflag == fmt.REGULAR:
            writer.end_folder()     # as the writer's add_json does: the extent ends here
            names = body if isinstance(body, dict) else {}
            writer.user_index.append({"partition": names.get("partition"),
                                      "user": names.get("user"), "group": names.get("group"),
                                      "offset": writer.offset})
            counts["users"] += 1
        elif item.kind == fmt.MESSAGE:
            if item.typeflag == fmt.REGULAR:
                counts["messages"] += 1
            elif item.typeflag == fmt.HARDLINK:
                counts["links"] += 1
            if writer._folder is not None:
                writer._folder["messages"] += 1
        content = item.payload or item.data        # a link has neither, unless damaged
        headers = raw_headers(item.name, len(content), item.mtime, item.typeflag,
                              item.records, item.linkname, item.uid, item.gid)
        is_data = item.kind == fmt.MESSAGE and item.typeflag == fmt.REGULAR
        writer._emit(headers, digest=True)
        writer._emit(content + fmt.padding(len(content)), digest=not is_data)
    counts["messages"] += counts_delta
    old_counts = trailer.get("counts")
    trailer["counts"] = {**(old_counts if isinstance(old_counts, dict) else {}), **counts}
    trailer_offset = writer.offset
    writer.finish(trailer, 0)
    return bytes(sink.buffer), trailer_offset


def raw_headers(name: str, size: int, mtime: int, typeflag: bytes,
                records: list[tuple[str, str]], linkname: str = "", uid: int = 0,
                gid: int = 0) -> bytes:
    """``fmt.member_headers`` without the writer's limits (a hostile pax header may be
    larger than a reader accepts: that is the point)."""
    from ims.archive import limits
    saved = limits.MAX_PAX_PAYLOAD, limits.MAX_MESSAGE_SIZE
    limits.MAX_PAX_PAYLOAD = limits.MAX_MESSAGE_SIZE = 1 << 62
    try:
        return fmt.member_headers(name.encode("utf-8", "surrogateescape"), size, mtime,
                                  typeflag, records, linkname=linkname, uid=uid, gid=gid)
    finally:
        limits.MAX_PAX_PAYLOAD, limits.MAX_MESSAGE_SIZE = saved


# -- hostile values --------------------------------------------------------------------------

def hostile_names(decoy: Path) -> list[str]:
    return ["..", ".", "", "../../../decoy/pwned", "../../../../decoy", "/abs/path",
            f"{decoy}/pwned", f"{decoy}", "a/../../b", "INBOX/../..", "x\x00y", "new\nline",
            "tab\there", "\x7f", "日本語", "a" * 300, "b" * 5000, "Evil", "Evil/Sub",
            ".Evil", "trap", "zz-link", ".hidden", "a:b", "a/b", "a\\b", "\udcff\udcfe",
            "~", "$HOME", "%d", "%u", "*", "a b", "-rf", "--where=/tmp", " ", "INBOX",
            "INBOX/INBOX", "Maildir", "cur", "new", "tmp", "dovecot-uidlist",
            "subscriptions", "joe@..", "@", "a@", "@b", "joe@../x", "x/", "/x", "//",
            "a//b", "a/./b", "\u202e", "\ufeffINBOX", "CON", "x" * 255, "y" * 256]


HOSTILE_VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 2**31, 2**32 - 1, 2**32, 2**32 - 2, 2**63, 2**64, 10**30,
    -(10**30), 1.5, 1e308, -1e308, float("nan"), float("inf"), float("-inf"), "", "x",
    "１２", "12", "-1", [], {}, [None], {"a": 1}, [[["x"]]], "\x00", "..", "../..",
    "a" * 10000, list(range(200)), {"partition": "..", "user": ".."}]

PAX_VALUES = {
    "size": ["-1", "1e3", "0x10", "99999999999999999999999", " 12", "12 ", "", "٣",
             str(2**63), str(2**64), str((64 << 30) + 1), str(8 << 30), "0", "513", "1"],
    "mtime": ["nan", "1e400", "-1", "1.5", "999999999999999999999", "", "x"],
    "uid": ["-1", str(2**64), "x", "99999999999999999999"],
    "gid": ["-1", str(2**64), "x"],
    "path": [],           # hostile names
    "linkpath": [],       # hostile names
    "IMS.uid": ["0", "-1", "4294967295", "4294967294", "1e3", "", " 1", "１", "x", "1.0",
                str(2**64)],
    "IMS.flags": ["x", "SS", "S\x00", "sS", "", "DFPRST", "SÖ", "S S"],
    "IMS.keywords": ["a  b", " ", "a\tb", "(", "ü", "a" * 10000, "a b c", "$Junk $Junk",
                     "\x00"],
    "IMS.internaldate": ["nan", "inf", "-1", "1e10", "99999999999999", "1_000", " 5", "",
                         str(2**40), str(-(2**40)), "x"],
    "IMS.links": ["0", "-1", "x", "1e3", "99999999999999999999", "", "2"],
    "IMS.state": ["weird", "", "new", "cur"],
    "IMS.basename": [],   # hostile names
    "IMS.sha256": ["", "0" * 64, "A" * 64, "abc", "g" * 64],
    "IMS.type": ["", "Message", "header", "trailer", "user", "folder", "unknown", "message "],
    "IMS.info": ["", "2,", "\x00", "x" * 1000],
    "IMS.size": ["", "-1", "x", str(2**64), "0", "1e3", str((64 << 30) + 1)],
}


def hostile_pax_value(key: str, rng: random.Random, names: list[str]) -> str:
    choices = PAX_VALUES.get(key) or names
    return rng.choice(choices)


# -- mutations -------------------------------------------------------------------------------

@dataclass
class Mutated:
    data: bytes
    detail: str
    sealed: bool = False
    blocking: int | None = None        # run with this -b instead of the archive's


class Mutator:
    """Turns a base archive into a damaged one; each kind is a method ``m_<kind>``."""

    def __init__(self, bases: list[Base], decoy: Path) -> None:
        self.bases = bases
        self.names = hostile_names(decoy)

    # where the reader looks hardest: headers and JSON
    def meta_ranges(self, base: Base) -> list[tuple[int, int]]:
        ranges = []
        for piece in base.pieces:
            ranges.append((piece.start, piece.data_start))
            if piece.kind != fmt.MESSAGE:
                ranges.append((piece.data_start, piece.end))
        ranges.append((base.tail, len(base.data)))
        return ranges

    def position(self, base: Base, rng: random.Random) -> int:
        if rng.random() < 0.7:
            start, end = rng.choice(self.meta_ranges(base))
            if end > start:
                return rng.randrange(start, end)
        return rng.randrange(len(base.data))

    def m_bitflip(self, base: Base, rng: random.Random) -> Mutated:
        data = bytearray(base.data)
        spots = []
        for _ in range(rng.choice((1, 1, 1, 2, 3, 8))):
            spot = self.position(base, rng)
            data[spot] ^= 1 << rng.randrange(8)
            spots.append(spot)
        return Mutated(bytes(data), f"bits flipped at {spots}")

    def m_bytes(self, base: Base, rng: random.Random) -> Mutated:
        data = bytearray(base.data)
        spot = self.position(base, rng)
        count = rng.choice((1, 1, 2, 4, 8, 16))
        fill = rng.choice([b"\0", b"\xff", b"7", b"0", b" ", b"\n", b"=", b"9", b"-", None])
        new = bytes(rng.randrange(256) for _ in range(count)) if fill is None else fill * count
        data[spot:spot + count] = new[:len(data) - spot]
        return Mutated(bytes(data), f"{count} bytes set to {new[:4]!r} at {spot}")

    def m_truncate(self, base: Base, rng: random.Random) -> Mutated:
        piece = rng.choice(base.pieces)
        cut = rng.choice([
            rng.randrange(len(base.data)), piece.start, piece.data_start, piece.end,
            piece.start + rng.choice((-1, 1, 511, 513)), base.tail, base.tail + fmt.BLOCK,
            base.tail + 2 * fmt.BLOCK, len(base.data) - 1, len(base.data) - fmt.BLOCK, 0,
            rng.randrange(base.tail, len(base.data))])
        cut = max(0, min(cut, len(base.data) - 1))
        return Mutated(base.data[:cut], f"cut at {cut} of {len(base.data)}")

    def m_zero(self, base: Base, rng: random.Random) -> Mutated:
        spot = self.position(base, rng)
        spot -= spot % fmt.BLOCK
        count = rng.choice((1, 1, 2, 4)) * fmt.BLOCK
        data = bytearray(base.data)
        data[spot:spot + count] = bytes(len(data[spot:spot + count]))
        return Mutated(bytes(data), f"{count} bytes zeroed at {spot}")

    def _assemble(self, base: Base, chunks: list[bytes]) -> bytes:
        return b"".join(chunks) + base.data[base.tail:]

    def m_reorder(self, base: Base, rng: random.Random) -> Mutated:
        chunks = [base.data[p.start:p.end] for p in base.pieces]
        i, j = rng.randrange(len(chunks)), rng.randrange(len(chunks))
        if rng.random() < 0.5:
            chunks[i], chunks[j] = chunks[j], chunks[i]
            detail = f"members {i} and {j} swapped"
        else:
            chunks.insert(j, chunks.pop(i))
            detail = f"member {i} moved to {j}"
        return Mutated(self._assemble(base, chunks), detail)

    def m_double(self, base: Base, rng: random.Random) -> Mutated:
        chunks = [base.data[p.start:p.end] for p in base.pieces]
        i = rng.randrange(len(chunks))
        j = i + 1 if rng.random() < 0.6 else rng.randrange(len(chunks) + 1)
        chunks.insert(j, chunks[i])
        return Mutated(self._assemble(base, chunks), f"member {i} doubled at {j}")

    def m_drop(self, base: Base, rng: random.Random) -> Mutated:
        chunks = [base.data[p.start:p.end] for p in base.pieces]
        i = rng.randrange(len(chunks))
        del chunks[i]
        return Mutated(self._assemble(base, chunks), f"member {i} dropped")

    def m_splice(self, base: Base, rng: random.Random) -> Mutated:
        other = rng.choice(self.bases)
        chunks = [base.data[p.start:p.end] for p in base.pieces]
        how = rng.choice(("member", "members", "concatenated", "garbage-end", "garbage-in"))
        if how == "member":
            piece = rng.choice(other.pieces)
            at = rng.randrange(len(chunks) + 1)
            chunks.insert(at, other.data[piece.start:piece.end])
            return Mutated(self._assemble(base, chunks), f"a member of {other.name} at {at}")
        if how == "members":
            first = rng.randrange(len(other.pieces))
            taken = other.pieces[first:first + rng.randrange(1, 6)]
            at = rng.randrange(len(chunks) + 1)
            chunks[at:at] = [other.data[p.start:p.end] for p in taken]
            return Mutated(self._assemble(base, chunks),
                           f"{len(taken)} members of {other.name} at {at}")
        if how == "concatenated":
            return Mutated(base.data + other.data, f"{other.name} appended whole")
        if how == "garbage-end":
            return Mutated(base.data + rng.randbytes(rng.choice((1, 511, 512, 1024, 10240))),
                           "garbage appended")
        spot = self.position(base, rng)
        garbage = rng.randbytes(rng.choice((1, 7, 512)))
        return Mutated(base.data[:spot] + garbage + base.data[spot:], f"garbage inserted at {spot}")

    # -- sealed (or raw) value damage ----------------------------------------------------

    def _items(self, base: Base) -> list[Logical]:
        return [logical(base, p) for p in base.pieces]

    def _finish(self, base: Base, items: list[Logical], detail: str, rng: random.Random,
                sealed: bool | None = None) -> Mutated:
        if sealed is None:
            sealed = rng.random() < 0.7
        data, trailer_offset = seal(items, base.blocking)
        if not sealed:
            # the same damage, but the digest and trailer of the intact archive: raw
            data = data[:trailer_offset] + base.data[base.pieces[-1].start:]
        return Mutated(data, detail + (" (sealed)" if sealed else " (raw)"), sealed)

    def _new_trailer(self, base: Base, payload: bytes, detail: str) -> Mutated:
        """The intact archive with another trailer: the digest does not cover the trailer,
        so this is sealed (unless the damage is in its digest, offset or counts)."""
        trailer = base.pieces[-1]
        headers = raw_headers(fmt.TRAILER_NAME, len(payload), trailer.member.mtime, fmt.REGULAR,
                              [(fmt.TYPE_KEY, fmt.TRAILER)])
        data = base.data[:trailer.start] + headers + payload + fmt.padding(len(payload)) \
            + fmt.END_OF_ARCHIVE
        data += b"\0" * (-len(data) % (fmt.BLOCK * base.blocking))
        return Mutated(data, detail + " (trailer only)", True)

    def m_names(self, base: Base, rng: random.Random) -> Mutated:
        items = self._items(base)
        name = rng.choice(self.names)
        targets = [i for i, item in enumerate(items) if item.kind != fmt.HEADER]
        index = rng.choice(targets)
        item = items[index]
        where = rng.choice(("json", "member", "basename", "listed", "link"))
        if item.payload and item.kind in (fmt.USER, fmt.FOLDER, fmt.TRAILER) \
                and where in ("json", "listed"):
            body = json.loads(item.payload)
            if item.kind == fmt.FOLDER and where == "listed" and body.get("messages"):
                entry = rng.choice(body["messages"])
                entry[0] = name
                field_name = "messages[].name"
            elif item.kind == fmt.TRAILER:
                entries = body.get("index") or body.get("users") or [{}]
                field_name = rng.choice(("partition", "user", "folder"))
                rng.choice(entries)[field_name] = name
            elif item.kind == fmt.USER and rng.random() < 0.3:
                # ``unchanged`` entries are [folder, identity] (an incremental's unchanged
                # folders, format version 2)
                field_name = rng.choice(("folders", "subscriptions", "unchanged"))
                entry = [name, rng.choice((None, 1, 2**64))] if field_name == "unchanged" \
                    else name
                body[field_name] = list(body.get(field_name) or []) + [entry]
            else:
                field_name = rng.choice(("partition", "user", "folder") if item.kind == fmt.FOLDER
                                        else ("partition", "user", "group"))
                body[field_name] = name
            item.payload = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogateescape")
            detail = f"{item.kind} member {index}: {field_name} = {name!r}"
            if item.kind == fmt.TRAILER:
                return self._new_trailer(base, item.payload, detail)
        elif item.kind == fmt.MESSAGE and where == "basename":
            records = dict(item.records)
            records["IMS.basename"] = name
            if rng.random() < 0.7:
                item.name = item.name.rsplit("/", 1)[0] + "/" + name
            item.records = list(records.items())
            detail = f"message {index}: IMS.basename = {name!r}"
        elif item.kind == fmt.MESSAGE and where == "link":
            item.typeflag, item.data = fmt.HARDLINK, b""
            item.linkname = rng.choice([name, item.name, rng.choice(items).name])
            detail = f"message {index} made a link to {item.linkname!r}"
        else:
            item.name = rng.choice((name, item.name.rsplit("/", 1)[0] + "/" + name))
            detail = f"member {index} named {item.name!r}"
        return self._finish(base, items, detail, rng)

    def m_paxkeys(self, base: Base, rng: random.Random) -> Mutated:
        items = self._items(base)
        index = rng.randrange(len(items))
        item = items[index]
        changes = []
        for _ in range(rng.choice((1, 1, 2, 3))):
            roll = rng.random()
            if roll < 0.75:
                key = rng.choice(list(PAX_VALUES))
                value = hostile_pax_value(key, rng, self.names)
                if key in _GENERATED:
                    item.records.append((key, value))       # after the generated: wins
                else:
                    item.records = [(k, v) for k, v in item.records if k != key] + [(key, value)]
                changes.append(f"{key}={value[:40]!r}")
            elif roll < 0.85:
                key = rng.choice(("IMS.x", "", "=", "a=b", "IMS.type", "\udcff", " ",
                                  "x" * 200, "path\n"))
                item.records.append((key, rng.choice(("", "v", "x" * 2000))))
                changes.append(f"key {key[:20]!r} added")
            elif roll < 0.95 and item.records:
                dropped = item.records.pop(rng.randrange(len(item.records)))
                changes.append(f"{dropped[0]} removed")
            else:
                key = rng.choice(("IMS.keywords", "IMS.info", "comment"))
                item.records.append((key, "k" * rng.choice((1 << 16, (1 << 20) + 1))))
                changes.append(f"{key} of a huge value")
        return self._finish(base, items, f"member {index} ({item.kind}): {', '.join(changes)}", rng)

    def m_sizes(self, base: Base, rng: random.Random) -> Mutated:
        """Sizes in the ustar header or pax ``size`` that lie (the data stays as it is)."""
        piece = rng.choice(base.pieces)
        block_at = piece.data_start - fmt.BLOCK        # the ustar header
        header = bytearray(base.data[block_at:piece.data_start])
        how = rng.choice(("ustar", "ustar", "pax"))
        if how == "ustar":
            value = rng.choice([0o77777777777, 0, 1, 511, 512, 513, piece.member.size + 1,
                                max(0, piece.member.size - 1), 8 << 30, 1 << 32])
            header[124:136] = b"%011o\0" % value if value <= 0o77777777777 else b"77777777777\0"
            if rng.random() < 0.1:
                header[124:136] = rng.choice([b"\xff" * 12, b"-1" + b"\0" * 10, b"9" * 12,
                                              b"0x10\0" + b"\0" * 7, b" " * 12])
            header[148:156] = b"        "
            checksum = sum(header)
            header[148:156] = b"%06o\0 " % checksum
            data = base.data[:block_at] + bytes(header) + base.data[piece.data_start:]
            return Mutated(data, f"{piece.kind} member at {piece.start}:"
                                 f" ustar size {bytes(header[124:136])!r}")
        items = self._items(base)
        index = base.pieces.index(piece)
        value = rng.choice(PAX_VALUES["size"])
        items[index].records.append(("size", value))
        return self._finish(base, items, f"member {index}: pax size {value!r}", rng)

    def m_json(self, base: Base, rng: random.Random) -> Mutated:
        items = self._items(base)
        candidates = [i for i, item in enumerate(items) if item.payload]
        index = rng.choice(candidates)
        item = items[index]
        if rng.random() < 0.3:
            payload, what = self._raw_json(item.payload, rng)
        else:
            body = json.loads(item.payload)
            what = self._damage_value(body, rng)
            payload = json.dumps(body, ensure_ascii=False, allow_nan=True).encode(
                "utf-8", "surrogateescape")
        item.payload = payload
        if item.kind == fmt.TRAILER:
            return self._new_trailer(base, payload, f"trailer: {what}")
        return self._finish(base, items, f"{item.kind} member {index}: {what}", rng)

    def _raw_json(self, payload: bytes, rng: random.Random) -> tuple[bytes, str]:
        how = rng.choice(("cut", "utf8", "bom", "nan", "deep", "dupkey", "trailing", "empty",
                          "null", "list", "number", "deep-dict", "big"))
        if how == "cut":
            return payload[:rng.randrange(len(payload))], "JSON cut short"
        if how == "utf8":
            spot = rng.randrange(len(payload))
            return payload[:spot] + b"\xff\xfe" + payload[spot:], "invalid UTF-8"
        if how == "bom":
            return b"\xef\xbb\xbf" + payload, "a BOM"
        if how == "nan":
            return payload[:-1] + b',"x":NaN,"y":Infinity,"z":-Infinity}', "NaN and Infinity"
        if how == "deep":
            depth = rng.choice((40, 900, 960, 985, 1000, 100000))
            return (payload[:-1] + b',"deep":' + b"[" * depth + b"]" * depth + b"}",
                    f"nested {depth} deep")
        if how == "deep-dict":
            depth = rng.choice((40, 900, 985, 1000, 50000))
            return b'{"a":' * depth + b"1" + b"}" * depth, f"objects nested {depth} deep"
        if how == "dupkey":
            body = json.loads(payload)
            key = rng.choice(list(body)) if body else "x"
            return payload[:-1] + b',"' + key.encode() + b'":' + rng.choice(
                (b"null", b"-1", b'"x"', b"[]", b"{}")) + b"}", f"key {key} twice"
        if how == "trailing":
            return payload + rng.choice((b"x", b"{}", b"\0", b" ")), "trailing bytes"
        if how == "empty":
            return b"", "empty"
        if how == "null":
            return b"null", "null"
        if how == "list":
            return b"[" + payload + b"]", "a list"
        if how == "number":
            return rng.choice((b"1", b"1e999", b"-0", b'"s"')), "not an object"
        return payload[:-1] + b',"big":"' + b"x" * (2 << 20) + b'"}', "2 MiB of string"

    def _damage_value(self, body: Any, rng: random.Random) -> str:
        """Replace, remove or add one value somewhere in ``body`` (a random walk)."""
        path = []
        node = body
        while True:
            if isinstance(node, dict) and node and rng.random() < 0.75:
                key = rng.choice(list(node))
                if isinstance(node[key], (dict, list)) and node[key] and rng.random() < 0.6:
                    path.append(key)
                    node = node[key]
                    continue
                roll = rng.random()
                if roll < 0.8:
                    node[key] = self._hostile_value(rng)
                    return f"{'/'.join(map(str, path + [key]))} = {short(node[key])}"
                if roll < 0.9:
                    del node[key]
                    return f"{'/'.join(map(str, path + [key]))} removed"
                node[rng.choice(("x", "", "\x00", key + "2"))] = self._hostile_value(rng)
                return f"a key added under {'/'.join(map(str, path))}"
            if isinstance(node, list) and node and rng.random() < 0.85:
                index = rng.randrange(len(node))
                if isinstance(node[index], (dict, list)) and node[index] and rng.random() < 0.7:
                    path.append(index)
                    node = node[index]
                    continue
                roll = rng.random()
                if roll < 0.6:
                    node[index] = self._hostile_value(rng)
                    return f"{'/'.join(map(str, path + [index]))} = {short(node[index])}"
                if roll < 0.8:
                    node.append(node[index])
                    return f"{'/'.join(map(str, path + [index]))} doubled"
                del node[index]
                return f"{'/'.join(map(str, path + [index]))} removed"
            if isinstance(node, dict):
                node["added"] = self._hostile_value(rng)
                return f"a key added under {'/'.join(map(str, path))}"
            if isinstance(node, list):
                node.append(self._hostile_value(rng))
                return f"an item added to {'/'.join(map(str, path))}"
            return "nothing"

    def _hostile_value(self, rng: random.Random) -> Any:
        if rng.random() < 0.25:
            return rng.choice(self.names)
        value = rng.choice(HOSTILE_VALUES)
        return json.loads(json.dumps(value)) if not isinstance(value, float) else value

    def m_structure(self, base: Base, rng: random.Random) -> Mutated:
        """Members out of the order the format requires, with a valid digest."""
        items = self._items(base)
        how = rng.choice(("swap", "move", "double", "drop", "typeflag", "header-twice",
                          "trailer-early", "counts", "no-header", "link-first"))
        if how == "swap":
            i, j = rng.randrange(len(items) - 1), rng.randrange(len(items) - 1)
            items[i], items[j] = items[j], items[i]
            detail = f"members {i} and {j} swapped"
        elif how == "move":
            i, j = rng.randrange(len(items) - 1), rng.randrange(len(items) - 1)
            items.insert(j, items.pop(i))
            detail = f"member {i} moved to {j}"
        elif how == "double":
            i = rng.randrange(len(items) - 1)
            items.insert(rng.choice((i + 1, rng.randrange(len(items)))), items[i])
            detail = f"member {i} doubled"
        elif how == "drop":
            i = rng.randrange(len(items) - 1)
            del items[i]
            detail = f"member {i} dropped"
        elif how == "typeflag":
            i = rng.randrange(len(items) - 1)
            items[i].typeflag = rng.choice((b"1", b"2", b"3", b"5", b"6", b"7", b"L", b"K",
                                            b"g", b"x", b"Z", b"\0", b"0"))
            detail = f"member {i} of typeflag {items[i].typeflag!r}"
        elif how == "header-twice":
            items.insert(rng.randrange(1, len(items)), items[0])
            detail = "the header member twice"
        elif how == "trailer-early":
            # a copy of the trailer, written as a plain member (seal regenerates the one
            # trailer of kind "trailer"), so that it stays where it is put
            early = Logical("trailer-copy", fmt.TRAILER_NAME, fmt.REGULAR,
                            [(fmt.TYPE_KEY, fmt.TRAILER)], 0,
                            payload=base.piece_data(base.pieces[-1]))
            at = rng.randrange(1, len(items))
            items.insert(at, early)
            detail = f"a trailer at member {at}"
        elif how == "counts":
            data, _ = seal(items, base.blocking, counts_delta=rng.choice((-1, 1, 10**6)))
            return Mutated(data, "the trailer's counts wrong (sealed)", True)
        elif how == "no-header":
            del items[0]
            detail = "no header member"
        else:
            links = [i for i, item in enumerate(items) if item.typeflag == fmt.HARDLINK]
            if not links:
                return self.m_structure(base, rng)
            i = rng.choice(links)
            items.insert(1, items.pop(i))
            detail = f"link member {i} first"
        return self._finish(base, items, detail, rng)

    def m_combo(self, base: Base, rng: random.Random) -> Mutated:
        """A hostile name, then raw damage on top: the errors about a damaged member must
        name it on one line whatever its name."""
        first = self.m_names(base, rng)
        try:
            pieces, tail = split(first.data)
        except fmt.FormatError:
            return first
        if not pieces:
            return first
        named = Base(base.name, first.data, base.blocking, pieces, tail, base.names)
        second = getattr(self, "m_" + rng.choice(("bitflip", "bytes", "truncate", "json",
                                                  "sizes", "paxkeys")))(named, rng)
        # judged as sealed: after the first, the intact archive's result is no reference
        return Mutated(second.data, f"{first.detail}; then {second.detail}", True,
                       second.blocking)

    def m_blocking(self, base: Base, rng: random.Random) -> Mutated:
        wrong = rng.choice([b for b in (1, 2, 8, 20, 64, 2048) if b != base.blocking])
        return Mutated(base.data, f"read with -b {wrong} (written with -b {base.blocking})",
                       blocking=wrong)


KINDS = {   # kind -> weight
    "bitflip": 16, "bytes": 8, "truncate": 8, "zero": 4, "reorder": 5, "double": 5,
    "drop": 4, "splice": 5, "names": 10, "paxkeys": 10, "sizes": 7, "json": 12,
    "structure": 8, "blocking": 2, "combo": 6,
}


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."


# -- the scratch world -------------------------------------------------------------------------

def snapshot(root: Path, skip: tuple[Path, ...]) -> dict[str, tuple]:
    """Every entry under ``root`` (links not followed) but those under ``skip``."""
    result = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        for name in dirnames + filenames:
            path = here / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if path.is_symlink():
                result[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                result[rel] = ("dir", st.st_mode)
            else:
                result[rel] = ("file", st.st_mode, st.st_size, st.st_mtime_ns,
                               hashlib.sha256(path.read_bytes()).hexdigest())
    return result


def store_state(partitions: Path) -> dict[str, str]:
    """What a restore made: every file of the partitions with its content (Dovecot's index
    files, which carry times, left out)."""
    result = {}
    for dirpath, dirnames, filenames in os.walk(partitions):
        here = Path(dirpath)
        for name in dirnames + filenames:
            path = here / name
            rel = str(path.relative_to(partitions))
            if path.is_symlink():
                result[rel] = "link " + os.readlink(path)
            elif path.is_dir():
                result[rel] = "dir"
            elif name == "dovecot-uidlist":
                result[rel] = uidlist_text(path.read_bytes())
            elif not name.startswith("dovecot.index"):
                result[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return result


def uidlist_text(data: bytes) -> str:
    """A uidlist without the header's UIDVALIDITY and GUID: a folder made anew (an
    incremental with no full backup before it) takes them from the clock."""
    head, _, rest = data.partition(b"\n")
    fields = [f for f in head.split(b" ") if not f.startswith((b"V", b"G"))]
    return hashlib.sha256(b" ".join(fields) + b"\n" + rest).hexdigest()


def message_hashes(partitions: Path) -> dict[str, str]:
    return {rel: digest for rel, digest in store_state(partitions).items()
            if rel.rsplit("/", 2)[-2:-1] in (["cur"], ["new"]) and digest not in ("dir",)
            and not digest.startswith("link ")}


@dataclass
class Setup:
    work: Path
    golden: Path                # the sample store
    bases: list[Base]
    templates: dict[str, Path]  # "empty" / "full" -> a case root to copy
    genuine: set[str]           # SHA-256 of every message the sample store holds
    mutator: Mutator
    references: dict[tuple, "Outcome"] = field(default_factory=dict)


CASE_LAYOUT = """\
A case root holds: store/config, store/partitions/{primary,secondary} (the scratch store, with
a planted user link 'zz-link' and a folder link 'trap/.Evil' into decoy/), decoy/, sibling/,
input/ (the archive), run/ (the working directory: references files may go there), tmp/
($TMPDIR: must be empty afterwards)."""


def write_config(store: Path) -> None:
    config = store / "config"
    config.mkdir(parents=True, exist_ok=True)
    lines = [f"store.partition.{p}.path = {store / 'partitions' / p}" for p in PARTITIONS]
    lines += ["store.defaultpartition = primary", "store.maildir.layout = %u/Maildir",
              "local.store.backup.exclude = ", f"local.store.logdir = {store / 'log'}"]
    (config / "msg.conf").write_text("\n".join(lines) + "\n")
    (config / "backup-groups.conf").write_text("groupA=[a-l].*\ngroupB=[m-z].*\ngroupC=[0-9].*\n")


def build_template(root: Path, golden: Path | None) -> None:
    """A case root (see CASE_LAYOUT) at ``root``; with the sample store's mail when
    ``golden`` is given."""
    store = root / "store"
    partitions = store / "partitions"
    if golden is not None:
        shutil.copytree(golden / "partitions", partitions, symlinks=True)
    for p in PARTITIONS:
        (partitions / p).mkdir(parents=True, exist_ok=True)
    write_config(store)
    decoy = root / "decoy"
    for sub in ("evil-user/Maildir/cur", "evil-user/Maildir/new", "evil-user/Maildir/tmp",
                "evil-folder/cur", "evil-folder/new", "evil-folder/tmp"):
        (decoy / sub).mkdir(parents=True, exist_ok=True)
    (decoy / "precious.txt").write_text("must not change\n")
    (root / "sibling").mkdir()
    (root / "sibling" / "notes.txt").write_text("a neighbour of the store\n")
    trap = partitions / "primary" / "trap" / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (trap / sub).mkdir(parents=True, exist_ok=True)
    os.symlink(root / "decoy" / "evil-folder", trap / ".Evil")
    os.symlink(root / "decoy" / "evil-user", partitions / "primary" / "zz-link")
    for sub in ("input", "run", "tmp"):
        (root / sub).mkdir()


def prepare(work: Path, seed: int, say: Callable[[str], None] = print) -> Setup:
    from ims.samplestore import SampleSpec, generate
    work.mkdir(parents=True, exist_ok=True)
    golden = work / "golden"
    bases_dir = work / "bases"
    if not (bases_dir / "done").exists():
        shutil.rmtree(golden, ignore_errors=True)
        shutil.rmtree(bases_dir, ignore_errors=True)
        generate(golden, SampleSpec(users=4, messages_per_user=5, partitions=2, seed=seed,
                                    size_median=900, size_cap=6000, link_fraction=0.3))
        bases_dir.mkdir()
        env = dict(os.environ, IMS_CONFIG_DIR=str(golden / "config"), TZ="UTC")

        def backup(name: str, *args: str) -> None:
            result = subprocess.run([str(BIN / "imsbackup"), "-f", str(bases_dir / name), *args],
                                    env=env, capture_output=True)
            if result.returncode != 0:
                raise SystemExit(f"setup: imsbackup {' '.join(args)} exited"
                                 f" {result.returncode}: {result.stderr.decode().strip()}")
        backup("full.ims", "/")
        backup("full-b1.ims", "-b", "1", "/")
        backup("copies.ims", "-i", "/primary")
        # an incremental: one message's flags changed, one message new since the date
        since = time.strftime("%Y%m%d:%H%M%S", time.gmtime(time.time() - 1))   # TZ=UTC
        time.sleep(1.1)
        messages = sorted((golden / "partitions").rglob("cur/*"))
        first = messages[0]
        os.rename(first, first.with_name(first.name.split(":")[0] + ":2,FS"))
        inbox = messages[-1].parent.parent
        (inbox / "new" / "1767225601.M1P1.sample").write_bytes(b"Subject: new\n\nsince\n")
        backup("incremental.ims", "-d", since, "/")
        (bases_dir / "done").write_text("ok\n")
    bases = []
    for path in sorted(bases_dir.glob("*.ims")):
        data = path.read_bytes()
        pieces, tail = split(data)
        header = json.loads(data[pieces[0].data_start:pieces[0].data_start + pieces[0].member.size])
        names = []
        for piece in pieces:
            if piece.kind == fmt.USER:
                body = json.loads(data[piece.data_start:piece.data_start + piece.member.size])
                names += [f"/{body['partition']}/{body['group']}/{body['user']}", body["user"],
                          f"/{body['partition']}/{body['group']}/{body['user']}/INBOX",
                          f"/{body['partition']}", f"/{body['partition']}/{body['group']}"]
        bases.append(Base(path.stem, data, header["blocking_factor"], pieces, tail, names))
    templates = {}
    for kind, source in (("empty", None), ("full", golden)):
        root = work / "templates" / kind
        if not root.exists():
            build_template(root, source)
        templates[kind] = root
    genuine = set(message_hashes(golden / "partitions").values())
    genuine |= set(message_hashes(templates["full"] / "store" / "partitions").values())
    genuine.add(hashlib.sha256(b"").hexdigest())
    decoy = work / "case" / "decoy"
    say(f"setup: {len(bases)} base archives ({', '.join(b.name for b in bases)}),"
        f" {len(genuine)} genuine messages, work {work}")
    return Setup(work, golden, bases, templates, genuine, Mutator(bases, decoy))


# -- running one case --------------------------------------------------------------------------

@dataclass
class Plan:
    index: int
    kind: str
    base: str
    mode: str                   # list / restore / header
    source: str                 # file / pipe / chain (the intact full backup, then this file)
    target: str                 # empty / full
    names: list[str]
    via: str                    # fork / subprocess
    blocking: int
    detail: str = ""
    sealed: bool = False
    summary: bool = False       # --json: the summary on stdout (names from the archive in it)

    def argv(self, archive: Path) -> list[str]:
        args = ["-f", "-" if self.source == "pipe" else str(archive), "-b", str(self.blocking)]
        if self.source == "chain":
            args[:0] = ["-f", str(archive.with_name(CHAIN_HEAD))]
        if self.mode == "list":
            args.append("-t")
        elif self.mode == "header":
            args.append("-h")
        elif self.summary:
            args.append("--json")
        return args + self.names


CHAIN_HEAD = "full.ims"          # in a case's input/: the intact full backup a chain starts with


@dataclass
class Outcome:
    code: int | None
    stdout: bytes
    stderr: bytes
    seconds: float
    state: dict[str, str]
    problems: list[str]


def plan_case(setup: Setup, seed: int, index: int, subprocess_every: int,
              kinds: list[str]) -> tuple[Plan, Mutated]:
    rng = random.Random(f"{seed}/{index}")
    kind = rng.choices(kinds, weights=[KINDS[k] for k in kinds])[0]
    base = rng.choice(setup.bases)
    mutated = getattr(setup.mutator, "m_" + kind)(base, rng)
    names = [rng.choice(base.names)] if rng.random() < 0.15 else []
    via = "subprocess" if subprocess_every and index % subprocess_every == subprocess_every - 1 \
        else "fork"
    mode = rng.choice(("list", "restore", "restore", "list", "restore", "restore", "header"))
    source = rng.choice(("file", "pipe", "file", "pipe", "chain"))
    if source == "chain" and (mode == "header" or base.name != "incremental"):
        source = "file"             # -h reads one archive; a chain is a full and its incremental
    plan = Plan(index, kind, base.name, mode, source, rng.choice(("empty", "full")), names,
                via, mutated.blocking or base.blocking, mutated.detail, mutated.sealed,
                rng.random() < 0.3)
    return plan, mutated


def case_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMS_")}
    env.update(IMS_CONFIG_DIR=str(root / "store" / "config"), TMPDIR=str(root / "tmp"),
               TZ="UTC", LC_ALL="C.UTF-8")
    return env


def feed(fd: int, data: bytes) -> None:
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view[:1 << 16]):]
    except OSError:
        pass
    finally:
        os.close(fd)


def run_forked(argv: list[str], root: Path, data: bytes, pipe: bool,
               timeout: float) -> tuple[int | None, bytes, bytes, float, bool, int]:
    """The command's entry point in a forked child (its own process group), output in files."""
    out_path, err_path = root / "run" / ".fuzz-stdout", root / "run" / ".fuzz-stderr"
    env = case_env(root)
    sys.stdout.flush()
    sys.stderr.flush()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:                                            # the child
        code = ESCAPED
        feeder = 0
        try:
            os.setpgid(0, 0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(int(timeout) + 10)                 # backstop of the parent's limit
            os.chdir(root / "run")
            os.environ.clear()
            os.environ.update(env)
            time.tzset()
            tempfile.tempdir = None
            out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(out, 1)
            os.dup2(err, 2)
            if pipe:
                # the feeder is a process of its own: a thread's copy of the write end would
                # be inherited by the command's helper child, and the stream would never end
                read_fd, write_fd = os.pipe()
                feeder = os.fork()
                if feeder == 0:
                    os.close(read_fd)
                    feed(write_fd, data)
                    os._exit(0)
                os.close(write_fd)
                os.dup2(read_fd, 0)
                os.close(read_fd)
            else:
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
            from ims.cli import imsrestore
            code = imsrestore.main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else ESCAPED
        except BaseException:                               # noqa: BLE001 - the finding
            traceback.print_exc()
            code = ESCAPED
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
                if feeder:          # it ends on EPIPE once nobody reads: reaped, not left
                    os.close(0)
                    os.waitpid(feeder, 0)
            finally:
                os._exit(code)
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass
    code, timed_out = wait_for(pid, started + timeout)
    seconds = time.monotonic() - started
    return code, out_path.read_bytes(), err_path.read_bytes(), seconds, timed_out, pid


def wait_for(pid: int, deadline: float) -> tuple[int | None, bool]:
    delay = 0.002
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return (os.waitstatus_to_exitcode(status), False)
        if time.monotonic() > deadline:
            kill_group(pid)
            os.waitpid(pid, 0)
            return None, True
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies waiting for init to reap
    them do not count)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat_file:
                fields = stat_file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def run_subprocess(argv: list[str], root: Path, data: bytes, pipe: bool,
                   timeout: float) -> tuple[int | None, bytes, bytes, float, bool, int]:
    started = time.monotonic()
    proc = subprocess.Popen([str(BIN / "imsrestore"), *argv], cwd=root / "run",
                            env=case_env(root),
                            stdin=subprocess.PIPE if pipe else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(data if pipe else None, timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        out, err = proc.communicate()
        timed_out = True
    return (None if timed_out else proc.returncode, out, err, time.monotonic() - started,
            timed_out, proc.pid)


def execute(setup: Setup, plan: Plan, data: bytes, root: Path, timeout: float) -> Outcome:
    """Run one case in a fresh copy of its template at ``root``; check what the contract
    says regardless of the archive (the rest is ``judge``'s)."""
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(setup.templates[plan.target], root, symlinks=True)
    # the template's absolute links point into the template: point them into this root
    partitions = root / "store" / "partitions"
    for link, target in ((partitions / "primary" / "trap" / "Maildir" / ".Evil",
                          root / "decoy" / "evil-folder"),
                         (partitions / "primary" / "zz-link", root / "decoy" / "evil-user")):
        link.unlink()
        os.symlink(target, link)
    write_config(root / "store")
    archive = root / "input" / "archive.ims"
    archive.write_bytes(data)
    if plan.source == "chain":
        archive.with_name(CHAIN_HEAD).write_bytes(
            next(b for b in setup.bases if b.name == "full").data)
    skip = tuple(partitions / p for p in PARTITIONS) + (root / "run", root / "tmp")
    links = (partitions / "primary" / "zz-link",
             partitions / "primary" / "trap" / "Maildir" / ".Evil")
    planted = {str(p): os.readlink(p) for p in links}
    around = snapshot(root, skip)
    before = store_state(partitions)
    argv = plan.argv(archive)
    problems = []
    run = run_forked if plan.via == "fork" else run_subprocess
    code, out, err, seconds, timed_out, leader = run(argv, root, data, plan.source == "pipe",
                                                     timeout)
    if timed_out:
        problems.append(f"hang: no exit within {timeout:.0f} s (killed)")
    text = err.decode("utf-8", "replace")
    if "Traceback" in text or code == ESCAPED:
        problems.append("traceback: " + text.strip().splitlines()[-1][:300] if text.strip()
                        else "traceback: an exception escaped")
    for line in text.splitlines():
        if line.strip() and not line.startswith("imsrestore: "):
            problems.append(f"stderr line not 'imsrestore: ...': {line[:200]!r}")
            break
    if group_alive(leader):         # the command led its own group: its helpers go with it
        time.sleep(0.5)
        if group_alive(leader):
            problems.append("a process of the command outlived it")
            kill_group(leader)
    after_around = snapshot(root, skip)
    if after_around != around:
        changed = sorted(set(after_around.items()) ^ set(around.items()))
        problems.append(f"write outside the store: {[c[0] for c in changed][:6]}")
    for path, target in planted.items():
        if not os.path.islink(path) or os.readlink(path) != target:
            problems.append(f"the planted link {path} was replaced")
    extra = [p.name for p in partitions.iterdir()]
    if sorted(extra) != sorted(PARTITIONS):
        problems.append("new entries beside the partitions:"
                        f" {sorted(set(extra) - set(PARTITIONS))}")
    leftovers = os.listdir(root / "tmp")
    if leftovers:
        problems.append(f"left in $TMPDIR: {leftovers[:5]}")
    state = store_state(partitions)
    bad = {rel for rel, digest in message_hashes(partitions).items() if digest not in setup.genuine}
    if bad:
        problems.append(f"message files whose bytes no sample message had: {sorted(bad)[:4]}")
    if code == 2 and state != before:
        problems.append("exit 2 (nothing was done) but the store changed")
    if plan.kind == "blocking" and state != before:
        problems.append("a wrong blocking factor, but the store changed")
    return Outcome(code, out, err, seconds, state, problems)


def reference(setup: Setup, plan: Plan, root: Path, timeout: float) -> Outcome:
    """The intact archive's outcome for the same options (computed once)."""
    key = (plan.base, plan.mode, plan.source, plan.target, tuple(plan.names), plan.summary)
    if key not in setup.references:
        base = next(b for b in setup.bases if b.name == plan.base)
        intact = Plan(-1, "intact", plan.base, plan.mode, plan.source, plan.target, plan.names,
                      "fork", base.blocking, summary=plan.summary)
        outcome = execute(setup, intact, base.data, root, timeout)
        if outcome.problems or outcome.code not in (0, 1, 2, 4, 5):
            raise SystemExit(f"setup: the intact archive {plan.base} gave {outcome.code}"
                             f" {outcome.problems} {outcome.stderr.decode()[-500:]}")
        setup.references[key] = outcome
    return setup.references[key]


def judge(plan: Plan, outcome: Outcome, intact: Outcome) -> list[str]:
    """The exit code and its meaning, against the intact archive's outcome."""
    problems = list(outcome.problems)
    code = outcome.code
    if code is None:
        return problems
    if plan.summary and plan.mode == "restore" and outcome.stdout.strip():
        try:
            summary = json.loads(outcome.stdout)
            if summary.get("exit_code") != code:
                problems.append(f"--json says exit {summary.get('exit_code')}, the command {code}")
        except ValueError:
            problems.append(f"--json printed no JSON: {outcome.stdout[:200]!r}")
    if code in (3, 6, 7) or code not in (0, 1, 2, 4, 5):
        problems.append(f"exit {code} is not a code a damaged archive may give"
                        f" ({outcome.stderr.decode('utf-8', 'replace').strip()[-300:]})")
        return problems
    if plan.sealed:
        allowed = {0, 1, 4, 5, intact.code} | ({2} if plan.names else set())
        if code not in allowed:
            problems.append(f"exit {code} for a sealed archive with hostile values")
        elif code == 5 and plan.source != "pipe" and intact.code != 5:
            problems.append("damaged archive: exit 5 (links left to -r) from a file, which"
                            " holds no such target (format §8.4: damage, exit 4)")
        return problems
    # raw damage (or the archive read with a wrong -b): 4, or exactly what the intact gave
    if code == 4:
        return problems
    if code == intact.code and outcome.state == intact.state and (
            plan.mode != "list" or outcome.stdout == intact.stdout):
        return problems         # the damage lies where nobody reads (padding, past the end)
    if code == 2 and plan.names and intact.code in (0, 1):
        return problems         # the trailer's index (a NAME is looked up there) was damaged
    what = "a different result" if code == intact.code else f"exit {code}"
    problems.append(f"damaged archive: {what} where the intact one gave exit {intact.code}"
                    " (expected 4, or the intact result)")
    return problems


@dataclass(frozen=True)
class Known:
    """A violation found in a file this campaign's owner may not change: counted and shown
    apart (reported to its owner), not failed on, unless ``--strict``."""

    label: str
    where: str
    what: str
    matches: Callable[[Plan, Outcome, Outcome], bool]


KNOWN = [
    Known("link-target-missing-in-file", "ims/restore/engine.py (Engine.message: a fetch"
          " that finds nothing)",
          "from an archive file (or a chain), a link member whose target is not in it"
          " ends as an unresolved link (exit 5, a references file that -r cannot complete)"
          " instead of damage (exit 4, format §8.4)",
          lambda plan, outcome, intact: outcome.code == 5 and plan.source != "pipe"
          and intact.code != 5),
]


def known_issue(plan: Plan, outcome: Outcome, intact: Outcome, problems: list[str]) -> Known | None:
    """The known issue these problems are, when they are nothing else."""
    if not problems or any(not p.startswith("damaged archive:") and not p.startswith("exit ")
                           for p in problems):
        return None
    return next((k for k in KNOWN if k.matches(plan, outcome, intact)), None)


# -- the campaign ------------------------------------------------------------------------------

def outcome_label(code: int | None) -> str:
    return "hang" if code is None else f"exit {code}"


def run_campaign(setup: Setup, seed: int, cases: range, timeout: float, subprocess_every: int,
                 kinds: list[str], say: Callable[[str], None] = print,
                 stop_after: int = 20, strict: bool = False) -> dict[str, Any]:
    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    violations = []
    known: dict[str, list[str]] = collections.defaultdict(list)
    root = setup.work / "case"
    started = time.monotonic()
    vias = collections.Counter()
    modes = collections.Counter()
    benign = collections.Counter()      # raw damage read as the intact archive, by mode
    slowest = (0.0, -1)
    for index in cases:
        plan, mutated = plan_case(setup, seed, index, subprocess_every, kinds)
        intact = reference(setup, plan, root, timeout)
        outcome = execute(setup, plan, mutated.data, root, timeout)
        problems = judge(plan, outcome, intact)
        label = outcome_label(outcome.code)
        table[plan.kind][label] += 1
        vias[plan.via] += 1
        modes[f"{plan.mode} from a {plan.source}"] += 1
        if not plan.sealed and outcome.code == intact.code != 4 and not problems:
            benign[plan.mode] += 1
        slowest = max(slowest, (outcome.seconds, index))
        issue = None if strict else known_issue(plan, outcome, intact, problems)
        if issue is not None:
            known[issue.label].append(f"seed {seed} case {index} [{plan.kind}: {plan.detail}]")
        elif problems:
            violations.append(report_violation(setup, seed, plan, mutated, outcome, problems, say))
            if len(violations) >= stop_after:
                say(f"stopping after {len(violations)} violations")
                break
        done = index - cases.start + 1
        if done % 500 == 0:
            say(f"  {done} cases, {len(violations)} violations,"
                f" {time.monotonic() - started:.0f} s")
    seconds = time.monotonic() - started
    return {"table": table, "violations": violations, "seconds": seconds, "vias": vias,
            "modes": modes, "cases": sum(sum(c.values()) for c in table.values()),
            "known": known, "benign": benign, "slowest": slowest}


def report_violation(setup: Setup, seed: int, plan: Plan, mutated: Mutated, outcome: Outcome,
                     problems: list[str], say: Callable[[str], None]) -> dict[str, Any]:
    failures = setup.work / "failures"
    failures.mkdir(exist_ok=True)
    saved = failures / f"seed{seed}-case{plan.index}.ims"
    saved.write_bytes(mutated.data)
    record = {"seed": seed, "case": plan.index, "kind": plan.kind, "detail": plan.detail,
              "base": plan.base, "mode": plan.mode, "source": plan.source,
              "target": plan.target, "names": plan.names, "via": plan.via,
              "blocking": plan.blocking, "sealed": plan.sealed, "summary": plan.summary,
              "exit": outcome.code,
              "problems": problems, "archive": str(saved),
              "stderr": outcome.stderr.decode("utf-8", "replace")[-2000:]}
    (failures / f"seed{seed}-case{plan.index}.json").write_text(json.dumps(record, indent=2))
    names = "".join(" " + name for name in plan.names)
    say(f"VIOLATION seed {seed} case {plan.index} [{plan.kind}: {plan.detail}] {plan.mode} from a"
        f" {plan.source} into a {plan.target} store{names} via {plan.via}:"
        f" {outcome_label(outcome.code)}")
    for problem in problems:
        say(f"    {problem}")
    say(f"    archive saved as {saved}; again: {sys.executable} {Path(__file__).resolve()}"
        f" --work {setup.work} --seed {seed} --case {plan.index}")
    return record


def replay(setup: Setup, saved: Path, timeout: float) -> int:
    """A saved case (``<work>/failures/*.json``) again, with the same archive and options,
    whatever the fuzzer's version; prints the outcome and the problems found."""
    import ims.cli.imsrestore  # noqa: F401
    record = json.loads(saved.read_text())
    plan = Plan(record["case"], record["kind"], record["base"], record["mode"],
                record["source"], record["target"], record["names"], record["via"],
                record["blocking"], record["detail"], record["sealed"],
                record.get("summary", False))
    data = Path(record["archive"]).read_bytes()
    root = setup.work / "case"
    intact = reference(setup, plan, root, timeout)
    outcome = execute(setup, plan, data, root, timeout)
    problems = judge(plan, outcome, intact)
    print(f"{saved}: {plan.kind} [{plan.detail}] {plan.mode} from a {plan.source} into a"
          f" {plan.target} store {' '.join(plan.names)}: {outcome_label(outcome.code)}"
          f" (intact: {outcome_label(intact.code)})")
    sys.stdout.write(outcome.stderr.decode("utf-8", "replace"))
    for problem in problems:
        print(f"    {problem}")
    return 1 if problems else 0


def print_table(result: dict[str, Any], say: Callable[[str], None] = print) -> None:
    table = result["table"]
    labels = sorted({label for counts in table.values() for label in counts},
                    key=lambda l: (l == "hang", l))
    say(f"{'kind':<12}{'cases':>7}" + "".join(f"{label:>9}" for label in labels))
    totals = collections.Counter()
    for kind in sorted(table):
        counts = table[kind]
        totals.update(counts)
        say(f"{kind:<12}{sum(counts.values()):>7}" + "".join(f"{counts[l]:>9}" for l in labels))
    say(f"{'all':<12}{sum(totals.values()):>7}" + "".join(f"{totals[l]:>9}" for l in labels))
    say("runs: " + ", ".join(f"{k} {v}" for k, v in sorted(result["vias"].items()))
        + "; " + ", ".join(f"{k} {v}" for k, v in sorted(result["modes"].items())))
    benign = result["benign"]
    say(f"raw damage that gave the intact archive's result (bytes that mode does not read):"
        f" {sum(benign.values())} ({', '.join(f'{m} {n}' for m, n in sorted(benign.items()))})")
    say(f"slowest case: {result['slowest'][0]:.1f} s (case {result['slowest'][1]})")
    for issue in KNOWN:
        found = result["known"].get(issue.label)
        if found:
            say(f"known issue (not failed on; in {issue.where}): {issue.what}: {len(found)}"
                f" cases, e.g. {found[0]}")
    say(f"{result['cases']} cases in {result['seconds']:.0f} s,"
        f" {len(result['violations'])} violations")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--first", type=int, default=0, help="first case number")
    parser.add_argument("--case", type=int, help="run this one case only")
    parser.add_argument("--work", type=Path, help="work directory (kept; default: a new one)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT)
    parser.add_argument("--subprocess-every", type=int, default=50,
                        help="one case in N runs the installed command (0: never)")
    parser.add_argument("--kinds", help="comma-separated mutation kinds (default: all)")
    parser.add_argument("--stop-after", type=int, default=20, help="violations before stopping")
    parser.add_argument("--strict", action="store_true",
                        help="count the known issues of other files as violations too")
    parser.add_argument("--replay", type=Path, metavar="CASE.json",
                        help="run a saved failing case again (its archive and options)")
    args = parser.parse_args(argv)
    kinds = args.kinds.split(",") if args.kinds else list(KINDS)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        print(f"fuzz: unknown kinds {sorted(unknown)}; known: {', '.join(KINDS)}", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="ims-fuzz-"))
    try:
        setup = prepare(work, args.seed)
    except SystemExit as exc:
        print(f"fuzz: {exc}", file=sys.stderr)
        return 2
    if args.replay is not None:
        return replay(setup, args.replay, args.timeout)
    cases = range(args.case, args.case + 1) if args.case is not None else \
        range(args.first, args.first + args.cases)
    # warm: the forked children find everything imported
    import ims.cli.imsrestore  # noqa: F401
    say = lambda line: print(line, flush=True)  # noqa: E731
    say(f"fuzz: seed {args.seed}, cases {cases.start}..{cases.stop - 1}, kinds {', '.join(kinds)}")
    result = run_campaign(setup, args.seed, cases, args.timeout, args.subprocess_every, kinds,
                          say, args.stop_after, args.strict)
    print_table(result, say)
    if args.case is not None:
        plan, _ = plan_case(setup, args.seed, args.case, args.subprocess_every, kinds)
        say(f"case {args.case}: {plan}")
    return 1 if result["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
