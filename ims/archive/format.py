"""The archive format's building blocks: pax records and ustar headers (docs/archive-format.md).

Headers are built by hand: stdlib ``tarfile`` costs several times more per member and keeps
every member in memory.  Everything here is pure (bytes in, bytes out); I/O lives in
``writer``.  Parsing helpers raise ``FormatError`` on anything malformed.
"""

from __future__ import annotations

import struct

BLOCK = 512
FORMAT_NAME = "ims-archive"
FORMAT_VERSION = 1
DEFAULT_BLOCKING_FACTOR = 20
MAX_BLOCKING_FACTOR = 2048

# Member kinds, in the pax key IMS.type.
HEADER = "header"
USER = "user"
FOLDER = "folder"
MESSAGE = "message"
TRAILER = "trailer"

HEADER_NAME = ".ims/header.json"
TRAILER_NAME = ".ims/trailer.json"
USER_MEMBER = ".ims-user.json"
FOLDER_MEMBER = ".ims-folder.json"

REGULAR = b"0"
HARDLINK = b"1"
PAX = b"x"

_PAX_HEADER_NAME = b"././@PaxHeader"
_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12x")
_UNAME = b"ims"
_MAX_OCTAL_11 = 0o77777777777
_MAX_OCTAL_7 = 0o7777777
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)


class FormatError(ValueError):
    pass


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def pax_record(key: str, value: str) -> bytes:
    """One ``"<len> <key>=<value>\\n"`` record, where len counts the whole record."""
    payload = f" {key}={value}\n".encode("utf-8", "surrogateescape")
    length = len(payload) + 1
    while len(str(length)) + len(payload) != length:
        length = len(str(length)) + len(payload)
    return str(length).encode("ascii") + payload


def pax_records(items: list[tuple[str, str]]) -> bytes:
    return b"".join(pax_record(k, v) for k, v in items)


def ustar_header(name: bytes, size: int, mtime: int, typeflag: bytes, linkname: bytes = b"",
                 mode: int = 0o600, uid: int = 0, gid: int = 0, prefix: bytes = b"") -> bytes:
    """A 512-byte ustar header with its checksum; caller guarantees fields fit."""
    header = _USTAR.pack(
        name, b"%07o\0" % mode, b"%07o\0" % uid, b"%07o\0" % gid, b"%011o\0" % size,
        b"%011o\0" % mtime, b"        ", typeflag, linkname, b"ustar\0", b"00",
        _UNAME, _UNAME, b"", b"", prefix)
    checksum = sum(header)
    return header[:148] + b"%06o\0 " % checksum + header[156:]


def split_name(name: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, name) fitting ustar's 155 + 100 bytes, or None when a pax path is needed."""
    if len(name) <= 100:
        return b"", name
    if len(name) > 256:
        return None
    cut = name.find(b"/", len(name) - 101)
    while 0 < cut <= 155:
        if len(name) - cut - 1 <= 100:
            return name[:cut], name[cut + 1:]
        cut = name.find(b"/", cut + 1)
    return None


def member_headers(name: str, size: int, mtime: int, typeflag: bytes,
                   records: list[tuple[str, str]], linkname: str = "",
                   uid: int = 0, gid: int = 0) -> bytes:
    """The pax extended header (when there are records) followed by the ustar header.

    Names that are not ASCII or do not fit ustar go into the pax ``path``/``linkpath`` keys,
    with a shortened ASCII name in the ustar header for readers that ignore pax.
    """
    raw_name = name.encode("utf-8", "surrogateescape")
    extra: list[tuple[str, str]] = []
    split = split_name(raw_name) if raw_name.isascii() else None
    if split is None:
        extra.append(("path", name))
        split = (b"", _ascii_fallback(raw_name))
    raw_link = linkname.encode("utf-8", "surrogateescape")
    if len(raw_link) > 100 or not raw_link.isascii():
        extra.append(("linkpath", linkname))
        raw_link = _ascii_fallback(raw_link)
    if size > _MAX_OCTAL_11:
        extra.append(("size", str(size)))
        size = 0
    if uid > _MAX_OCTAL_7 or gid > _MAX_OCTAL_7:
        extra.append(("uid", str(uid)))
        extra.append(("gid", str(gid)))
        uid = gid = 0
    if mtime < 0 or mtime > _MAX_OCTAL_11:
        extra.append(("mtime", str(mtime)))
        mtime = 0
    out = b""
    all_records = extra + records
    if all_records:
        payload = pax_records(all_records)
        out = (ustar_header(_PAX_HEADER_NAME, len(payload), mtime, PAX)
               + payload + padding(len(payload)))
    return out + ustar_header(split[1], size, mtime, typeflag, raw_link, uid=uid, gid=gid,
                              prefix=split[0])


def _ascii_fallback(raw: bytes) -> bytes:
    text = raw.decode("utf-8", "replace").encode("ascii", "replace")
    return text[-100:]


# -- parsing (used by the project's reader and the tests' checks) ------------------------

def parse_pax(payload: bytes) -> dict[str, str]:
    result: dict[str, str] = {}
    pos = 0
    while pos < len(payload):
        space = payload.find(b" ", pos)
        if space < 0:
            raise FormatError("pax record without length")
        try:
            length = int(payload[pos:space])
        except ValueError:
            raise FormatError("pax record length is not a number") from None
        if length <= 0 or pos + length > len(payload) or payload[pos + length - 1:pos + length] != b"\n":
            raise FormatError("pax record length out of range")
        key, eq, value = payload[space + 1:pos + length - 1].partition(b"=")
        if not eq:
            raise FormatError("pax record without '='")
        result[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return result


def parse_ustar(block: bytes) -> dict[str, object]:
    if len(block) != BLOCK:
        raise FormatError("short header block")
    fields = _USTAR.unpack(block)
    stored = _octal(fields[6])
    computed = sum(block[:148]) + 8 * 32 + sum(block[156:])
    if stored != computed:
        raise FormatError("header checksum mismatch")
    name, prefix = fields[0].rstrip(b"\0"), fields[15].rstrip(b"\0")
    return {
        "name": (prefix + b"/" + name if prefix else name).decode("utf-8", "surrogateescape"),
        "mode": _octal(fields[1]), "uid": _octal(fields[2]), "gid": _octal(fields[3]),
        "size": _octal(fields[4]), "mtime": _octal(fields[5]), "typeflag": fields[7],
        "linkname": fields[8].rstrip(b"\0").decode("utf-8", "surrogateescape"),
        "magic": fields[9],
    }


def _octal(field: bytes) -> int:
    text = field.rstrip(b"\0 ").lstrip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise FormatError(f"bad octal field {field!r}") from None
