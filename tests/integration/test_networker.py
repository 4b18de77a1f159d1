"""NetWorker end to end through the stand-in: imsconfig, savegrp -> savepnpc (mkbackupdir as
precmd) -> save -> imsasm; a user deleted and recovered by path; IMAP unchanged."""

from __future__ import annotations

import imaplib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TESTS, command, run_cmd
from helpers import imap_snapshot as snapshot
from helpers import restored_whole
from helpers import write_config

sys.path.insert(0, str(TESTS / "networker"))
import standin  # noqa: E402

USERS = {"amy": "primary", "mike": "primary", "9zed": "secondary"}


def build_store(dovecot, root: Path, backup_settings: bool) -> dict:
    """Three users on two partitions, amy with subfolders, flags and a folder with a space;
    with ``backup_settings`` the backup directory, server name and Sun's groups are set."""
    partitions = {"primary": dovecot.partition("nw-primary"),
                  "secondary": dovecot.partition("nw-secondary")}
    for user, partition in USERS.items():
        dovecot.add_user(user, partitions[partition])
    dovecot.lmtp_deliver(b"Subject: to all\r\n\r\nshared\r\n", list(USERS))
    for n in range(6):
        dovecot.lmtp_deliver(f"Subject: m{n}\r\n\r\nbody {n}\r\n".encode(), [list(USERS)[n % 3]])
    client = dovecot.imap("amy")
    client.select("INBOX")
    for folder in ("Archive", "Archive/2024", "Bulk Mail"):
        client.create(f'"{folder}"')
    client.uid("COPY", "1:*", "Archive")
    client.uid("COPY", "2", "Archive/2024")
    client.uid("STORE", "1", "+FLAGS", r"(\Seen \Answered $label1)")
    client.append('"Bulk Mail"', r"(\Seen)", imaplib.Time2Internaldate(1700000000),
                  b"Subject: bulk\r\n\r\nbulk\r\n")
    client.logout()
    if not backup_settings:
        return {"config": write_config(root / "config", partitions, groups=None),
                "partitions": partitions}
    config = write_config(root / "config", partitions)
    with open(config / "msg.conf", "a") as conf:
        conf.write(f"local.store.backupdir = {root / 'backup'}\nlocal.store.backup.servername = mailhost\n")
    return {"config": config, "partitions": partitions, "backup": root / "backup"}


@pytest.fixture(scope="module")
def mailstore(dovecot, tmp_path_factory):
    return build_store(dovecot, tmp_path_factory.mktemp("nw"), backup_settings=True)


def nsr(bin_dir: Path, program: str, *args: str, config: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, IMS_CONFIG_DIR=str(config))
    return subprocess.run([str(bin_dir / program), *args], env=env, capture_output=True, text=True)


