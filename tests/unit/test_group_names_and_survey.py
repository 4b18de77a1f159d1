"""Restore NAMEs in Sun's user form (/primary/user1), and the survey behind
``imsconfig show-groups`` (pyfakefs store)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ims.config import BackupGroups
from ims.errors import UsageError
from ims.groupsurvey import survey
from ims.restore.selection import Pattern, accept_user_forms, not_in_archive, parse_selection
from ims.restore.session import check_names
from ims.store.maildir import MaildirStore

RECORDED = [("primary", "groupA", "amy"), ("primary", "groupB", "mike"),
            ("primary", "mike", "Zed"), ("secondary", "groupA", "bob")]


def test_restore_name_in_sun_user_form_is_taken_as_the_user():
    names = ["/primary/amy", "/primary/amy/Sent", "/*/bob", "/primary/groupA", "/primary/ghost"]
    patterns, notes = accept_user_forms(names, tuple(parse_selection(names)), RECORDED)
    assert patterns == (Pattern("primary", "user", "amy"), Pattern("primary", "user", "amy", "Sent"),
                        Pattern("*", "user", "bob"), Pattern("primary", "groupA"),
                        Pattern("primary", "ghost"))
    assert notes == []


def test_restore_name_both_group_and_user_stays_the_group_with_a_note():
    # 'mike' is a group the archive recorded (Zed's) and a user: the group, and a note
    names = ["/primary/mike", "/secondary/mike"]
    patterns, notes = accept_user_forms(names, tuple(parse_selection(names)), RECORDED)
    assert patterns == (Pattern("primary", "mike"), Pattern("secondary", "mike"))
    assert notes == ["/primary/mike is the backup group 'mike'; the user 'mike' is"
                     " /primary/user/mike"]


def test_not_in_archive_names_the_user_form_when_it_cannot_know():
    assert not_in_archive(["/primary/amy", "/primary/groupA/x"], "-") == (
        "/primary/amy /primary/groupA/x: not in the archive - (if 'amy' is a user:"
        " /primary/user/amy)")
    assert not_in_archive(["/primary/amy"], "a.ims", hint=False) == \
        "/primary/amy: not in the archive a.ims"


def test_every_name_must_select_a_user_or_a_folder_each_list_walked_once():
    """check_names takes the users and folders as iterables (a million-message trailer's
    70,000 folders are not copied into a list): each is walked at most once, the folders
    not at all when no unmatched NAME names a folder, and every NAME that selects nothing
    is named, in the order given."""
    users = [("primary", "groupA", "amy"), ("primary", "groupB", "bob")]
    folders = [("primary", "groupA", "amy", "INBOX"), ("primary", "groupA", "amy", "Sent"),
               ("primary", "groupB", "bob", "INBOX")]
    walked = {"users": 0, "folders": 0}

    def once(kind, items):
        walked[kind] += 1
        yield from items

    names = ["/primary/groupA/amy", "/primary/groupB"]
    check_names(names, tuple(parse_selection(names)), once("users", users),
                once("folders", folders), "a.ims")
    assert walked == {"users": 1, "folders": 0}

    names = ["/primary/groupB/bob/Sent", "/primary/groupA/amy/Sent", "/primary/ghost",
             "/primary/groupA/amy"]
    with pytest.raises(UsageError) as caught:
        check_names(names, tuple(parse_selection(names)), once("users", users),
                    once("folders", folders), "a.ims")
    assert str(caught.value) == "/primary/groupB/bob/Sent /primary/ghost: not in the archive a.ims"
    assert walked == {"users": 2, "folders": 1}


def test_survey_lists_users_sizes_and_flags_empty_groups(fs):
    for partition, user, files in [("p1", "amy", {"cur/1": 10, "new/2": 5, ".Sent/cur/3": 7}),
                                   ("p1", "Zed", {"cur/1": 100}), ("p2", "bob", {}),
                                   ("p2", "7up", {"cur/9": 1})]:
        fs.create_dir(f"/s/{partition}/{user}/Maildir/cur")
        for name, size in files.items():
            fs.create_file(f"/s/{partition}/{user}/Maildir/{name}", contents="x" * size)
        fs.create_file(f"/s/{partition}/{user}/Maildir/dovecot-uidlist", contents="3 V1 N4\n")
    store = MaildirStore({"p1": Path("/s/p1"), "p2": Path("/s/p2")}, "%u/Maildir")
    groups = BackupGroups.parse("groupA=[a-l].*\nvip=amy\ngroupC=[[:digit:]].*\n", Path("g.conf"))
    result = survey(groups, store)
    by_name = {g.name: g for g in result.groups}
    assert list(by_name) == ["groupA", "vip", "groupC", "ungrouped"]
    assert by_name["groupA"].users == {"p1": ["amy"], "p2": ["bob"]}
    assert (by_name["groupA"].messages, by_name["groupA"].bytes) == (3, 22)
    assert by_name["groupC"].users == {"p2": ["7up"]} and by_name["groupC"].bytes == 1
    assert by_name["ungrouped"].users == {"p1": ["Zed"]} and not by_name["ungrouped"].empty
    assert by_name["vip"].empty and by_name["vip"].shadowed == ["amy"]
    assert result.empty_groups() == ["vip"]
    text = result.as_text()
    vip = next(line for line in text.splitlines() if line.startswith("vip "))
    assert vip.split() == ["vip", "2", "amy", "0", "0", "0", "EMPTY:", "matches", "no", "user"]
    assert "  matched, but in an earlier group: amy" in text
    assert text.splitlines()[-1].split() == ["total", "4", "5", "123"]
    assert result.as_json()["empty_groups"] == ["vip"]
    counts_only = survey(groups, store, sizes=False).as_text(users=False, sizes=False)
    assert "Zed" not in counts_only and "MESSAGES" not in counts_only
    assert "  matched, but in an earlier group: 1 user(s)" in counts_only
    everyone = survey(BackupGroups(None), store).as_text()
    assert "no backup-groups.conf: every user is in ALL" in everyone and "ALL" in everyone
