"""A sample of the fault-injection campaign (tests/faults/faults.py; docs/reliability.md):
every kind of fault at least twice, on a small store, with every check of the full run.

The campaign runs as its own process (it mounts a tmpfs and cleans up after itself, also
when interrupted); its JSON report says what happened to each fault."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require

FAULTS = Path(__file__).with_name("faults.py")
sys.path.insert(0, str(FAULTS.parent))

import faults  # noqa: E402

pytestmark = pytest.mark.slow

# the kinds that need the LD_PRELOAD shim (a C compiler): real EIO, a signal at the Nth call
SHIM_KINDS = [k for k in faults.BACKUP_KINDS + faults.RESTORE_KINDS if "eio" in k or "at-op" in k]
OTHER_KINDS = [k for k in faults.BACKUP_KINDS + faults.RESTORE_KINDS if k not in SHIM_KINDS]


def run_campaign(tmp_path: Path, count: int, kinds: list[str]) -> dict:
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, str(FAULTS), "--faults", str(count), "--seed", "1", "--users", "4",
         "--messages", "20", "--kinds", ",".join(kinds), "--workdir", str(tmp_path / "work"),
         "--json", str(report), "--quiet"],
        capture_output=True, text=True, timeout=900)
    assert report.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(report.read_text())
    data["rc"] = result.returncode
    data["output"] = result.stdout[-6000:] + result.stderr[-2000:]
    return data


def violations(data: dict) -> str:
    return "\n".join(f"{v['case']['kind']} {v['outcome']}: {text}"
                     for v in data["violations"] for text in v["violations"])


def test_fault_injection_sample(tmp_path):
    require(os.geteuid() == 0, "root (mount -t tmpfs, setpriv)")
    require(shutil.which("setpriv") is not None, "setpriv (util-linux)")
    data = run_campaign(tmp_path, 40, OTHER_KINDS)
    summary = data["summary"]
    assert summary["faults"] == 40, data["output"]
    assert sorted(summary["by_kind"]) == sorted(OTHER_KINDS), summary   # every kind ran
    # faults that land: most signals hit a running command, not one that had finished
    outcomes = [o for kind, counts in summary["by_kind"].items() if "signal" in kind
                for o, n in counts.items() for _ in range(n)]
    assert sum(o != "finished before the fault" for o in outcomes) >= len(outcomes) // 2, summary
    assert summary["violations"] == 0, violations(data)
    assert data["rc"] == 0, data["output"]
    # the campaign cleaned up: nothing mounted under the work directory
    with open("/proc/mounts", encoding="utf-8") as mounts:
        assert str(tmp_path) not in mounts.read()


def test_fault_injection_shim_sample(tmp_path):
    """Faults placed by an LD_PRELOAD shim built with the C compiler: real EIO (reading a
    message in the middle, writing the archive, reading an archive) and a signal at the Nth
    rename, link, unlink, mkdir or lock file of a restore (its commit steps)."""
    require(os.geteuid() == 0, "root (mount -t tmpfs)")
    require(shutil.which("gcc") is not None or shutil.which("cc") is not None,
            "a C compiler (gcc) for the fault shim")
    data = run_campaign(tmp_path, 20, SHIM_KINDS)
    summary = data["summary"]
    assert summary["faults"] == 20, data["output"]
    assert sorted(summary["by_kind"]) == sorted(SHIM_KINDS), summary
    assert summary["violations"] == 0, violations(data)
    assert data["rc"] == 0, data["output"]


def test_store_listing_sees_what_the_comparison_needs(tmp_path):
    """The comparison itself: UIDVALIDITY, UIDs, bodies, flags with keyword names, a message
    without a UID matching the same message given one, doubled and lost messages."""
    from ims.samplestore import SampleSpec, generate
    root = tmp_path / "store"
    generate(root, SampleSpec(users=2, messages_per_user=6, partitions=1, seed=2))
    parts = {"primary": root / "partitions" / "primary"}
    before = faults.store_listing(parts)
    assert faults.compare_listings(before, before) == []
    inbox_key = next(k for k in before if k.endswith("/INBOX"))
    user = inbox_key.split("/")[1]
    inbox = parts["primary"] / user / "Maildir"
    first, second = sorted((inbox / "cur").iterdir())[:2]
    shutil.copy(first, inbox / "new" / (first.name.split(":")[0] + ".copy"))    # a double
    second.unlink()                                                              # a loss
    after = faults.store_listing(parts)
    diffs = faults.compare_listings(after, before)
    assert len(diffs) == 1 and "1 message(s) missing" in diffs[0] and "1 extra" in diffs[0], diffs
    assert faults.compare_listings(after, before, uids=False)[0].startswith(inbox_key), diffs
    problems = faults.intermediate_problems(after, before, before, whole_atomic=True)
    assert any("lost" in p for p in problems) and any("doubled" in p for p in problems), problems
    # a message without a UID matches the same message with one
    sha = "0" * 64
    assert faults.match_messages([[7, sha, "S"]], [[None, sha, "S"]]) == ({}, {})
    missing, extra = faults.match_messages([[7, sha, "S"]], [[6, sha, "S"]])
    assert missing and extra
