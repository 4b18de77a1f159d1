"""Read errors in the store during a backup, real ones: an LD_PRELOAD shim (built from the
fault campaign's source, tests/faults/faults.py) makes reads of one file fail with EIO from
a chosen byte, as a bad sector does (the bytes before it come back, then the error)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import command, run_cmd, require

sys.path.insert(0, str(Path(__file__).parents[1] / "faults"))
import faults  # noqa: E402

from ims.samplestore import SampleSpec, generate  # noqa: E402


@pytest.fixture
def shim(tmp_path: Path) -> Path:
    require(shutil.which("gcc") is not None, "a C compiler (gcc) for the EIO shim")
    built = faults.build_eio_shim(tmp_path)
    require(built is not None, "the EIO shim builds")
    return built


def test_a_read_error_inside_a_message_is_named_never_archived_short(tmp_path, shim):
    store = tmp_path / "store"
    generate(store, SampleSpec(users=3, messages_per_user=10, partitions=1, seed=7))
    message = next(p for p in sorted((store / "partitions").rglob("cur/*"))
                   if 8192 < p.stat().st_size < 200_000)
    key = message.name.partition(":")[0]
    archive = tmp_path / "a.ims"
    env = {"LD_PRELOAD": str(shim), "IMSF_EIO_MODE": "r", "IMSF_EIO_PATH": key,
           "IMSF_EIO_OFFSET": "4096"}
    result = subprocess.run([command("imsbackup"), "--json", "-f", str(archive), "/"],
                            capture_output=True,
                            env={**os.environ, **env, "IMS_CONFIG_DIR": str(store / "config")})
    summary = json.loads(result.stdout)
    assert result.returncode == 1, summary
    assert any(key in line for line in summary["skipped"]), summary["skipped"]
    listing = run_cmd("imsrestore", "-t", "-f", str(archive), config_dir=store / "config")
    assert listing.returncode == 0
    assert key not in listing.stdout.decode(), "a message that could not be read was archived"
