#!/usr/bin/env bash
# Set up, generate the bundled sample store (deterministic, seed 1) under ./sample, and run
# the main job on it: a full backup of the whole store, an incremental one, and the restore
# of a deleted user.
set -euo pipefail
cd "$(dirname "$0")"
bash ./scripts/venv.sh
bin=.venv/bin
if [ ! -d sample/partitions ]; then
    rm -rf sample
    $bin/python -m ims.samplestore sample --users 40 --messages 25 --partitions 2 --seed 1
fi
export IMS_CONFIG_DIR=$PWD/sample/config
echo "== imsbackup -f sample/full.ims /"
$bin/imsbackup -v -f sample/full.ims --json / 2>sample/backup.log >sample/full.json
tail -n 1 sample/backup.log
echo "== tar -tvf sample/full.ims (first members)"
tar -tvf sample/full.ims --warning=no-unknown-keyword | sed -n 1,6p
echo "== imsbackup -d $(date +%Y%m%d) -f sample/incr.ims /primary/groupA  (incremental, today)"
$bin/imsbackup -d "$(date +%Y%m%d)" -f sample/incr.ims --json /primary/groupA 2>/dev/null
user=$(ls sample/partitions/primary | head -n 1)
echo "== a user deleted and restored: imsrestore -v 1 -f sample/full.ims /primary/user/$user"
rm -rf sample/deleted && mv "sample/partitions/primary/$user" sample/deleted
$bin/imsrestore -v 1 -f sample/full.ims "/primary/user/$user"
if diff -r -x 'dovecot-uidlist' sample/deleted "sample/partitions/primary/$user" >/dev/null; then
    echo "   $user's mail is back, file for file (uidlists rewritten with the same UIDs)"
else
    echo "   $user's restored mail differs from the original" >&2
    exit 1
fi
rm -rf sample/deleted
