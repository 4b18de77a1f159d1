"""imsrestore against GNU tar extracting the same store, in the same run, same file system.

Usage (after bench_backup.py has generated the store):

    .venv/bin/python bench/bench_restore.py [--store DIR] [--work DIR] [--runs 3]
                                            [--from file|pipe] [--tmpfs | --fresh-ext4]

Archives are made once: ``imsbackup -f ims.ims /`` and ``tar --format=pax -cf store.tar``.
Each run restores into fresh, empty directories (ext4 is much slower right after mass
deletions, so targets on a disk are deleted only after all runs; with ``--tmpfs`` each tree
is removed before the other tool runs, so that both write into memory just freed); ``sync``
runs before each timed command, so no run pays for the writeback of the one before.
``--fresh-ext4`` (root): each
restore goes into its own new ext4 file system, a loop-mounted image made for it with its
inode tables written at once (``mkfs.ext4 -E lazy_itable_init=0``), and removed after the
run: no run depends on what earlier runs, or earlier benchmarks, left on the disk.

  full      imsrestore -f ims.ims /  (every message verified against its SHA-256)
            vs  tar -xf store.tar -C fresh
            (--from pipe: cat ims.ims | imsrestore -f -  vs  cat store.tar | tar -xf - -C fresh)
  one user  imsrestore -f ims.ims /PARTITION/user/USER  (seekable: reads that user only)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
# the commands run as an installed copy does, with their bytecode cached (compiling every
# module at each start had added some 2 MiB and 0.1 s to each command measured)
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def timed(cmd: str, env: dict[str, str] | None = None) -> float:
    subprocess.run(["sync"], check=True)
    start = time.monotonic()
    subprocess.run(cmd, shell=True, check=True, env=env)
    return time.monotonic() - start


def config_for(store: Path, target: Path) -> Path:
    """A config like the store's, with every partition moved under ``target``."""
    config = target / "config"
    config.mkdir(parents=True)
    lines = []
    for line in (store / "config" / "msg.conf").read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip().startswith("store.partition.") and key.strip().endswith(".path"):
            name = key.strip().split(".")[2]
            (target / "partitions" / name).mkdir(parents=True)
            value = f" {target / 'partitions' / name}"
        lines.append(f"{key.strip()} ={value}" if _ else line)
    (config / "msg.conf").write_text("\n".join(lines) + "\n")
    shutil.copy(store / "config" / "backup-groups.conf", config)
    return config


def fresh_ext4(image: Path, mountpoint: Path, size: int, inodes: int) -> str:
    """A new ext4 in ``image`` mounted at ``mountpoint``; its loop device.  The loop device
    reads and writes the image with direct I/O, so the data is cached once (by the file
    system on it), not a second time as the image file's pages."""
    subprocess.run(["truncate", "-s", str(size), str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-N", str(inodes),
                    "-E", "lazy_itable_init=0,lazy_journal_init=0", str(image)], check=True)
    device = subprocess.run(["losetup", "--direct-io=on", "--find", "--show", str(image)],
                            check=True, capture_output=True, text=True).stdout.strip()
    mountpoint.mkdir(parents=True)
    subprocess.run(["mount", device, str(mountpoint)], check=True)
    return device


def drop_ext4(image: Path, mountpoint: Path) -> None:
    device = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(mountpoint)], check=True,
                            capture_output=True, text=True).stdout.strip()
    subprocess.run(["umount", str(mountpoint)], check=True)
    subprocess.run(["losetup", "-d", device], check=True)
    image.unlink()
    mountpoint.rmdir()


