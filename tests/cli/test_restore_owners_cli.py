"""Review 3: a restore makes a hard link between two users' Maildirs whatever their owners,
so one user's message file is the other user's inode.

The archive holds hard-link members across users (Dovecot's LMTP delivery to several
recipients links the file; the sample store does the same).  Restored into a store where
each user's directory has its own owner (no ``local.store.uid``: "the owner of the user's
existing Maildir"), user B's copy is a link to user A's file: owned by A, mode 0600.  B's
Dovecot (running as B) cannot read B's own mail, and A can rewrite B's message in place.
Expected: a link only between files of the same owner; otherwise the bytes are copied and
the file belongs to its own user.  At fault: ims/restore/engine.py Engine._place
(Source.LINK) / ims/store/maildir_write.py link_to (no owner check; the EXDEV fallback to a
copy exists already)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import run_cmd

from ims.samplestore import SampleSpec, generate


@pytest.fixture
def store(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root to give users their own owners")
    root = tmp_path / "store"
    generate(root, SampleSpec(users=6, messages_per_user=10, partitions=1, seed=24,
                              link_fraction=0.6))
    return root


def test_a_restored_message_belongs_to_its_own_user(store, tmp_path):
    archive = tmp_path / "full.ims"
    result = run_cmd("imsbackup", "--json", "-f", str(archive), "/", config_dir=store / "config",
                     check_rc=0)
    assert b'"links": 0' not in result.stdout          # the archive has hard-link members
    partition = store / "partitions" / "primary"
    users = sorted(p.name for p in partition.iterdir())
    shutil.rmtree(partition)
    partition.mkdir()
    owners = {}
    for n, user in enumerate(users):
        (partition / user).mkdir()
        owners[user] = 2000 + n
        os.chown(partition / user, owners[user], owners[user])
    run_cmd("imsrestore", "-f", str(archive), config_dir=store / "config", check_rc=0)
    wrong = [(str(path.relative_to(partition)), path.stat().st_uid)
             for user in users for path in (partition / user).rglob("*")
             if path.is_file() and path.stat().st_uid != owners[user]]
    assert not wrong, f"{len(wrong)} files owned by another user, e.g. {wrong[:3]}"
