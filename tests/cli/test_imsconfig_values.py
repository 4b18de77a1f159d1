"""imsconfig refuses values that would be written as something other than meant (a mistyped
@mkbackupdir, an empty command, a group name NetWorker cannot take, a control character),
and reads a groups file only if it is a regular file of sane size: each one line, exit 2."""

from __future__ import annotations

import os

import pytest
from conftest import run_cmd

RES = ("res", "--group", "mailgroup", "--backupdir", "/backup")
NSRADMIN = ("nsradmin", "--server", "nwserver", "--group", "mailgroup", "--backupdir", "/backup")


def refused(result, *words: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert all(word in lines[0] for word in words), lines[0]
    assert result.stdout == b""


@pytest.mark.parametrize("args, option", [
    (("--precmd", "@mkbackupdir "), "--precmd '@mkbackupdir '"),
    (("--precmd", "@mkbackupdri"), "--precmd '@mkbackupdri'"),
    (("--precmd", ""), "--precmd ''"),
    (("--precmd", "   "), "--precmd '   '"),
    (("--pstcmd", ""), "--pstcmd ''"),
    (("--pstcmd", "@mkbackupdir"), "--pstcmd '@mkbackupdir'"),
    (("--mkbackupdir", ""), "--mkbackupdir ''"),
    (("--precmd", "echo a\rrm -rf /x"), "--precmd"),
    (("--timeout", "12:00\n"), "--timeout"),
    (("--group", "grp,1"), "--group 'grp,1'"),
])
def test_res_refuses_bad_values(fresh_store, args, option):
    refused(run_cmd("imsconfig", *RES, *args, config_dir=fresh_store / "config"), option)


def test_res_refuses_a_control_character_in_the_backup_directory(fresh_store):
    result = run_cmd("imsconfig", "res", "--group", "g", "--backupdir", "/back\x1bup",
                     config_dir=fresh_store / "config")
    refused(result, "--backupdir", "control character")


@pytest.mark.parametrize("args, option", [
    (("--group", "grp,1"), "--group 'grp,1'"),
    (("--group", "grp 1"), "--group 'grp 1'"),
    (("--schedule", "Full\rEvery Day"), "--schedule"),
    (("--client", "mail\thost"), "--client"),
    (("--server", "nw\x01"), "--server"),
    (("--remote-access", "root@x\ny"), "--remote-access"),
    (("--browse-policy", "Month\x7f"), "--browse-policy"),
    (("--retention-policy", "\rQuarter"), "--retention-policy"),
    (("--start-time", "2:00\r"), "--start-time"),
    (("--backupdir", "/b\rx"), "--backupdir"),
])
def test_nsradmin_refuses_bad_values(fresh_store, args, option):
    refused(run_cmd("imsconfig", *NSRADMIN, *args, config_dir=fresh_store / "config"), option)


def test_show_groups_refuses_a_fifo_a_device_and_a_huge_file(fresh_store, tmp_path):
    config = fresh_store / "config"
    fifo = tmp_path / "groups.fifo"
    os.mkfifo(fifo)
    result = run_cmd("imsconfig", "show-groups", "--groups-file", str(fifo), config_dir=config,
                     timeout=60)                       # it used to wait for a writer for ever
    refused(result, str(fifo), "not a regular file")
    refused(run_cmd("imsconfig", "show-groups", "--groups-file", "/dev/zero", config_dir=config,
                    timeout=60), "/dev/zero", "not a regular file")
    huge = tmp_path / "huge.conf"
    huge.write_text("# padding\n" * 200_000)
    refused(run_cmd("imsconfig", "show-groups", "--groups-file", str(huge), config_dir=config),
            str(huge), "larger than")
    # the installed file is read the same way
    installed = config / "backup-groups.conf"
    installed.unlink()
    os.mkfifo(installed)
    refused(run_cmd("imsconfig", "show-groups", config_dir=config, timeout=60), str(installed),
            "not a regular file")
