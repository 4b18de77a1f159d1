"""Placeholder naming, imsasm's arguments and path mapping, the groups split (no NetWorker)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ims.asm.imsasm import PathMapper, parse_args
from ims.config import BackupGroups, Config, MsgConf
from ims.errors import UnknownName, UsageError
from ims.mkbackupdir.layout import folder_to_parts, parse, parts_to_folder
from ims.mkbackupdir.tree import nsr_content, nsr_quote
from ims.store.maildir import MaildirStore
from ims.templates.imsconfig import nsr_quote as res_quote
from ims.templates.imsconfig import split_by_size

level = st.text(min_size=1, max_size=20).filter(
    lambda s: "/" not in s and "." not in s and "\0" not in s)


@given(st.lists(level, min_size=1, max_size=4))
def test_folder_placeholder_round_trip(levels):
    folder = "/".join(levels)
    parts = folder_to_parts(folder)
    assert parts_to_folder(parts) == folder
    assert all(p and p not in (".", "..") and "/" not in p and not p.startswith(".") for p in parts)
    assert all(p.endswith(".d") for p in parts[:-1])


def test_mailbox_with_subfolders_and_odd_names():
    assert folder_to_parts("Archive") == ["Archive"]
    assert folder_to_parts("Archive/2024") == ["Archive.d", "2024"]
    assert folder_to_parts("100%\tdone") == ["100%25%09done"]
    ph = parse(["mailhost", "groupA", "amy", "Archive.d", "2024"])
    assert (ph.group, ph.user, ph.folder, ph.folder_prefix) == ("groupA", "amy", "Archive/2024", False)
    ph = parse(["mailhost", "groupA", "amy", "Archive.d"])
    assert ph.folder == "Archive" and ph.folder_prefix
    with pytest.raises(ValueError):
        parse(["mailhost", "groupA", "amy", "..", "x"])


def test_nsr_quoting():
    assert nsr_quote("INBOX") == "INBOX"
    assert nsr_quote("Bulk Mail") == '"Bulk Mail"'
    assert nsr_quote('say "hi"') == '"say \\"hi\\""'
    assert nsr_content("imsasm", ["b", "a"]).splitlines()[-1] == "imsasm: a b"
    assert res_quote('/usr/sbin/mkbackupdir -p "/my backup"') == '"/usr/sbin/mkbackupdir -p \\"/my backup\\""'


@pytest.mark.parametrize("argv, mode, flags", [
    (["-s", "/b/x"], "s", (False, False, False)),
    (["-snv", "/b/x"], "s", (True, True, False)),
    (["-s", "-b", "-v", "/b/x"], "s", (False, True, True)),
    (["-r", "-i", "N", "/b/x"], "r", (False, False, False)),
    (["-c", "-n"], "c", (True, False, False)),
])
def test_asm_arguments(argv, mode, flags):
    request = parse_args(argv)
    assert request.mode == mode
    assert (request.dry_run, request.verbose, request.estimate) == flags


@pytest.mark.parametrize("argv, words", [
    ([], "first argument"), (["-v", "-s", "/x"], "first argument"),
    (["-s", "-Q", "/x"], "unknown option -Q"), (["-s"], "at least one path"),
    (["-s", "-o", "/x"], "not supported"), (["-s", "-t"], "needs a value"),
])
def test_asm_argument_errors(argv, words):
    with pytest.raises(UsageError, match=words):
        parse_args(argv)


@pytest.fixture
def mapper(fs):
    for partition, user in (("primary", "amy"), ("primary", "mike"), ("secondary", "123go")):
        fs.create_dir(f"/store/{partition}/{user}/Maildir/cur")
    fs.create_dir("/store/primary/amy/Maildir/.Sent/cur")
    msg = MsgConf(Path("/etc/ims/msg.conf"), {
        "store.partition.primary.path": "/store/primary",
        "store.partition.secondary.path": "/store/secondary",
        "local.store.backupdir": "/backup", "local.store.backup.servername": "mailhost"})
    groups = BackupGroups.parse("groupA=[a-l].*\ngroupB=[m-z].*\ngroupC=[0-9].*\n", Path("g"))
    fs.create_dir("/backup/mailhost")
    return PathMapper(Config(Path("/etc/ims"), msg, groups), MaildirStore(msg.partitions(), "%u/Maildir"))


def test_paths_map_to_logical_names(mapper):
    scope, name = mapper.scope(mapper.target("/backup/mailhost/groupA/amy/Sent"))
    assert name == "/primary/groupA/amy/Sent" and scope.users[0].exact
    scope, name = mapper.scope(mapper.target("/backup/mailhost/groupC"))
    assert [u.user for u in scope.users] == ["123go"]
    # Sun's tree: the partition where this one has the server
    scope, name = mapper.scope(mapper.target("/backup/primary/groupB/mike/INBOX"))
    assert name == "/primary/groupB/mike/INBOX"
    assert mapper.pattern(mapper.target("/backup/primary/groupB/mike")).partition == "primary"
    assert mapper.pattern(mapper.target("/backup/mailhost/groupB/mike")).partition is None


@pytest.mark.parametrize("path, error", [
    ("/elsewhere/groupA/amy/INBOX", UsageError), ("/backup/otherhost/groupA/amy", UsageError),
    ("/backup/mailhost/groupQ/amy", UnknownName), ("/backup/mailhost/groupA/nobody", UnknownName),
    ("/backup/mailhost/groupA/amy/Gone", UnknownName),
])
def test_bad_paths(mapper, path, error):
    with pytest.raises(error):
        mapper.scope(mapper.target(path))


def test_split_by_size_gives_ranges_of_similar_weight():
    sizes = {f"{c}user{i}": 100 for c in "abcdefghijklmnopqrstuvwxyz" for i in range(3)}
    sizes.update({"0bot": 100, "Zed": 100})
    groups = split_by_size(sizes, 4, "g")
    parsed = BackupGroups.parse("\n".join(f"{n}={p}" for n, p, _ in groups), Path("g"))
    placed = {}
    for user in sizes:
        placed.setdefault(parsed.group_of(user), 0)
        placed[parsed.group_of(user)] += 1
    assert "ungrouped" not in placed                     # (?i): Zed lands in a group too
    assert len(placed) == 4 and max(placed.values()) - min(placed.values()) <= 6
    assert parsed.group_of("mnew-user-created-later") != "ungrouped"
