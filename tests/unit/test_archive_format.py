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


def _walk_by_length(payload: bytes) -> dict[str, str] | str:
    """The pax grammar walked record by record, as POSIX states it: the reference."""
    try:
        return fmt._parse_pax_by_length(payload)
    except fmt.FormatError:
        return "error"


def _parsed(payload: bytes) -> dict[str, str] | str:
    try:
        return fmt.parse_pax(payload)
    except fmt.FormatError:
        return "error"


_keys = st.text(min_size=0, max_size=12).filter(lambda k: "=" not in k and "\n" not in k)


@given(st.lists(st.tuples(_keys, st.text(max_size=40)), max_size=6))
def test_pax_parse_finds_the_records_a_walk_by_length_finds(items):
    # values with newlines, '=' and spaces: the newline split must give way to the walk
    payload = fmt.pax_records(items)
    assert fmt.parse_pax(payload) == dict(items) == _walk_by_length(payload)


@given(st.binary(max_size=80))
def test_pax_parse_of_any_bytes_agrees_with_the_walk_by_length(payload):
    assert _parsed(payload) == _walk_by_length(payload)


@given(st.lists(st.sampled_from([b"0", b"00", b"+9", b"1_0", b" ", b"=", b"\n", b"a", b"9",
                                 b"12 ", b"x=y\n", b"10 a=bcdef\n"]), max_size=10))
def test_pax_parse_of_odd_lengths_agrees_with_the_walk_by_length(pieces):
    # leading zeros, signs, underscores: accepted by int(); the split must not differ
    payload = b"".join(pieces)
    assert _parsed(payload) == _walk_by_length(payload)


def test_a_pax_record_whose_length_is_wrong_is_refused():
    good = fmt.pax_record("IMS.uid", "7")
    assert fmt.parse_pax(good) == {"IMS.uid": "7"}
    assert good.startswith(b"13 ")
    for bad in (b"14" + good[2:], b"12" + good[2:], b"0" + good, good[:-1]):
        assert _parsed(bad) == "error"


@given(st.binary(min_size=512, max_size=512))
def test_byte_sum_is_the_ustar_checksum_of_any_block(block):
    assert fmt.byte_sum(block) == sum(block[:148]) + 8 * 32 + sum(block[156:])


def test_byte_sum_of_the_largest_block():
    block = b"\xff" * 512
    assert fmt.byte_sum(block) == 504 * 255 + 256
