"""Peak memory of every process of a backup and of the restores, on a large store.

Usage (from the repository root, after scripts/venv.sh):

    .venv/bin/python bench/bench_memory.py [--store /var/tmp/ims-bench-1m] \
        [--work /var/tmp/ims-bench-memory] [--only backup|restore|chain|user]

The default store (10,000 users x 100 messages, small messages: about 6 GB) is generated
once into --store and reused; --store /var/tmp/ims-bench-store measures the 115k store.  The
store is left as it was: the chain's deliveries are removed at the end.

  backup      imsbackup -f - / | cat > /dev/null           (parent and store-reader child)
  restore     imsrestore -f FULL /  into an empty store     (parent and prefetching child)
  stream      cat FULL | imsrestore -f -                    (parent and prefetching child)
  chain       imsrestore -f FULL -f I1 -f I2 -f I3  into an empty store, the incrementals
              made after delivering a few messages into some users' new/
  user        imsrestore -f FULL /PARTITION/user/USER       (one user of the archive)

Memory is sampled from /proc every 10 ms: the largest VmHWM of each process kind (the command
itself, its forked helper).  For the chain restore, the peak RSS divided by the number of
messages restored is printed too (bytes per message, an upper bound of what grows).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_backup import _status  # noqa: E402  (the same /proc reading)
from bench_restore import config_for  # noqa: E402  (an empty store shaped like the source)

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# the commands run as an installed copy does, with their bytecode cached (compiling every
# module at each start had added some 2 MiB and 0.1 s to each command measured)
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def peaks(cmd: list[str], env: dict[str, str], stdin: str | None = None,
          stdout_to_null: bool = True) -> dict[str, float]:
    """Run ``cmd`` (its input from the file ``stdin`` through ``cat`` when given, its output
    through ``cat`` to /dev/null); the largest VmHWM in MiB of the command ("main") and of its
    forked helpers ("helper")."""
    feeder = subprocess.Popen(["cat", stdin], stdout=subprocess.PIPE) if stdin else None
    producer = subprocess.Popen(cmd, stdin=feeder.stdout if feeder else subprocess.DEVNULL,
                                stdout=subprocess.PIPE if stdout_to_null else None, env=env)
    if feeder is not None and feeder.stdout is not None:
        feeder.stdout.close()
    consumer = None
    if producer.stdout is not None:
        consumer = subprocess.Popen(["cat"], stdin=producer.stdout, stdout=subprocess.DEVNULL)
        producer.stdout.close()
    main_kib = helper_kib = 0
    while producer.poll() is None:
        main_kib = max(main_kib, _status(producer.pid)[0])
        try:
            with open(f"/proc/{producer.pid}/task/{producer.pid}/children") as children:
                for pid in children.read().split():
                    helper_kib = max(helper_kib, _status(int(pid))[0])
        except OSError:
            pass
        time.sleep(0.01)
    if consumer is not None:
        consumer.wait()
    if feeder is not None:
        feeder.wait()
    if producer.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} exited {producer.returncode}")
    return {"main": main_kib / 1024, "helper": helper_kib / 1024}


def show(label: str, memory: dict[str, float], extra: str = "") -> None:
    helper = f", helper {memory['helper']:.1f} MiB" if memory["helper"] else ""
    print(f"{label:9s} peak RSS: main {memory['main']:.1f} MiB{helper}{extra}", flush=True)


def deliver(store: Path, round_: int, users: int = 50) -> list[Path]:
    """A few new messages in the new/ of some users' INBOX (a change for an incremental)."""
    made = []
    partitions = sorted((store / "partitions").iterdir())
    for partition in partitions:
        for user in sorted(partition.iterdir())[:users // len(partitions)]:
            new = user / "Maildir" / "new"
            if not new.is_dir():
                continue
            path = new / f"{int(time.time())}.M{round_}P{os.getpid()}.bench-memory"
            path.write_bytes(b"Subject: bench %d\n\nhello\n" % round_)
            made.append(path)
    return made


def count_messages(archive: Path) -> int:
    """Messages the full backup holds (its trailer's counts)."""
    sys.path.insert(0, str(ROOT))
    from ims.archive.reader import ArchiveReader
    fd = os.open(archive, os.O_RDONLY)
    try:
        trailer = ArchiveReader(fd, str(archive), None).locate_trailer()
    finally:
        os.close(fd)
    assert trailer is not None
    return trailer.counts["messages"] + trailer.counts["links"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", type=Path, default=Path("/var/tmp/ims-bench-1m"))
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/ims-bench-memory"))
    parser.add_argument("--only", choices=("backup", "restore", "stream", "chain", "user"),
                        action="append")
    args = parser.parse_args()
    only = set(args.only or ("backup", "restore", "stream", "chain", "user"))
    store, work = args.store, args.work
    if "chain" in only and store.resolve() == Path("/var/tmp/ims-bench-store"):
        # the speed benchmarks' store must not change: measure the chain on a copy
        raise SystemExit("the chain delivers into the store: give a copy or a dedicated store")
    if not (store / "config" / "msg.conf").exists():
        sys.path.insert(0, str(ROOT))
        from ims.samplestore import SampleSpec, generate
        shutil.rmtree(store, ignore_errors=True)
        print(generate(store, SampleSpec(users=10000, messages_per_user=100, partitions=4,
                                         seed=2026, size_median=600, size_sigma=1.0)), flush=True)
    env = dict(os.environ, IMS_CONFIG_DIR=str(store / "config"))
    work.mkdir(parents=True, exist_ok=True)
    full = work / "full.ims"

    if "backup" in only:
        show("backup", peaks([str(BIN / "imsbackup"), "-f", "-", "/"], env))
    # an incremental's date is the start of the backup before it (a later one is a gap)
    started = time.strftime("%Y%m%d:%H%M%S")
    if not full.exists() or only & {"chain"}:
        subprocess.run([str(BIN / "imsbackup"), "-f", str(full), "/"], check=True, env=env)
    messages = count_messages(full)
    print(f"store: {messages} messages in the full backup, {full.stat().st_size >> 20} MiB",
          flush=True)

    def into_empty(label: str, cmd: list[str], stdin: str | None = None) -> dict[str, float]:
        target = work / f"target-{label}"
        shutil.rmtree(target, ignore_errors=True)
        config = config_for(store, target)
        try:
            return peaks(cmd, dict(os.environ, IMS_CONFIG_DIR=str(config)), stdin=stdin,
                         stdout_to_null=False)
        finally:
            # deleting a million files takes a while: not waited for
            subprocess.Popen(["rm", "-rf", str(target)])

    restore = str(BIN / "imsrestore")
    if "restore" in only:
        show("restore", into_empty("restore", [restore, "-f", str(full), "/"]))
    if "stream" in only:
        show("stream", into_empty("stream", [restore, "-f", "-"], stdin=str(full)))
    if "user" in only:
        partition = sorted((store / "partitions").iterdir())[0]
        user = sorted(partition.iterdir())[0].name
        show("user", into_empty("user", [restore, "-f", str(full),
                                         f"/{partition.name}/user/{user}"]))
    if "chain" in only:
        delivered: list[Path] = []
        chain = [full]
        try:
            for round_ in (1, 2, 3):
                time.sleep(1.1)
                delivered += deliver(store, round_)
                since, started = started, time.strftime("%Y%m%d:%H%M%S")
                incremental = work / f"incr{round_}.ims"
                subprocess.run([str(BIN / "imsbackup"), "-d", since, "-f", str(incremental),
                                "/"], check=True, env=env)
                chain.append(incremental)
        finally:
            for path in delivered:
                path.unlink(missing_ok=True)
        cmd = [restore] + [arg for archive in chain for arg in ("-f", str(archive))]
        memory = into_empty("chain", cmd)
        show("chain", memory, f"; {memory['main'] * (1 << 20) / messages:.0f} bytes per"
                              f" message ({messages} messages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
