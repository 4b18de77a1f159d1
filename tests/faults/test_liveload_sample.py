"""A sample of the live-load campaign (tests/faults/liveload.py; docs/reliability.md):
deliveries, appends, flag changes and expunges against a real Dovecot while backups and
restores (a deleted folder, merges, a merge killed and run again) of the same users run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import liveload  # noqa: E402

pytestmark = [pytest.mark.dovecot, pytest.mark.slow]


def test_live_load_sample(dovecot, tmp_path):
    findings = liveload.Findings()
    summary = liveload.run_campaign(dovecot, tmp_path, ops=360, seed=1, findings=findings,
                                    rate=40.0)
    assert summary["harness_errors"] == []
    assert sum(summary["ops"].values()) == 360, summary
    assert all(summary["ops"].get(kind, 0) > 10 for kind in ("deliver", "flag", "expunge")), summary
    admin = summary["admin"]
    # backups and restores of every kind ran while the load went on
    assert admin.get("backup", 0) >= 4, summary
    assert admin.get("merge", 0) >= 2 and admin.get("restore deleted folder", 0) >= 1, summary
    assert admin.get("fresh restores", 0) >= 1, summary
    assert summary["uid_observations"] > 300, summary
    assert findings.items == [], "\n".join(findings.items)
