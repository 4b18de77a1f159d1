"""Options that are accepted must act, and a bad value is a usage error (exit 2).
``--lock-timeout nan`` passes click.FloatRange(0) and makes ims/store/lock.py
``FolderLock._acquire`` wait for ever (``monotonic() >= nan`` is never true): a run that
meets a held lock hangs.  ``--uid-margin`` given twice (docs: "once") silently takes the last
value; the first is ignored."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import run_cmd
from test_reconstruct_cli import HOST, Store


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path)


def test_a_lock_timeout_of_nan_is_refused_not_a_hang(store):
    inbox = store.folder("amy", messages=[(1, "1.M1P1.h", "S"), (2, "2.M2P1.h", "S")])
    (inbox / "cur" / "2.M2P1.h:2,S").unlink()
    (inbox / "dovecot-uidlist.lock").write_text(f"{os.getpid()}:{HOST}")
    try:
        result = run_cmd("reconstruct", "--lock-timeout", "nan", "/", config_dir=store.config,
                         timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("reconstruct --lock-timeout nan waited for ever on a held lock")
    assert result.returncode == 2, result.stderr


def test_uid_margin_given_twice_is_a_usage_error(store):
    inbox = store.folder("amy", messages=[(1, "1.M1P1.h", "S")])
    before = (inbox / "dovecot-uidlist").read_bytes()
    result = run_cmd("reconstruct", "-m", "--uid-margin", "5", "--uid-margin", "10",
                     config_dir=store.config)
    assert result.returncode == 2, result.stderr
    assert (inbox / "dovecot-uidlist").read_bytes() == before
