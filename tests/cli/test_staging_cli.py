"""imsbackup --staging: one archive per (partition, group), in parallel, space checked first."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from archive_reader import read_archive
from conftest import run_cmd, small_tmpfs


def test_staging_writes_one_complete_archive_per_group(sample_store, tmp_path):
    config = sample_store / "config"
    result = run_cmd("imsbackup", "--staging", str(tmp_path / "stage"), "-j", "3", "--json", "/",
                     config_dir=config, check_rc=0)
    summary = json.loads(result.stdout)
    files = sorted(p.name for p in (tmp_path / "stage").iterdir())
    assert files == sorted(f"{g['partition']}-{g['group']}.ims" for g in summary["groups"])
    assert not any(name.endswith(".partial") for name in files)
    users_seen = set()
    for group in summary["groups"]:
        archive = read_archive((tmp_path / "stage" / f"{group['partition']}-{group['group']}.ims").read_bytes())
        users = [m.json() for m in archive.members if m.kind == "user"]
        assert users and all(u["group"] == group["group"] and u["partition"] == group["partition"]
                             for u in users)
        users_seen.update((u["partition"], u["user"]) for u in users)
    every_user = {(p.name, u.name) for p in (sample_store / "partitions").iterdir() for u in p.iterdir()}
    assert users_seen == every_user                     # nobody lost between the groups
    assert "/primary/" in result.stderr.decode()        # reported per group



def test_staging_restore_one_user(fresh_store, tmp_path):
    config = fresh_store / "config"
    run_cmd("imsbackup", "--staging", str(tmp_path / "stage"), "/primary", config_dir=config, check_rc=0)
    user = sorted(p.name for p in (fresh_store / "partitions" / "primary").iterdir())[0]
    maildir = fresh_store / "partitions" / "primary" / user / "Maildir"
    before = sorted(p.name for p in maildir.rglob("*") if p.parent.name in ("cur", "new"))
    shutil.rmtree(maildir)
    staged = [p for p in (tmp_path / "stage").iterdir()]
    holder = next(p for p in staged if f"{user}/" in subprocess.run(
        ["tar", "-tf", str(p), "--warning=no-unknown-keyword"], capture_output=True, text=True).stdout)
    run_cmd("imsrestore", "-f", str(holder), f"/primary/user/{user}", config_dir=config, check_rc=0)
    assert sorted(p.name for p in maildir.rglob("*") if p.parent.name in ("cur", "new")) == before


def test_staging_refuses_to_start_without_space(sample_store, tmp_path):
    with small_tmpfs(tmp_path / "small", "256k") as small:
        result = run_cmd("imsbackup", "--staging", str(small), "/", config_dir=sample_store / "config")
        assert result.returncode == 6
        assert b"nothing was written" in result.stderr and b"MiB free" in result.stderr
        assert os.listdir(small) == []


def test_staging_usage_errors(sample_store, tmp_path):
    config = sample_store / "config"
    assert run_cmd("imsbackup", "--staging", str(tmp_path), "-f", "x", "/", config_dir=config).returncode == 2
    assert run_cmd("imsbackup", "/", config_dir=config).returncode == 2


def test_job_state_levels(sample_store, tmp_path):
    """The Bacula reader's job state: begin, reader, end; incremental after a full."""
    config = sample_store / "config"
    state = tmp_path / "state"
    run_cmd("imsbackup", "--job-begin", str(state), "--level", "Incremental", config_dir=config, check_rc=0)
    first = run_cmd("imsbackup", "-f", "-", "--job-state", str(state), "/primary", config_dir=config, check_rc=0)
    assert b"no earlier backup succeeded: full backup" in first.stderr
    assert read_archive(first.stdout).header["since"] is None
    run_cmd("imsbackup", "--job-end", str(state), config_dir=config, check_rc=0)
    run_cmd("imsbackup", "--job-begin", str(state), "--level", "Incremental", config_dir=config, check_rc=0)
    second = run_cmd("imsbackup", "-f", "-", "--job-state", str(state), "/primary", config_dir=config, check_rc=0)
    archive = read_archive(second.stdout)
    assert archive.header["since"] is not None and archive.messages() == []
    run_cmd("imsbackup", "--job-end", str(state), config_dir=config, check_rc=0)
    # a reader that failed leaves no marker: the job's end fails
    run_cmd("imsbackup", "--job-begin", str(state), "--level", "Full", config_dir=config, check_rc=0)
    failed = run_cmd("imsbackup", "-f", "-", "--job-state", str(state), "/nowhere", config_dir=config)
    assert failed.returncode == 2
    end = run_cmd("imsbackup", "--job-end", str(state), config_dir=config)
    assert end.returncode == 1 and b"did not succeed" in end.stderr
    assert run_cmd("imsbackup", "--job-begin", str(state), "--level", "Weekly",
                   config_dir=config).returncode == 2


def test_staging_json_names_groups_matching_nobody(fresh_store, tmp_path):
    config = fresh_store / "config"
    (config / "backup-groups.conf").write_text("nobody=zzzz[[:digit:]]+\nrest=.*\n")
    result = run_cmd("imsbackup", "--staging", str(tmp_path / "stage"), "--json", "/",
                     config_dir=config)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["empty_groups"] == ["nobody"]
    assert b"nobody" in result.stderr


def test_job_state_files_are_not_written_through_planted_links(fresh_store, tmp_path):
    config = fresh_store / "config"
    state = tmp_path / "state"
    state.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    for name in (".level.tmp", ".started.tmp", ".ok.tmp"):
        (state / name).symlink_to(victim)
    run_cmd("imsbackup", "--job-begin", str(state), "--level", "Full", config_dir=config, check_rc=0)
    run_cmd("imsbackup", "-f", "-", "--job-state", str(state), "/primary", config_dir=config,
            check_rc=0)
    assert victim.read_text() == "precious\n"
    assert (state / "level").read_text() == "Full" and not (state / "level").is_symlink()
