"""imsbackup against GNU tar on the same generated store, in the same run.

Usage (from the repository root, after scripts/venv.sh):

    .venv/bin/python bench/bench_backup.py [--store DIR] [--users 1000] [--messages 100]
                                           [--partitions 4] [--runs 5] [--only full|incremental]
                                           [--extra-folders N] [--size-median BYTES]
                                           [--tmpfs]

Many small folders (21 folders a user, most holding a few messages):

    .venv/bin/python bench/bench_backup.py --store /var/tmp/ims-bench-smallfolders \
        --extra-folders 14 --size-median 2048

The store (shaped like a real one: log-normal sizes, median 4 KiB, sigma 1.7, capped at 2 MiB, a
tenth of INBOX deliveries hard-linked to 2-5 users) is generated once into DIR and reused.
Each command runs once to warm the cache, then --runs times, alternating with GNU tar;
medians are printed with the ratio and the peak RSS of the imsbackup process.  With --tmpfs
(root) both read a copy of the store made in a tmpfs for the run, for machines whose page
cache does not stay warm from one run to the next.

  full         imsbackup -f - / | cat > /dev/null      vs  tar -cf - -C STORE . | cat > /dev/null
  incremental  imsbackup -d <now> -f - / | cat > /dev/null (unchanged store)
               vs  cp level0.snar l1.snar && tar -g l1.snar -cf - -C STORE . | cat > /dev/null
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

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# the commands run as an installed copy does, with their bytecode cached (compiling every
# module at each start had added some 2 MiB and 0.1 s to each command measured)
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def _status(pid: int) -> tuple[int, int]:
    """(VmHWM, Pss) of a process in KiB, or (0, 0) once it is gone."""
    hwm = pss = 0
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return hwm, pss


def pipeline(cmd: list[str], env: dict[str, str] | None = None,
             sample: bool = True) -> tuple[float, dict[str, float]]:
    """Run ``cmd | cat > /dev/null``; (wall seconds, memory of cmd and its child processes).

    Memory is sampled from /proc every 10 ms (ru_maxrss is useless here: it keeps the RSS of
    the forking parent from before exec): the largest VmHWM of any one process, and the
    largest sum of PSS over the processes (shared pages counted once).  ``sample=False``:
    no sampling, for a run whose time counts (reading ``smaps_rollup`` walks the process's
    page tables under its memory lock, and the sampler competes for the two cores with the
    run it measures)."""
    start = time.monotonic()
    producer = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env)
    consumer = subprocess.Popen(["cat"], stdin=producer.stdout, stdout=subprocess.DEVNULL)
    assert producer.stdout is not None
    producer.stdout.close()
    peak_rss = peak_pss = 0
    while sample and producer.poll() is None:
        pids = [producer.pid]
        try:
            with open(f"/proc/{producer.pid}/task/{producer.pid}/children") as children:
                pids += [int(p) for p in children.read().split()]
        except OSError:
            pass
        samples = [_status(pid) for pid in pids]
        peak_rss = max([peak_rss] + [hwm for hwm, _ in samples])
        peak_pss = max(peak_pss, sum(pss for _, pss in samples))
        time.sleep(0.01)
    producer.wait()
    consumer.wait()
    wall = time.monotonic() - start
    if producer.returncode != 0:
        raise SystemExit(f"{cmd[0]} exited {producer.returncode}")
    return wall, {"rss": peak_rss / 1024, "pss": peak_pss / 1024}


def measure(label: str, ours: list[str], theirs: list[str], runs: int, env: dict[str, str],
            before_theirs=None) -> dict[str, float]:
    # the warm-up run of ours is the one whose memory is sampled; the timed runs are not
    _, memory = pipeline(ours, env)
    rss, pss = [memory["rss"]], [memory["pss"]]
    if before_theirs:
        before_theirs()
    pipeline(theirs, sample=False)
    ours_walls, theirs_walls = [], []
    for _ in range(runs):
        ours_walls.append(pipeline(ours, env, sample=False)[0])
        if before_theirs:
            before_theirs()
        theirs_walls.append(pipeline(theirs, sample=False)[0])
    ratios = [a / b for a, b in zip(ours_walls, theirs_walls)]
    result = {"ims": statistics.median(ours_walls), "tar": statistics.median(theirs_walls),
              "ratio": statistics.median(ratios), "rss": max(rss), "pss": max(pss)}
    print(f"{label:12s} imsbackup {result['ims']:.2f} s   GNU tar {result['tar']:.2f} s   "
          f"ratio {result['ratio']:.2f}x (median of {runs} pairs)   imsbackup memory: largest "
          f"process {result['rss']:.1f} MiB RSS, all processes {result['pss']:.1f} MiB PSS",
          flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", type=Path, default=Path("/var/tmp/ims-bench-store"))
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--extra-folders", type=int, default=0,
                        help="more folders per user (with a new --store): many small folders")
    parser.add_argument("--size-median", type=int, default=4096,
                        help="median message size in bytes (with a new --store)")
    parser.add_argument("--only", choices=("full", "incremental"),
                        help="run one of the two rows")
    parser.add_argument("--tmpfs", action="store_true",
                        help="measure on a copy of the store in a tmpfs (root): the page cache"
                             " kept out of the comparison")
    args = parser.parse_args()

    store = args.store
    if not (store / "config" / "msg.conf").exists():
        sys.path.insert(0, str(ROOT))
        from ims.samplestore import SampleSpec, generate
        shutil.rmtree(store, ignore_errors=True)
        t0 = time.monotonic()
        counts = generate(store, SampleSpec(users=args.users, messages_per_user=args.messages,
                                            partitions=args.partitions, seed=2026,
                                            extra_folders=args.extra_folders,
                                            size_median=args.size_median))
        print(f"generated {store}: {counts} in {time.monotonic() - t0:.0f} s", flush=True)
    if not args.tmpfs:
        return run_rows(store, args)
    # a machine that pages out cold page cache (here: the VM's own kernel runs a DAMON
    # "pageout" scheme) gives each run a different share of reads from the disk; a tmpfs copy
    # (no swap here) is read from memory by both tools, every run
    store = store.resolve()
    mount = Path("/var/tmp/ims-bench-backup-tmpfs")
    mount.mkdir(exist_ok=True)
    if subprocess.run(["mountpoint", "-q", str(mount)]).returncode == 0:
        raise SystemExit(f"{mount} is mounted already (a run cut short?): umount it first")
    # allocated blocks, not apparent bytes: a tmpfs charges a page for each small file
    used = int(subprocess.run(["du", "-s", "-B1", str(store)], capture_output=True, text=True,
                              check=True).stdout.split()[0])
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={used * 3 // 2 + (256 << 20)}",
                    "tmpfs", str(mount)], check=True)
    try:
        copy = mount / store.name
        subprocess.run(["cp", "-a", str(store), str(copy)], check=True)    # keeps hard links
        moved_config(store, copy)
        print(f"measured on a copy in a tmpfs: {copy}", flush=True)
        return run_rows(copy, args)
    finally:
        if subprocess.run(["umount", str(mount)]).returncode != 0:
            time.sleep(1)       # (a command cut short by Ctrl-C may still hold a file)
            if subprocess.run(["umount", str(mount)]).returncode != 0:
                subprocess.run(["umount", "-l", str(mount)])
                print(f"warning: {mount} detached lazily (busy)", file=sys.stderr)
        mount.rmdir()


def moved_config(store: Path, copy: Path) -> None:
    """The copy's msg.conf names the copy: every partition path and the log directory,
    each of which must lie in the store (else the two tools would read different stores)."""
    conf = copy / "config" / "msg.conf"
    lines = []
    for line in conf.read_text().splitlines():
        key, equals, value = line.partition("=")
        name = key.strip()
        if equals and ((name.startswith("store.partition.") and name.endswith(".path"))
                       or name == "local.store.logdir"):
            path = Path(value.strip()).resolve()
            if not path.is_relative_to(store):
                raise SystemExit(f"{store / 'config' / 'msg.conf'}: {name} = {path} is outside"
                                 f" the store; --tmpfs copies the store only")
            line = f"{name} = {copy / path.relative_to(store)}"
        lines.append(line)
    conf.write_text("\n".join(lines) + "\n")


def run_rows(store: Path, args: argparse.Namespace) -> int:
    files = sum(1 for _ in (store / "partitions").rglob("*") if _.parent.name in ("cur", "new"))
    size = subprocess.run(["du", "-sh", str(store / "partitions")], capture_output=True,
                          text=True).stdout.split()[0]
    print(f"store: {files} message files, {size}, {os.cpu_count()} CPUs, "
          f"{subprocess.run(['tar', '--version'], capture_output=True, text=True).stdout.splitlines()[0]}")
    env = dict(os.environ, IMS_CONFIG_DIR=str(store / "config"))
    imsbackup = str(BIN / "imsbackup")
    partitions = str(store / "partitions")

    folders = sum(1 for _ in (store / "partitions").rglob("cur"))
    print(f"store: {folders} folders", flush=True)
    if args.only != "incremental":
        measure("full", [imsbackup, "-f", "-", "/"], ["tar", "-cf", "-", "-C", partitions, "."],
                args.runs, env)
    if args.only == "full":
        return 0

    snar = store / "level0.snar"
    level1 = store / "level1.snar"
    subprocess.run(f"tar -g {snar} -cf - -C {partitions} . | cat > /dev/null", shell=True,
                   check=True)
    time.sleep(1.1)
    since = time.strftime("%Y%m%d:%H%M%S")
    measure("incremental", [imsbackup, "-d", since, "-f", "-", "/"],
            ["tar", "-g", str(level1), "-cf", "-", "-C", partitions, "."], args.runs, env,
            before_theirs=lambda: shutil.copyfile(snar, level1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