def make_archives(store: Path, work: Path) -> tuple[Path, Path]:
    """``work`` made anew with the store's two archives: ``imsbackup -f ims.ims /`` (by this
    checkout) and GNU tar's pax archive of its partitions."""
    if not (store / "config" / "msg.conf").exists():
        raise SystemExit(f"{store}: no store; run bench/bench_backup.py first")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    archive, tarball = work / "ims.ims", work / "store.tar"
    subprocess.run([str(BIN / "imsbackup"), "-f", str(archive), "/"], check=True,
                   env=dict(os.environ, IMS_CONFIG_DIR=str(store / "config")))
    subprocess.run(["tar", "--format=pax", "-cf", str(tarball), "-C", str(store / "partitions"),
                    "."], check=True)
    return archive, tarball


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", type=Path, default=Path("/var/tmp/ims-bench-store"))
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/ims-bench-restore"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tmpfs", action="store_true",
                        help="restore into a tmpfs (root): the file-system-neutral comparison")
    parser.add_argument("--fresh-ext4", action="store_true",
                        help="restore each run into a new loop-mounted ext4 file system (root)")
    parser.add_argument("--from", dest="source", choices=("file", "pipe"), default="file",
                        help="read both archives as files (default) or from a pipe")
    args = parser.parse_args()
    store, work = args.store, args.work
    archive, tarball = make_archives(store, work)
    print(f"archives: imsbackup {archive.stat().st_size >> 20} MiB, GNU tar pax "
          f"{tarball.stat().st_size >> 20} MiB", flush=True)
    some_user = sorted(p.name for p in (store / "partitions" / "primary").iterdir())[0]
    targets = work / "targets"
    targets.mkdir()
    if args.tmpfs:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12g", "tmpfs", str(targets)], check=True)

    # room for the store's blocks and half again (the one user, directories), inode tables
    used = int(subprocess.run(["du", "-s", "-B1", str(store / "partitions")], check=True,
                              capture_output=True, text=True).stdout.split()[0])
    image_size = used * 3 // 2 + (2 << 30)
    # inodes for the store twice over (small messages: the default ratio would run out)
    entries = int(subprocess.run(f"find {store / 'partitions'} | wc -l", shell=True, check=True,
                                 capture_output=True, text=True).stdout)
    inodes = 2 * entries + 100_000
    def emptied(path: Path) -> None:
        # in a tmpfs, each restore's tree is removed before the other command runs: both
        # then write into memory the kernel has just freed (measured on this VM, whose host
        # takes back memory left unused: the command that ran second, into fresh memory,
        # took 4-6 s longer, whichever it was)
        if args.tmpfs:
            for child in path.iterdir():
                if child.name != "config":
                    shutil.rmtree(child)

    ours, theirs, one_user, ratios = [], [], [], []
    for run in range(args.runs + 1):           # run 0 warms the cache and is not counted
        target = targets / f"run{run}"
        if args.fresh_ext4:
            fresh_ext4(work / f"run{run}-ims.img", target / "ims", image_size, inodes)
            fresh_ext4(work / f"run{run}-tar.img", target / "tar", image_size, inodes)
        config = config_for(store, target / "ims")
        ims_env = dict(os.environ, IMS_CONFIG_DIR=str(config))
        (target / "tar").mkdir(exist_ok=True)
        if args.source == "pipe":
            ours_cmd = f"cat {archive} | {BIN / 'imsrestore'} -f -"
            tar_cmd = f"cat {tarball} | tar -xf - -C {target / 'tar'}"
        else:
            ours_cmd = f"{BIN / 'imsrestore'} -f {archive} /"
            tar_cmd = f"tar -xf {tarball} -C {target / 'tar'}"
        if run % 2:     # alternate which goes first
            a = timed(ours_cmd, ims_env)
            emptied(target / "ims")
            b = timed(tar_cmd)
            emptied(target / "tar")
        else:
            b = timed(tar_cmd)
            emptied(target / "tar")
            a = timed(ours_cmd, ims_env)
            emptied(target / "ims")
        if args.tmpfs and run + 1 < args.runs + 1:
            shutil.rmtree(target)
        single = config_for(store, target / ("ims/one" if args.fresh_ext4 else "one"))
        c = timed(f"{BIN / 'imsrestore'} -f {archive} /primary/user/{some_user}",
                  dict(os.environ, IMS_CONFIG_DIR=str(single)))
        if args.fresh_ext4:
            drop_ext4(work / f"run{run}-ims.img", target / "ims")
            drop_ext4(work / f"run{run}-tar.img", target / "tar")
        print(f"run {run}{' (warm-up)' if not run else ''}: imsrestore {a:.2f} s, GNU tar {b:.2f} s,"
              f" one user {c:.2f} s", flush=True)
        if run:
            ours.append(a)
            theirs.append(b)
            one_user.append(c)
            ratios.append(a / b)
    print(f"full ({args.source}) imsrestore {statistics.median(ours):.2f} s   GNU tar -x "
          f"{statistics.median(theirs):.2f} s   ratio {statistics.median(ratios):.2f}x "
          f"(median of {args.runs} pairs)")
    print(f"one user  imsrestore {statistics.median(one_user):.2f} s "
          f"({statistics.median(one_user) / statistics.median(ours):.3f} of a full restore)")
    if args.tmpfs:
        subprocess.run(["umount", str(targets)], check=True)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
