"""Links in the store a backup reads: what Dovecot serves through a link is backed up; a
link that leads back into the store, or a second way to one directory, is refused and named
(exit 1); message files are never read through a link, and a FIFO never blocks the run."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from archive_reader import read_archive
from conftest import run_cmd

from ims.samplestore import SampleSpec, generate
from ims.store.maildir import dirname_to_folder


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    generate(root, SampleSpec(users=5, messages_per_user=6, partitions=1, seed=5))
    return root


def users_of(store: Path) -> list[Path]:
    return sorted(p for p in (store / "partitions" / "primary").iterdir())


def backup(store: Path, target: Path, *names: str) -> tuple[int, dict]:
    result = run_cmd("imsbackup", "--json", "-f", str(target), *(names or ("/",)),
                     config_dir=store / "config")
    return result.returncode, json.loads(result.stdout)


def archived_keys(archive: Path, user: str, folder: str) -> set[str]:
    members = read_archive(archive.read_bytes()).members
    prefix = f"primary/{user}/{folder}/"
    return {m.name[len(prefix):] for m in members
            if m.name.startswith(prefix) and not m.name.endswith(".json")}


def a_folder(maildir: Path) -> Path:
    return sorted(p for p in maildir.iterdir() if p.name.startswith(".") and (p / "cur").is_dir())[0]


def maildir_keys(folder_dir: Path) -> set[str]:
    return {name.partition(":")[0] for sub in ("cur", "new") for name in os.listdir(folder_dir / sub)}


def test_user_moved_away_and_linked_back_is_backed_up(store, tmp_path):
    user_dir = users_of(store)[0]
    before = maildir_keys(user_dir / "Maildir")
    away = tmp_path / "bigdisk" / user_dir.name
    away.parent.mkdir()
    shutil.move(str(user_dir), str(away))
    user_dir.symlink_to(away)
    code, summary = backup(store, tmp_path / "full.ims")
    assert code == 0, summary
    assert summary["users"] == 5 and summary["skipped"] == []
    assert archived_keys(tmp_path / "full.ims", user_dir.name, "INBOX") == before


def test_maildir_moved_away_and_linked_back_is_backed_up(store, tmp_path):
    # the level below the user's directory: a link there is resolved and judged too
    user_dir = users_of(store)[0]
    before = maildir_keys(user_dir / "Maildir")
    away = tmp_path / "bigdisk" / "Maildir"
    away.parent.mkdir()
    shutil.move(str(user_dir / "Maildir"), str(away))
    (user_dir / "Maildir").symlink_to(away)
    code, summary = backup(store, tmp_path / "full.ims")
    assert code == 0, summary
    assert summary["users"] == 5 and summary["skipped"] == []
    assert archived_keys(tmp_path / "full.ims", user_dir.name, "INBOX") == before


def test_folder_linked_out_of_the_store_is_backed_up(store, tmp_path):
    user_dir = users_of(store)[1]
    trash = a_folder(user_dir / "Maildir")
    keys = maildir_keys(trash)
    assert keys
    away = tmp_path / "archive-disk" / "trash"
    away.parent.mkdir()
    shutil.move(str(trash), str(away))
    trash.symlink_to(away)
    code, summary = backup(store, tmp_path / "full.ims")
    assert code == 0, summary
    assert archived_keys(tmp_path / "full.ims", user_dir.name,
                         dirname_to_folder(trash.name)) == keys


@pytest.mark.parametrize("kind", ["self", "other-user", "second-link", "user-into-store",
                                  "maildir-into-store"])
def test_links_back_into_the_store_are_refused_and_named(store, tmp_path, kind):
    users = users_of(store)
    maildir = users[2] / "Maildir"
    if kind == "self":
        link = maildir / ".Loop"
        link.symlink_to(".")
        expected = f"/{users[2].name}/Loop"
    elif kind == "other-user":
        link = maildir / ".Theirs"
        link.symlink_to(users[3] / "Maildir")
        expected = f"/{users[2].name}/Theirs"
    elif kind == "second-link":
        away = tmp_path / "away"
        folder = a_folder(users[3] / "Maildir")
        shutil.move(str(folder), str(away))
        folder.symlink_to(away)
        link = maildir / ".Copy"
        link.symlink_to(away)
        expected = "/Copy"          # whichever of the two is met second is refused
    elif kind == "maildir-into-store":
        # the level below the user's directory: a link there is looked at as one above it
        shutil.move(str(maildir), str(tmp_path / "old-maildir"))
        link = maildir
        link.symlink_to(users[3] / "Maildir")
        expected = f"/{users[2].name}"
    else:
        link = users[0].parent / "zz-alias"
        link.symlink_to(users[3].name)
        expected = "/zz-alias"
    code, summary = backup(store, tmp_path / "full.ims")
    assert code == 1, summary
    named = [line for line in summary["skipped"] if "not followed" in line]
    assert len(named) == 1, summary["skipped"]
    if kind == "second-link":
        assert "/Copy" in named[0] or f"/{dirname_to_folder(folder.name)}:" in named[0], named
    else:
        assert expected in named[0], named
    assert str(link) in named[0]


def test_message_links_and_fifos_are_skipped_not_followed(store, tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"root's secret\n")
    secret.chmod(0o600)
    cur = users_of(store)[4] / "Maildir" / "cur"
    (cur / "1700000000.M1P1.host:2,S").symlink_to(secret)
    os.mkfifo(cur / "1700000001.M1P1.host:2,S")
    result = run_cmd("imsbackup", "--json", "-f", str(tmp_path / "full.ims"), "/",
                     config_dir=store / "config", timeout=60)
    summary = json.loads(result.stdout)
    assert result.returncode == 1, summary
    skipped = "\n".join(summary["skipped"])
    assert "1700000000.M1P1.host" in skipped and "1700000001.M1P1.host" in skipped, skipped
    assert b"root's secret" not in (tmp_path / "full.ims").read_bytes()
