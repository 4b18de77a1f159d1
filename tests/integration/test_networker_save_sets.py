"""The NSR client's save sets cover every user, also those who arrive after nsradmin ran, and
the .res precmd survives a backup directory with a space; through the NetWorker stand-in,
on a sample store (no Dovecot needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import TESTS, command, run_cmd

from ims.samplestore import SampleSpec, generate

sys.path.insert(0, str(TESTS / "networker"))
import standin  # noqa: E402


def sample(tmp_path: Path, backup: Path) -> tuple[Path, Path]:
    """Six users in groupA and groupB; groupC and ungrouped have none.  (config, primary)"""
    store = tmp_path / "store"
    generate(store, SampleSpec(users=6, messages_per_user=3, partitions=2, seed=5))
    config = store / "config"
    with open(config / "msg.conf", "a") as conf:
        conf.write(f"local.store.backupdir = {backup}\nlocal.store.backup.servername = mailhost\n")
    return config, store / "partitions" / "primary"


def nsr(bin_dir: Path, program: str, *args: str, config: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, IMS_CONFIG_DIR=str(config))
    return subprocess.run([str(bin_dir / program), *args], env=env, capture_output=True, text=True)


def saved_paths() -> set[str]:
    return {r["path"] for r in standin.load_records() if r["asm"] == "imsasm" and r["complete"]}


def test_users_joining_an_empty_group_or_ungrouped_later_are_saved(networker, tmp_path):
    backup = tmp_path / "backup"
    config, primary = sample(tmp_path, backup)
    run_cmd("mkbackupdir", config_dir=config, check_rc=0)
    server = backup / "mailhost"
    # every configured group has its directory, users or not: each is a save set
    assert {p.name for p in server.iterdir()} == {"groupA", "groupB", "groupC", "ungrouped"}
    run_cmd("imsconfig", "res", "--group", "mailgroup", "--mkbackupdir", command("mkbackupdir"),
            "-o", str(Path(os.environ["NSR_RES"]) / "mailgroup.res"), config_dir=config, check_rc=0)
    nsradmin_input = tmp_path / "mailgroup.nsradmin"
    run_cmd("imsconfig", "nsradmin", "--server", "nwserver", "--group", "mailgroup",
            "-o", str(nsradmin_input), config_dir=config, check_rc=0)
    client = standin.parse_nsradmin(nsradmin_input.read_text(), "mailgroup.nsradmin")[1].attrs
    assert sorted(client["save set"]) == [str(server / g) for g in
                                          ("groupA", "groupB", "groupC", "ungrouped")]
    assert nsr(networker, "nsradmin", "-s", "nwserver", "-i", str(nsradmin_input),
               config=config).returncode == 0

    # after nsradmin: a user of the empty groupC, and one no group matches
    template = next(primary.iterdir())
    shutil.copytree(template, primary / "9lives", symlinks=True)
    shutil.copytree(template, primary / "Zed", symlinks=True)
    result = nsr(networker, "savegrp", "mailgroup", config=config)
    assert result.returncode == 0, result.stderr
    saved = saved_paths()
    assert str(server / "groupC" / "9lives" / "INBOX") in saved
    assert str(server / "ungrouped" / "Zed" / "INBOX") in saved

    # they leave again: the group directories stay, empty, so the save sets still exist
    shutil.rmtree(primary / "9lives")
    shutil.rmtree(primary / "Zed")
    run_cmd("mkbackupdir", config_dir=config, check_rc=0)
    assert (server / "groupC").is_dir() and not any((server / "groupC").iterdir())
    assert (server / "ungrouped").is_dir()
    assert nsr(networker, "savegrp", "mailgroup", config=config).returncode == 0


def test_a_group_added_later_is_named_until_then_exit_1(tmp_path):
    """A group added to backup-groups.conf after the tree was made: mkbackupdir makes its
    directory and names it as the save set to add, with exit 1 (its users are otherwise not
    saved, and savegrp would not say so); the next run finds it and exits 0."""
    backup = tmp_path / "backup"
    config, primary = sample(tmp_path, backup)
    run_cmd("mkbackupdir", config_dir=config, check_rc=0)
    with open(config / "backup-groups.conf", "a") as groups:
        groups.write("staff=staff-.*\n")
    result = run_cmd("mkbackupdir", config_dir=config)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.decode().splitlines() if "save set" in line]
    assert len(lines) == 1 and str(backup / "mailhost" / "staff") in lines[0]
    assert "imsconfig nsradmin" in lines[0]
    assert (backup / "mailhost" / "staff").is_dir()
    run_cmd("mkbackupdir", config_dir=config, check_rc=0)


def test_without_a_groups_file_the_one_save_set_is_all(tmp_path):
    backup = tmp_path / "backup"
    config, primary = sample(tmp_path, backup)
    (config / "backup-groups.conf").unlink()
    for user in list(primary.iterdir()):
        shutil.rmtree(user)
    for user in list((primary.parent / "secondary").iterdir()):
        shutil.rmtree(user)
    run_cmd("mkbackupdir", config_dir=config, check_rc=0)          # no user at all
    assert [p.name for p in (backup / "mailhost").iterdir()] == ["ALL"]
    out = run_cmd("imsconfig", "nsradmin", "--server", "nw", "--group", "g", config_dir=config,
                  check_rc=0).stdout.decode()
    client = standin.parse_nsradmin(out, "stdout")[1].attrs
    assert client["save set"] == [str(backup / "mailhost" / "ALL")]


def test_precmd_with_a_space_in_the_backup_directory_builds_the_tree_there(networker, tmp_path):
    """savepnpc runs a precmd through a shell: the words of mkbackupdir's are quoted."""
    backup = tmp_path / "my backup"
    config, _ = sample(tmp_path, backup)            # imsasm finds the tree by the setting
    res = Path(os.environ["NSR_RES"]) / "spaced.res"
    run_cmd("imsconfig", "res", "--group", "spaced", "--mkbackupdir", command("mkbackupdir"),
            "--backupdir", str(backup), "-o", str(res), config_dir=config, check_rc=0)
    assert standin.parse_res(res)["precmd"] == [f"{command('mkbackupdir')} -p '{backup}'"]
    server = backup / "mailhost"
    result = nsr(networker, "savepnpc", "-s", "nw", "-g", "spaced", str(server), config=config)
    assert result.returncode == 0, result.stderr
    assert (server / "groupA").is_dir() and not (tmp_path / "my").exists()
    assert any(p.startswith(str(server / "groupA")) for p in saved_paths())
