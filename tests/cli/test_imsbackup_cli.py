"""imsbackup through the installed command line on a real filesystem: options, errors, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from archive_reader import Incomplete, read_archive
from conftest import command, require, run_cmd, small_tmpfs

from ims.cli import imsbackup


def one_line(stderr: bytes) -> str:
    lines = [line for line in stderr.decode().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("name, words", [
    ("/nowhere", ["no such partition", "nowhere"]),
    ("/primary/groupZ", ["no such backup group", "groupZ"]),
    ("/primary/user/nobody-here", ["no such user", "nobody-here"]),
    ("nobody-here", ["no such user", "nobody-here"]),
])
def test_unknown_names_exit_2_and_write_nothing(sample_store, tmp_path, name, words):
    target = tmp_path / "out.ims"
    result = run_cmd("imsbackup", "-f", str(target), name, config_dir=sample_store / "config")
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert all(w in line for w in words), line
    assert not target.exists() and not Path(str(target) + ".partial").exists()


def test_unknown_folder_and_wrong_group(sample_store, tmp_path):
    users = sorted(p.name for p in (sample_store / "partitions" / "primary").iterdir())
    user = users[0]
    result = run_cmd("imsbackup", "-f", str(tmp_path / "x"), f"/primary/user/{user}/NoSuchFolder",
                     config_dir=sample_store / "config")
    assert result.returncode == 2 and "NoSuchFolder" in one_line(result.stderr)
    wrong = "groupC" if not user[0].isdigit() else "groupA"
    result = run_cmd("imsbackup", "-f", str(tmp_path / "x"), f"/primary/{wrong}/{user}",
                     config_dir=sample_store / "config")
    assert result.returncode == 2 and "not 'group" in one_line(result.stderr)


def test_config_errors_name_file_and_line(sample_store, tmp_path):
    config = tmp_path / "config"
    shutil.copytree(sample_store / "config", config)
    (config / "backup-groups.conf").write_text("groupA=[a-l].*\ngroupB=[m-z.*\n")
    result = run_cmd("imsbackup", "-f", str(tmp_path / "x"), "/", config_dir=config)
    assert result.returncode == 2
    assert f"{config}/backup-groups.conf:2: invalid regex" in one_line(result.stderr)
    (config / "backup-groups.conf").write_text("# fine\ngroupA [a-l].*\n")
    result = run_cmd("imsbackup", "-f", str(tmp_path / "x"), "/", config_dir=config)
    assert result.returncode == 2 and "backup-groups.conf:2:" in one_line(result.stderr)
    (config / "backup-groups.conf").unlink()
    (config / "msg.conf").write_text((sample_store / "config" / "msg.conf").read_text()
                                     + "this line is wrong\n")
    result = run_cmd("imsbackup", "-f", str(tmp_path / "x"), "/", config_dir=config)
    assert result.returncode == 2 and "msg.conf:" in one_line(result.stderr)
    result = run_cmd("imsbackup", "-f", str(tmp_path / "x"), "/", config_dir=tmp_path / "none")
    assert result.returncode == 2 and "not found" in one_line(result.stderr)


def without_dac(*args: str) -> tuple[str, ...]:
    """Run as root without the capabilities that let root ignore file permissions."""
    require(shutil.which("setpriv") is not None, "setpriv (util-linux)")
    return ("setpriv", "--bounding-set", "-dac_override,-dac_read_search", *args)


def test_unreadable_config_is_a_usage_error(sample_store, tmp_path):
    config = tmp_path / "config"
    shutil.copytree(sample_store / "config", config)
    os.chmod(config / "msg.conf", 0)
    result = run_cmd("imsbackup", "-f", str(tmp_path / "x"), "/", config_dir=config,
                     prefix=without_dac())
    assert result.returncode == 2
    assert f"{config}/msg.conf: cannot read: Permission denied" in one_line(result.stderr)


def test_unreadable_message_is_skipped_and_listed(fresh_store, tmp_path):
    victim = next(p for p in sorted((fresh_store / "partitions").rglob("cur/*"))
                  if os.stat(p).st_nlink == 1)
    os.chmod(victim, 0)
    target = tmp_path / "out.ims"
    result = run_cmd("imsbackup", "-f", str(target), "--json", "/",
                     config_dir=fresh_store / "config", prefix=without_dac())
    assert result.returncode == 1, result.stderr
    assert result.stdout, result.stderr
    base = victim.name.split(":")[0]
    summary = json.loads(result.stdout)
    assert summary["exit_code"] == 1
    assert len(summary["skipped"]) == 1 and base in summary["skipped"][0]
    assert "Permission denied" in summary["skipped"][0]
    archive = read_archive(target.read_bytes())
    assert archive.trailer["skipped"] == summary["skipped"]
    assert base not in {m.pax["IMS.basename"] for m in archive.messages()}
    assert "skipped" in result.stderr.decode()


def test_unwritable_devices_exit_6(sample_store, tmp_path):
    result = run_cmd("imsbackup", "-f", str(tmp_path / "no" / "dir" / "x.ims"), "/",
                     config_dir=sample_store / "config")
    assert result.returncode == 6 and "cannot create" in one_line(result.stderr)
    result = run_cmd("imsbackup", "-f", "/dev/full", "/", config_dir=sample_store / "config")
    assert result.returncode == 6
    assert "/dev/full: write failed: No space left on device" in result.stderr.decode()


def test_disk_full_leaves_no_archive_that_looks_complete(sample_store, tmp_path):
    with small_tmpfs(tmp_path / "small", "1m") as mount_point:
        target = mount_point / "full.ims"
        result = run_cmd("imsbackup", "-f", str(target), "/", config_dir=sample_store / "config")
        assert result.returncode == 6
        assert "No space left on device" in result.stderr.decode()
        assert not target.exists()
        partial = Path(str(target) + ".partial")
        assert partial.exists() and str(partial) in result.stderr.decode()
        with pytest.raises(Incomplete):
            read_archive(partial.read_bytes())


def test_a_failed_run_keeps_the_previous_archive(sample_store, tmp_path):
    target = tmp_path / "keep.ims"
    run_cmd("imsbackup", "-f", str(target), "/", config_dir=sample_store / "config", check_rc=0)
    before = target.read_bytes()
    result = run_cmd("imsbackup", "-f", str(target), "/primary/groupZ",
                     config_dir=sample_store / "config")
    assert result.returncode == 2 and target.read_bytes() == before


def test_broken_pipe_is_a_device_error(sample_store):
    env = dict(os.environ, IMS_CONFIG_DIR=str(sample_store / "config"))
    proc = subprocess.Popen([command("imsbackup"), "-f", "-", "/"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    proc.stdout.read(1000)
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 6, err
    assert b"write failed" in err


def test_stdout_archive_blocking_and_json_on_stderr(sample_store):
    result = run_cmd("imsbackup", "-f", "-", "-b", "7", "--json", "/",
                     config_dir=sample_store / "config", check_rc=0)
    data = result.stdout
    assert len(data) % (512 * 7) == 0
    archive = read_archive(data, blocking_factor=7)
    assert archive.header["blocking_factor"] == 7
    summary = json.loads(result.stderr.decode().strip().splitlines()[-1])
    assert summary["messages"] == archive.trailer["counts"]["messages"]
    assert {"exit_code", "bytes", "links", "vanished", "skipped", "excluded_folders",
            "seconds"} <= set(summary)
    with pytest.raises(Incomplete, match="blocking factor"):
        read_archive(data, blocking_factor=20)


def test_every_truncation_is_rejected(sample_store):
    data = run_cmd("imsbackup", "-f", "-", "/primary", config_dir=sample_store / "config",
                   check_rc=0).stdout
    read_archive(data)
    step = max(1, len(data) // 300)
    cuts = list(range(0, len(data), step)) + [len(data) - 1, len(data) - 512, len(data) - 10240]
    for cut in cuts:
        with pytest.raises(Incomplete):
            read_archive(data[:cut])


def test_link_min_and_full_copies(sample_store):
    config = sample_store / "config"
    default = read_archive(run_cmd("imsbackup", "-f", "-", "/", config_dir=config, check_rc=0).stdout)
    high = read_archive(run_cmd("imsbackup", "-m", "4", "-f", "-", "/", config_dir=config,
                                check_rc=0).stdout)
    nlinks = Counter()
    for path in (sample_store / "partitions").rglob("*"):
        if path.parent.name in ("cur", "new"):
            nlinks[os.stat(path).st_nlink] += 1
    links_default = sum(1 for m in default.messages() if m.typeflag == b"1")
    links_high = sum(1 for m in high.messages() if m.typeflag == b"1")
    assert links_default > links_high
    # with -m 4 only inodes with 4+ links are shared; each such inode: links - 1 link members
    expected_high = sum(count * (n - 1) // n for n, count in nlinks.items() if n >= 4)
    assert links_high == expected_high
    assert len(default.messages()) == len(high.messages())


def test_debug_log_and_verbose(sample_store, tmp_path):
    config = tmp_path / "config"
    shutil.copytree(sample_store / "config", config)
    (config / "msg.conf").write_text((config / "msg.conf").read_text()
                                     + f"local.store.logdir = {tmp_path / 'logs'}\n")
    result = run_cmd("imsbackup", "-g", "-v", "-f", str(tmp_path / "a.ims"), "/primary",
                     config_dir=config, check_rc=0)
    log = (tmp_path / "logs" / "imsbackup.log").read_text()
    assert "folder written" in log
    assert "/primary/" in result.stderr.decode()


def test_in_process_usage_errors(capsys, sample_store):
    assert imsbackup.main(["-f", "x", "-d", "2024-01-01", "/"]) == 2
    assert "-d 2024-01-01" in capsys.readouterr().err
    assert imsbackup.main(["-f", "x"]) == 2
    assert "no logical name" in capsys.readouterr().err
    assert imsbackup.main(["-f", "x", "-e", "latin1", "/"]) == 2
    assert imsbackup.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "6  device error" in out and "5  unresolved links" in out


def test_dates_are_local_time(monkeypatch):
    monkeypatch.setenv("TZ", "Europe/Berlin")
    import time
    time.tzset()
    assert imsbackup.parse_since("20240115:120000") == 1705316400  # 11:00 UTC
    assert imsbackup.parse_since("20240115") == 1705273200


def test_interrupted_backup_has_no_trailer_and_leaves_no_process(sample_store, tmp_path):
    fifo = tmp_path / "tape"
    os.mkfifo(fifo)
    env = dict(os.environ, IMS_CONFIG_DIR=str(sample_store / "config"))
    proc = subprocess.Popen([command("imsbackup"), "-b", "1", "-f", str(fifo), "/"], env=env,
                            stderr=subprocess.PIPE)
    with open(fifo, "rb") as tape:
        received = tape.read(4096)
        children_file = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        children = [int(p) for p in children_file.read_text().split()]
        assert children, "the store reader process should be running"
        proc.send_signal(2)   # SIGINT, as Ctrl-C would
        _, err = proc.communicate(timeout=30)
        received += tape.read()
    assert proc.returncode == 130, err
    assert b"interrupted" in err
    with pytest.raises(Incomplete):
        read_archive(received, blocking_factor=1)
    for child in children:
        assert not Path(f"/proc/{child}").exists() or \
            "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]


def test_progress_is_shown_on_a_terminal_only(sample_store, tmp_path):
    import pty
    controller, terminal = pty.openpty()
    try:
        result = run_cmd("imsbackup", "-f", str(tmp_path / "a.ims"), "/",
                         config_dir=sample_store / "config", stderr=terminal)
    finally:
        os.close(terminal)
    shown = b""
    try:
        while True:
            chunk = os.read(controller, 65536)
            if not chunk:
                break
            shown += chunk
    except OSError:
        pass
    os.close(controller)
    assert result.returncode == 0
    assert b"folders," in shown and b"messages" in shown
    quiet = run_cmd("imsbackup", "-f", str(tmp_path / "b.ims"), "/",
                    config_dir=sample_store / "config", check_rc=0)
    assert quiet.stderr == b""


def test_configutil_lists_prints_and_sets(tmp_path):
    config = tmp_path / "conf"
    run_cmd("configutil", "-o", "store.partition.primary.path", "-v", "/srv/p1",
            config_dir=config, check_rc=0)
    run_cmd("configutil", "-o", "local.store.backup.exclude", "-v", "Trash%Bulk Mail",
            config_dir=config, check_rc=0)
    listing = run_cmd("configutil", config_dir=config, check_rc=0).stdout.decode()
    assert listing == "store.partition.primary.path = /srv/p1\nlocal.store.backup.exclude = Trash%Bulk Mail\n"
    assert run_cmd("configutil", "-o", "store.maildir.layout", config_dir=config,
                   check_rc=0).stdout == b"%u/Maildir\n"
    (config / "msg.conf").write_text("broken line\n")
    result = run_cmd("configutil", "-o", "x.y", config_dir=config)
    assert result.returncode == 2 and b"msg.conf:1:" in result.stderr


def test_a_planted_partial_link_is_replaced_not_followed(sample_store, tmp_path):
    victim = tmp_path / "root-only"
    victim.write_bytes(b"precious\n")
    victim.chmod(0o600)
    target = tmp_path / "full.ims"
    Path(str(target) + ".partial").symlink_to(victim)
    run_cmd("imsbackup", "-f", str(target), "/", config_dir=sample_store / "config", check_rc=0)
    assert victim.read_bytes() == b"precious\n"
    assert target.is_file() and not target.is_symlink()
    assert target.stat().st_mode & 0o777 == 0o600


def test_a_stale_partial_with_a_loose_mode_does_not_lend_it(sample_store, tmp_path):
    target = tmp_path / "full.ims"
    stale = Path(str(target) + ".partial")
    stale.write_bytes(b"old run")
    stale.chmod(0o644)
    run_cmd("imsbackup", "-f", str(target), "/", config_dir=sample_store / "config", check_rc=0)
    assert target.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("victim", ["subscriptions", "dovecot-keywords"])
def test_an_unreadable_control_file_costs_no_mail(fresh_store, tmp_path, victim):
    """Its own content is named as not backed up (exit 1); the user's or folder's messages
    are all in the archive."""
    maildir = next(p for p in sorted((fresh_store / "partitions").rglob("Maildir"))
                   if (p / victim).exists())
    os.chmod(maildir / victim, 0)
    keys = {n.partition(":")[0] for sub in ("cur", "new") for n in os.listdir(maildir / sub)}
    target = tmp_path / "out.ims"
    result = run_cmd("imsbackup", "-f", str(target), "--json", "/",
                     config_dir=fresh_store / "config", prefix=without_dac())
    summary = json.loads(result.stdout)
    assert result.returncode == 1, result.stderr
    assert any(victim in line and "Permission denied" in line for line in summary["skipped"])
    user = maildir.parent.name
    archived = {m.name.rsplit("/", 1)[1] for m in read_archive(target.read_bytes()).members
                if m.name.startswith(f"{maildir.parent.parent.name}/{user}/INBOX/")
                and m.kind == "message"}
    assert keys <= archived, keys - archived
