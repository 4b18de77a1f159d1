"""imsasm -s and local.store.backup.exclude: a directory of the tree (user, group, server,
.d) leaves excluded folders out of the stream and its estimate, as imsbackup leaves them out
of a wider name; a placeholder that names an excluded folder (a stale tree) saves it, as
imsbackup saves a folder named in full, and says so."""

from __future__ import annotations

from archive_reader import read_archive
from conftest import run_cmd
from test_imsasm_cli import setup_tree

EXCLUDED = ("Trash", "Archive/2024")


def folders(stream: bytes) -> set[tuple[str, str]]:
    return {(m.json()["user"], m.json()["folder"]) for m in read_archive(stream).members
            if m.kind == "folder"}


def stale_tree(store, tmp_path):
    """A tree made before the exclusion was set: it still has Trash and Archive.d/2024."""
    config, user, user_dir = setup_tree(store, tmp_path)
    with open(config / "msg.conf", "a") as conf:
        conf.write(f"local.store.backup.exclude = {'%'.join(EXCLUDED)}\n")
    return config, user, user_dir


def test_directories_leave_excluded_folders_out_of_stream_and_estimate(fresh_store, tmp_path):
    config, user, user_dir = stale_tree(fresh_store, tmp_path)
    server = user_dir.parent.parent
    for directory in (user_dir, user_dir.parent, server):
        saved = folders(run_cmd("imsasm", "-s", str(directory), config_dir=config,
                                check_rc=0).stdout)
        assert saved and not any(folder in EXCLUDED for _, folder in saved), directory
    everything = folders(run_cmd("imsbackup", "-x", "-f", "-", "/", config_dir=config,
                                 check_rc=0).stdout)
    assert any(folder in EXCLUDED for _, folder in everything)    # there was something to leave out

    # -b: the estimate counts the bytes of the folders that are saved, not of the excluded ones
    maildir = fresh_store / "partitions" / "primary" / user / "Maildir"
    assert (maildir / ".Trash").is_dir() or (maildir / ".Archive.2024").is_dir()
    saved_dirs = [d for d in [maildir, *maildir.glob(".*")]
                  if d.is_dir() and d.name not in (".Trash", ".Archive.2024")]
    data = sum(p.stat().st_size + (-p.stat().st_size % 512)
               for d in saved_dirs for sub in ("cur", "new") for p in (d / sub).iterdir())
    estimate = run_cmd("imsasm", "-s", "-b", str(user_dir), config_dir=config, check_rc=0)
    assert int(estimate.stdout.split()[2]) == data

    # a .d directory is a directory: Archive without its excluded subfolder Archive/2024
    level = next(p for p in sorted(server.glob("*/*/Archive.d")) if p.with_name("Archive").is_file())
    saved = folders(run_cmd("imsasm", "-s", str(level), config_dir=config, check_rc=0).stdout)
    assert {folder for _, folder in saved} == {"Archive"}


def test_a_placeholder_of_an_excluded_folder_is_saved_and_named(fresh_store, tmp_path):
    config, user, user_dir = stale_tree(fresh_store, tmp_path)
    trash = next(p for p in sorted(user_dir.parent.parent.glob("*/*/Trash")))
    result = run_cmd("imsasm", "-s", str(trash), config_dir=config, check_rc=0)
    assert {folder for _, folder in folders(result.stdout)} == {"Trash"}
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and str(trash) in lines[0]
    assert "local.store.backup.exclude" in lines[0] and "mkbackupdir" in lines[0]
    # as imsbackup with that folder named in full
    logical = f"/*/{trash.parent.parent.name}/{trash.parent.name}/Trash"
    named = folders(run_cmd("imsbackup", "-f", "-", logical, config_dir=config, check_rc=0).stdout)
    assert {folder for _, folder in named} == {"Trash"}
