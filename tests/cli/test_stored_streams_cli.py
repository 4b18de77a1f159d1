"""Streams stored instead of restored (imsrestore --where, imsasm -r -m): a stored stream is
never replaced or removed, the target directory must be the caller's own and outside the
store, and a -b that disagrees stores nothing."""

from __future__ import annotations

import os
import subprocess

from conftest import run_cmd


def backup(store, *args: str) -> bytes:
    return run_cmd("imsbackup", "-f", "-", *args, config_dir=store / "config", check_rc=0).stdout


def where(store, target, data: bytes, *args: str) -> subprocess.CompletedProcess:
    return run_cmd("imsrestore", "--where", str(target), *args, "-f", "-",
                   config_dir=store / "config", input=data)


def stored_files(target) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(target.iterdir())}


def test_a_stored_stream_is_never_replaced(fresh_store, tmp_path):
    first, second = backup(fresh_store, "/primary"), backup(fresh_store, "/primary")
    target = tmp_path / "w"
    assert where(fresh_store, target, first).returncode == 0
    (only,) = stored_files(target)
    # a stream of another backup, given the first one's name (same second, same label)
    os.rename(target / only, tmp_path / "aside")
    assert where(fresh_store, target, second).returncode == 0
    (second_name,) = stored_files(target)
    os.rename(tmp_path / "aside", target / second_name)     # now the name is taken
    result = where(fresh_store, target, second)
    assert result.returncode == 0, result.stderr
    files = stored_files(target)
    assert len(files) == 2 and files[second_name] == first     # the first one is still there
    (other,) = set(files) - {second_name}
    assert other == second_name.replace(".ims", "-2.ims") and files[other] == second
    assert f"imsrestore -f {target / other}" in result.stderr.decode()


def test_an_existing_partial_is_left_alone(fresh_store, tmp_path):
    data = backup(fresh_store, "/primary")
    target = tmp_path / "w"
    assert where(fresh_store, target, data).returncode == 0
    (name,) = stored_files(target)
    os.rename(target / name, tmp_path / "aside")
    # another run still writing (or one that failed, kept for inspection) under that name
    (target / (name + ".partial")).write_bytes(b"someone else's stream")
    result = where(fresh_store, target, data)
    assert result.returncode == 0, result.stderr
    files = stored_files(target)
    assert files[name + ".partial"] == b"someone else's stream"
    assert files[name.replace(".ims", "-2.ims")] == data


def test_the_target_must_be_ours_and_outside_the_store(fresh_store, tmp_path):
    data = backup(fresh_store, "/primary")
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    others = tmp_path / "others"
    others.mkdir()
    os.chown(others, 65534, 65534)
    linked = tmp_path / "linked"
    own = tmp_path / "own"
    own.mkdir()
    linked.symlink_to(own)
    inside = fresh_store / "partitions" / "primary" / "stash"
    for target, words in ((shared, "others may write"), (others, "belongs to uid 65534"),
                          (linked, "symbolic link"), (inside, "lies inside")):
        result = where(fresh_store, target, data)
        assert result.returncode == 2, (target, result.stderr)
        assert words in result.stderr.decode() and str(target) in result.stderr.decode()
        assert not any(target.iterdir()) if target.is_dir() else True
    assert not any(own.iterdir())
    assert not inside.exists()


def test_a_disagreeing_b_stores_nothing(fresh_store, tmp_path):
    data = backup(fresh_store, "-b", "7", "/primary")
    target = tmp_path / "w"
    result = where(fresh_store, target, data, "-b", "20")
    assert result.returncode == 4
    assert b"written with -b 7, read with -b 20" in result.stderr
    assert stored_files(target) == {}
    assert where(fresh_store, target, data, "-b", "7").returncode == 0


def test_relocated_recover_refuses_a_target_in_the_store(fresh_store, tmp_path):
    config = fresh_store / "config"
    run_cmd("configutil", "-o", "local.store.backupdir", "-v", str(tmp_path / "backup"),
            config_dir=config, check_rc=0)
    run_cmd("configutil", "-o", "local.store.backup.servername", "-v", "mailhost",
            config_dir=config, check_rc=0)
    run_cmd("mkbackupdir", config_dir=config, check_rc=0)
    user_dir = next((tmp_path / "backup" / "mailhost").glob("*/*"))
    stream = run_cmd("imsasm", "-s", str(user_dir), config_dir=config, check_rc=0).stdout
    for target in (fresh_store / "partitions" / "primary" / "x", tmp_path / "backup" / "x"):
        result = run_cmd("imsasm", "-r", "-m", f"{user_dir}={target}", str(user_dir),
                         config_dir=config, input=stream)
        assert result.returncode == 2 and b"lies inside" in result.stderr, result.stderr
        assert not target.exists()
    ok = run_cmd("imsasm", "-r", "-m", f"{user_dir}={tmp_path / 'r'}", str(user_dir),
                 config_dir=config, input=stream)
    assert ok.returncode == 0, ok.stderr
    assert len(list((tmp_path / "r").glob("*.ims"))) == 1
