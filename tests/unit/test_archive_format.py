"""Header building: pax record lengths, ustar name splitting, checksums, long and UTF-8 names."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ims.archive import format as fmt


@given(st.text(min_size=1, max_size=20).filter(lambda k: "=" not in k and " " not in k),
       st.text(max_size=300))
def test_pax_record_length_counts_itself(key, value):
    record = fmt.pax_record(key, value)
    length = int(record.split(b" ", 1)[0])
    assert length == len(record) and record.endswith(b"\n")
    assert fmt.parse_pax(record) == {key: value}


def test_split_name():
    assert fmt.split_name(b"a" * 100) == (b"", b"a" * 100)
    long = b"p" * 150 + b"/" + b"n" * 90
    assert fmt.split_name(long) == (b"p" * 150, b"n" * 90)
    assert fmt.split_name(b"x" * 101) is None        # no slash to split at
    assert fmt.split_name(b"a/" * 200) is None        # longer than 256


def test_headers_parse_back_with_checksum():
    headers = fmt.member_headers("primary/amy/Entwürfe/123.M1P2.host", 42, 1700000000, fmt.REGULAR,
                                 [("IMS.type", "message"), ("IMS.uid", "7")], uid=5000, gid=5000)
    pax_header = fmt.parse_ustar(headers[:512])
    assert pax_header["typeflag"] == fmt.PAX
    records = fmt.parse_pax(headers[512:512 + pax_header["size"]])
    assert records["path"] == "primary/amy/Entwürfe/123.M1P2.host"   # UTF-8 goes to pax path
    assert records["IMS.uid"] == "7"
    main = fmt.parse_ustar(headers[-512:])
    assert main["size"] == 42 and main["mtime"] == 1700000000 and main["uid"] == 5000
    assert len(headers) % 512 == 0


def test_huge_size_uses_pax():
    headers = fmt.member_headers("big", 9 << 30, 0, fmt.REGULAR, [])
    records = fmt.parse_pax(headers[512:1024].rstrip(b"\0"))
    assert records["size"] == str(9 << 30)
