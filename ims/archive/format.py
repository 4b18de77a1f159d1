"""The archive format's building blocks: pax records and ustar headers (docs/archive-format.md).

Headers are built by hand: stdlib ``tarfile`` costs several times more per member and keeps
every member in memory.  Everything here is pure (bytes in, bytes out); I/O lives in
``writer``.  Parsing helpers raise ``FormatError`` on anything malformed.
"""

from __future__ import annotations

import struct
import zlib

from ims.archive import limits

BLOCK = 512
FORMAT_NAME = "ims-archive"
# Version 2 keeps an incremental's unchanged folders in their user's record (version 1 gave
# each a folder-state member).  A reader of version 1 refuses version 2 by its number rather
# than miss those folders; this one reads both.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
DEFAULT_BLOCKING_FACTOR = 20
MAX_BLOCKING_FACTOR = 2048

# Member kinds, in the pax key IMS.type.
HEADER = "header"
USER = "user"
FOLDER = "folder"
MESSAGE = "message"
TRAILER = "trailer"

# pax keys read outside the record types (the member's kind; the data checks)
TYPE_KEY = "IMS.type"
SHA256_KEY = "IMS.sha256"
SIZE_KEY = "IMS.size"

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
ZEROS = b"\0" * BLOCK


class FormatError(ValueError):
    pass


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def pax_record(key: str, value: str) -> bytes:
    """One ``"<len> <key>=<value>\\n"`` record, where len counts the whole record."""
    return pax_kv(f"{key}={value}".encode("utf-8", "surrogateescape"))


def pax_records(items: list[tuple[str, str]]) -> bytes:
    return b"".join(pax_kv(f"{k}={v}".encode("utf-8", "surrogateescape")) for k, v in items)


_MODE = b"%07o\0" % 0o600
_CHECKSUM_BLANK = b"        "
_MAGIC_TO_DEVMINOR = _USTAR.pack(b"", b"", b"", b"", b"", b"", b"", b"0", b"", b"ustar\0", b"00",
                                 _UNAME, _UNAME, b"", b"", b"")[257:345]
_TAIL = b"\0" * 12
# Sum of the bytes that never change: mode, the blank checksum, magic .. devminor.
_CONSTANT_SUM = sum(_MODE) + sum(_CHECKSUM_BLANK) + sum(_MAGIC_TO_DEVMINOR)


def ustar_header(name: bytes, size: int, mtime: int, typeflag: bytes, linkname: bytes = b"",
                 mode: int = 0o600, uid: int = 0, gid: int = 0, prefix: bytes = b"") -> bytes:
    """A 512-byte ustar header with its checksum; caller guarantees fields fit.

    Built by concatenation with the checksum summed over the variable fields only: this runs
    once or twice per message, so it is on the hot path of every backup."""
    numbers = b"%07o\0%07o\0%011o\0%011o\0" % (uid, gid, size, mtime)   # offsets 108..148
    mode_field = _MODE if mode == 0o600 else b"%07o\0" % mode
    checksum = (_CONSTANT_SUM - sum(_MODE) + sum(mode_field) + sum(name) + sum(numbers)
                + typeflag[0] + sum(linkname) + sum(prefix))
    return b"".join((
        name.ljust(100, b"\0"), mode_field, numbers, b"%06o\0 " % checksum, typeflag,
        linkname.ljust(100, b"\0"), _MAGIC_TO_DEVMINOR, prefix.ljust(155, b"\0"), _TAIL))


_pax_header_cache: dict[int, bytes] = {}


def pax_header_block(payload_length: int) -> bytes:
    """The ustar header of a pax extended header; mtime 0, so it depends on the length only."""
    header = _pax_header_cache.get(payload_length)
    if header is None:
        header = ustar_header(_PAX_HEADER_NAME, payload_length, 0, PAX)
        if len(_pax_header_cache) < 4096:
            _pax_header_cache[payload_length] = header
    return header


