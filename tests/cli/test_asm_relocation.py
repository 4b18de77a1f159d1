"""imsasm -r -m src=dst (NetWorker's relocated recover): the stream is kept as an archive
file in dst and nothing in the store changes; the options imsasm accepts but does not act
on are named when given."""

from __future__ import annotations

import gzip
import shlex
import shutil
import stat
from pathlib import Path

from conftest import run_cmd
from test_imsasm_cli import setup_tree


def listing(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def restore_command(stderr: bytes) -> list[str]:
    """The imsrestore command imsasm says to use (on its line, after 'restore with: ')."""
    line = next(line for line in stderr.decode().splitlines() if "restore with: " in line)
    return shlex.split(line.split("restore with: ", 1)[1])


def test_relocated_recover_keeps_the_stream_and_leaves_the_store_alone(fresh_store, tmp_path):
    config, user, user_dir = setup_tree(fresh_store, tmp_path)
    saved = run_cmd("imsasm", "-s", str(user_dir), config_dir=config, check_rc=0).stdout
    maildir = fresh_store / "partitions" / "primary" / user / "Maildir"
    messages = sorted(p.name for p in maildir.rglob("*") if p.parent.name in ("cur", "new"))
    shutil.rmtree(maildir)
    store_before = listing(fresh_store / "partitions")
    target = tmp_path / "relocated" / "here"

    result = run_cmd("imsasm", "-r", "-m", f"{user_dir.parent}={target}", str(user_dir),
                     config_dir=config, input=saved, check_rc=0)
    assert listing(fresh_store / "partitions") == store_before and not maildir.exists()
    [kept] = list(target.iterdir())
    assert kept.name.endswith(".ims") and kept.read_bytes() == saved
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert str(kept) in result.stderr.decode()

    # the command it names restores the user
    command = restore_command(result.stderr)
    assert command[:3] == ["imsrestore", "-f", str(kept)]
    run_cmd(*command, config_dir=config, check_rc=0)
    assert sorted(p.name for p in maildir.rglob("*") if p.parent.name in ("cur", "new")) == messages


def test_a_relocated_stream_is_stored_as_it_left_the_recover_filter(fresh_store, tmp_path):
    config, user, user_dir = setup_tree(fresh_store, tmp_path,
                                        "local.store.backup.asmfilter = gzip -c\n"
                                        "local.store.backup.asmrecoverfilter = gzip -dc\n")
    saved = run_cmd("imsasm", "-s", str(user_dir), config_dir=config, check_rc=0).stdout
    target = tmp_path / "r"
    run_cmd("imsasm", "-r", "-m", f"{user_dir}={target}", str(user_dir), config_dir=config,
            input=saved, check_rc=0)
    [kept] = list(target.iterdir())
    assert kept.read_bytes() == gzip.decompress(saved)      # an archive imsrestore reads
    listed = run_cmd("imsrestore", "-t", "-f", str(kept), config_dir=config, check_rc=0)
    assert f"/{user}/".encode() in listed.stdout


def test_a_cut_or_damaged_relocated_stream_is_kept_as_partial(fresh_store, tmp_path):
    config, user, user_dir = setup_tree(fresh_store, tmp_path)
    saved = run_cmd("imsasm", "-s", str(user_dir), config_dir=config, check_rc=0).stdout
    maildir = fresh_store / "partitions" / "primary" / user / "Maildir"
    body = next(p for p in sorted((maildir / "cur").iterdir())).read_bytes()
    damaged = bytearray(saved)
    damaged[saved.index(body) + len(body) // 2] ^= 0xFF     # in a message's bytes
    store_before = listing(fresh_store / "partitions")
    for number, stream in enumerate((saved[:len(saved) // 2], bytes(damaged))):
        target = tmp_path / f"r{number}"
        result = run_cmd("imsasm", "-r", "-m", f"{user_dir}={target}", str(user_dir),
                         config_dir=config, input=stream)
        assert result.returncode == 4, result.stderr
        [kept] = list(target.iterdir())
        assert kept.name.endswith(".ims.partial") and str(kept) in result.stderr.decode()
        assert listing(fresh_store / "partitions") == store_before


def test_a_malformed_relocation_is_a_usage_error(fresh_store, tmp_path):
    config, _, user_dir = setup_tree(fresh_store, tmp_path)
    saved = run_cmd("imsasm", "-s", str(user_dir), config_dir=config, check_rc=0).stdout
    store_before = listing(fresh_store / "partitions")
    for value in ("nowhere", f"={tmp_path / 'x'}", f"{user_dir}=", "=",
                  f"/elsewhere={tmp_path / 'x'}"):
        result = run_cmd("imsasm", "-r", "-m", value, str(user_dir), config_dir=config,
                         input=saved)
        lines = result.stderr.decode().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and "-m" in lines[0], (value, lines)
        assert not (tmp_path / "x").exists()
    assert listing(fresh_store / "partitions") == store_before


def test_options_not_acted_on_are_named(fresh_store, tmp_path):
    config, _, user_dir = setup_tree(fresh_store, tmp_path)
    inbox = str(user_dir / "INBOX")
    save = run_cmd("imsasm", "-s", "-t", "1700000000", "-x", inbox, config_dir=config, check_rc=0)
    err = save.stderr.decode()
    assert "-t 1700000000: not acted on" in err and "-x: not acted on" in err
    assert save.stdout                                    # the save itself went on
    recover = run_cmd("imsasm", "-r", "-n", "-i", "y", "-z", ".old", inbox, config_dir=config,
                      input=save.stdout, check_rc=0)
    err = recover.stderr.decode()
    assert "-i y: not acted on" in err and "-z .old: not acted on" in err
    bad = run_cmd("imsasm", "-r", "-i", "q", inbox, config_dir=config, input=save.stdout)
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1 and b"-i q" in bad.stderr
