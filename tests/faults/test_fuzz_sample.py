"""A sample of the fuzzing campaign (tests/faults/fuzz.py) in the normal suite, and the
bugs the campaign found, each as a crafted archive through the installed ``imsrestore``.

Each regression test says what happened before its fix; all of them are in files under
``ims/archive/`` (the reader and the records)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ims.archive import format as fmt
from ims.archive import records
from ims.archive.reader import ArchiveReader, parse_member
from ims.archive.writer import ArchiveWriter, RecordSink

sys.path.insert(0, str(Path(__file__).parent))
import fuzz  # noqa: E402

SEED = 20240601


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> fuzz.Setup:
    """The sample store, its archives (full, full -b 1, full -i, incremental) and the case
    templates, as the campaign makes them."""
    import ims.cli.imsrestore  # noqa: F401 - imported once, before the forks
    return fuzz.prepare(tmp_path_factory.mktemp("fuzz"), SEED, say=lambda line: None)


def test_a_fuzz_sample_holds_the_contract(setup):
    """300 damaged archives (every mutation kind): no traceback, no hang, no write outside
    the store, a documented exit code with its meaning."""
    lines: list[str] = []
    result = fuzz.run_campaign(setup, SEED, range(300), timeout=30.0, subprocess_every=50,
                               kinds=list(fuzz.KINDS), say=lines.append)
    fuzz.print_table(result, lines.append)
    assert not result["violations"], "\n".join(lines)
    assert result["cases"] == 300 and set(result["table"]) == set(fuzz.KINDS)
    assert result["vias"]["subprocess"] == 6
    assert result["modes"]["restore from a chain"] > 0


# -- crafted archives --------------------------------------------------------------------------

def base(setup: fuzz.Setup, name: str = "full") -> fuzz.Base:
    return next(b for b in setup.bases if b.name == name)


def run(setup: fuzz.Setup, data: bytes, *, mode: str = "restore", source: str = "file",
        names: tuple[str, ...] = (), summary: bool = False) -> fuzz.Outcome:
    """The installed imsrestore on ``data`` in a fresh case root; the contract's checks
    that hold whatever the archive (no traceback, one line per error, nothing written
    outside the store, no process or temporary file left) must pass."""
    plan = fuzz.Plan(0, "crafted", "full", mode, source, "empty", list(names), "subprocess",
                     20, summary=summary)
    outcome = fuzz.execute(setup, plan, data, setup.work / "case", 30.0)
    assert not outcome.problems, (outcome.problems, outcome.stderr.decode())
    return outcome


def error_lines(outcome: fuzz.Outcome) -> list[str]:
    return [line for line in outcome.stderr.decode().splitlines() if " note: " not in line]


def with_payload(setup: fuzz.Setup, kind: str, payload: bytes, index: int = 0) -> bytes:
    """The full archive, re-sealed, with the ``index``-th member of ``kind`` holding
    ``payload`` (the trailer: replaced in place, its digest does not cover it)."""
    archive = base(setup)
    if kind == fmt.TRAILER:
        return fuzz.Mutator(setup.bases, setup.work)._new_trailer(archive, payload, "").data
    items = [fuzz.logical(archive, p) for p in archive.pieces]
    [item for item in items if item.kind == kind][index].payload = payload
    return fuzz.seal(items, archive.blocking)[0]


def test_a_trailer_nested_too_deep_is_damage_not_an_internal_error(setup):
    """Before: ``json.loads`` ran out of recursion on the trailer found from the end of the
    file, and RecursionError (not a ValueError) escaped: exit 7."""
    deep = b'{"a":' * 50000 + b"1" + b"}" * 50000
    outcome = run(setup, with_payload(setup, fmt.TRAILER, deep), names=("/primary",))
    assert outcome.code == 4, outcome.stderr
    assert any("trailer" in line for line in error_lines(outcome))


@pytest.mark.parametrize("source", ["file", "pipe"])
def test_a_member_nested_deep_is_refused_the_same_from_a_file_and_a_pipe(setup, source):
    """Before: a user member with an unknown field 900 levels deep parsed, and from a pipe
    the reader child could not pickle it for its parent (RecursionError): the child died,
    "the archive reader process ended unexpectedly".  Now any JSON member nested deeper
    than ``limits.MAX_JSON_DEPTH`` is refused by name, from a file and a pipe alike."""
    archive = base(setup)
    user = next(p for p in archive.pieces if p.kind == fmt.USER)
    body = archive.body(user)
    payload = json.dumps(body).encode()[:-1] + b',"x":' + b"[" * 900 + b"]" * 900 + b"}"
    outcome = run(setup, with_payload(setup, fmt.USER, payload), source=source)
    assert outcome.code == 4
    assert "nested deeper than 32 levels" in outcome.stderr.decode()
    assert "ended unexpectedly" not in outcome.stderr.decode()


def test_a_header_nested_deep_is_refused_before_it_is_shown(setup):
    """Before: ``imsrestore -h`` printed the header with ``json.dumps``, which ran out of
    recursion on a field 900 levels deep: exit 7."""
    archive = base(setup)
    body = archive.body(archive.pieces[0])
    payload = json.dumps(body).encode()[:-1] + b',"x":' + b"[" * 900 + b"]" * 900 + b"}"
    outcome = run(setup, with_payload(setup, fmt.HEADER, payload), mode="header")
    assert outcome.code == 4 and "nested deeper" in outcome.stderr.decode()


@pytest.mark.parametrize("kind, field_name, value", [
    (fmt.TRAILER, "excluded_folders", 1.5),
    (fmt.TRAILER, "skipped", 7),
    (fmt.TRAILER, "index", 3),
    (fmt.USER, "excluded_folders", 5),
])
def test_a_list_field_of_another_type_is_damage_not_an_internal_error(setup, kind, field_name,
                                                                     value):
    """Before: ``tuple(str(s) for s in body.get(...) or [])`` raised TypeError on a number:
    exit 7.  Now the field is named, exit 4."""
    archive = base(setup)
    piece = next(p for p in archive.pieces if p.kind == kind)
    body = archive.body(piece)
    body[field_name] = value
    outcome = run(setup, with_payload(setup, kind, json.dumps(body).encode()), source="pipe",
                  mode="list" if kind == fmt.TRAILER else "restore")
    assert outcome.code == 4
    assert any(field_name in line for line in error_lines(outcome)), outcome.stderr


def test_a_link_target_that_is_not_utf8_is_an_invalid_member(setup):
    """Before: restored from a pipe, the link could not be resolved and its target (bytes
    that are not UTF-8, kept as surrogates) went into the references file, whose writing
    failed with UnicodeEncodeError: exit 7."""
    archive = base(setup)
    items = [fuzz.logical(archive, p) for p in archive.pieces]
    message = next(item for item in items if item.kind == fmt.MESSAGE)
    message.typeflag, message.linkname, message.data = fmt.HARDLINK, "primary/\udcff\udcfe", b""
    outcome = run(setup, fuzz.seal(items, archive.blocking)[0], source="pipe", summary=True)
    assert outcome.code == 4
    assert any("link target" in line and "not a member name" in line
               for line in error_lines(outcome))
    assert not list((setup.work / "case" / "run").glob("imsrestore-refs-*"))


def test_a_damaged_member_with_a_newline_in_its_name_is_reported_on_one_line(setup):
    """Before: errors about a member named it as it was, so a name holding a newline (its
    JSON damaged) made the error two lines."""
    archive = base(setup)
    items = [fuzz.logical(archive, p) for p in archive.pieces]
    folder = next(item for item in items if item.kind == fmt.FOLDER)
    folder.name, folder.payload = "primary/x\nimsrestore: forged/.ims-folder.json", b"{not json"
    outcome = run(setup, fuzz.seal(items, archive.blocking)[0], source="pipe")
    assert outcome.code == 4
    lines = error_lines(outcome)
    assert len(lines) == 1 and "not valid JSON" in lines[0] and "\\n" in lines[0], lines


@pytest.mark.parametrize("cut", [1, 511, 512])
def test_an_archive_cut_in_its_last_records_padding_is_incomplete(setup, cut):
    """Before: the reader stopped after the end-of-archive blocks, so a stream cut in the
    padding of its last record (or with garbage there) was taken as complete (exit 0);
    docs/archive-format.md §6 requires the padding."""
    data = base(setup).data
    assert data[-cut:] == bytes(cut)
    for source in ("file", "pipe"):
        outcome = run(setup, data[:-cut], source=source, mode="list")
        assert outcome.code == 4, (source, outcome.stderr)
    garbage = data[:-1] + b"\1"
    assert run(setup, garbage, mode="list").code == 4


def test_a_message_moved_out_of_its_folder_is_damage_when_read_by_the_index(setup):
    """Before: restoring a NAME from a file reads each folder's extent by the trailer's
    offsets, where the digest is not checked; with a folder's last message moved further
    on, the extent held the next user's member instead, and the message, listed but not
    found, passed for one expunged during the backup: exit 0, the message silently lost.
    Now an extent holding anything but its folder's members is damage."""
    archive = base(setup)
    pieces = archive.pieces
    at = next(i for i in range(1, len(pieces) - 1) if pieces[i].kind == fmt.MESSAGE
              and pieces[i + 1].kind == fmt.USER)
    user = next(p for p in reversed(pieces[:at]) if p.kind == fmt.USER)
    chunks = [archive.data[p.start:p.end] for p in pieces[:-1]]
    chunks.insert(len(chunks), chunks.pop(at))           # to just before the trailer
    data = b"".join(chunks) + archive.data[pieces[-1].start:]
    body = archive.body(user)
    name = f"/{body['partition']}/{body['group']}/{body['user']}"
    outcome = run(setup, data, names=(name,))
    assert outcome.code == 4, outcome.stderr
    assert "index" in outcome.stderr.decode()


