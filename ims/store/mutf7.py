"""IMAP modified UTF-7 (RFC 3501 §5.1.3), the encoding Dovecot uses for folder names on disk.

``decode`` raises ``ValueError`` on a malformed name; callers decide whether to keep the
raw name.
"""

from __future__ import annotations

import base64


def encode(name: str) -> str:
    if "&" not in name and name.isascii() and name.isprintable():
        return name         # most names, checked in C (a listing encodes every one)
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def decode(name: str) -> str:
    if "&" not in name and name.isascii() and name.isprintable():
        return name         # most names, checked in C (an incremental decodes every one)
    out: list[str] = []
    i = 0
    while i < len(name):
        ch = name[i]
        if ch != "&":
            if not 0x20 <= ord(ch) <= 0x7E:
                raise ValueError(f"non-ASCII character in modified UTF-7 name {name!r}")
            out.append(ch)
            i += 1
            continue
        end = name.find("-", i + 1)
        if end < 0:
            raise ValueError(f"unterminated '&' in modified UTF-7 name {name!r}")
        chunk = name[i + 1:end]
        if not chunk:
            out.append("&")
        else:
            b64 = chunk.replace(",", "/")
            b64 += "=" * (-len(b64) % 4)
            try:
                raw = base64.b64decode(b64, validate=True)
                out.append(raw.decode("utf-16-be"))
            except (ValueError, UnicodeDecodeError):
                raise ValueError(f"bad modified UTF-7 in name {name!r}") from None
        i = end + 1
    return "".join(out)
