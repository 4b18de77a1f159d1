"""The archive reader alone: one archive read in order as a restore's reading process reads
it (headers parsed and checked, records decoded, every message's data read and checked
against its SHA-256, the trailer verified), nothing written.

Usage:

    .venv/bin/python bench/bench_reader.py ARCHIVE [--runs 3]

Prints wall, user and system seconds of each run (this process only: no child).  The
restore from a file runs this work in its second process; when the writing process is
the limit, what this saves shows in the restore's CPU time before its wall time.  For a
count that does not move with the machine's load, run it once under
``valgrind --tool=callgrind`` and compare the instructions ("Collected") of two versions.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from ims.archive import format as fmt
from ims.archive.reader import ArchiveReader


def read_all(path: str) -> int:
    """Every member of the archive, message data checked; the number of messages read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        reader = ArchiveReader(fd, path, None)
        reader.read_header()
        messages = 0
        for member in reader.members():
            if member.kind == fmt.MESSAGE and member.typeflag == fmt.REGULAR \
                    and member.invalid is None:
                reader.read_data(member)
                messages += 1
        return messages
    finally:
        os.close(fd)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("archive")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for run in range(args.runs):
        start, before = time.monotonic(), os.times()
        messages = read_all(args.archive)
        after = os.times()
        print(f"run {run}: {messages} messages, {time.monotonic() - start:.2f} s wall,"
              f" {after.user - before.user:.2f} s user, {after.system - before.system:.2f} s"
              " system", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
