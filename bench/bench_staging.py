"""Per-group staging in parallel against one serial imsbackup of the whole store.

Usage (after bench_backup.py has generated the store):

    .venv/bin/python bench/bench_staging.py [--store DIR] [--jobs 2] [--runs 3]

  serial    imsbackup -f STAGE/all.ims /                        (one single-copy stream)
  staging   imsbackup --staging STAGE -j N /                     (one archive per group)
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


def timed(args: list[str], env: dict[str, str]) -> float:
    start = time.monotonic()
    subprocess.run(args, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", type=Path, default=Path("/var/tmp/ims-bench-store"))
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/ims-bench-staging"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    env = dict(os.environ, IMS_CONFIG_DIR=str(args.store / "config"))
    serial, staged = [], []
    for run in range(args.runs + 1):
        shutil.rmtree(args.work, ignore_errors=True)
        args.work.mkdir(parents=True)
        a = timed([str(BIN / "imsbackup"), "-f", str(args.work / "all.ims"), "/"], env)
        b = timed([str(BIN / "imsbackup"), "--staging", str(args.work / "stage"), "-j",
                   str(args.jobs), "/"], env)
        if run:
            serial.append(a)
            staged.append(b)
    groups = len(list((args.work / "stage").iterdir()))
    size_all = (args.work / "all.ims").stat().st_size
    size_staged = sum(p.stat().st_size for p in (args.work / "stage").iterdir())
    print(f"serial   one stream      {statistics.median(serial):.2f} s  {size_all >> 20} MiB")
    print(f"staging  {groups} groups, -j {args.jobs}  {statistics.median(staged):.2f} s  "
          f"{size_staged >> 20} MiB  ({statistics.median(staged) / statistics.median(serial):.2f}"
          f" of the serial time, median of {args.runs})")
    shutil.rmtree(args.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
