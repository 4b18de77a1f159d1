"""How tests/data/v1-full.ims and v1-incremental.ims were made: archives of format version 1
(each unchanged folder of an incremental a folder-state member of its own), kept so that
the tests show a version 1 archive, or a chain mixing versions, still restores.

Written by the code of commit d8354abe (the last to write version 1), on a sample store of
two users on partition ``primary``:

    git archive d8354abe | tar -x -C /tmp/v1
    PYTHONPATH=/tmp/v1 .venv/bin/python tests/data/make_v1_archives.py WORKDIR OUTDIR

The full backup is taken; then rgarcia's INBOX gets a flag (F) on one message and
sdubois's Drafts is deleted; then the incremental, dated at the full backup's start:
INBOX of rgarcia is listed, five folders are unchanged, Drafts is gone.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import ims.archive.format as fmt
from ims.samplestore import SampleSpec, generate


def main() -> None:
    assert fmt.FORMAT_VERSION == 1, "run with the version 1 code on PYTHONPATH"
    work, out = Path(sys.argv[1]), Path(sys.argv[2])
    generate(work / "store", SampleSpec(users=2, messages_per_user=6, partitions=1, seed=11,
                                        size_cap=3000, link_fraction=0.3))
    env = dict(os.environ, IMS_CONFIG_DIR=str(work / "store" / "config"))

    def backup(name: str, *args: str) -> None:
        subprocess.run([sys.executable, "-c", "import sys; from ims.launch import imsbackup;"
                        " sys.argv[0] = 'imsbackup'; imsbackup()",
                        "-f", str(out / name), *args, "/primary"], env=env, check=True)

    time.sleep(1.05 - time.time() % 1)
    since = time.strftime("%Y%m%d:%H%M%S")
    backup("v1-full.ims")
    time.sleep(1.05)
    primary = work / "store" / "partitions" / "primary"
    inbox = primary / "rgarcia" / "Maildir" / "cur"
    first = next(p for p in sorted(inbox.iterdir()) if "F" not in p.name.partition(":2,")[2])
    base, _, info = first.name.partition(":2,")
    first.rename(inbox / f"{base}:2,{''.join(sorted(set(info + 'F')))}")
    shutil.rmtree(primary / "sdubois" / "Maildir" / ".Drafts")
    backup("v1-incremental.ims", "-d", since)


if __name__ == "__main__":
    main()
