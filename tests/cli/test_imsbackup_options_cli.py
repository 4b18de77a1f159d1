"""imsbackup's compatibility options: accepted, and saying what they do."""

from __future__ import annotations

from conftest import run_cmd


def test_l_is_accepted_and_says_it_does_nothing(fresh_store, tmp_path):
    archive = tmp_path / "a.ims"
    result = run_cmd("imsbackup", "-l", "-f", str(archive), "/", config_dir=fresh_store / "config")
    assert result.returncode == 0, result.stderr
    assert archive.stat().st_size > 0
    warning = [line for line in result.stderr.decode().splitlines() if "-l" in line]
    assert len(warning) == 1 and "does nothing" in warning[0], result.stderr
    quiet = run_cmd("imsbackup", "-f", str(tmp_path / "b.ims"), "/", config_dir=fresh_store / "config")
    assert quiet.returncode == 0 and b"-l" not in quiet.stderr
