"""values the backup copies from the user's control files unchecked
(``dovecot-uidlist``, ``dovecot-keywords``) make the restore refuse the WHOLE folder, while
the backup exits 0.  The mail user owns these files (and Dovecot leaves odd ones behind after
a crash), so one odd line costs the folder's every message at restore time.

Expected: the backup keeps what the format can hold and drops or names the rest (a UID out
of range, a duplicate UID, a bad GUID, UIDVALIDITY 0 or past 2^32-1, a keyword that is not
an IMAP atom) - e.g. the message is kept without a UID, as the uidlist parser already does
for an unreadable line - so that the folder's mail restores.  Happens: backup exit 0, restore
exit 4 "<value> ...: folder not restored", nothing of the folder lands.  At fault:
ims/store/uidlist.py parse and ims/store/maildir.py MaildirFolderReader._read_state /
parse_keywords_file (no range/format checks matching ims/archive/records.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import run_cmd

from ims.samplestore import SampleSpec, generate


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    generate(root, SampleSpec(users=2, messages_per_user=8, partitions=1, seed=22))
    return root


def keys(folder: Path) -> set[str]:
    return {n.partition(":")[0] for sub in ("cur", "new") for n in os.listdir(folder / sub)}


def set_header(uidlist: Path, header: str) -> None:
    lines = uidlist.read_text().split("\n")
    uidlist.write_text("\n".join([header] + lines[1:]))


CASES = ["uidvalidity-0", "uidvalidity-too-big", "guid-short", "uid-too-big", "uid-negative",
         "uid-twice", "keyword-not-an-atom"]


@pytest.mark.parametrize("case", CASES)
def test_an_odd_control_file_value_does_not_cost_the_folder(store, tmp_path, case):
    user = sorted((store / "partitions" / "primary").iterdir())[0]
    inbox = user / "Maildir"
    uidlist = inbox / "dovecot-uidlist"
    first = sorted((inbox / "cur").iterdir())[0]
    base = first.name.partition(":")[0]
    if case == "uidvalidity-0":
        set_header(uidlist, "3 V0 N100")
    elif case == "uidvalidity-too-big":
        set_header(uidlist, "3 V99999999999 N100")
    elif case == "guid-short":
        set_header(uidlist, "3 V1234 N100 G0123")
    elif case == "uid-too-big":
        uidlist.write_text(uidlist.read_text() + f"99999999999 :{base}\n")
    elif case == "uid-negative":
        uidlist.write_text(uidlist.read_text() + f"-5 :{base}\n")
    elif case == "uid-twice":
        shutil.copy(first, inbox / "cur" / "1700000001.M2P2.x:2,S")
        uid = next(line.split()[0] for line in uidlist.read_text().split("\n")[1:] if line)
        uidlist.write_text(uidlist.read_text() + f"{uid} :1700000001.M2P2.x\n")
    elif case == "keyword-not-an-atom":
        (inbox / "dovecot-keywords").write_text("0 has space\n1 \u00fcml\n")
        first.rename(inbox / "cur" / f"{base}:2,Sab")
    expected = keys(inbox)

    archive = tmp_path / "full.ims"
    backup = run_cmd("imsbackup", "-f", str(archive), f"/primary/user/{user.name}",
                     config_dir=store / "config")
    assert backup.returncode in (0, 1), backup.stderr
    shutil.rmtree(user)
    restore = run_cmd("imsrestore", "--json", "-f", str(archive),
                      f"/primary/user/{user.name}/INBOX", config_dir=store / "config")
    landed = keys(inbox) if (inbox / "cur").is_dir() else set()
    assert landed == expected, \
        (f"backup exit {backup.returncode}; {len(expected - landed)} of {len(expected)} INBOX"
         f" messages lost: restore exit {restore.returncode}: {restore.stderr.decode()[:300]}")