def pax_kv(key_value: bytes) -> bytes:
    """``b"key=value"`` -> one pax record; the common short cases without a loop."""
    n = len(key_value) + 2          # the space and the newline
    if n <= 8:
        return b"%d %b\n" % (n + 1, key_value)
    if n <= 97:
        return b"%d %b\n" % (n + 2, key_value)
    length = n + len(str(n))
    while len(str(length)) + n != length:
        length = len(str(length)) + n
    return b"%d %b\n" % (length, key_value)


def flag_records(flags: str, keywords: tuple[str, ...], info: str) -> bytes:
    """The IMS.flags, IMS.keywords and IMS.info records (callers cache them per info)."""
    return (pax_kv(b"IMS.flags=" + flags.encode())
            + pax_kv(b"IMS.keywords=" + " ".join(keywords).encode("utf-8", "surrogateescape"))
            + pax_kv(b"IMS.info=" + info.encode("utf-8", "surrogateescape")))


_MESSAGE_TYPE = pax_kv(b"IMS.type=message")
_STATE = {True: pax_kv(b"IMS.state=new"), False: pax_kv(b"IMS.state=cur")}


def message_records(uid: int | None, flags_part: bytes, is_new: bool, internaldate: int,
                    basename: bytes, size: int, sha256_hex: str | None, links: int = 1) -> bytes:
    """The pax payload of a message member (docs/archive-format.md §4)."""
    parts = [_MESSAGE_TYPE]
    if uid is not None:
        parts.append(pax_kv(b"IMS.uid=%d" % uid))
    parts += (flags_part, _STATE[is_new], pax_kv(b"IMS.internaldate=%d" % internaldate),
              pax_kv(b"IMS.basename=" + basename), pax_kv(b"IMS.size=%d" % size))
    if links > 1:
        parts.append(pax_kv(b"IMS.links=%d" % links))
    if sha256_hex is not None:
        parts.append(b"79 IMS.sha256=%s\n" % sha256_hex.encode())
    return b"".join(parts)


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


def member_headers(name: str | bytes, size: int, mtime: int, typeflag: bytes,
                   records: list[tuple[str, str]] | None = None, linkname: str | bytes = b"",
                   uid: int = 0, gid: int = 0, encoded: bytes = b"") -> bytes:
    """The pax extended header (when there are records) followed by the ustar header.

    ``records`` are (key, value) pairs; ``encoded`` is a payload already built with
    ``pax_kv`` (the hot path of message members).  Names that are not ASCII or do not fit
    ustar go into the pax ``path``/``linkpath`` keys, with a shortened ASCII name in the
    ustar header for readers that ignore pax.
    """
    raw_name = name if isinstance(name, bytes) else name.encode("utf-8", "surrogateescape")
    extra = b""
    if len(raw_name) <= 100 and raw_name.isascii():
        split: tuple[bytes, bytes] | None = (b"", raw_name)
    else:
        split = split_name(raw_name) if raw_name.isascii() else None
        if split is None:
            extra += pax_kv(b"path=" + raw_name)
            split = (b"", _ascii_fallback(raw_name))
    raw_link = linkname if isinstance(linkname, bytes) else linkname.encode("utf-8", "surrogateescape")
    if len(raw_link) > 100 or not raw_link.isascii():
        extra += pax_kv(b"linkpath=" + raw_link)
        raw_link = _ascii_fallback(raw_link)
    if size > _MAX_OCTAL_11:
        extra += pax_kv(b"size=%d" % size)
        size = 0
    if uid > _MAX_OCTAL_7 or gid > _MAX_OCTAL_7:
        extra += pax_kv(b"uid=%d" % uid) + pax_kv(b"gid=%d" % gid)
        uid = gid = 0
    if mtime < 0 or mtime > _MAX_OCTAL_11:
        extra += pax_kv(b"mtime=%d" % mtime)
        mtime = 0
    payload = extra + (pax_records(records) if records else b"") + encoded
    if len(payload) > limits.MAX_PAX_PAYLOAD:
        raise limits.LimitExceeded(
            f"member {raw_name.decode('utf-8', 'replace')}: its pax header would hold"
            f" {len(payload)} bytes, more than the {limits.MAX_PAX_PAYLOAD} a reader accepts;"
            " the archive is incomplete (no trailer)")
    main = ustar_header(split[1], size, mtime, typeflag, raw_link, uid=uid, gid=gid,
                        prefix=split[0])
    if not payload:
        return main
    return pax_header_block(len(payload)) + payload + padding(len(payload)) + main