def test_savegroup_then_recover_a_deleted_user_by_path(dovecot, mailstore, networker, tmp_path):
    config, backup = mailstore["config"], mailstore["backup"]
    res = Path(os.environ["NSR_RES"]) / "mailgroup.res"
    run_cmd("imsconfig", "res", "--group", "mailgroup", "--mkbackupdir", command("mkbackupdir"),
            "--pstcmd", "/bin/true", "--timeout", "12:00pm", "-o", str(res),
            config_dir=config, check_rc=0)
    parsed = standin.parse_res(res)                       # parsed back, not string-compared
    assert parsed["type"] == ["savepnpc"] and parsed["timeout"] == ["12:00pm"]
    assert parsed["precmd"] == [f"{command('mkbackupdir')} -p {backup}"]
    nsradmin_input = tmp_path / "nsradmin.txt"
    run_cmd("imsconfig", "nsradmin", "--server", "nwserver", "--client", "mailhost", "--group",
            "mailgroup", "--parallelism", "3", "-o", str(nsradmin_input), config_dir=config, check_rc=0)
    commands = standin.parse_nsradmin(nsradmin_input.read_text(), "nsradmin.txt")
    assert [(c.name, c.attrs["type"]) for c in commands] == [
        ("create", ["NSR group"]), ("create", ["NSR client"])]
    client = commands[1].attrs
    assert client["backup command"] == ["savepnpc"] and client["parallelism"] == ["3"]
    assert sorted(client["save set"]) == [str(backup / "mailhost" / g)
                                          for g in ("groupA", "groupB", "groupC", "ungrouped")]
    assert nsr(networker, "nsradmin", "-s", "nwserver", "-i", str(nsradmin_input), config=config).returncode == 0

    before = snapshot(dovecot, "amy")
    result = nsr(networker, "savegrp", "mailgroup", config=config)
    assert result.returncode == 0, result.stderr
    records = standin.load_records()
    asm_records = {r["path"]: r for r in records if r["asm"] == "imsasm"}
    amy = backup / "mailhost" / "groupA" / "amy"
    assert {str(amy / "INBOX"), str(amy / "Archive"), str(amy / "Archive.d" / "2024"),
            str(amy / "Bulk Mail")} <= set(asm_records)
    assert all(r["complete"] and r["size"] > 0 for r in asm_records.values())

    shutil.rmtree(mailstore["partitions"]["primary"] / "amy" / "Maildir")
    result = nsr(networker, "recover", "-a", "-f", "-s", "nwserver", str(amy / "INBOX"), config=config)
    assert result.returncode == 0, result.stderr
    after_inbox = snapshot(dovecot, "amy")
    assert after_inbox["INBOX"] == restored_whole(before)["INBOX"]
    result = nsr(networker, "recover", "-a", "-f", "-s", "nwserver", str(amy), config=config)
    assert result.returncode == 0, result.stderr
    assert snapshot(dovecot, "amy") == restored_whole(before)

    # a group directory restores the group
    mike_before = snapshot(dovecot, "mike")
    shutil.rmtree(mailstore["partitions"]["primary"] / "mike" / "Maildir")
    result = nsr(networker, "recover", "-a", "-f", "-s", "nwserver",
                 str(backup / "mailhost" / "groupB"), config=config)
    assert result.returncode == 0, result.stderr
    assert snapshot(dovecot, "mike") == restored_whole(mike_before)


def single_save_set_group(networker: Path, config: Path, tmp_path: Path, group: str) -> dict:
    """The .res file and the NSR group and client of ``group`` with the backup directory as
    the one save set, given to the stand-in's nsradmin; returns the client's attributes."""
    run_cmd("imsconfig", "res", "--group", group, "--mkbackupdir", command("mkbackupdir"),
            "-o", str(Path(os.environ["NSR_RES"]) / f"{group}.res"), config_dir=config, check_rc=0)
    nsradmin_input = tmp_path / f"{group}.nsradmin"
    run_cmd("imsconfig", "nsradmin", "--server", "nwserver", "--group", group, "--save-sets",
            "single", "-o", str(nsradmin_input), config_dir=config, check_rc=0)
    assert nsr(networker, "nsradmin", "-s", "nwserver", "-i", str(nsradmin_input),
               config=config).returncode == 0
    return standin.parse_nsradmin(nsradmin_input.read_text(), nsradmin_input.name)[1].attrs


def test_single_save_set_saves_every_user_and_recovers_a_mailbox(dovecot, mailstore, networker,
                                                                  tmp_path):
    """Sun: "for a single session backup, use /backup" -- the backup directory as the only
    save set; every user's mailboxes are saved, and recovered by their placeholder paths."""
    config, backup = mailstore["config"], mailstore["backup"]
    client = single_save_set_group(networker, config, tmp_path, "whole")
    assert client["save set"] == [str(backup)]

    mike_before = snapshot(dovecot, "mike")
    result = nsr(networker, "savegrp", "-G", "whole", config=config)
    assert result.returncode == 0, result.stderr
    saved = {r["path"] for r in standin.load_records() if r["asm"] == "imsasm" and r["complete"]}
    groups = {"amy": "groupA", "mike": "groupB", "9zed": "groupC"}
    assert {str(backup / "mailhost" / groups[user] / user / "INBOX") for user in USERS} <= saved
    assert str(backup / "mailhost" / "groupA" / "amy" / "Archive.d" / "2024") in saved

    shutil.rmtree(mailstore["partitions"]["primary"] / "mike" / "Maildir")
    result = nsr(networker, "recover", "-a", "-f", "-s", "nwserver",
                 str(backup / "mailhost" / "groupB" / "mike" / "INBOX"), config=config)
    assert result.returncode == 0, result.stderr
    assert snapshot(dovecot, "mike") == restored_whole(mike_before)


