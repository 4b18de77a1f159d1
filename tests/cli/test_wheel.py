"""The templates ship inside the wheel: imsconfig works from it without the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_imsconfig_renders_from_an_unpacked_wheel(tmp_path, sample_store):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(tmp_path / "dist"), str(ROOT)], capture_output=True)
    assert built.returncode == 0, built.stderr.decode()[-2000:]
    wheel = next((tmp_path / "dist").glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {"ims/templates/savepnpc.res.j2", "ims/asm/imsasm.py",
            "ims/mkbackupdir/tree.py"} <= set(names)
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"), IMS_CONFIG_DIR=str(sample_store / "config"))
    result = subprocess.run([sys.executable, "-c", "import sys, ims.templates.imsconfig as m;"
                             " assert 'site' in m.__file__, m.__file__; sys.exit(m.main())",
                             "res", "--group", "g", "--backupdir", "/backup"],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("type: savepnpc;\n")