def _ascii_fallback(raw: bytes) -> bytes:
    text = raw.decode("utf-8", "replace").encode("ascii", "replace")
    return text[-100:]


# -- parsing (used by the project's reader and the tests' checks) ------------------------

def parse_pax(payload: bytes) -> dict[str, str]:
    """The records of a pax extended header; ``FormatError`` for any malformed one."""
    # Most payloads are ASCII with no newline inside a value: decoded at once and split at
    # every newline, the pieces are taken when each one's stated length is its own (walking
    # by lengths would have found the same records); anything else is walked by lengths.
    if not payload.isascii() or payload[-1:] != b"\n":
        return _parse_pax_by_length(payload)
    result: dict[str, str] = {}
    for record in payload[:-1].decode("ascii").split("\n"):
        length, _, key_value = record.partition(" ")
        key, equals, value = key_value.partition("=")
        if (not equals or not length.isdigit() or length[0] == "0"
                or int(length) != len(record) + 1):
            return _parse_pax_by_length(payload)
        result[key] = value
    return result


def _parse_pax_by_length(payload: bytes) -> dict[str, str]:
    result: dict[str, str] = {}
    pos = 0
    size = len(payload)
    find = payload.find
    while pos < size:
        space = find(b" ", pos)
        if space < 0:
            raise FormatError("pax record without length")
        try:
            length = int(payload[pos:space])
        except ValueError:
            raise FormatError("pax record length is not a number") from None
        end = pos + length
        if length <= 0 or end > size or payload[end - 1] != 10:
            raise FormatError("pax record length out of range")
        equals = find(b"=", space, end)
        if equals < 0:
            raise FormatError("pax record without '='")
        result[payload[space + 1:equals].decode("utf-8", "surrogateescape")] = \
            payload[equals + 1:end - 1].decode("utf-8", "surrogateescape")
        pos = end
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


def parse_header_fast(block: bytes) -> tuple[bytes, int, int]:
    """(typeflag, size, mtime) of a ustar header, checksum checked: the reader's hot path,
    which needs names only when no pax ``path`` gave them (``header_names``)."""
    if len(block) != BLOCK:
        raise FormatError("short header block")
    try:
        stored = int(block[148:156].strip(b"\0 ") or b"0", 8)
        size = int(block[124:136].strip(b"\0 ") or b"0", 8)
        mtime = int(block[136:148].strip(b"\0 ") or b"0", 8)
    except ValueError:
        raise FormatError("bad octal field") from None
    if stored != byte_sum(block):
        raise FormatError("header checksum mismatch")
    return block[156:157], size, mtime


def byte_sum(block: bytes) -> int:
    """The ustar checksum of a 512-byte header block: the sum of its bytes, the checksum
    field counted as spaces.  Adler-32's low half is a byte sum modulo 65,521, exact for
    pieces of at most 256 bytes (256 x 255 < 65,521): a tenth of the time of ``sum``."""
    return ((zlib.adler32(block[:148], 0) & 0xFFFF) + 256
            + (zlib.adler32(block[156:412], 0) & 0xFFFF)
            + (zlib.adler32(block[412:512], 0) & 0xFFFF))


def header_names(block: bytes) -> tuple[str, str]:
    """(name with its prefix, linkname) of a ustar header."""
    name = block[0:100].split(b"\0", 1)[0]
    prefix = block[345:500].split(b"\0", 1)[0]
    full = prefix + b"/" + name if prefix else name
    link = block[157:257].split(b"\0", 1)[0]
    return full.decode("utf-8", "surrogateescape"), link.decode("utf-8", "surrogateescape")


def _octal(field: bytes) -> int:
    text = field.rstrip(b"\0 ").lstrip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise FormatError(f"bad octal field {field!r}") from None
