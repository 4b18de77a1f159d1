"""The sample store generator: deterministic, and shaped like a Dovecot store."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ims.samplestore import SampleSpec, generate
from ims.store import uidlist


def fingerprint(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted((root / "partitions").rglob("*")):
        st = os.lstat(path)
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
            digest.update(b"%d %d" % (int(st.st_mtime) if path.parent.name in ("cur", "new")
                                      else 0, st.st_nlink))
    return digest.hexdigest()


def test_same_seed_same_store(tmp_path):
    spec = SampleSpec(users=8, messages_per_user=12, partitions=3, seed=11)
    generate(tmp_path / "a", spec)
    generate(tmp_path / "b", spec)
    generate(tmp_path / "c", SampleSpec(users=8, messages_per_user=12, partitions=3, seed=12))
    assert fingerprint(tmp_path / "a") == fingerprint(tmp_path / "b")
    assert fingerprint(tmp_path / "a") != fingerprint(tmp_path / "c")


def test_store_shape(tmp_path):
    counts = generate(tmp_path, SampleSpec(users=30, messages_per_user=20, partitions=3, seed=5))
    partitions = sorted(p.name for p in (tmp_path / "partitions").iterdir())
    assert partitions == ["primary", "secondary", "tertiary"]
    users = [u.name for p in (tmp_path / "partitions").iterdir() for u in p.iterdir()]
    assert any(u[0].isdigit() for u in users)
    assert counts["links"] > 0
    folders = {d.name for d in (tmp_path / "partitions").rglob(".*") if d.is_dir()}
    assert ".Entw&APw-rfe" in folders and ".Archive.2024" in folders
    uid_less = 0
    for listfile in (tmp_path / "partitions").rglob("dovecot-uidlist"):
        parsed = uidlist.parse(listfile.read_bytes())
        folder = listfile.parent
        cur = {n.split(":")[0] for n in os.listdir(folder / "cur")}
        new = set(os.listdir(folder / "new"))
        assert set(parsed.uids) == cur          # every cur/ message has its UID line
        assert not set(parsed.uids) & new       # new/ messages have none yet
        uid_less += len(new)
        uids = sorted(parsed.uids.values())
        assert parsed.effective_next_uid > (uids[-1] if uids else 0)
        for name in os.listdir(folder / "cur"):
            st = os.stat(folder / "cur" / name)
            assert int(st.st_mtime) == int(name.split(".")[0])   # mtime = delivery time
    assert uid_less > 0
