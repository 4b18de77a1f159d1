"""Two directories of one Maildir that decode to one folder name (a stray ".INBOX", a raw
UTF-8 name beside its modified UTF-7 form): the one in Dovecot's encoding is the folder, the
other is named and left out (exit 1) — never mixed into the folder, full or incremental."""

from __future__ import annotations

import time

from archive_reader import read_archive
from conftest import run_cmd


def make_dir_folder(directory, message: bytes, name: str) -> None:
    for sub in ("cur", "new", "tmp"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    (directory / "maildirfolder").touch()
    (directory / "cur" / f"{name}:2,S").write_bytes(message)


def folder_members(data: bytes) -> list[tuple[str, str]]:
    archive = read_archive(data)
    return [(m.json()["user"], m.json()["folder"]) for m in archive.members if m.kind == "folder"]


def test_twin_folder_directories_are_named_and_left_out(fresh_store, tmp_path):
    config = fresh_store / "config"
    user_dir = sorted((fresh_store / "partitions" / "primary").iterdir())[0]
    maildir = user_dir / "Maildir"
    make_dir_folder(maildir / ".INBOX", b"Subject: stray\r\n\r\nstray\r\n", "1700000001.M1P1.h")
    make_dir_folder(maildir / ".Z&APw-rich", b"Subject: z\r\n\r\nencoded\r\n", "1700000002.M1P1.h")
    make_dir_folder(maildir / ".Zürich", b"Subject: raw\r\n\r\nraw\r\n", "1700000003.M1P1.h")

    since = time.strftime("%Y%m%d:%H%M%S")            # at or before the full backup's start
    full = run_cmd("imsbackup", "-f", "-", "/", config_dir=config)
    assert full.returncode == 1, full.stderr
    stderr = full.stderr.decode()
    assert ".INBOX holds the same folder name" in stderr and ".Zürich holds the same" in stderr
    folders = folder_members(full.stdout)
    assert len(folders) == len(set(folders))
    assert b"stray" not in full.stdout and b"Subject: raw" not in full.stdout
    assert b"encoded" in full.stdout

    time.sleep(1.1)
    (maildir / "new" / "1999999999.M9P9.h").write_bytes(b"Subject: later\r\n\r\nlater\r\n")
    incremental = run_cmd("imsbackup", "-d", since, "-f", "-", "/", config_dir=config)
    assert incremental.returncode == 1, incremental.stderr
    assert b"Subject: later" in incremental.stdout        # INBOX is its own new/, not .INBOX's
    (tmp_path / "full.ims").write_bytes(full.stdout)
    (tmp_path / "incr.ims").write_bytes(incremental.stdout)
    listing = run_cmd("imsrestore", "-t", "-f", str(tmp_path / "full.ims"), "-f",
                      str(tmp_path / "incr.ims"), config_dir=config)
    assert listing.returncode == 0, listing.stderr
