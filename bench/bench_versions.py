"""Two versions of imsrestore side by side with GNU tar, in rounds, into a tmpfs.

Usage (root; after bench_backup.py has generated the store):

    git worktree add /var/tmp/base <commit>
    python3 -m venv /var/tmp/basevenv && /var/tmp/basevenv/bin/pip install -e /var/tmp/base
    .venv/bin/python bench/bench_versions.py --base /var/tmp/basevenv/bin [--store DIR]
                                             [--work DIR] [--runs 5]

Each round restores the same archive (``imsrestore -f ims.ims /``, made once by this
checkout's imsbackup) with the base version, then with this checkout's, then extracts GNU
tar's archive of the same store, each into an empty tmpfs directory (``sync`` first), and
prints wall, user and system seconds of each (``/usr/bin/time``: the restore's reading
child included).  A tmpfs takes the disk out of the comparison: on a virtual machine whose
disk is shared, a restore's time on ext4 followed the disk's load more than the code.  The
medians of the wall times and of each version's ratio to the GNU tar run of its round are
printed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_restore import config_for, make_archives  # noqa: E402

BIN = Path(sys.executable).parent
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)     # as installed: bytecode cached


def timed(cmd: list[str], report: Path, env: dict[str, str] | None = None
          ) -> tuple[float, float, float]:
    """(wall, user, system) seconds of ``cmd`` and the children it waited for."""
    subprocess.run(["sync"], check=True)
    subprocess.run(["/usr/bin/time", "-o", str(report), "-f", "%e %U %S", *cmd],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    wall, user, system = (float(x) for x in report.read_text().split()[-3:])
    return wall, user, system


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", type=Path, required=True,
                        help="the bin directory of the other version's install")
    parser.add_argument("--store", type=Path, default=Path("/var/tmp/ims-bench-store"))
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/ims-bench-versions"))
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    store, work = args.store, args.work
    archive, tarball = make_archives(store, work)
    targets = work / "targets"
    targets.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12g", "tmpfs", str(targets)], check=True)
    walls: dict[str, list[float]] = {"base": [], "this": [], "tar": []}
    try:
        for run in range(args.runs + 1):        # round 0 warms the cache and is not counted
            row = {}
            for who, bin_dir in (("base", args.base), ("this", BIN)):
                target = targets / who
                config = config_for(store, target)
                row[who] = timed([str(bin_dir / "imsrestore"), "-f", str(archive), "/"],
                                 work / "time.txt", dict(os.environ, IMS_CONFIG_DIR=str(config)))
                shutil.rmtree(target)
            (targets / "tar").mkdir()
            row["tar"] = timed(["tar", "-xf", str(tarball), "-C", str(targets / "tar")],
                               work / "time.txt")
            shutil.rmtree(targets / "tar")
            print(f"round {run}{' (warm-up)' if not run else ''}: " + ", ".join(
                f"{who} {w:.2f} s (user {u:.2f}, sys {s:.2f})" for who, (w, u, s) in row.items()),
                flush=True)
            if run:
                for who, (wall, _, _) in row.items():
                    walls[who].append(wall)
    finally:
        subprocess.run(["umount", str(targets)], check=True)
        shutil.rmtree(work, ignore_errors=True)
    for who in ("base", "this"):
        ratios = [ours / tar for ours, tar in zip(walls[who], walls["tar"])]
        print(f"{who}: {statistics.median(walls[who]):.2f} s, ratio to GNU tar"
              f" {statistics.median(ratios):.2f}x (median of {args.runs} rounds)")
    print(f"GNU tar -x: {statistics.median(walls['tar']):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
