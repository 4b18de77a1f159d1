"""Bacula for real: bpipe jobs rendered by imsconfig, against a real Dovecot store.

Each Bacula job costs a few seconds, so one module does it all in order: two groups backed
up concurrently; a user deleted and restored with where=/; a job whose reader fails ends in
error; an incremental after new mail; full + incremental brought back with where=DIR and
restored as one chain."""

from __future__ import annotations

import imaplib
import os
import shutil
import time
from pathlib import Path

import pytest
from archive_reader import read_archive
from conftest import bacula_available, command, require, run_cmd
from helpers import imap_snapshot as snapshot
from helpers import restored_whole
from helpers import write_config

USERS = {"amy": "primary", "bert": "primary", "mia": "primary", "7up": "secondary"}




@pytest.fixture(scope="module")
def setup(dovecot, tmp_path_factory):
    require(bacula_available(), "Bacula (apt-get install bacula-director bacula-director-sqlite3"
            " bacula-sd bacula-fd bacula-console sqlite3)")
    from bacula_server import BaculaServer
    partitions = {"primary": dovecot.partition("bc-primary"),
                  "secondary": dovecot.partition("bc-secondary")}
    for user, partition in USERS.items():
        dovecot.add_user(user, partitions[partition])
    for n in range(8):
        dovecot.lmtp_deliver(f"Subject: b{n}\r\n\r\nbacula {n}\r\n".encode(), [list(USERS)[n % 4]])
    client = dovecot.imap("amy")
    client.select("INBOX")
    client.create("Projects")
    client.uid("COPY", "1:*", "Projects")
    client.uid("STORE", "1", "+FLAGS", r"(\Seen \Flagged todo)")
    client.append("Projects", r"(\Answered)", imaplib.Time2Internaldate(1700000000),
                  b"Subject: old\r\n\r\nold\r\n")
    client.logout()
    root = Path(str(tmp_path_factory.mktemp("bacula-cfg")))
    # the bpipe command line cannot hold ':' and the fd runs it: a plain path for the config
    config = write_config(root / "config", partitions)
    # The readers take a few seconds longer here, so that the two group jobs visibly overlap
    # when Bacula runs them concurrently (a real group takes longer than the tiny test store).
    reader = root / "slow-imsbackup"
    reader.write_text(f'#!/bin/sh\ncase "$*" in *--job-state*) sleep 6;; esac\n'
                      f'exec {command("imsbackup")} "$@"\n')
    reader.chmod(0o755)
    jobs = run_cmd("imsconfig", "bacula", "--client", "ims-fd", "--storage", "ims-file",
                   "--pool", "ims-pool", "--max-jobs", "10", "--state-dir", str(root / "state"),
                   "--imsbackup", str(reader), "--imsrestore", command("imsrestore"),
                   "--config-dir", str(config), config_dir=config, check_rc=0).stdout.decode()
    server = BaculaServer(jobs)
    try:
        server.start()
        yield {"bacula": server, "config": config, "partitions": partitions, "root": root}
    finally:
        server.stop()
        if not os.environ.get("IMS_TEST_KEEP"):
            shutil.rmtree(server.root, ignore_errors=True)


def test_bacula_groups_restore_failure_and_incremental_chain(dovecot, setup, tmp_path):
    bacula, partitions = setup["bacula"], setup["partitions"]
    amy_before = snapshot(dovecot, "amy")

    # two groups at once
    job_a = bacula.run_job("ims-backup-primary-groupA")
    job_b = bacula.run_job("ims-backup-primary-groupB")
    bacula.wait()
    a, b = bacula.job(job_a), bacula.job(job_b)
    assert (a["status"], a["errors"]) == ("T", 0), a["log"]
    assert (b["status"], b["errors"]) == ("T", 0), b["log"]
    assert a["start"] < b["end"] and b["start"] < a["end"]      # they overlapped

    # a deleted user comes back through bconsole, where=/ : into the live store
    shutil.rmtree(partitions["primary"] / "amy" / "Maildir")
    restored = bacula.job(bacula.restore(job_a, "/"))
    assert restored["status"] == "T", restored["log"]
    assert snapshot(dovecot, "amy") == restored_whole(amy_before)

    # a job whose reader fails ends in error, not "OK -- with warnings"
    msg_conf = setup["config"] / "msg.conf"
    good = msg_conf.read_text()
    msg_conf.write_text(good + "this line breaks the configuration\n")
    try:
        failed = bacula.job(bacula.run_job("ims-backup-primary-groupA"))
        bacula.wait()
    finally:
        msg_conf.write_text(good)
    assert failed["status"] == "E", failed["log"]

    # incremental after new mail: only what changed since the last successful backup
    time.sleep(1.1)
    dovecot.lmtp_deliver(b"Subject: later\r\n\r\nafter the full backup\r\n", ["amy"])
    client = dovecot.imap("amy")
    client.select("Projects")
    client.uid("STORE", "1", "+FLAGS", r"(\Deleted)")
    client.expunge()
    client.logout()
    incremental = bacula.run_job("ims-backup-primary-groupA", level="Incremental")
    bacula.wait(incremental)
    incr = bacula.job(incremental)
    assert (incr["status"], incr["errors"]) == ("T", 0), incr["log"]
    assert "incremental since" in incr["log"]
    latest = snapshot(dovecot, "amy")

    # full and incremental back as files (where=DIR), then one chain restore
    side = tmp_path / "side"
    for jobid in (job_a, incremental):
        stored = bacula.job(bacula.restore(jobid, str(side)))
        assert stored["status"] == "T", stored["log"]
    files = sorted(side.glob("primary_groupA.*.ims"))
    assert [f.name.split(".")[-2] for f in files] == ["full", "incr"]
    full_archive, incr_archive = (read_archive(f.read_bytes()) for f in files)
    assert 0 < len(incr_archive.messages()) < len(full_archive.messages())
    assert any(b"after the full backup" in m.data for m in incr_archive.messages())
    shutil.rmtree(partitions["primary"] / "amy" / "Maildir")
    args = [a for f in files for a in ("-f", str(f))]
    run_cmd("imsrestore", *args, "/primary/groupA/amy", config_dir=setup["config"], check_rc=0)
    assert snapshot(dovecot, "amy") == restored_whole(latest)    # raised again: UIDs of
    # the first restore's folders may have been handed out before this one
