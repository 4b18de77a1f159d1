"""A chain keeps 32 bits of each message's base-name hash: two names of one short hash must
still each find their own bytes.  With a hash that makes most names collide (patched in, so
the restore runs in this process), a chain restore of every user brings back every message
with its own bytes, also those of a folder renamed between the archives (found among its
user's entries) and those shared by several users."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import run_cmd

from ims.restore import chain as chains


def messages(store: Path) -> dict[str, bytes]:
    """Every message file's bytes by user, folder directory and base name."""
    partitions = store / "partitions"
    return {f"{p.relative_to(partitions).parent.parent}/{p.name.split(':')[0]}": p.read_bytes()
            for p in partitions.rglob("*") if p.is_file() and p.parent.name in ("cur", "new")}


@pytest.mark.parametrize("buckets", [1, 7])
def test_names_of_one_short_hash_each_find_their_own_bytes(fresh_store, tmp_path, monkeypatch,
                                                          buckets):
    config = fresh_store / "config"
    full, incremental = tmp_path / "full.ims", tmp_path / "incr.ims"
    time.sleep(1.05 - time.time() % 1)
    since = time.strftime("%Y%m%d:%H%M%S")
    run_cmd("imsbackup", "-f", str(full), "/", config_dir=config, check_rc=0)
    time.sleep(1.05 - time.time() % 1)
    user = sorted((fresh_store / "partitions" / "primary").iterdir())[0] / "Maildir"
    renamed = [d for d in sorted(user.iterdir()) if d.name.startswith(".") and d.is_dir()
               and any((d / "cur").iterdir())][0]
    os.rename(renamed, user / ".Renamed")
    (user / ".Renamed" / "new" / "1800000001.M2P2.host").write_bytes(b"Subject: r\n\nnew\n")
    (user / "new" / "1800000002.M3P3.host").write_bytes(b"Subject: n\n\nnew too\n")
    run_cmd("imsbackup", "-d", since, "-f", str(incremental), "/", config_dir=config,
            check_rc=0)
    before = messages(fresh_store)
    for partition in (fresh_store / "partitions").iterdir():
        for home in partition.iterdir():
            shutil.rmtree(home)

    monkeypatch.setattr(chains, "short_hash", lambda key: len(key) % buckets)
    monkeypatch.setenv("IMS_CONFIG_DIR", str(config))
    from ims.cli import imsrestore
    assert imsrestore.main(["-f", str(full), "-f", str(incremental), "/"]) == 0
    after = messages(fresh_store)
    assert after.keys() == before.keys()
    assert all(after[name] == before[name] for name in before)
    assert any("/.Renamed/" in name for name in after)