def test_a_hard_link_member_with_data_is_refused_in_order_and_by_offset(setup, tmp_path):
    """A link member whose size is not 0 was skipped over by the reader in order but not by
    the reader by offset, so the two disagreed on where the next member starts.  Now both
    refuse its header."""
    archive = base(setup)
    items = [fuzz.logical(archive, p) for p in archive.pieces]
    at, message = next((i, item) for i, item in enumerate(items) if item.kind == fmt.MESSAGE)
    link = fuzz.Logical(fmt.MESSAGE, message.name + ".copy", fmt.HARDLINK,
                        [(k, v) for k, v in message.records if k != fmt.SHA256_KEY],
                        message.mtime, linkname=message.name)
    items.insert(at + 1, link)
    intact, _ = fuzz.seal(items, archive.blocking)
    offset = next(p.start for p in fuzz.split(intact)[0] if p.member.typeflag == fmt.HARDLINK)
    link.payload = b"x" * 700           # written as the member's data
    data, _ = fuzz.seal(items, archive.blocking)
    path = tmp_path / "a.ims"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert ArchiveReader(fd, "a.ims", 20).member_at(offset) is None
    finally:
        os.close(fd)
    outcome = run(setup, data, mode="list")
    assert outcome.code == 4 and "hard link with 700 bytes of data" in outcome.stderr.decode()


