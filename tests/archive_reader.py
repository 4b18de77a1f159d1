"""An independent reader of the archive format, written from docs/archive-format.md alone.

It deliberately imports nothing from ``ims``: the tests use it to check that the writer does
what the document says, so that someone else could write a reader from the document.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

BLOCK = 512


class Incomplete(Exception):
    """The stream is cut short or damaged; ``str()`` says where."""


@dataclass
class Member:
    name: str
    typeflag: bytes
    size: int
    mtime: int
    linkname: str
    pax: dict[str, str]
    offset: int                 # offset of the member's first header block
    data: bytes = b""

    @property
    def kind(self) -> str:
        return self.pax.get("IMS.type", "")

    def json(self) -> dict[str, Any]:
        return json.loads(self.data.decode("utf-8"))


@dataclass
class Archive:
    header: dict[str, Any]
    trailer: dict[str, Any]
    members: list[Member] = field(default_factory=list)

    def messages(self) -> list[Member]:
        return [m for m in self.members if m.kind == "message"]

    def by_name(self) -> dict[str, Member]:
        return {m.name: m for m in self.members}

    def unchanged_folders(self) -> list[tuple[str, str, str, int | None]]:
        """(partition, user, folder, identity) of every folder an incremental records as
        unchanged: version 2 in its user member's ``unchanged``, version 1 as a folder
        member with ``unchanged_since``."""
        found = []
        for m in self.members:
            body = m.json() if m.kind in ("user", "folder") else {}
            if m.kind == "user":
                found += [(body["partition"], body["user"], folder, identity)
                          for folder, identity in body.get("unchanged") or ()]
            elif m.kind == "folder" and body.get("unchanged_since") is not None:
                found.append((body["partition"], body["user"], body["folder"],
                              body.get("identity")))
        return found


def _octal(raw: bytes) -> int:
    text = raw.replace(b"\0", b"").strip()
    return int(text, 8) if text else 0


def _parse_header(block: bytes, offset: int) -> dict[str, Any]:
    checksum = _octal(block[148:156])
    if checksum != sum(block[:148]) + 8 * 0x20 + sum(block[156:]):
        raise Incomplete(f"bad header checksum at offset {offset}")
    name = block[0:100].split(b"\0", 1)[0]
    prefix = block[345:500].split(b"\0", 1)[0]
    return {
        "name": (prefix + b"/" + name if prefix else name).decode("utf-8"),
        "size": _octal(block[124:136]),
        "mtime": _octal(block[136:148]),
        "typeflag": block[156:157],
        "linkname": block[157:257].split(b"\0", 1)[0].decode("utf-8"),
        "magic": block[257:263],
    }


def _parse_pax(payload: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(payload):
        space = payload.index(b" ", pos)
        length = int(payload[pos:space])
        record = payload[pos:pos + length]
        if len(record) != length or not record.endswith(b"\n"):
            raise Incomplete("malformed pax record")
        key, _, value = record[space - pos + 1:-1].partition(b"=")
        out[key.decode()] = value.decode("utf-8")
        pos += length
    return out


def read_archive(stream: bytes, blocking_factor: int = 20) -> Archive:
    """Parse and verify a whole archive held in memory; raise Incomplete on any defect."""
    record = BLOCK * blocking_factor
    pos = 0
    digest = hashlib.sha256()
    members: list[Member] = []
    seen_data: dict[str, str] = {}   # message name -> sha256
    header: dict[str, Any] | None = None

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(stream):
            raise Incomplete(f"stream ends at offset {len(stream)} inside a member")
        chunk = stream[pos:pos + n]
        pos += n
        return chunk

    while True:
        start = pos
        block = take(BLOCK)
        if block == b"\0" * BLOCK:
            raise Incomplete(f"end-of-archive blocks at {start} before any trailer")
        digest_before = digest.copy()
        digest.update(block)
        h = _parse_header(block, start)
        pax: dict[str, str] = {}
        if h["typeflag"] == b"x":
            padded = (h["size"] + BLOCK - 1) // BLOCK * BLOCK
            raw = take(padded)
            digest.update(raw)
            pax = _parse_pax(raw[:h["size"]])
            block = take(BLOCK)
            digest.update(block)
            h = _parse_header(block, pos - BLOCK)
        name = pax.get("path", h["name"])
        size = int(pax.get("size", h["size"]))
        linkname = pax.get("linkpath", h["linkname"])
        padded = (size + BLOCK - 1) // BLOCK * BLOCK
        data_with_pad = take(padded)
        data = data_with_pad[:size]
        member = Member(name, h["typeflag"], size, int(pax.get("mtime", h["mtime"])), linkname,
                        pax, start, data)
        kind = member.kind
        if kind != "message":
            if kind != "trailer":
                digest.update(data_with_pad)
        if not members:
            if kind != "header":
                raise Incomplete("first member is not the archive header")
            header = member.json()
            if header.get("format") != "ims-archive" or header.get("version") not in (1, 2):
                raise Incomplete("not an ims-archive version 1 or 2 header")
            if header.get("blocking_factor") != blocking_factor:
                raise Incomplete(f"blocking factor {blocking_factor} does not match the"
                                 f" archive's {header.get('blocking_factor')}")
        if kind == "message":
            if member.typeflag == b"0":
                if hashlib.sha256(data).hexdigest() != pax.get("IMS.sha256"):
                    raise Incomplete(f"{name}: SHA-256 mismatch")
                if int(pax["IMS.size"]) != size:
                    raise Incomplete(f"{name}: size mismatch")
                seen_data[name] = pax["IMS.sha256"]
            elif member.typeflag == b"1":
                if linkname not in seen_data:
                    raise Incomplete(f"{name}: link to unknown member {linkname}")
            else:
                raise Incomplete(f"{name}: unexpected typeflag {member.typeflag!r}")
        members.append(member)
        if kind == "trailer":
            trailer = member.json()
            if trailer.get("trailer_offset") != start:
                raise Incomplete("trailer offset does not match")
            if trailer.get("digest") != "sha256:" + digest_before.hexdigest():
                raise Incomplete("trailer digest mismatch")
            counts = trailer["counts"]
            msgs = [m for m in members if m.kind == "message"]
            if counts["messages"] != sum(1 for m in msgs if m.typeflag == b"0"):
                raise Incomplete("trailer message count mismatch")
            if counts["links"] != sum(1 for m in msgs if m.typeflag == b"1"):
                raise Incomplete("trailer link count mismatch")
            if counts["folders"] != sum(1 for m in members if m.kind == "folder"):
                raise Incomplete("trailer folder count mismatch")
            end = take(2 * BLOCK)
            if end != b"\0" * (2 * BLOCK):
                raise Incomplete("no end-of-archive blocks after the trailer")
            if len(stream) % record or len(stream) - pos >= record:
                raise Incomplete("stream is not padded to whole records")
            if stream[pos:] != b"\0" * (len(stream) - pos):
                raise Incomplete("garbage after the end of the archive")
            _check_index(trailer, members)
            assert header is not None
            return Archive(header, trailer, members)


def _check_index(trailer: dict[str, Any], members: list[Member]) -> None:
    folders = [m for m in members if m.kind == "folder"]
    index = trailer["index"]
    if len(index) != len(folders):
        raise Incomplete("trailer index does not list every folder")
    offsets = [m.offset for m in members]
    for entry, folder_member in zip(index, folders):
        state = folder_member.json()
        if entry["offset"] != folder_member.offset or entry["folder"] != state["folder"] \
                or entry["user"] != state["user"]:
            raise Incomplete(f"index entry for {entry['folder']} points elsewhere")
        inside = [m for m in members if entry["offset"] < m.offset < entry["end"]]
        if any(m.kind != "message" for m in inside) or len(inside) != entry["messages"]:
            raise Incomplete(f"index extent of {entry['folder']} is wrong")
        if entry["end"] not in offsets:
            raise Incomplete(f"index end of {entry['folder']} is not a member boundary")
