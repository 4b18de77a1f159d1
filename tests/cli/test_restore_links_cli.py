"""A restore never writes through a link inside the target store: the mail user owns the
store and can replace any directory by a link to somewhere else.  Each case plants a link
where a directory was, restores, and checks that the place the link names is untouched and
that the link is named on stderr (the folder or user is skipped: exit 1)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import run_cmd

from ims.store.maildir import dirname_to_folder


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(directory)): (p.lstat().st_mode, p.lstat().st_size)
            for p in directory.rglob("*")}


def user_dirs(store: Path) -> list[Path]:
    return sorted((store / "partitions" / "primary").iterdir())


def a_folder(maildir: Path) -> Path:
    return sorted(p for p in maildir.iterdir() if p.name.startswith(".") and (p / "cur").is_dir())[0]


@pytest.fixture
def backed_up(fresh_store: Path, tmp_path: Path) -> tuple[Path, Path]:
    archive = tmp_path / "full.ims"
    run_cmd("imsbackup", "-f", str(archive), "/", config_dir=fresh_store / "config", check_rc=0)
    return fresh_store, archive


def restore(store: Path, archive: Path, *names: str):
    return run_cmd("imsrestore", "--json", "-f", str(archive), *names,
                   config_dir=store / "config")


@pytest.mark.parametrize("where", ["folder", "folder-cur", "folder-tmp", "maildir-tmp",
                                   "user", "maildir"])
def test_a_link_planted_in_the_store_is_refused_and_named(backed_up, tmp_path, where):
    store, archive = backed_up
    user = user_dirs(store)[0]
    maildir = user / "Maildir"
    folder = a_folder(maildir)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "cur").mkdir()
    (outside / "new").mkdir()
    (outside / "tmp").mkdir()
    if where == "folder":
        shutil.rmtree(folder)
        link = folder
    elif where == "folder-cur":
        shutil.rmtree(folder / "cur")
        link = folder / "cur"
    elif where == "folder-tmp":
        shutil.rmtree(folder / "tmp")
        link = folder / "tmp"
    elif where == "maildir-tmp":
        shutil.rmtree(folder)             # restored whole: built aside in the Maildir's tmp/
        shutil.rmtree(maildir / "tmp")
        link = maildir / "tmp"
    elif where == "user":
        shutil.rmtree(user)
        link = user
    else:
        shutil.rmtree(maildir)
        link = maildir
    link.symlink_to(outside)
    before = snapshot(outside)
    name = f"/primary/user/{user.name}"
    if where.startswith("folder") or where == "maildir-tmp":
        name += "/" + dirname_to_folder(folder.name)
    result = restore(store, archive, name)
    assert snapshot(outside) == before, "written through a link, outside the store"
    assert result.returncode == 1, result.stderr.decode()
    summary = json.loads(result.stdout)
    assert summary["messages"] == 0, summary
    assert any(str(link) in line and "link" in line for line in summary["skipped"]), summary
    assert str(link) in result.stderr.decode()
    assert b"Traceback" not in result.stderr
    assert link.is_symlink()                      # refused, not replaced


def test_a_link_to_another_users_folder_is_not_written_through(backed_up, tmp_path):
    store, archive = backed_up
    victim, attacker = user_dirs(store)[:2]
    victim_folder = a_folder(victim / "Maildir")
    before = snapshot(victim_folder)
    folder = a_folder(attacker / "Maildir")
    shutil.rmtree(folder)
    folder.symlink_to(victim_folder)
    result = restore(store, archive, f"/primary/user/{attacker.name}")
    assert snapshot(victim_folder) == before
    assert result.returncode == 1, result.stderr.decode()
    assert str(folder) in result.stderr.decode()


def test_subscriptions_through_a_linked_maildir_are_not_written(backed_up, tmp_path):
    store, archive = backed_up
    user = user_dirs(store)[2]
    outside = tmp_path / "elsewhere"
    shutil.copytree(user / "Maildir", outside, symlinks=True)
    shutil.rmtree(user / "Maildir")
    (user / "Maildir").symlink_to(outside)
    before = snapshot(outside)
    result = restore(store, archive, f"/primary/user/{user.name}")
    assert snapshot(outside) == before
    assert result.returncode == 1


def test_a_clean_store_still_restores_through_a_linked_partition(fresh_store, tmp_path):
    """The partition directory is the administrator's configuration: a link there is fine."""
    archive = tmp_path / "full.ims"
    run_cmd("imsbackup", "-f", str(archive), "/", config_dir=fresh_store / "config", check_rc=0)
    real = tmp_path / "real-primary"
    partition = fresh_store / "partitions" / "primary"
    shutil.move(str(partition), str(real))
    partition.symlink_to(real)
    victim = sorted(real.iterdir())[0]
    shutil.rmtree(victim)
    result = restore(fresh_store, archive, f"/primary/user/{victim.name}")
    assert result.returncode == 0, result.stderr.decode()
    assert (victim / "Maildir" / "cur").is_dir() and any((victim / "Maildir" / "cur").iterdir())
    assert os.path.realpath(victim) == str(real / victim.name)
