"""Archives over 2 GiB, to a file and to a pipe (messages over the in-memory limit stream)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from conftest import command
from helpers import write_config

MESSAGE_SIZE = 800 * 1024 * 1024   # three of them: 2.4 GB of message data


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("big")
    maildir = root / "p" / "giant" / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    lines = ["3 V1700000000 N4 Gfeedface"]
    for uid in (1, 2, 3):
        base = f"17000000{uid}.M1P1.big,S={MESSAGE_SIZE}"
        path = maildir / "cur" / f"{base}:2,S"
        with open(path, "wb") as out:
            out.write(f"Subject: big {uid}\n\n".encode())
            out.truncate(MESSAGE_SIZE)    # sparse: cheap to make, still 800 MB to read
        lines.append(f"{uid} :{base}")
    (maildir / "dovecot-uidlist").write_text("\n".join(lines) + "\n")
    config = write_config(root / "config", {"p": root / "p"}, groups=None)
    yield config, root
    for path in (maildir / "cur").iterdir():
        path.unlink()


def tar_listing(source: str, stdin=None) -> list[str]:
    result = subprocess.run(["tar", "-tvf", source, "--warning=no-unknown-keyword"],
                            stdin=stdin, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_over_2gib_to_a_file(big_store, tmp_path):
    config, root = big_store
    target = root / "big.ims"
    env = dict(os.environ, IMS_CONFIG_DIR=str(config))
    result = subprocess.run([command("imsbackup"), "-f", str(target), "--json", "/"], env=env,
                            capture_output=True)
    assert result.returncode == 0, result.stderr
    try:
        assert target.stat().st_size > 3 * MESSAGE_SIZE > 2 ** 31
        listing = tar_listing(str(target))
        sizes = [int(line.split()[2]) for line in listing if ".M1P1.big" in line]
        assert sizes == [MESSAGE_SIZE] * 3
        # the trailer sits in the last records: its offsets are past 2 GiB
        with open(target, "rb") as archive:
            archive.seek(-64 * 1024, os.SEEK_END)
            tail = archive.read()
        start = tail.rindex(b'{"format":"ims-archive","complete":true')
        trailer = json.loads(tail[start:tail.index(b"\0", start)])
        assert trailer["trailer_offset"] > 3 * MESSAGE_SIZE
        assert trailer["counts"]["bytes"] == 3 * MESSAGE_SIZE
    finally:
        target.unlink()


def test_over_2gib_to_a_pipe(big_store):
    config, _ = big_store
    env = dict(os.environ, IMS_CONFIG_DIR=str(config))
    backup = subprocess.Popen([command("imsbackup"), "-f", "-", "/"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    listing = tar_listing("-", stdin=backup.stdout)
    backup.stdout.close()
    assert backup.wait(timeout=300) == 0, backup.stderr.read()
    assert len([line for line in listing if ".M1P1.big" in line]) == 3
    assert listing[-1].endswith(".ims/trailer.json")
