"""imsconfig bacula: one job per partition and configured group, users or not, so a user who
joins a group that had nobody is backed up by the next run."""

from __future__ import annotations

import re

from conftest import run_cmd


def test_every_configured_group_has_a_job_on_every_partition(fresh_store):
    config = fresh_store / "config"
    (config / "backup-groups.conf").write_text("later=zzz.*\nrest=.*\n")
    text = run_cmd("imsconfig", "bacula", "--client", "c-fd", "--storage", "s", "--pool", "p",
                   config_dir=config, check_rc=0).stdout.decode()
    jobs = set(re.findall(r"Name = \"?(ims-backup-[\w.-]+)", text))
    partitions = sorted(p.name for p in (fresh_store / "partitions").iterdir())
    assert jobs == {f"ims-backup-{p}-{g}" for p in partitions for g in ("later", "rest", "ungrouped")}
