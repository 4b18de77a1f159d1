"""Placeholder naming, imsasm's arguments and path mapping, the groups split, the NSR resource
syntax as the stand-in reads it (no NetWorker)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

import pytest
from conftest import TESTS
from hypothesis import given
from click.testing import CliRunner
from hypothesis import strategies as st

from ims.asm.imsasm import PathMapper, parse_args
from ims.config import BackupGroups, Config, MsgConf
from ims.errors import UnknownName, UsageError
from ims.mkbackupdir.layout import folder_to_parts, parse, parts_to_folder
from ims.mkbackupdir.tree import nsr_content, nsr_quote
from ims.store.maildir import MaildirStore
from ims.templates.imsconfig import nsr_quote as res_quote
from ims.templates.imsconfig import command as imsconfig
from ims.templates.imsconfig import render, split_by_size

sys.path.insert(0, str(TESTS / "networker"))
import standin  # noqa: E402

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


# -- NSR resource syntax: a trailing ',', ';' or '\\' continues the line -----------------------

# What imsconfig nsradmin wrote before each command's last attribute lost its ';': the ';'
# ending line 2 continues it, so NetWorker reads ONE command giving 'name' twice.
RUN_TOGETHER = """# nsradmin input written by imsconfig: nsradmin -s nwserver -i THIS_FILE
create type: NSR group; name: "mailgroup"; autostart: Enabled; start time: "2:00"; parallelism: 4;
create type: NSR client; name: "mailhost"; server: "nwserver"; group: "mailgroup"; save set: "/backup/mailhost/groupA"; backup command: savepnpc;
"""


def test_commands_ending_in_semicolons_run_together_and_are_refused():
    with pytest.raises(standin.StandinError, match=r"^in:3: attribute 'name' given twice"):
        standin.parse_nsradmin(RUN_TOGETHER, "in")


def test_generated_nsradmin_input_is_two_commands():
    text = render("nsradmin.j2", server="nwserver", client='mail "host"', group="mailgroup",
                  save_sets=["/backup/h/groupA", "/backup/h/group B"], schedule="Full Every Friday",
                  browse_policy="Month", retention_policy="Quarter", parallelism=4,
                  start_time="2:00", remote_access="")
    commands = standin.parse_nsradmin(text, "in")
    assert [(c.name, c.attrs["type"], c.attrs["name"]) for c in commands] == [
        ("create", ["NSR group"], ["mailgroup"]), ("create", ["NSR client"], ['mail "host"'])]
    group, client = (c.attrs for c in commands)
    assert group == {"type": ["NSR group"], "name": ["mailgroup"], "autostart": ["Enabled"],
                     "start time": ["2:00"], "parallelism": ["4"]}
    assert client["save set"] == ["/backup/h/groupA", "/backup/h/group B"]
    assert client["backup command"] == ["savepnpc"] and "remote access" not in client
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    ends = [line for line, after in zip(lines, lines[1:] + ["create"]) if after.startswith("create")]
    assert len(ends) == 2 and not any(line.endswith((";", ",", "\\")) for line in ends)


def test_resource_syntax_continuations_quotes_and_comments():
    text = ('create type: NSR client; name: "a # b \\"q\\" \\\\";  # a comment\n'
            "# a comment line continues nothing and ends nothing\n"
            "   save set: /x,\n"
            '             "/y z"; remote access: ;\n'
            "   group: mail\\\n"
            "group\n"
            "create type: NSR group; name: g\n")
    first, second = standin.parse_nsradmin(text, "in")
    assert first.attrs == {"type": ["NSR client"], "name": ['a # b "q" \\'],
                           "save set": ["/x", "/y z"], "remote access": [],
                           "group": ["mailgroup"]}
    assert (first.line, second.line, second.attrs["name"]) == (1, 7, ["g"])


@pytest.mark.parametrize("text, error", [
    ("create type: NSR group; name: g\nupdate name: h\n", r"in:2: unknown command 'update'"),
    ('create type: NSR group;\n  name: "g\n', r"in:2: unterminated quote"),
    ("create type: NSR group; name: g; Name: h\n", r"in:1: attribute 'name' given twice"),
    ('create type: NSR group; name: "g" x\n', r"in:1: 'name': text after a quoted value"),
    ("create type: NSR group; name: g,\n\n", r"in:1: 'name': a ',' with no value after it"),
    ('create type: NSR group; name: "a\\x"\n', r"in:1: unknown escape"),
    ("create type: NSR group; parallelism 4\n", r"in:1: expected 'attribute: value'"),
    ("create type: NSR group\n", r"in:1: create needs type and name"),
])
def test_resource_syntax_errors_name_the_line(text, error):
    with pytest.raises(standin.StandinError, match="^" + error):
        standin.parse_nsradmin(text, "in")


def test_res_file_is_one_resource_every_field_ending_with_semicolon(tmp_path):
    res = tmp_path / "g.res"
    res.write_text('type: savepnpc;\nprecmd: /bin/true;\npstcmd: /bin/true, "/bin/sleep 5";\n'
                   'timeout: "12:00pm";\n')
    assert standin.parse_res(res) == {"type": ["savepnpc"], "precmd": ["/bin/true"],
                                      "pstcmd": ["/bin/true", "/bin/sleep 5"],
                                      "timeout": ["12:00pm"]}
    res.write_text("type: savepnpc;\nprecmd: /bin/true\npstcmd: /bin/true;\n")
    with pytest.raises(standin.StandinError, match=r"g.res:2: field does not end with ';'"):
        standin.parse_res(res)
    text = render("savepnpc.res.j2", precmds=["a", 'b "c"'], pstcmds=["/bin/true"],
                  timeout="3 hours", abort_precmd_with_group=False)
    res.write_text(text)
    assert standin.parse_res(res) == {"type": ["savepnpc"], "precmd": ["a", 'b "c"'],
                                      "pstcmd": ["/bin/true"], "timeout": ["3 hours"],
                                      "abort precmd with group": ["No"]}


@pytest.mark.parametrize("name", [None, *sorted(imsconfig.commands)])
def test_every_imsconfig_help_ends_with_examples_that_parse(name):
    argv = [name] if name else []
    result = CliRunner().invoke(imsconfig, [*argv, "--help"])
    assert result.exit_code == 0
    lines = result.output.rstrip().splitlines()
    start = max(i for i, line in enumerate(lines) if line.strip() == "Examples:")
    examples = [line.strip() for line in lines[start + 1:] if not line.strip().startswith("#")]
    assert examples and all(e.startswith(" ".join(["imsconfig", *argv])) for e in examples)
    for example in examples:
        words = shlex.split(example)[1:]
        sub = imsconfig.commands[words[0]]
        with sub.make_context(words[0], words[1:]) as ctx:    # options and values accepted
            assert isinstance(ctx, click.Context)
