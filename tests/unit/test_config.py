"""msg.conf and backup-groups.conf parsing (pyfakefs: pure file logic)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from ims.config import BackupGroups, Config, MsgConf
from ims.errors import ConfigError

SUN_GROUPS = "groupA=[a-l].*\ngroupB=[m-z].*\ngroupC=[0-9].*\n"


def test_sun_example_groups(fs):
    fs.create_file("/etc/ims/backup-groups.conf", contents=SUN_GROUPS)
    groups = BackupGroups.load(Path("/etc/ims/backup-groups.conf"))
    assert groups.group_of("amy") == "groupA"
    assert groups.group_of("lisa") == "groupA"
    assert groups.group_of("mike") == "groupB"
    assert groups.group_of("0800support") == "groupC"
    # uppercase and punctuation fall in no custom group: kept, not lost
    assert groups.group_of("Zed") == "ungrouped"
    assert groups.group_of("_svc") == "ungrouped"
    assert groups.names() == ["groupA", "groupB", "groupC", "ungrouped"]
    assert groups.contains("user", "Zed") and groups.contains("ALL", "Zed")
    assert not groups.contains("groupA", "mike")


def test_first_match_wins_and_overlaps_are_visible():
    groups = BackupGroups.parse("vip=(amy|bob)\ngroupA=[a-l].*\n", Path("g.conf"))
    assert groups.group_of("amy") == "vip"
    assert groups.overlapping("amy") == ["vip", "groupA"]
    assert groups.group_of("carl") == "groupA"


def test_whole_id_match_and_case_option():
    groups = BackupGroups.parse("short=[a-c]\nci=(?i)[d-f].*\n", Path("g.conf"))
    assert groups.group_of("a") == "short"
    assert groups.group_of("abc") == "ungrouped"     # the regex must match the whole ID
    assert groups.group_of("Dora") == "ci"


@pytest.mark.parametrize("text, line, words", [
    ("groupA=[a-l].*\ngroupB=[m-z\n", 2, "invalid regex"),
    ("# c\n\ngroupA [a-l].*\n", 3, "expected 'group=regex'"),
    ("user=.*\n", 1, "reserved"),
    ("ALL=.*\n", 1, "reserved"),
    ("g=a\ng=b\n", 2, "already defined on line 1"),
    ("bad name=x\n", 1, "invalid group name"),
    ("groupA=\n", 1, "expected 'group=regex'"),
])
def test_group_errors_name_file_and_line(text, line, words):
    with pytest.raises(ConfigError) as err:
        BackupGroups.parse(text, Path("/etc/ims/backup-groups.conf"))
    assert str(err.value).startswith(f"/etc/ims/backup-groups.conf:{line}: ")
    assert words in str(err.value)


def test_no_groups_file_means_all(fs):
    groups = BackupGroups.load(Path("/etc/ims/backup-groups.conf"))
    assert not groups.defined and groups.names() == ["ALL"]
    assert groups.group_of("anyone") == "ALL"


def test_msg_conf_parse_and_defaults(fs):
    fs.create_file("/etc/ims/msg.conf", contents=(
        "# store\nstore.partition.primary.path = /srv/mail/p1\n"
        "store.partition.secondary.path=/srv/mail/p2\n"
        "local.store.backup.exclude = Trash%Bulk Mail%Third Class Mail\n"))
    conf = MsgConf.load(Path("/etc/ims/msg.conf"))
    assert conf.partitions() == {"primary": Path("/srv/mail/p1"), "secondary": Path("/srv/mail/p2")}
    assert conf.exclusions() == ["Trash", "Bulk Mail", "Third Class Mail"]
    assert conf.get("store.maildir.layout") == "%u/Maildir"
    assert conf.get("store.defaultpartition") == "primary"


def test_msg_conf_errors(fs):
    fs.create_file("/etc/ims/msg.conf", contents="store.partition.primary.path = /x\nnot a setting\n")
    with pytest.raises(ConfigError, match=r"^/etc/ims/msg.conf:2: expected 'key = value'"):
        MsgConf.load(Path("/etc/ims/msg.conf"))
    with pytest.raises(ConfigError, match="not found"):
        MsgConf.load(Path("/nope/msg.conf"))
    fs.create_file("/c2/msg.conf", contents="store.defaultpartition = primary\n")
    with pytest.raises(ConfigError, match="no partition defined"):
        Config.load(Path("/c2"))


def test_msg_conf_save_keeps_comments_and_order(fs):
    fs.create_file("/etc/ims/msg.conf", contents="# keep me\na.b = 1\nc.d = 2\n")
    conf = MsgConf.load(Path("/etc/ims/msg.conf"))
    conf.set("c.d", "3")
    conf.set("e.f", "x y")
    conf.unset("a.b")
    conf.save()
    assert Path("/etc/ims/msg.conf").read_text() == "# keep me\nc.d = 3\ne.f = x y\n"


@pytest.mark.parametrize("regex, members, strangers", [
    ("[[:digit:]].*", ["0800support", "7x"], ["amy", "_7"]),
    ("[[:alpha:]]+", ["amy", "Zed"], ["amy2", "é"]),          # C locale: ASCII letters only
    ("[[:alnum:]]+", ["amy2"], ["amy.b"]),
    ("[[:upper:]].*", ["Zed"], ["zed"]),
    ("[[:lower:]]+", ["zed"], ["Zed"]),
    ("x[[:space:]]y", ["x y", "x\ty"], ["xy"]),
    ("x[[:blank:]]y", ["x y"], ["x\ny"]),
    ("[[:punct:]].*", ["_svc", ".hidden", "]x", "[x"], ["svc"]),
    ("[[:xdigit:]]+", ["beef", "C0FFEE"], ["beefy"]),
    ("[[:cntrl:]]", ["\x01"], ["a"]),
    ("[[:print:]]+", ["a b"], ["a\x7f"]),
    ("[[:graph:]]+", ["a.b"], ["a b"]),
    ("[^[:digit:]a-c].*", ["mike", "Zed"], ["amy", "bob", "7up"]),   # negated, class + range
    ("[[:digit:][:upper:]_]+", ["A_1"], ["a_1"]),
    ("(?i)[[:upper:]]+", ["amy"], ["amy1"]),
    ("[]a]+", ["]a]"], ["b"]),                                # ']' first is a literal
    ("[a-]+", ["a-a"], ["b"]),                                # '-' last is a literal
    ("[[.-.]a]+", ["-a"], ["b"]),                             # a collating element
    ("[[a]+", ["[a"], ["b"]),                                 # a lone '[' is a literal
])
def test_posix_bracket_classes(regex, members, strangers):
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # no FutureWarning as the only sign of trouble
        groups = BackupGroups.parse(f"g={regex}\n", Path("g.conf"))
    assert [u for u in members if groups.group_of(u) != "g"] == []
    assert [u for u in strangers if groups.group_of(u) == "g"] == []


@pytest.mark.parametrize("regex, words", [
    ("[[:digits:]].*", "unknown character class [:digits:]"),
    ("[:digit:].*", "character class syntax is [[:digit:]], not [:digit:]"),
    ("[a-[:digit:]]", "a range cannot end in a character class"),
    ("[[:digit:]", "never closed"),
    ("[[:digit", "never closed"),
    ("[[.ch.]]", "single-character collating elements"),
    ("[z-a]", "bad character range"),
])
def test_posix_bracket_errors_name_file_and_line(regex, words):
    with pytest.raises(ConfigError) as err:
        BackupGroups.parse(f"# groups\ngroupA=[a-l].*\ngroupC={regex}\n",
                           Path("/etc/ims/backup-groups.conf"))
    assert str(err.value).startswith(f"/etc/ims/backup-groups.conf:3: invalid regex {regex!r}: ")
    assert words in str(err.value) and "\n" not in str(err.value)


def test_re_warning_is_an_error_not_a_stderr_line(monkeypatch):
    # what re only warns about (here: the untranslated '[[:', a "possible nested set") is
    # refused with file and line, never left as a FutureWarning on stderr
    import ims.config
    monkeypatch.setattr(ims.config, "translate", lambda regex: regex)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ConfigError, match=r"^g.conf:2: invalid regex '\[\[:digit:\]\]\.\*':"
                                              r" Possible nested set"):
            BackupGroups.parse("a=a.*\ng=[[:digit:]].*\n", Path("g.conf"))


def test_empty_warning_names_file_line_and_regex():
    groups = BackupGroups.parse("groupA=[a-l].*\nstaff=staff-.*\n", Path("/etc/ims/g.conf"))
    assert groups.custom_names() == ["groupA", "staff"]
    text = groups.empty_warning("staff", ["primary"], ["primary", "secondary"])
    assert text.startswith("backup group 'staff' (/etc/ims/g.conf:2: staff-.*) matches no user"
                           " on partition(s) primary;")
    assert "on partition" not in groups.empty_warning("staff", ["primary"], ["primary"])


def test_groups_file_given_explicitly_must_exist(fs):
    fs.create_file("/c/msg.conf", contents="store.partition.primary.path = /p\n")
    with pytest.raises(ConfigError, match="^/c/candidate.conf: backup groups file not found"):
        Config.load(Path("/c"), Path("/c/candidate.conf"))
    fs.create_file("/c/candidate.conf", contents="staff=staff-.*\n")
    assert Config.load(Path("/c"), Path("/c/candidate.conf")).groups.custom_names() == ["staff"]


def test_exclusion_written_with_a_trailing_slash_is_the_folder(fs):
    """'Trash/' names no folder (no folder name ends in '/'): it is read as Trash, not as a
    name that silently excludes nothing."""
    fs.create_file("/etc/ims/msg.conf", contents=(
        "store.partition.primary.path = /p\n"
        "local.store.backup.exclude = Trash/%Archive/2024/ % Bulk Mail//%/\n"))
    conf = MsgConf.load(Path("/etc/ims/msg.conf"))
    assert conf.exclusions() == ["Trash", "Archive/2024", "Bulk Mail"]
