"""A mail folder whose Maildir++ directory name happens to look like what imsrestore stages
(``.ims-restore.<pid>.<n>.<host>``, ``.<x>.ims-restore.<pid>.<host>``) is a folder of mail:
reconstruct must check it like any other and never remove it.  Today it is taken for a
killed restore's leftover (``_STAGED``/``_STAGED_TEMP`` in ims/reconstruct.py match any
directory of the Maildir root) and removed with ``shutil.rmtree``: mail lost."""

from __future__ import annotations

import pytest
from test_reconstruct_cli import HOST, Store, body, dead_pid


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path)


@pytest.mark.parametrize("folder", ["ims-restore/{pid}/1/{host}",
                                    "Archive/ims-restore/{pid}/{host}"])
def test_a_folder_named_like_a_staged_file_is_mail_and_is_kept(store, folder):
    store.folder("amy", messages=[(1, "1.M1P1.h", "S")])
    name = folder.format(pid=dead_pid(), host=HOST)
    kept = store.folder("amy", name, messages=[(1, "1.M7P1.h", "S"), (2, "2.M8P1.h", "")],
                        uidvalidity=1700000001)
    files = sorted(p.name for p in (kept / "cur").iterdir())
    report = store.run("-n", "/")
    store.run("/")
    assert kept.is_dir(), "reconstruct removed a folder of mail"
    assert report["folders"] == 2, report               # it is a folder, checked as one
    assert "staged-leftover" not in {f["kind"] for f in report["problems"]}, report
    assert sorted(p.name for p in (kept / "cur").iterdir()) == files
    assert (kept / "cur" / "1.M7P1.h:2,S").read_bytes() == body("1.M7P1.h")