# -- round trip: what the writer writes, the readers read back --------------------------------

NAME_CHARS = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"))
users = st.text(NAME_CHARS, min_size=1, max_size=40).filter(records.valid_user)
levels = st.text(NAME_CHARS, min_size=1, max_size=70).filter(
    lambda level: "/" not in level and records.valid_folder(level))
folders = st.lists(levels, min_size=1, max_size=3).map("/".join)
keys = st.text(NAME_CHARS, min_size=1, max_size=120).filter(records.valid_key)
keywords = st.lists(st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1,
                            max_size=12).filter(records.valid_keyword), max_size=3, unique=True)
flags = st.sets(st.sampled_from("DFPRST")).map(lambda s: "".join(sorted(s)))
sizes = st.one_of(st.integers(0, 3000), st.sampled_from([511, 512, 513, (1 << 20) + 1]))


@st.composite
def folder_contents(draw) -> tuple[str, list[dict]]:
    name = draw(folders)
    count = draw(st.integers(0, 5))
    names = draw(st.lists(keys, min_size=count, max_size=count, unique=True))
    uids = draw(st.lists(st.integers(1, records.UID_MAX), min_size=count, max_size=count,
                         unique=True))
    messages = []
    for key, uid in zip(names, uids):
        size = draw(sizes)
        messages.append({
            "key": key, "uid": None if draw(st.booleans()) and draw(st.booleans()) else uid,
            "flags": draw(flags), "keywords": tuple(draw(keywords)),
            "internaldate": draw(st.integers(-records.TIME_MAX + 1, records.TIME_MAX - 1)),
            "data": draw(st.binary(min_size=size, max_size=size)) if size < 4096
            else bytes([draw(st.integers(0, 255))]) * size,
            "link": draw(st.integers(0, 4)) == 0})
    return name, messages