def test_admin_precmd_runs_before_mkbackupdir_when_asked(mailstore, networker, tmp_path):
    """Sun's example runs its own precmd first: --precmd @mkbackupdir places mkbackupdir.  Here
    the admin's precmd removes the tree, so the save finds it only if mkbackupdir runs after."""
    config, backup = mailstore["config"], mailstore["backup"]
    res = Path(os.environ["NSR_RES"]) / "ordered.res"
    first = f"rm -rf {backup}/mailhost"
    run_mkbackupdir = f"{command('mkbackupdir')} -p {backup}"
    run_cmd("imsconfig", "res", "--group", "ordered", "--mkbackupdir", command("mkbackupdir"),
            "--precmd", first, "--precmd", "@mkbackupdir", "--precmd", "echo last",
            "-o", str(res), config_dir=config, check_rc=0)
    assert standin.parse_res(res)["precmd"] == [first, run_mkbackupdir, "echo last"]
    inbox = backup / "mailhost" / "groupC" / "9zed" / "INBOX"
    result = nsr(networker, "savepnpc", "-s", "nw", "-g", "ordered", str(inbox.parent), config=config)
    assert result.returncode == 0, result.stderr
    assert any(r["path"] == str(inbox) and r["complete"] for r in standin.load_records())
    # without the placeholder mkbackupdir comes first
    run_cmd("imsconfig", "res", "--group", "ordered", "--mkbackupdir", command("mkbackupdir"),
            "--precmd", first, "-o", str(res), config_dir=config, check_rc=0)
    assert standin.parse_res(res)["precmd"] == [run_mkbackupdir, first]
    twice = run_cmd("imsconfig", "res", "--group", "ordered", "--precmd", "@mkbackupdir",
                    "--precmd", "@mkbackupdir", config_dir=config)
    assert twice.returncode == 2 and b"--precmd @mkbackupdir given 2 times" in twice.stderr
    run_cmd("mkbackupdir", config_dir=config, check_rc=0)


def test_failing_precmd_means_no_save(mailstore, networker, tmp_path):
    res = Path(os.environ["NSR_RES"]) / "broken.res"
    run_cmd("imsconfig", "res", "--group", "broken", "--mkbackupdir", "/bin/false",
            "-o", str(res), config_dir=mailstore["config"], check_rc=0)
    result = nsr(networker, "savepnpc", "-s", "nw", "-g", "broken", str(mailstore["backup"]),
                 config=mailstore["config"])
    assert result.returncode != 0 and "no save" in result.stderr
    assert standin.load_records() == []


def test_relocated_recover_stores_the_stream_and_leaves_the_store_alone(dovecot, mailstore,
                                                                       networker, tmp_path):
    """recover -d DIR: the ASM is told -m SRC=DST; the mailbox's stream lands in DIR as an
    archive file, the live store is not touched, and the command printed restores it."""
    config, backup = mailstore["config"], mailstore["backup"]
    single_save_set_group(networker, config, tmp_path, "reloc")
    assert nsr(networker, "savegrp", "reloc", config=config).returncode == 0
    before = snapshot(dovecot, "amy")
    maildir = mailstore["partitions"]["primary"] / "amy" / "Maildir"
    files_before = sorted(str(p.relative_to(maildir)) for p in maildir.rglob("*"))
    inbox = backup / "mailhost" / "groupA" / "amy" / "INBOX"
    target = tmp_path / "relocated"
    result = nsr(networker, "recover", "-a", "-f", "-s", "nwserver", "-d", str(target), str(inbox),
                 config=config)
    assert result.returncode == 0, result.stderr
    assert sorted(str(p.relative_to(maildir)) for p in maildir.rglob("*")) == files_before
    stored = list(target.glob("*.ims"))
    assert len(stored) == 1 and stored[0].stat().st_mode & 0o777 == 0o600
    assert f"imsrestore -f {stored[0]}" in result.stderr

    shutil.rmtree(maildir)
    restored = run_cmd("imsrestore", "-f", str(stored[0]), config_dir=config)
    assert restored.returncode == 0, restored.stderr
    assert snapshot(dovecot, "amy")["INBOX"] == restored_whole(before)["INBOX"]
    assert nsr(networker, "recover", "-a", "-f", "-s", "nwserver", str(inbox.parent),
               config=config).returncode == 0
    assert snapshot(dovecot, "amy") == restored_whole(before)


