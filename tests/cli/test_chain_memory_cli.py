"""A chain's merge keeps its memory under 100 bytes a message (ims/restore/chain.py), and
what it keeps still finds every listed message's bytes, shared ones and those of a folder
renamed between the backups included."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from conftest import run_cmd

from ims.archive.reader import ArchiveReader
from ims.restore import chain as chains
from ims.restore.selection import Pattern
from ims.samplestore import SampleSpec, generate
from ims.store import mutf7

_MEASURE_MERGE = """
import os, sys, tracemalloc
from ims.archive.reader import ArchiveReader
from ims.restore import chain
from ims.restore.selection import Pattern
readers = [ArchiveReader(os.open(path, os.O_RDONLY), path, None) for path in sys.argv[1:]]
for reader in readers:
    reader.read_header()
tracemalloc.start()
merged = chain.merge(readers, (Pattern(),))
held, _ = tracemalloc.get_traced_memory()
counts = readers[0].trailer.counts
print(held, counts["messages"] + counts["links"])
"""


def test_a_merged_chain_holds_under_100_bytes_a_message_and_finds_every_one(tmp_path):
    """Before: the merge kept, per message, two dict entries keyed by tuples of strings and
    every folder state's message list (about 900 bytes a message).  Now: under 100, and every
    message the last state lists is found, its bytes those of the store's file."""
    store = tmp_path / "store"
    generate(store, SampleSpec(users=60, messages_per_user=120, partitions=2, seed=11,
                               size_median=300, size_sigma=0.5))
    config = store / "config"
    full = tmp_path / "full.ims"
    time.sleep(1.1)                          # the generated files are older than the date
    since = time.strftime("%Y%m%d:%H%M%S")   # at or before the full backup's recorded start
    run_cmd("imsbackup", "-f", str(full), "/", config_dir=config, check_rc=0)
    time.sleep(1.1)                          # what follows is after the full backup
    users = sorted((store / "partitions" / "primary").iterdir())
    (users[0] / "Maildir" / "new" / "1800000000.M1P1.bench").write_bytes(b"Subject: n\n\nnew\n")
    # a folder renamed, then changed: listed under its new name, its old messages' bytes
    # only in the full backup under the old name
    os.rename(users[1] / "Maildir" / ".Archive", users[1] / "Maildir" / ".Renamed")
    (users[1] / "Maildir" / ".Renamed" / "new" / "1800000001.M2P2.bench").write_bytes(b"x\n")
    incremental = tmp_path / "incr.ims"
    run_cmd("imsbackup", "-d", since, "-f", str(incremental), "/", config_dir=config,
            check_rc=0)

    # measured in a fresh interpreter, as imsrestore's own process is: in this one, earlier
    # tests leave the interpreter's interned-string table at a size whose next doubling
    # (some 2 MB, once) would land inside the traced merge
    measured = subprocess.run(
        [sys.executable, "-c", _MEASURE_MERGE, str(full), str(incremental)],
        check=True, capture_output=True, text=True)
    held, messages = (int(word) for word in measured.stdout.split())
    assert messages > 6000
    assert held / messages < 100, (held, messages)

    fds = [os.open(path, os.O_RDONLY) for path in (full, incremental)]
    try:
        readers = [ArchiveReader(fd, f"archive{i}", None) for i, fd in enumerate(fds)]
        for reader in readers:
            reader.read_header()
        merged = chains.merge(readers, (Pattern(),))
        # the incremental's user records list every unchanged folder: taken into the
        # states, not kept in the records (at 10,000 users they held some 45 MiB); an
        # earlier archive's records keep only their names
        assert merged.users and all(u.unchanged == () and u.folders for u in merged.users)
        assert len(merged.earlier_users) == 60
        assert all(u.folders == () == u.subscriptions for u in merged.earlier_users.values())
        assert len(merged.states) >= sum(len(u.folders) for u in merged.users)

        finder = chains._Finder(merged)
        found = shared = 0
        for user in merged.users:
            for folder in user.folders:
                state = chains.listed_state(merged, (user.partition, user.user, folder))
                if state is None or state.messages is None:
                    continue
                maildir = store / "partitions" / user.partition / user.user / "Maildir"
                place = maildir if folder == "INBOX" else maildir / ("." + ".".join(
                    mutf7.encode(level) for level in folder.split("/")))
                files = {p.name.split(":")[0]: p for sub in ("cur", "new")
                         for p in (place / sub).iterdir()}
                for listed in state.messages:
                    source = finder.find(user.partition, user.user, folder, listed.key)
                    assert source is not None, (user.user, folder, listed.key)
                    name = f"{user.partition}/{user.user}/{folder}/{listed.key}"
                    assert chains.read_bytes(merged, source, name) == \
                        files[listed.key].read_bytes()
                    found += 1
                    shared += source[4] > 1
        assert found == messages + 2 and shared > 100
        assert any(u.user == users[1].name and "Renamed" in u.folders for u in merged.users)
    finally:
        for fd in fds:
            os.close(fd)
