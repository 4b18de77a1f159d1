"""Shared fixtures: isolated environment, the installed commands, a sample store, Dovecot.

In CI (``CI=true``) a missing dependency (Dovecot, GNU tar, setpriv) fails the test instead
of skipping it, so a green run always means the real parts were exercised.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import settings

TESTS = Path(__file__).parent
# property tests are judged by what they find, not by how fast an example runs: on a busy
# two-core machine one example held up for 200 ms failed a run (hypothesis' default deadline)
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")
sys.path.insert(0, str(TESTS))

BIN = Path(sys.executable).parent


def require(condition: bool, what: str) -> None:
    """Skip locally, fail in CI, when a real part of the test setup is missing."""
    if condition:
        return
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"missing test dependency in CI: {what}")
    pytest.skip(f"missing test dependency: {what}")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMS_CONFIG_DIR", raising=False)
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


def command(name: str) -> str:
    path = BIN / name
    require(path.exists(), f"installed command {name} (pip install -e .)")
    return str(path)


def run_cmd(name: str, *args: str, config_dir: Path | None = None, check_rc: int | None = None,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, prefix: tuple[str, ...] = (),
            **kwargs) -> subprocess.CompletedProcess:
    """Run an installed command as a user would; returns the completed process."""
    env = dict(os.environ)
    if config_dir is not None:
        env["IMS_CONFIG_DIR"] = str(config_dir)
    result = subprocess.run([*prefix, command(name), *args], stdout=stdout,
                            stderr=stderr, env=env, **kwargs)
    if check_rc is not None:
        assert result.returncode == check_rc, (result.returncode, result.stderr.decode())
    return result


def backup_in_process(store: Path, out: Path):
    """A full backup of the whole store run in this process (so that a test may patch the
    store reader, which the forked child inherits); its BackupReport."""
    from ims.archive.writer import ArchiveWriter, RecordSink
    from ims.backup import BackupOptions, run_backup
    from ims.config import Config
    from ims.names import resolve
    from ims.store.maildir import MaildirStore
    config = Config.load(store / "config")
    maildirs = MaildirStore(config.msg.partitions(), "%u/Maildir")
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        return run_backup(config, maildirs, resolve(["/"], config, maildirs),
                          ArchiveWriter(RecordSink(fd, 20, str(out))), BackupOptions(names=("/",)))
    finally:
        os.close(fd)


@pytest.fixture(scope="session")
def sample_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small deterministic sample store (read-only for the tests that use it)."""
    from ims.samplestore import SampleSpec, generate
    root = tmp_path_factory.mktemp("sample") / "store"
    generate(root, SampleSpec(users=12, messages_per_user=20, partitions=3, seed=7))
    return root


@pytest.fixture
def fresh_store(tmp_path: Path) -> Path:
    """A small sample store a test may change."""
    from ims.samplestore import SampleSpec, generate
    root = tmp_path / "store"
    generate(root, SampleSpec(users=6, messages_per_user=10, partitions=2, seed=3))
    return root


@pytest.fixture(scope="module")
def dovecot():
    from dovecot_server import DOVECOT, DovecotServer
    require(Path(DOVECOT).exists() and shutil.which("doveadm") is not None,
            "Dovecot (apt-get install dovecot-core dovecot-imapd dovecot-lmtpd)")
    require(os.geteuid() == 0, "root (Dovecot's mail uid is set by the fixture)")
    server = DovecotServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if not os.environ.get("IMS_TEST_KEEP"):   # keep the instance's files to debug
            shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture
def networker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The NetWorker stand-in's programs in a bin directory, with imsasm linked beside them
    (NetWorker runs an external ASM only from the directory of its own save/recover)."""
    bin_dir = tmp_path / "nsr-bin"
    bin_dir.mkdir()
    for name in ("save", "recover", "savepnpc", "nsradmin", "savegrp"):
        script = bin_dir / name
        script.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(TESTS / 'networker')!r})\n"
                          "import standin\nsys.exit(standin.main())\n")
        script.chmod(0o755)
    os.symlink(command("imsasm"), bin_dir / "imsasm")
    for variable, sub in (("NSR_STATE", "nsr-state"), ("NSR_RES", "nsr-res"), ("NSR_TMP", "nsr-tmp")):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(variable, str(tmp_path / sub))
    return bin_dir


def bacula_available() -> bool:
    return all(Path(p).exists() for p in ("/usr/sbin/bacula-dir", "/usr/sbin/bacula-sd",
                                          "/usr/sbin/bacula-fd", "/usr/sbin/bconsole",
                                          "/usr/lib/bacula/bpipe-fd.so", "/usr/bin/sqlite3"))


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str):
    """A tiny file system that fills up (a full disk, as root can make one)."""
    require(os.geteuid() == 0, "root to mount a small tmpfs")
    path.mkdir(exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)])
    require(mounted.returncode == 0, "mount -t tmpfs")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)
