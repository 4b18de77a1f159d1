"""Backup groups through the installed commands on a real filesystem: POSIX bracket classes,
groups that match nobody, ``imsconfig show-groups``, and Sun's user form /primary/user1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cmd

SUN = "groupA=[a-l].*\ngroupB=[m-z].*\n"


def config_with(sample_store: Path, tmp_path: Path, groups: str | None) -> Path:
    config = tmp_path / "config"
    shutil.copytree(sample_store / "config", config)
    if groups is None:
        (config / "backup-groups.conf").unlink()
    else:
        (config / "backup-groups.conf").write_text(groups)
    return config


def users_by_partition(sample_store: Path) -> dict[str, list[str]]:
    return {p.name: sorted(u.name for u in p.iterdir())
            for p in sorted((sample_store / "partitions").iterdir())}


def one_line(stderr: bytes) -> str:
    lines = [line for line in stderr.decode().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_posix_class_group_takes_its_users(sample_store, tmp_path):
    config = config_with(sample_store, tmp_path, SUN + "groupC=[[:digit:]].*\n")
    digits = [u for users in users_by_partition(sample_store).values() for u in users
              if u[0].isdigit()]
    assert digits, "the sample store has users whose IDs start with a digit"
    result = run_cmd("imsbackup", "-f", str(tmp_path / "c.ims"), "--json", "/*/groupC",
                     config_dir=config)
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout)["users"] == len(digits)
    assert result.stderr == b""            # no FutureWarning, no "matches no user"


def test_unknown_posix_class_is_one_line_naming_file_and_line(sample_store, tmp_path):
    config = config_with(sample_store, tmp_path, SUN + "groupC=[[:digits:]].*\n")
    target = tmp_path / "c.ims"
    result = run_cmd("imsbackup", "-f", str(target), "/", config_dir=config)
    assert result.returncode == 2
    assert one_line(result.stderr).startswith(
        f"imsbackup: error: {config}/backup-groups.conf:3: invalid regex '[[:digits:]].*':"
        " unknown character class [:digits:]")
    assert not target.exists() and not Path(f"{target}.partial").exists()


def test_group_matching_nobody_is_warned_without_changing_the_exit_code(sample_store, tmp_path):
    config = config_with(sample_store, tmp_path, SUN + "groupC=[0-9].*\nstaff=staff-.*\n")
    result = run_cmd("imsbackup", "-f", str(tmp_path / "all.ims"), "-v", "--json", "/",
                     config_dir=config)
    assert result.returncode == 0, result.stderr.decode()
    summary = json.loads(result.stdout)
    assert summary["exit_code"] == 0 and summary["empty_groups"] == ["staff"]
    expected = (f"backup group 'staff' ({config}/backup-groups.conf:4: staff-.*) matches no user;"
                " its users, if any, are in an earlier group or in 'ungrouped'")
    assert expected in summary["warnings"]
    stderr = result.stderr.decode()
    assert f"imsbackup: warning: {expected}" in stderr
    assert "; backup group(s) matching no user: staff" in stderr.splitlines()[-1]
    # mkbackupdir names it too
    result = run_cmd("mkbackupdir", "-p", str(tmp_path / "tree"), config_dir=config)
    assert result.returncode == 0, result.stderr.decode()
    assert f"mkbackupdir: warning: {expected}" in result.stderr.decode()


def test_show_groups_lists_users_sizes_and_empty_groups(sample_store, tmp_path):
    config = config_with(sample_store, tmp_path, SUN + "groupC=[[:digit:]].*\nstaff=staff-.*\n")
    layout = users_by_partition(sample_store)
    result = run_cmd("imsconfig", "show-groups", config_dir=config)
    assert result.returncode == 0, result.stderr.decode()
    text = result.stdout.decode()
    assert text.startswith(f"groups: {config}/backup-groups.conf\n")
    staff = next(line for line in text.splitlines() if line.startswith("staff "))
    assert staff.endswith("EMPTY: matches no user")
    for partition, users in layout.items():
        for user in users:
            assert user in text
    assert "backup group 'staff'" in result.stderr.decode()

    result = run_cmd("imsconfig", "show-groups", "--json", config_dir=config)
    assert result.returncode == 0
    survey = json.loads(result.stdout)
    groups = {g["name"]: g for g in survey["groups"]}
    assert list(groups) == ["groupA", "groupB", "groupC", "staff", "ungrouped"]
    assert survey["empty_groups"] == ["staff"] and groups["staff"]["empty"]
    for partition, users in layout.items():
        for user in users:
            home = "groupC" if user[0].isdigit() else "groupA" if user[0] <= "l" else "groupB"
            assert user in groups[home]["users"][partition], (user, home)
    assert sum(g["user_count"] for g in groups.values()) == sum(map(len, layout.values()))
    messages = len([p for p in (sample_store / "partitions").rglob("*")
                    if p.parent.name in ("cur", "new") and p.is_file()])
    assert sum(g["messages"] for g in groups.values()) == messages
    assert groups["groupA"]["bytes"] > 0

    # a candidate file, not installed: checked against the same store
    candidate = tmp_path / "candidate.conf"
    candidate.write_text("digits=[[:digit:]].*\n")
    result = run_cmd("imsconfig", "show-groups", "--json", "--groups-file", str(candidate),
                     config_dir=config)
    assert result.returncode == 0, result.stderr.decode()
    survey = json.loads(result.stdout)
    assert survey["groups_file"] == str(candidate)
    assert [g["name"] for g in survey["groups"]] == ["digits", "ungrouped"]
    candidate.write_text("# new\ndigits=[[:digits:]].*\n")
    result = run_cmd("imsconfig", "show-groups", "--groups-file", str(candidate),
                     config_dir=config)
    assert result.returncode == 2 and result.stdout == b""
    assert one_line(result.stderr).startswith(f"imsconfig: error: {candidate}:2: invalid regex")
    result = run_cmd("imsconfig", "show-groups", "--groups-file", str(tmp_path / "nope.conf"),
                     config_dir=config)
    assert result.returncode == 2 and "nope.conf: backup groups file not found" in \
        one_line(result.stderr)
    help_text = run_cmd("imsconfig", "show-groups", "--help", check_rc=0).stdout.decode()
    assert "imsconfig show-groups --groups-file" in help_text.strip().splitlines()[-2]


@pytest.fixture
def archive(sample_store, tmp_path) -> tuple[Path, Path, str, str]:
    """An archive of the whole sample store, made with a group named like a user (on
    primary: the group holds that user and another), its config, and the two users."""
    primary = [u for u in users_by_partition(sample_store)["primary"] if u.isalnum()]
    assert len(primary) >= 3
    user, other = primary[0], primary[1]
    config = config_with(sample_store, tmp_path, f"{user}=({user}|{other})\n" + SUN)
    target = tmp_path / "all.ims"
    run_cmd("imsbackup", "-f", str(target), "/", config_dir=config, check_rc=0)
    return target, config, user, other


def test_restore_takes_sun_user_form(archive):
    target, config, user, other = archive
    result = run_cmd("imsrestore", "-f", str(target), "-t", f"/primary/{other}", config_dir=config)
    assert result.returncode == 0, result.stderr.decode()
    users = [line for line in result.stdout.decode().splitlines() if line.startswith("user ")]
    assert len(users) == 1 and users[0].startswith(f"user /primary/{user}/{other} ("), users
    # from a pipe the users are not known beforehand: the message says which name fits
    result = run_cmd("imsrestore", "-f", "-", "-t", f"/primary/{other}", config_dir=config,
                     input=target.read_bytes())
    assert result.returncode == 2
    assert one_line(result.stderr) == (f"imsrestore: error: /primary/{other}: not in the"
                                       f" archive stdin (if '{other}' is a user:"
                                       f" /primary/user/{other})")


def test_restore_name_both_group_and_user_is_the_group(archive):
    target, config, user, other = archive
    result = run_cmd("imsrestore", "-f", str(target), "-t", f"/primary/{user}", config_dir=config)
    assert result.returncode == 0, result.stderr.decode()
    users = sorted(line.split()[1] for line in result.stdout.decode().splitlines()
                   if line.startswith("user "))
    assert users == sorted([f"/primary/{user}/{user}", f"/primary/{user}/{other}"])
    assert (f"imsrestore: note: /primary/{user} is the backup group '{user}'; the user"
            f" '{user}' is /primary/user/{user}") in result.stderr.decode()


def test_imsbackup_takes_sun_user_form_and_lists_known_groups_once(sample_store, tmp_path):
    user = users_by_partition(sample_store)["primary"][0]
    config = config_with(sample_store, tmp_path, None)
    result = run_cmd("imsbackup", "-f", str(tmp_path / "u.ims"), "--json", f"/primary/{user}",
                     config_dir=config)
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout)["users"] == 1
    result = run_cmd("imsbackup", "-f", str(tmp_path / "u.ims"), "/primary/groupQ",
                     config_dir=config)
    assert result.returncode == 2
    assert one_line(result.stderr).endswith("no such backup group 'groupQ' (known: user, ALL)")