archives = st.lists(st.tuples(st.sampled_from(["primary", "p2", "Ümlaut"]), users,
                              st.lists(folder_contents(), min_size=1, max_size=3,
                                       unique_by=lambda f: f[0])),
                    min_size=1, max_size=3, unique_by=lambda u: (u[0], u[1]))


def write_archive(path: Path, spec, blocking: int) -> dict:
    """The archive of ``spec`` through the writer's API as the backup uses it; returns what
    a reader must find: records and data per member name."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    writer = ArchiveWriter(RecordSink(fd, blocking, str(path)))
    header = records.ArchiveHeader(created=1700000000, since=None, blocking_factor=blocking,
                                   names=("/",), archive_id="ab" * 16, host="h", tool="t")
    writer.add_json(fmt.HEADER_NAME, fmt.HEADER, header.encode(fmt.FORMAT_NAME,
                                                                 fmt.FORMAT_VERSION, "x"), 0)
    expected: dict = {"header": header, "users": [], "folders": [], "messages": {}}
    counts = {"messages": 0, "links": 0, "folders": 0}
    first: dict[bytes, str] = {}        # data -> the member holding it
    for partition, user, contents in spec:
        record = records.UserRecord(partition, user, "g", 5000, 5000, (), tuple(
            f for f, _ in contents))
        writer.user_index.append({"partition": partition, "user": user, "group": "g",
                                  "offset": writer.offset})
        writer.add_json(f"{partition}/{user}/{fmt.USER_MEMBER}", fmt.USER, record.encode(), 0)
        expected["users"].append(record)
        for folder, messages in contents:
            state = records.FolderRecord(
                partition, user, folder, None, 7, records.NEXT_UID_MAX, None, (),
                tuple(records.ListedMessage(m["key"], m["uid"], m["flags"], m["keywords"])
                      for m in messages), 3, 99)
            writer.begin_folder(f"{partition}/{user}/{folder}/{fmt.FOLDER_MEMBER}",
                                state.encode(), 0)
            expected["folders"].append(state)
            counts["folders"] += 1
            for m in messages:
                name = f"{partition}/{user}/{folder}/{m['key']}"
                sha = hashlib.sha256(m["data"]).hexdigest()
                target = first.get(m["data"]) if m["link"] else None
                encoded = fmt.message_records(
                    m["uid"], fmt.flag_records(m["flags"], m["keywords"], ""), m["uid"] is None,
                    m["internaldate"], m["key"].encode(), len(m["data"]),
                    None if target else sha, 2 if m["link"] else 1)
                if target is not None:
                    writer.add_link(name.encode(), target.encode(), m["internaldate"], encoded,
                                    0, 0)
                    counts["links"] += 1
                elif len(m["data"]) > 1 << 20:
                    writer.begin_large_message(name.encode(), len(m["data"]), m["internaldate"],
                                               encoded, 70000, 2**32 - 1)
                    writer.add_large_chunk(m["data"])
                    assert writer.end_large_message()
                    counts["messages"] += 1
                else:
                    writer.add_message(name.encode(), m["data"], m["internaldate"], encoded,
                                       0, 0)
                    counts["messages"] += 1
                first.setdefault(m["data"], name)
                expected["messages"][name] = (records.MessageRecord(
                    m["key"], m["uid"], m["flags"], m["keywords"], m["internaldate"],
                    m["uid"] is None, len(m["data"]), None if target else sha,
                    2 if m["link"] else 1), None if target else m["data"], target)
    writer.finish({"format": fmt.FORMAT_NAME, "complete": True, "skipped": ["a: b"],
                   "counts": {**counts, "users": len(spec)}}, 0)
    os.close(fd)
    return expected


def read_back(reader) -> dict:
    found: dict = {"users": [], "folders": [], "messages": {}}
    found["header"] = reader.read_header()
    for member in reader.members():
        assert member.invalid is None, member.invalid
        if member.kind == fmt.USER:
            found["users"].append(member.record)
        elif member.kind == fmt.FOLDER:
            found["folders"].append(member.record)
        elif member.kind == fmt.MESSAGE:
            data = None if member.is_link else bytes(reader.read_data(member))
            found["messages"][member.name] = (member.record, data,
                                              member.linkname if member.is_link else None)
    return found


@settings(max_examples=int(os.environ.get("IMS_HYPOTHESIS_EXAMPLES", "60")), deadline=None,
          suppress_health_check=list(HealthCheck))
@given(spec=archives, blocking=st.sampled_from([1, 3, 20]))
def test_what_the_writer_writes_every_reader_reads_back_equal(tmp_path_factory, spec, blocking):
    """Any users, folders (UTF-8, long, nested), messages (sizes at block edges, over the
    in-memory chunk, links, no UID, any flags and keywords, times before 1970) written
    through the writer are read back equal: in order from a file and through the
    prefetching reader from a pipe, and by the trailer's index."""
    from ims.archive.prefetch import PrefetchReader
    path = tmp_path_factory.mktemp("roundtrip") / "a.ims"
    expected = write_archive(path, spec, blocking)
    fd = os.open(path, os.O_RDONLY)
    try:
        reader = ArchiveReader(fd, "a.ims", blocking)
        found = read_back(reader)
        assert reader.trailer is not None and reader.trailer.skipped == ("a: b",)
        assert found["header"] == expected["header"]
        assert found == {**expected, "header": found["header"]}
        # by offset, as a restore of some users reads a file
        by_index: dict = {}
        for extent in reader.trailer.folders:
            for member in reader.members_between(extent.offset, extent.end):
                if member.kind == fmt.MESSAGE:
                    by_index[member.name] = (member.record, None if member.is_link
                                             else bytes(reader.data_at(member)),
                                             member.linkname if member.is_link else None)
        assert by_index == expected["messages"]
    finally:
        os.close(fd)
    read_fd, write_fd = os.pipe()
    feeder = os.fork()
    if feeder == 0:         # the writing end in a process of its own, as a pipe has it
        os.close(read_fd)
        fuzz.feed(write_fd, path.read_bytes())
        os._exit(0)
    os.close(write_fd)
    prefetch = PrefetchReader(read_fd, "stdin", blocking)
    try:
        found = read_back(prefetch)
    finally:
        prefetch.close()
        os.close(read_fd)
        os.waitpid(feeder, 0)
    assert found == {**expected, "header": found["header"]}
    assert prefetch.trailer is not None


