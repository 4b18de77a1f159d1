"""A sample of the fuzzing campaign (tests/faults/fuzz.py) in the normal suite, and the
bugs the campaign found, each as a crafted archive through the installed ``imsrestore``.

Each regression test says what happened before its fix; all of them are in files under
``ims/archive/`` (the reader and the records)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import fuzz  # noqa: E402

from ims.archive import format as fmt  # noqa: E402

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
    started = time.monotonic()
    lines: list[str] = []
    result = fuzz.run_campaign(setup, SEED, range(300), timeout=30.0, subprocess_every=50,
                               kinds=list(fuzz.KINDS), say=lines.append)
    fuzz.print_table(result, lines.append)
    assert not result["violations"], "\n".join(lines)
    assert result["cases"] == 300 and set(result["table"]) == set(fuzz.KINDS)
    assert result["vias"]["subprocess"] == 6
    assert time.monotonic() - started < 120, "\n".join(lines)


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


def test_a_hard_link_member_with_data_is_refused_in_order_and_by_offset(setup, tmp_path):
    """A link member whose size is not 0 was skipped over by the reader in order but not by
    the reader by offset, so the two disagreed on where the next member starts.  Now both
    refuse its header."""
    from ims.archive.reader import ArchiveReader
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
