"""A backup must not follow a link that leads out of the store whatever it names, so the
mail user can make root read a directory the user cannot read and put it in the archive
(from where a restore hands it to the user, owned by the user).

The store belongs to uid 65534.  The user plants ``.Loot -> /root-only/dir`` (mode 0700,
owned by root) holding ``cur/<msg>``; or replaces the whole Maildir by such a link.
Expected: the link is refused and named (exit 1) - Dovecot, running as the user, could not
serve that directory either - and the secret is not in the archive.  Happens: exit 0 and
the secret is archived.  At fault: ims/store/maildir.py MaildirStore._link_verdict (only
asks "inside the store?" and "already reached?", never whose the target is / whether the
mail user may read it; user_info and folders follow the link as root), and
MaildirFolderReader.__init__ (opens the folder by path, following a link swapped in after
the listing)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import run_cmd

from ims.samplestore import SampleSpec, generate

NOBODY = 65534
SECRET = b"TOPSECRET-ONLY-ROOT-MAY-READ-THIS"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root (the tools run as root over a store owned by a mail user)")
    root = tmp_path / "store"
    generate(root, SampleSpec(users=3, messages_per_user=5, partitions=1, seed=9,
                              owner=(NOBODY, NOBODY)))
    return root


def root_only_maildir(base: Path) -> Path:
    """A directory that looks like a Maildir folder, readable by root only."""
    secret = base / "root-only"
    for sub in ("cur", "new", "tmp"):
        (secret / sub).mkdir(parents=True)
    message = secret / "cur" / "1700000000.M1P1.host:2,S"
    message.write_bytes(b"Subject: root's mail\r\n\r\n" + SECRET + b"\r\n")
    message.chmod(0o600)
    secret.chmod(0o700)
    base.chmod(0o755)
    return secret


def plant_link(link: Path, target: Path) -> None:
    """What the mail user can do in its own directory (done as root here only because the
    test's temporary directory is not searchable by uid 65534): a link owned by the user."""
    link.symlink_to(target)
    os.lchown(link, NOBODY, NOBODY)


@pytest.mark.parametrize("where", ["folder", "maildir"])
def test_a_link_to_a_directory_the_user_cannot_read_is_not_backed_up(store, tmp_path, where):
    secret = root_only_maildir(tmp_path / "elsewhere")
    st = secret.stat()
    assert (st.st_uid, st.st_mode & 0o077) == (0, 0)      # the mail user cannot read it
    user = sorted((store / "partitions" / "primary").iterdir())[0]
    assert user.stat().st_uid == NOBODY                   # but owns its own directories
    if where == "folder":
        plant_link(user / "Maildir" / ".Loot", secret)
    else:
        (user / "Maildir").rename(user / "Maildir.old")
        plant_link(user / "Maildir", secret)
    archive = tmp_path / "full.ims"
    result = run_cmd("imsbackup", "--json", "-f", str(archive), "/",
                     config_dir=store / "config", timeout=60)
    summary = json.loads(result.stdout)
    leaked = SECRET in archive.read_bytes()
    assert not leaked, \
        f"root read a file the mail user cannot read into the archive (exit {result.returncode})"
    assert result.returncode == 1, (result.returncode, result.stderr.decode())
    assert any(str(user) in item for item in summary["skipped"]), summary["skipped"]
