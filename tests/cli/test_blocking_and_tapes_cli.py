"""The blocking factor is read from the archive when -b is not given (file, pipe, chain,
--where, -r, -h), a -b that disagrees stays an error, and a tape (a character device) that
must be read out of order is refused with the dd command that copies it to a file."""

from __future__ import annotations

import json
import os
import pty
import threading
import time
import tty
from pathlib import Path

from conftest import run_cmd


def messages(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)).split(":")[0]: p.read_bytes()
            for p in root.rglob("*") if p.is_file() and p.parent.name in ("cur", "new")}


def backup(store: Path, *args: str) -> bytes:
    return run_cmd("imsbackup", "-f", "-", *args, config_dir=store / "config", check_rc=0).stdout


def restore(store: Path, *args: str, data: bytes | None = None):
    return run_cmd("imsrestore", *args, config_dir=store / "config", input=data)


def take_away_users(store: Path, aside: Path) -> dict[str, bytes]:
    """Move the whole partition tree aside; returns its messages."""
    partitions = store / "partitions"
    before = messages(partitions)
    os.rename(partitions, aside)
    partitions.mkdir()
    for partition in aside.iterdir():
        (partitions / partition.name).mkdir()
    return before


def test_any_blocking_factor_is_read_without_b(fresh_store, tmp_path):
    archive = tmp_path / "b64.ims"
    archive.write_bytes(backup(fresh_store, "-b", "64", "/"))
    assert archive.stat().st_size % (512 * 64) == 0

    header = restore(fresh_store, "-h", "-f", str(archive))
    assert header.returncode == 0, header.stderr
    assert json.loads(header.stdout)["blocking_factor"] == 64
    assert restore(fresh_store, "-t", "-f", str(archive)).returncode == 0

    before = take_away_users(fresh_store, tmp_path / "aside")
    from_file = restore(fresh_store, "-f", str(archive))
    assert from_file.returncode == 0, from_file.stderr
    assert messages(fresh_store / "partitions") == before

    take_away_users(fresh_store, tmp_path / "aside2")
    from_pipe = restore(fresh_store, "-f", "-", data=archive.read_bytes())
    assert from_pipe.returncode == 0, from_pipe.stderr
    assert messages(fresh_store / "partitions") == before

    stored = restore(fresh_store, "--where", str(tmp_path / "where"), "-f", "-",
                     data=archive.read_bytes())
    assert stored.returncode == 0, stored.stderr
    assert [p.read_bytes() for p in (tmp_path / "where").iterdir()] == [archive.read_bytes()]
    assert (tmp_path / "where").stat().st_mode & 0o777 == 0o700      # it names every user


def test_a_b_that_disagrees_stays_an_error(fresh_store, tmp_path):
    data = backup(fresh_store, "-b", "64", "/")
    for source in ("file", "pipe"):
        if source == "file":
            (tmp_path / "a.ims").write_bytes(data)
            result = restore(fresh_store, "-b", "20", "-t", "-f", str(tmp_path / "a.ims"))
        else:
            result = restore(fresh_store, "-b", "20", "-t", "-f", "-", data=data)
        assert result.returncode == 4, (source, result.stderr)
        assert b"written with -b 64, read with -b 20" in result.stderr
    assert restore(fresh_store, "-b", "64", "-t", "-f", "-", data=data).returncode == 0


def test_a_chain_of_mixed_blocking_factors(fresh_store, tmp_path):
    full = tmp_path / "full.ims"
    since = time.strftime("%Y%m%d:%H%M%S")      # at or before the full backup's recorded start
    full.write_bytes(backup(fresh_store, "-b", "64", "/"))
    time.sleep(1.1)
    user_dir = next((fresh_store / "partitions" / "primary").iterdir())
    new_mail = next((user_dir / "Maildir" / "cur").iterdir())
    (user_dir / "Maildir" / "new" / "1999999999.M1P1.test").write_bytes(b"Subject: later\r\n\r\nx\r\n")
    incremental = tmp_path / "incr.ims"
    incremental.write_bytes(backup(fresh_store, "-b", "8", "-d", since, "/"))
    assert new_mail.exists()
    before = take_away_users(fresh_store, tmp_path / "aside")
    result = restore(fresh_store, "-f", str(full), "-f", str(incremental))
    assert result.returncode == 0, result.stderr
    restored = messages(fresh_store / "partitions")
    assert restored == before


def _tape(data: bytes):
    """A character device that delivers ``data``: a pseudo-terminal in raw mode (the suite
    has no tape drive; what matters here is that the archive arrives on a character device)."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    name = os.ttyname(slave)

    def feed() -> None:
        try:
            os.write(master, data)
        except OSError:
            pass            # the reader stopped early and the terminal was closed

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    return name, master, slave


def test_a_tape_where_a_file_is_needed_names_the_dd_command(fresh_store, tmp_path):
    data = backup(fresh_store, "-b", "64", "/")
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps({"format": "ims-refs", "version": 1, "entries": []}))
    for args in (("-r", str(refs)), ("-f", str(tmp_path / "other.ims"))):
        (tmp_path / "other.ims").write_bytes(data)
        name, master, slave = _tape(data[:512 * 64 * 4])
        try:
            result = restore(fresh_store, "-f", name, *args)
        finally:
            os.close(master)
            os.close(slave)
        assert result.returncode == 2, result.stderr
        line = result.stderr.decode().strip()
        assert len(line.splitlines()) == 1, line
        assert f"dd if={name} of=FILE bs={512 * 64}" in line, line
        assert "not a pipe" not in line and "tape" in line


def test_a_pipe_where_a_file_is_needed_says_so(fresh_store, tmp_path):
    data = backup(fresh_store, "/")
    (tmp_path / "a.ims").write_bytes(data)
    result = restore(fresh_store, "-f", "/dev/stdin", "-f", str(tmp_path / "a.ims"), data=data)
    assert result.returncode == 2
    assert b"a pipe is read only in order; save the stream to a file" in result.stderr
