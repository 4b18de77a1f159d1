"""Every NAME given must match; a NAME that matched gives its real reason when nothing was done.
"""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import run_cmd

sys.path.insert(0, str(Path(__file__).parent))
from test_imsasm_cli import setup_tree  # noqa: E402
from test_restore_hostile_cli import Crafted  # noqa: E402


def test_a_folder_name_of_a_user_on_an_unconfigured_partition_is_not_called_missing(
        fresh_store, tmp_path):
    """An archive from a store whose partition is called ``elsewhere`` (a migration); the
    administrator names one folder: ``imsrestore -f A /elsewhere/g/joe/INBOX``.  check_names
    finds the folder in the trailer, the engine skips the user (partition not configured:
    ``use --partition``) before it reaches the folder, the NAME is never marked as hit, and
    the command raises "/elsewhere/g/joe/INBOX: not in the archive" (exit 2) — before the
    report is printed, so the real reason is never shown (``-t`` lists the folder).
    Naming the user instead gives the right message and exit 1.  Expected: the skipped line
    naming the partition and ``--partition`` (exit 1), never "not in the archive".
    At fault: Engine.begin_user (hits of folder NAMEs when the user is skipped) and
    ims/cli/imsrestore.py (UsageError raised before the report's lines are printed)."""
    archive = tmp_path / "a.ims"
    a = Crafted(archive)
    a.user("joe", ["INBOX"], partition="elsewhere")
    a.folder("joe", "INBOX", [["1.M1P1.a", 7, "S", []]], partition="elsewhere")
    a.message("joe", "INBOX", "1.M1P1.a", b"Subject: a\n\nhello\n", 7, partition="elsewhere")
    a.close()
    result = run_cmd("imsrestore", "-f", str(archive), "/elsewhere/g/joe/INBOX",
                     config_dir=fresh_store / "config")
    assert b"not in the archive" not in result.stderr, result.stderr.decode()
    assert b"--partition" in result.stderr, result.stderr.decode()
    assert result.returncode == 1


def test_imsasm_recover_of_a_mailbox_the_stream_does_not_hold_is_not_a_success(fresh_store,
                                                                              tmp_path):
    """``imsasm -r <placeholder of mailbox X>`` fed a stream that holds the user but not X
    (another placeholder's save record, or a relocated recover) restores nothing and exits 0
    with nothing said: recover still tests ``report.matched``, which the user alone sets — the
    per-NAME rule imsrestore got (``report.unmatched``) was not carried over, so NetWorker
    records a successful recover.  Expected: a non-zero exit (2, UnknownName) naming the
    path, as for a user the stream lacks.  At fault: asm/imsasm.py recover."""
    config, user, placeholder = setup_tree(fresh_store, tmp_path)
    saved = run_cmd("imsasm", "-s", str(placeholder / "INBOX"), config_dir=config,
                    check_rc=0).stdout
    other = next(p for p in sorted(placeholder.iterdir())
                 if p.is_file() and p.name not in ("INBOX", ".nsr"))
    result = run_cmd("imsasm", "-r", str(other), config_dir=config, input=saved)
    assert result.returncode != 0, result.stderr.decode()