@settings(max_examples=300, deadline=None)
@given(name=st.text(NAME_CHARS, min_size=1, max_size=400),
       linkname=st.text(NAME_CHARS, max_size=300),
       size=st.one_of(st.integers(0, 2**40), st.sampled_from(
           [0o77777777777, 0o77777777777 + 1, 64 << 30, (64 << 30) + 1])),
       mtime=st.integers(-(2**40), 2**40),
       typeflag=st.sampled_from([fmt.REGULAR, fmt.HARDLINK]),
       extra=st.lists(st.tuples(st.text(NAME_CHARS, min_size=1, max_size=20).filter(
           lambda k: "=" not in k and k not in ("path", "linkpath", "size", "mtime", "uid",
                                                "gid")), st.text(NAME_CHARS, max_size=50)),
           max_size=4, unique_by=lambda kv: kv[0]))
def test_member_headers_parse_back(name, linkname, size, mtime, typeflag, extra):
    """Any name (UTF-8, long), link name, size (past ustar's 8 GiB), time (before 1970, past
    ustar's field) and records: the one member parser reads back what the writer's header
    builder wrote (a size over ``MAX_MESSAGE_SIZE``, which the writer refuses, it refuses)."""
    from ims.archive import limits
    if typeflag == fmt.HARDLINK:
        size = 0
    data = fmt.member_headers(name, size, mtime, typeflag, extra, linkname=linkname)
    position = 0

    def read(count: int) -> bytes:
        nonlocal position
        position += count
        return data[position - count:position]

    if size > limits.MAX_MESSAGE_SIZE:
        # the writer's API refuses such a member (writer.py); a reader must too
        with pytest.raises(fmt.FormatError, match="over the limit"):
            parse_member(read, 0)
        return
    member, header_bytes = parse_member(read, 0)
    assert (member.name, member.size, member.mtime, member.typeflag) == (name, size, mtime,
                                                                          typeflag)
    if typeflag == fmt.HARDLINK:         # (a regular member's link name means nothing)
        assert member.linkname == linkname
    assert member.data_offset == len(data) == sum(map(len, header_bytes))
    assert all(member.pax[k] == v for k, v in extra)
