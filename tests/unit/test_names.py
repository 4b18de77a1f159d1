"""Logical names -> scope, against a store laid out on pyfakefs."""

from __future__ import annotations

from pathlib import Path

import pytest

from ims.config import BackupGroups, Config, MsgConf
from ims.errors import UnknownName, UsageError
from ims.names import UserScope, resolve, select_folders
from ims.store.maildir import MaildirStore

LAYOUT = {
    "primary": {"amy": ["Sent", "Trash", "Trash.Old", "&AMQ-rger"], "mike": ["Sent"], "Zed": []},
    "secondary": {"0800help": ["Bulk Mail"], "bob": []},
}


@pytest.fixture
def world(fs):
    partitions = {}
    for partition, users in LAYOUT.items():
        root = Path(f"/srv/{partition}")
        partitions[partition] = root
        for user, folders in users.items():
            maildir = root / user / "Maildir"
            fs.create_dir(maildir / "cur")
            for folder in folders:
                fs.create_dir(maildir / f".{folder}" / "cur")
    msg = MsgConf(Path("/etc/ims/msg.conf"), {
        f"store.partition.{p}.path": str(r) for p, r in partitions.items()})
    groups = BackupGroups.parse("groupA=[a-l].*\ngroupB=[m-z].*\ngroupC=[0-9].*\n",
                                Path("/etc/ims/backup-groups.conf"))
    config = Config(Path("/etc/ims"), msg, groups)
    return config, MaildirStore(msg.partitions(), "%u/Maildir")


def users_of(scope):
    return [(s.partition, s.user) for s in scope.users]


def test_whole_store_and_partitions(world):
    config, store = world
    assert users_of(resolve(["/"], config, store)) == [
        ("primary", "Zed"), ("primary", "amy"), ("primary", "mike"),
        ("secondary", "0800help"), ("secondary", "bob")]
    assert users_of(resolve(["/secondary"], config, store)) == [
        ("secondary", "0800help"), ("secondary", "bob")]


def test_groups_and_star(world):
    config, store = world
    assert users_of(resolve(["/*/groupA"], config, store)) == [("primary", "amy"), ("secondary", "bob")]
    assert users_of(resolve(["/primary/ungrouped"], config, store)) == [("primary", "Zed")]
    assert users_of(resolve(["/secondary/ALL"], config, store)) == users_of(
        resolve(["/secondary/user"], config, store))
    scope = resolve(["/primary"], config, store)
    assert any("Zed" in w and "ungrouped" in w for w in scope.warnings)


def test_user_and_folder_names(world):
    config, store = world
    scope = resolve(["/primary/groupA/amy/Sent", "/primary/user/amy/Ärger"], config, store)
    assert scope.users[0].folders == {"Sent", "Ärger"}
    scope = resolve(["/primary/user/amy/&AMQ-rger"], config, store,
                    folder_encoding="IMAP_MODIFIED-UTF-7")
    assert scope.users[0].folders == {"Ärger"}
    scope = resolve(["amy", "/primary/user/amy/Sent"], config, store)
    assert scope.users[0].folders is None and scope.users[0].named_folders == {"Sent"}
    assert users_of(resolve(["0800help"], config, store)) == [("secondary", "0800help")]
    scope = resolve(["/primary/user/amy/inbox"], config, store)
    assert scope.users[0].folders == {"INBOX"}


@pytest.mark.parametrize("name, message", [
    ("/tertiary", "no such partition 'tertiary'"),
    ("/primary/groupQ", "no such backup group 'groupQ'"),
    ("/primary/groupA/nobody", "no such user 'nobody' on partition 'primary'"),
    ("/primary/groupB/amy", "user 'amy' is in backup group 'groupA', not 'groupB'"),
    ("/primary/user/amy/Nope", "user 'amy' has no folder 'Nope'"),
    ("ghost", "ghost: no such user on any partition"),
])
def test_unknown_names(world, name, message):
    config, store = world
    with pytest.raises(UnknownName, match=message):
        resolve([name], config, store)


def test_no_names_is_a_usage_error(world):
    config, store = world
    with pytest.raises(UsageError):
        resolve([], config, store)


def test_exclusions_apply_to_subfolders_unless_named():
    everything = UserScope("primary", "amy", "groupA", folders=None)
    folders = ["INBOX", "Sent", "Trash", "Trash/Old", "Bulk Mail"]
    chosen, excluded = select_folders(everything, folders, ["Trash", "Bulk Mail"])
    assert chosen == ["INBOX", "Sent"] and excluded == ["Trash", "Trash/Old", "Bulk Mail"]
    named = UserScope("primary", "amy", "groupA", folders={"Trash"}, named_folders={"Trash"})
    assert select_folders(named, folders, ["Trash"]) == (["Trash", "Trash/Old"], [])


def with_groups(world, text: str) -> tuple[Config, MaildirStore]:
    config, store = world
    groups = BackupGroups.parse(text, Path("/etc/ims/backup-groups.conf"))
    return Config(config.directory, config.msg, groups), store


def test_sun_user_form_is_accepted(world):
    # Sun's guide writes /primary/user1; no group of that name: it can only be the user
    config, store = world
    scope = resolve(["/primary/amy"], config, store)
    assert users_of(scope) == [("primary", "amy")] and scope.users[0].folders is None
    assert not any("amy" in w for w in scope.warnings)
    scope = resolve(["/primary/amy/Sent"], config, store)
    assert scope.users[0].folders == {"Sent"}
    assert users_of(resolve(["/*/bob"], config, store)) == [("secondary", "bob")]
    with pytest.raises(UnknownName, match="no such backup group 'amy'"):
        resolve(["/secondary/amy"], config, store)        # amy is not on secondary


def test_a_name_both_group_and_user_stays_the_group(world):
    config, store = with_groups(world, "mike=(mike|Zed)\ngroupA=[a-l].*\n")
    scope = resolve(["/primary/mike"], config, store)
    assert users_of(scope) == [("primary", "Zed"), ("primary", "mike")]     # the group
    assert "/primary/mike is the backup group 'mike'; the user 'mike' is /primary/user/mike" \
        in scope.warnings


def test_known_groups_are_listed_once(world):
    config, store = world
    bare = Config(config.directory, config.msg, BackupGroups(None))
    with pytest.raises(UnknownName) as err:
        resolve(["/primary/groupQ"], bare, store)
    assert str(err.value).endswith("(known: user, ALL)")


def test_empty_groups_are_warned_about(world):
    config, store = with_groups(
        world, "groupA=[a-l].*\nshadow=amy\ngroupC=[[:digit:]].*\nstaff=staff-.*\n")
    scope = resolve(["/"], config, store)
    assert scope.empty_groups == ["shadow", "staff"]      # groupC has 0800help
    assert any(w.startswith("backup group 'staff' (/etc/ims/backup-groups.conf:4: staff-.*)"
                            " matches no user;") for w in scope.warnings)
    scope = resolve(["/primary/groupC"], config, store)
    assert scope.empty_groups == ["groupC"] and scope.users == []
    assert any("'groupC'" in w and "on partition(s) primary" in w for w in scope.warnings)
    # a user named alone covers no group: nothing to say about groups
    assert resolve(["/primary/user/amy"], config, store).empty_groups == []
    assert resolve(["/secondary/groupA"], config, store).empty_groups == []