def test_asm_must_sit_beside_save_and_bad_paths_fail(mailstore, networker, tmp_path):
    config = mailstore["config"]
    run_cmd("mkbackupdir", config_dir=config, check_rc=0)
    amy = mailstore["backup"] / "mailhost" / "groupA" / "amy"
    (amy / ".nsr").write_text("otherasm: INBOX\n")
    result = nsr(networker, "save", "-s", "nw", str(amy), config=config)
    assert result.returncode == 2 and "not found beside" in result.stderr
    # a placeholder outside the tree, or of a folder that is gone: exit 2, no stream
    outside = run_cmd("imsasm", "-s", "/etc/hostname", config_dir=config)
    assert outside.returncode == 2 and outside.stdout == b""
    (amy / "Gone").touch()
    gone = run_cmd("imsasm", "-s", str(amy / "Gone"), config_dir=config)
    assert gone.returncode == 2 and b"no folder 'Gone'" in gone.stderr and gone.stdout == b""
    # mkbackupdir puts things right again: Gone is removed, the .nsr rewritten
    run_cmd("mkbackupdir", config_dir=config, check_rc=0)
    assert not (amy / "Gone").exists() and "imsasm:" in (amy / ".nsr").read_text()
    # malformed .res and .nsr inputs to the stand-in: a clear error
    (Path(os.environ["NSR_RES"]) / "bad.res").write_text("type: savepnpc\nprecmd: x;\n")
    result = nsr(networker, "savepnpc", "-g", "bad", str(amy), config=config)
    assert result.returncode == 2 and "bad.res" in result.stderr
    (amy / ".nsr").write_text('imsasm INBOX\n')
    result = nsr(networker, "save", str(amy), config=config)
    assert result.returncode == 2 and ".nsr:1" in result.stderr
    run_cmd("mkbackupdir", config_dir=config, check_rc=0)


def test_asm_through_another_name_and_compare(mailstore, networker, tmp_path):
    config = mailstore["config"]
    os.symlink(command("imsasm"), networker / "site2asm")
    run_cmd("mkbackupdir", "-a", "site2asm", config_dir=config, check_rc=0)
    inbox = mailstore["backup"] / "mailhost" / "groupC" / "9zed" / "INBOX"
    assert (inbox.parent / ".nsr").read_text().splitlines()[-1] == "site2asm: INBOX"
    result = nsr(networker, "save", "-s", "nw", str(inbox.parent), config=config)
    assert result.returncode == 0, result.stderr
    record = next(r for r in standin.load_records() if r["path"] == str(inbox))
    assert record["asm"] == "site2asm" and record["complete"]
    stream = Path(record["data"]).read_bytes()
    same = run_cmd("imsasm", "-c", "-v", str(inbox), config_dir=config, input=stream)
    assert same.returncode == 0 and b"0 difference(s)" in same.stderr
    victim = next((mailstore["partitions"]["secondary"] / "9zed" / "Maildir" / "cur").iterdir(), None) \
        or next((mailstore["partitions"]["secondary"] / "9zed" / "Maildir" / "new").iterdir())
    moved = tmp_path / "victim"
    shutil.move(victim, moved)
    try:
        differ = run_cmd("imsasm", "-c", str(inbox), config_dir=config, input=stream)
        assert differ.returncode == 1 and b"in the save, not in the store" in differ.stderr
    finally:
        shutil.move(moved, victim)
    estimate = run_cmd("imsasm", "-s", "-b", str(inbox), config_dir=config, check_rc=0)
    records, header, data = (int(x) for x in estimate.stdout.split())
    assert records >= 3 and header > 0 and data >= sum(
        p.stat().st_size for d in ("cur", "new")
        for p in (mailstore["partitions"]["secondary"] / "9zed" / "Maildir" / d).iterdir())
    run_cmd("mkbackupdir", config_dir=config, check_rc=0)
    assert json.dumps(record)
