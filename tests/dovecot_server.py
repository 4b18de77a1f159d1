"""A throwaway Dovecot on 127.0.0.1 for the integration tests (IMAP + LMTP, Maildir++).

Everything lives under one root directory: config, base_dir, state, log, the passwd-file of
users and the partitions.  Ports are free ports picked at start.  Mail files belong to a
dedicated numeric uid (Dovecot refuses root for mail), so every directory above the root
must be traversable by that uid: the root is created under /tmp with mode 0755.

Writes Dovecot 2.3 syntax, or 2.4 syntax when ``dovecot --version`` says 2.4+ (Debian 13).
``stop()`` signals only the master pid this object started.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import re
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from pathlib import Path

MAIL_UID = 5000
MAIL_GID = 5000
PASSWORD = "secret"
DOVECOT = "/usr/sbin/dovecot"


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports free now: the sockets are held until every number
    is known, so the kernel cannot hand the same one out twice."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            s = held.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
        return ports


def dovecot_version() -> tuple[int, int]:
    out = subprocess.run([DOVECOT, "--version"], capture_output=True, text=True, check=True).stdout
    major, minor = re.match(r"(\d+)\.(\d+)", out).groups()
    return int(major), int(minor)


class DovecotServer:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="ims-dovecot-", dir="/tmp"))
        os.chmod(self.root, 0o755)
        self.imap_port, self.lmtp_port = free_ports(2)
        self.pid: int | None = None
        self.conf = self.root / "dovecot.conf"
        self.users_file = self.root / "users"
        self.version = dovecot_version()

    # -- users and partitions --------------------------------------------------------

    def add_user(self, user: str, partition_dir: Path) -> Path:
        """Register a user whose Maildir is ``partition_dir/<user>/Maildir``; returns home."""
        home = partition_dir / user
        home.mkdir(parents=True, exist_ok=True)
        for directory in (partition_dir, home):
            os.chown(directory, MAIL_UID, MAIL_GID)
        with open(self.users_file, "a", encoding="utf-8") as out:
            out.write(f"{user}:{{PLAIN}}{PASSWORD}::::{home}::\n")
        # Dovecot re-stats a passwd-file at most once a second and re-reads it when its
        # mtime (in seconds) changed: start a new second, then date the file in it.
        if self.pid is not None:
            time.sleep(1.02 - time.time() % 1)
            os.utime(self.users_file)
        return home

    def partition(self, name: str) -> Path:
        path = self.root / "partitions" / name
        path.mkdir(parents=True, exist_ok=True)
        for directory in (self.root / "partitions", path):
            os.chmod(directory, 0o755)
            os.chown(directory, MAIL_UID, MAIL_GID)
        return path

    # -- life cycle ------------------------------------------------------------------

    def start(self) -> None:
        for sub in ("run", "state", "log"):
            (self.root / sub).mkdir(exist_ok=True)
            os.chmod(self.root / sub, 0o755)
        self.users_file.touch()
        os.chmod(self.users_file, 0o644)
        self.conf.write_text(self._config(), encoding="utf-8")
        check = subprocess.run(["doveconf", "-c", str(self.conf), "-n"], capture_output=True,
                               text=True)
        if check.returncode != 0:
            raise RuntimeError(f"doveconf rejected the test config: {check.stderr.strip()}")
        subprocess.run([DOVECOT, "-c", str(self.conf)], check=True)
        deadline = time.monotonic() + 15
        pidfile = self.root / "run" / "master.pid"
        while time.monotonic() < deadline:
            if pidfile.exists() and pidfile.read_text().strip():
                self.pid = int(pidfile.read_text().strip())
                try:
                    for port in (self.imap_port, self.lmtp_port):
                        socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    return
                except OSError:
                    pass
            time.sleep(0.1)
        log = (self.root / "log" / "dovecot.log")
        tail = log.read_text()[-2000:] if log.exists() else ""
        self.stop()
        raise RuntimeError(f"dovecot did not come up: {tail}")

    def stop(self) -> None:
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            self.pid = None
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            os.kill(self.pid, signal.SIGKILL)
        self.pid = None

    # -- clients ---------------------------------------------------------------------

    def imap(self, user: str) -> imaplib.IMAP4:
        client = imaplib.IMAP4("127.0.0.1", self.imap_port)
        client.login(user, PASSWORD)
        return client

    def lmtp_deliver(self, raw: bytes, recipients: list[str]) -> dict[str, tuple[int, bytes]]:
        """Deliver one message in one LMTP transaction (several recipients -> hard links)."""
        conn = smtplib.LMTP("127.0.0.1", self.lmtp_port)
        try:
            conn.ehlo_or_helo_if_needed()
            assert conn.mail("sender@example.org")[0] == 250
            accepted = [r for r in recipients if conn.rcpt(f"{r}@example.com")[0] == 250]
            replies: dict[str, tuple[int, bytes]] = {}
            if accepted:
                replies[accepted[0]] = conn.data(raw)
                for r in accepted[1:]:
                    replies[r] = conn.getreply()
            return replies
        finally:
            conn.quit()

    def doveadm(self, *args: str) -> str:
        result = subprocess.run(["doveadm", "-c", str(self.conf), *args], capture_output=True,
                                text=True)
        if result.returncode != 0:
            raise RuntimeError(f"doveadm {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    # -- configuration ---------------------------------------------------------------

    def _config(self) -> str:
        if self.version >= (2, 4):
            return self._config_24()
        return self._config_23()

    def _common_head(self) -> str:
        internal = "dovecot"
        login = "dovenull"
        return f"""\
base_dir = {self.root}/run
state_dir = {self.root}/state
log_path = {self.root}/log/dovecot.log
info_log_path = {self.root}/log/dovecot.log
protocols = imap lmtp
listen = 127.0.0.1
ssl = no
auth_mechanisms = plain login
default_internal_user = {internal}
default_internal_group = {internal}
default_login_user = {login}
first_valid_uid = {MAIL_UID}
last_valid_uid = {MAIL_UID}
first_valid_gid = {MAIL_GID}
last_valid_gid = {MAIL_GID}
mail_uid = {MAIL_UID}
mail_gid = {MAIL_GID}
maildir_copy_with_hardlinks = yes
mail_fsync = never
maildir_very_dirty_syncs = no
namespace inbox {{
  inbox = yes
  separator = /
}}
service auth {{
  unix_listener auth-userdb {{
    mode = 0666
  }}
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""

    def _config_23(self) -> str:
        return f"""\
instance_name = ims-test-{self.imap_port}
{self._common_head()}
disable_plaintext_auth = no
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%n {self.users_file}
}}
userdb {{
  driver = passwd-file
  args = username_format=%n {self.users_file}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.lmtp_port}
  }}
}}
"""

    def _config_24(self) -> str:
        return f"""\
dovecot_config_version = 2.4.0
dovecot_storage_version = 2.4.0
instance_name = ims-test-{self.imap_port}
{self._common_head()}
auth_allow_cleartext = yes
auth_username_format = %{{user | username}}
mail_driver = maildir
mail_path = ~/Maildir
passdb passwd-file {{
  passwd_file_path = {self.users_file}
  default_password_scheme = PLAIN
}}
userdb passwd-file {{
  passwd_file_path = {self.users_file}
}}
service imap-login {{
  inet_listener imap {{
    listen = 127.0.0.1
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    listen = 127.0.0.1
    port = {self.lmtp_port}
  }}
}}
"""
