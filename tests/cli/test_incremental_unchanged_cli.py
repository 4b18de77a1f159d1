"""An incremental's unchanged folders cost an entry of their user's record, not a member of
their own (archive format version 2), and every reader sees them as before: a chain restore
brings them back from the earlier archive with their UIDVALIDITY and UIDs, ``-t`` lists
them, a NAME may select them, a hostile entry is refused.  Archives of format version 1
(tests/data, written by the code before) still restore, alone, as a chain, and mixed with
version 2 in one chain."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest
from archive_reader import Archive, read_archive
from conftest import run_cmd
from test_restore_faults_cli import scratch_config

from ims.store import uidlist
from ims.store.maildir import dirname_to_folder

sys.path.insert(0, str(Path(__file__).parent.parent / "faults"))
import fuzz  # noqa: E402

DATA = Path(__file__).parent.parent / "data"

# Folder = (user, folder); State = (UIDVALIDITY, {base name: UID})
Folder = tuple[str, str]
State = tuple[int | None, dict[str, int | None]]


def backup(store: Path, path: Path, *args: str) -> dict:
    result = run_cmd("imsbackup", "--json", "-f", str(path), *args, "/primary",
                     config_dir=store / "config", check_rc=0)
    return json.loads(result.stdout)


def restore(config: Path, *args: str):
    return run_cmd("imsrestore", *args, config_dir=config)


def second_boundary() -> str:
    """The start of the next second, as -d takes it (ctimes are compared with it)."""
    time.sleep(1.05 - time.time() % 1)
    return time.strftime("%Y%m%d:%H%M%S")


def archived_states(*archives: Archive) -> dict[Folder, State]:
    """The latest listed state of every folder over ``archives`` (oldest first)."""
    states: dict[Folder, State] = {}
    for archive in archives:
        for member in archive.members:
            body = member.json() if member.kind == "folder" else {}
            if body.get("messages") is not None:
                states[(body["user"], body["folder"])] = (
                    body["uidvalidity"], {key: uid for key, uid, _, _ in body["messages"]})
    return states


def store_states(partition: Path) -> dict[Folder, State]:
    """Every folder of the partition: its uidlist's UIDVALIDITY, and each message file's UID
    (None when the uidlist has none, as for mail still in new/)."""
    states: dict[Folder, State] = {}
    for user in sorted(partition.iterdir()):
        root = user / "Maildir"
        folders = [("INBOX", root)] + [
            (dirname_to_folder(d.name), d) for d in sorted(root.iterdir())
            if d.name.startswith(".") and (d / "cur").is_dir()]
        for name, directory in folders:
            path = directory / "dovecot-uidlist"
            listed = uidlist.parse(path.read_bytes()) if path.exists() else uidlist.Uidlist()
            keys = [f.name.partition(":")[0] for sub in ("cur", "new")
                    for f in (directory / sub).iterdir()]
            states[(user.name, name)] = (listed.uidvalidity,
                                         {key: listed.uids.get(key) for key in keys})
    return states


def folder_members(archive: Archive) -> list[str]:
    return [m.name for m in archive.members if m.kind == "folder"]


def read(path: Path) -> Archive:
    return read_archive(path.read_bytes())


def empty_partition(partition: Path) -> None:
    for user in partition.iterdir():
        shutil.rmtree(user)


# -- version 2: what an incremental of an unchanged store holds ---------------------------------

def test_an_incremental_of_an_unchanged_store_has_no_folder_members_yet_restores_every_folder(
        fresh_store, tmp_path):
    """Each unchanged folder was a folder-state member of its own (and a message on the store
    reader's channel): 7,000 members for 6,000 folders on a store of many small folders.
    Expected: the incremental holds user members only (format version 2), naming each folder
    with its identity, the counts say every folder is unchanged, and a chain restore of full
    + incremental brings every folder back with the full backup's UIDVALIDITY and UIDs."""
    full, incr = tmp_path / "full.ims", tmp_path / "incr.ims"
    since = second_boundary()
    backup(fresh_store, full)
    time.sleep(1.05)
    summary = backup(fresh_store, incr, "-d", since)
    before = archived_states(read(full))
    archive = read(incr)
    assert archive.header["version"] == 2
    assert folder_members(archive) == []
    assert sorted((u, f) for _, u, f, _ in archive.unchanged_folders()) == sorted(before)
    assert all(isinstance(identity, int) for *_, identity in archive.unchanged_folders())
    assert archive.trailer["counts"]["unchanged_folders"] == len(before)
    assert archive.trailer["counts"]["folders"] == 0       # folder-state members
    assert summary["folders"] == summary["unchanged_folders"] == len(before)
    assert summary["messages"] == 0 and summary["exit_code"] == 0

    partition = fresh_store / "partitions" / "primary"
    empty_partition(partition)
    result = restore(fresh_store / "config", "-f", str(full), "-f", str(incr))
    assert result.returncode == 0, result.stderr.decode()
    assert store_states(partition) == before


def test_listing_and_naming_an_unchanged_folder_of_a_version_2_incremental(fresh_store,
                                                                          tmp_path):
    """``-t`` lists each unchanged folder as before ("unchanged since"); a NAME that selects
    only an unchanged folder is found (the trailer's index has no extent for it: it is in the
    user member) and, without the full backup, named as not restorable (exit 1); a user
    restored by the trailer's index (a file, users only) gets the same."""
    full, incr = tmp_path / "full.ims", tmp_path / "incr.ims"
    since = second_boundary()
    backup(fresh_store, full)
    time.sleep(1.05)
    backup(fresh_store, incr, "-d", since)
    _, user, folder, _ = next(entry for entry in read(incr).unchanged_folders()
                              if entry[2] != "INBOX")
    config = fresh_store / "config"

    listing = restore(config, "-t", "-f", str(incr))
    assert listing.returncode == 0, listing.stderr.decode()
    lines = listing.stdout.decode().splitlines()
    unchanged = [line for line in lines if "unchanged since" in line]
    assert len(unchanged) == len(read(incr).unchanged_folders())
    assert any(f"/{user}/{folder} unchanged since" in line for line in unchanged)

    named = restore(config, "-t", "-f", str(incr), f"/primary/user/{user}/{folder}")
    assert named.returncode == 0, named.stderr.decode()
    assert [line for line in named.stdout.decode().splitlines() if line.startswith("folder")] \
        == [line for line in unchanged if f"/{user}/{folder} " in line]

    by_index = restore(config, "-f", str(incr), f"/primary/user/{user}")
    assert by_index.returncode == 1, by_index.stderr.decode()
    assert f"{user}/{folder}: unchanged since an earlier backup".encode() in by_index.stderr


def test_a_folder_deleted_and_recreated_between_full_and_incremental(fresh_store, tmp_path):
    """Folder A deleted and made again under the same name (new messages, a new cur/): the
    incremental must list it (its own state, a member), never take it for the unchanged A of
    the full backup; the chain restore brings back the new A only, the other folders from the
    full backup."""
    full, incr = tmp_path / "full.ims", tmp_path / "incr.ims"
    partition = fresh_store / "partitions" / "primary"
    since = second_boundary()
    backup(fresh_store, full)
    user = sorted(partition.iterdir())[0]
    folder = next(d for d in sorted((user / "Maildir").iterdir())
                  if d.name.startswith(".") and any((d / "cur").iterdir()))
    name = dirname_to_folder(folder.name)
    time.sleep(1.05)
    shutil.rmtree(folder)
    for sub in ("cur", "new", "tmp"):
        (folder / sub).mkdir(parents=True)
    (folder / "new" / "1767225601.M1P1.recreated").write_bytes(b"Subject: again\n\nnew A\n")
    summary = backup(fresh_store, incr, "-d", since)
    archive = read(incr)
    assert folder_members(archive) == [f"primary/{user.name}/{name}/.ims-folder.json"]
    assert (user.name, name) not in {(u, f) for _, u, f, _ in archive.unchanged_folders()}
    assert summary["unchanged_folders"] == summary["folders"] - 1
    before = archived_states(read(full))

    empty_partition(partition)
    result = restore(fresh_store / "config", "-f", str(full), "-f", str(incr))
    assert result.returncode == 0, result.stderr.decode()
    after = store_states(partition)
    assert list(after[(user.name, name)][1]) == ["1767225601.M1P1.recreated"]
    assert {k: v for k, v in after.items() if k != (user.name, name)} == \
        {k: v for k, v in before.items() if k != (user.name, name)}


# -- hostile unchanged entries --------------------------------------------------------------------

def resealed(incr: Path, change) -> bytes:
    """``incr`` with the first user member's JSON changed by ``change`` and the archive sealed
    again around it (a valid digest and trailer: only the record's checks stand between it
    and the store)."""
    data = incr.read_bytes()
    pieces, tail = fuzz.split(data)
    base = fuzz.Base("incr", data, 20, pieces, tail, [])
    items = [fuzz.logical(base, piece) for piece in pieces]
    user = next(item for item in items if item.kind == "user")
    body = json.loads(user.payload)
    change(body)
    user.payload = json.dumps(body).encode()
    sealed, _ = fuzz.seal(items, 20)
    return sealed


def first_unchanged(body: dict) -> list:
    return body["unchanged"][0]


HOSTILE = {
    "a name that is a path": lambda b: b["unchanged"].append(["../../../pwned", 7]),
    "an absolute name": lambda b: b["unchanged"].append(["/tmp/pwned", 7]),
    "a folder twice": lambda b: b["unchanged"].append(list(first_unchanged(b))),
    "a folder the user does not have": lambda b: b["unchanged"].append(["Nowhere", 7]),
    "an entry of the wrong type": lambda b: b["unchanged"].append({"folder": "x"}),
    "an identity of the wrong type": lambda b: first_unchanged(b).__setitem__(1, "x"),
    "a list of the wrong type": lambda b: b.__setitem__("unchanged", "INBOX"),
    "no since-time": lambda b: b.__setitem__("unchanged_since", None),
}


@pytest.mark.parametrize("damage", sorted(HOSTILE))
def test_a_hostile_unchanged_entry_is_refused_and_nothing_is_written_outside_the_store(
        fresh_store, tmp_path, damage):
    """The user member's ``unchanged`` list comes from the archive: a name that is a path, a
    folder twice or unknown, an entry or identity of the wrong type, no since-time.
    Expected: the user record is refused where it is parsed (exit 4, one line naming
    ``unchanged``), from a chain and alone, and nothing is written outside the store."""
    full, incr, bad = tmp_path / "full.ims", tmp_path / "incr.ims", tmp_path / "bad.ims"
    since = second_boundary()
    backup(fresh_store, full)
    time.sleep(1.05)
    backup(fresh_store, incr, "-d", since)
    bad.write_bytes(resealed(incr, HOSTILE[damage]))
    partition = fresh_store / "partitions" / "primary"
    empty_partition(partition)
    around = fuzz.snapshot(tmp_path, (partition,))
    for archives in (("-f", str(full), "-f", str(bad)), ("-f", str(bad))):
        result = restore(fresh_store / "config", *archives)
        assert result.returncode == 4, (archives, result.stderr.decode())
        errors = [line for line in result.stderr.decode().splitlines() if "unchanged" in line]
        assert errors and all(line.startswith("imsrestore: ") for line in errors), \
            result.stderr.decode()
        assert b"Traceback" not in result.stderr
        assert fuzz.snapshot(tmp_path, (partition,)) == around
    assert not list(tmp_path.rglob("pwned")) and not Path("/tmp/pwned").exists()


# -- version 1 archives ---------------------------------------------------------------------------

def v1_config(tmp_path: Path) -> tuple[Path, Path]:
    """A configuration whose partition ``primary`` is an empty directory."""
    partition = tmp_path / "partitions" / "primary"
    partition.mkdir(parents=True)
    return scratch_config(tmp_path, partition), partition


def test_version_1_archives_restore_alone_and_as_a_chain(tmp_path):
    """tests/data holds a full backup and an incremental written by the version 1 code (each
    unchanged folder a member of its own).  Expected: both are read (version 1 accepted),
    the full restores every folder with its UIDVALIDITY and UIDs, the chain restores the
    last state (a flag changed in rgarcia's INBOX, sdubois's Drafts deleted) and ``-t``
    lists the incremental's unchanged folders."""
    full1, incr1 = DATA / "v1-full.ims", DATA / "v1-incremental.ims"
    assert read(full1).header["version"] == read(incr1).header["version"] == 1
    assert len(read(incr1).unchanged_folders()) == 5
    config, partition = v1_config(tmp_path)
    recorded = archived_states(read(full1))

    alone = restore(config, "-f", str(full1))
    assert alone.returncode == 0, alone.stderr.decode()
    assert store_states(partition) == recorded

    empty_partition(partition)
    chain = restore(config, "-f", str(full1), "-f", str(incr1))
    assert chain.returncode == 0, chain.stderr.decode()
    last = archived_states(read(full1), read(incr1))
    del last[("sdubois", "Drafts")]
    assert store_states(partition) == last
    assert not (partition / "sdubois" / "Maildir" / ".Drafts").exists()
    flagged = [p.name for p in (partition / "rgarcia" / "Maildir" / "cur").iterdir()
               if "F" in p.name.partition(":2,")[2]]
    recorded_flagged = [key for key, _, flags, _ in next(
        m.json() for m in read(incr1).members
        if m.kind == "folder" and m.json()["folder"] == "INBOX")["messages"] if "F" in flags]
    assert sorted(name.partition(":")[0] for name in flagged) == sorted(recorded_flagged)

    listing = restore(config, "-t", "-f", str(incr1))
    assert listing.returncode == 0, listing.stderr.decode()
    assert len([line for line in listing.stdout.decode().splitlines()
                if "unchanged since" in line]) == 5


def test_a_chain_of_a_version_1_full_and_a_version_2_incremental(tmp_path):
    """The first incremental after an upgrade follows a full backup written by the version 1
    code.  The store is the full backup restored, a flag then changed in one folder; the
    version 2 incremental lists that folder and names the others as unchanged.  Expected:
    the chain (with --allow-gaps: the incremental's date is after the old full backup's
    start) brings every folder back, the unchanged ones with the version 1 archive's
    UIDVALIDITY and UIDs."""
    full1 = DATA / "v1-full.ims"
    config, partition = v1_config(tmp_path)
    assert restore(config, "-f", str(full1)).returncode == 0
    since = second_boundary()
    time.sleep(1.05)
    inbox = partition / "sdubois" / "Maildir" / "cur"
    message = next(p for p in sorted(inbox.iterdir()) if "T" not in p.name.partition(":2,")[2])
    base, _, info = message.name.partition(":2,")
    message.rename(inbox / f"{base}:2,{''.join(sorted(set(info + 'T')))}")
    incr2 = tmp_path / "incr2.ims"
    run_cmd("imsbackup", "-f", str(incr2), "-d", since, "/primary", config_dir=config,
            check_rc=0)
    archive = read(incr2)
    assert archive.header["version"] == 2
    assert folder_members(archive) == ["primary/sdubois/INBOX/.ims-folder.json"]
    assert len(archive.unchanged_folders()) == 6
    recorded = archived_states(read(full1))

    empty_partition(partition)
    result = restore(config, "--allow-gaps", "-f", str(full1), "-f", str(incr2))
    assert result.returncode == 0, result.stderr.decode()
    assert store_states(partition) == recorded
    assert any(p.name.startswith(base) and "T" in p.name.partition(":2,")[2]
               for p in inbox.iterdir())
