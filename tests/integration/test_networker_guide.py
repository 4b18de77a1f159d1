"""docs/guide.md §11 ("NetWorker, step by step") run as written, against the NetWorker stand-in.

Every ```sh block of the section is run by ``sh -e``, in order, as the guide gives it.  Only
the paths in SUBSTITUTIONS are replaced (a test machine has no /backup, /nsr or /usr/sbin of
its own); the commands are found on PATH: the stand-in's programs where the guide has
/usr/sbin, the toolkit's where it has /opt/ims/.venv/bin.  Between the blocks the test does
what the guide's prose says happened (a mailbox deleted, the store lost) and checks the
results.  The plain ``` blocks showing what imsconfig writes must match what it wrote.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import BIN, TESTS
from helpers import imap_snapshot as snapshot
from helpers import restored_whole
from test_networker import USERS, build_store

sys.path.insert(0, str(TESTS / "networker"))
import standin  # noqa: E402

GUIDE = TESTS.parent / "docs" / "guide.md"
SECTION = "## 11. NetWorker, step by step"
GROUPS = {"amy": "groupA", "mike": "groupB", "9zed": "groupC"}


def section_blocks() -> list[tuple[str, str]]:
    """(language, text) of each fenced block of the section, in order, dedented."""
    text = GUIDE.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    body = text[start:end if end >= 0 else len(text)]
    blocks = []
    for match in re.finditer(r"^( *)```(\w*)\n(.*?)^\1```$", body, re.M | re.S):
        indent = len(match.group(1))
        lines = [line[indent:] for line in match.group(3).splitlines()]
        blocks.append((match.group(2), "\n".join(lines) + "\n"))
    return blocks


def substitutions(root: Path, bin_dir: Path, config: Path) -> list[tuple[str, str]]:
    """The guide's paths -> this test's.  Longest first; a path is replaced only where it
    starts a word, so /etc/ims/backup-groups.conf is not taken for /backup."""
    return [("/opt/ims/.venv/bin", str(BIN)), ("/usr/sbin", str(bin_dir)),
            ("/nsr/res", os.environ["NSR_RES"]), ("/etc/ims", str(config)),
            ("/backup", str(root / "backup"))]


def substitute(text: str, table: list[tuple[str, str]]) -> str:
    for old, new in table:
        text = re.sub(rf"(?<![^\s'\"=]){re.escape(old)}(?=[/\s'\";]|$)", new, text, flags=re.M)
    return text


def test_the_guides_networker_commands_work_as_written(dovecot, networker, tmp_path):
    (networker / "imsasm").unlink()                 # the guide's first step links it
    store = build_store(dovecot, tmp_path / "store", backup_settings=False)
    config = store["config"]
    table = substitutions(tmp_path, networker, config)
    backup = tmp_path / "backup"
    env = dict(os.environ, IMS_CONFIG_DIR=str(config),
               PATH=f"{networker}:{BIN}:/usr/bin:/bin")
    blocks = section_blocks()
    commands = [text for lang, text in blocks if lang == "sh"]
    firsts = [text.split()[0] for text in commands]
    assert firsts.count("savegrp") == 1 and firsts.count("recover") == 2, firsts
    shown = [text for lang, text in blocks if lang == ""]
    before: dict[str, dict] = {}
    recovers = 0
    for text in commands:
        script = substitute(text, table)
        first = script.split()[0]
        if first == "recover" and recovers == 0:       # "amy's INBOX, deleted"
            before = {user: snapshot(dovecot, user) for user in USERS}
            shutil.rmtree(store["partitions"]["primary"] / "amy" / "Maildir")
        if first == "recover" and recovers == 1:       # the whole store lost
            for user, partition in USERS.items():
                shutil.rmtree(store["partitions"][partition] / user / "Maildir")
        result = subprocess.run(["sh", "-e", "-c", script], cwd=tmp_path, env=env,
                                capture_output=True, text=True)
        assert result.returncode == 0, (text, result.stdout, result.stderr)
        if text.startswith("mkbackupdir"):
            for user, group in GROUPS.items():
                assert (backup / "mailhost" / group / user / "INBOX").is_file()
            assert (backup / "mailhost" / "groupA" / "amy" / "Archive.d" / "2024").is_file()
        if text.startswith("imsconfig res"):
            res = Path(os.environ["NSR_RES"]) / "mailgroup.res"
            assert res.read_text() == substitute(shown[0], table)
            assert standin.parse_res(res)["precmd"] == [f"{BIN}/mkbackupdir -p {backup}"]
        if text.startswith("imsconfig nsradmin"):
            written = (tmp_path / "mailgroup.nsradmin").read_text().splitlines(keepends=True)
            assert "".join(line for line in written if not line.startswith("#")) \
                == substitute(shown[1], table)
        if first == "savegrp":
            saved = {r["path"] for r in standin.load_records()
                     if r["asm"] == "imsasm" and r["complete"]}
            mailboxes = {str(p) for p in (backup / "mailhost").rglob("*")
                         if p.is_file() and p.name != ".nsr"}
            assert len(mailboxes) == 6 and saved == mailboxes
        if first == "recover" and recovers == 0:
            after = snapshot(dovecot, "amy")
            assert list(after) == ["INBOX", "<subscribed>"]
            assert after["INBOX"] == restored_whole(before["amy"])["INBOX"]
        if first == "recover" and recovers == 1:
            for user in USERS:                         # all from the one save, as before
                assert snapshot(dovecot, user) == restored_whole(before[user])
        recovers += first == "recover"
    assert recovers == 2
