"""A throwaway Bacula (director, storage daemon, file daemon; sqlite catalog; disk volume) on
127.0.0.1 for the integration tests, started with tests/bacula/bacula-up.sh on free ports and
stopped with bacula-down.sh (by pid file, never by name)."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

from dovecot_server import free_ports

SCRIPTS = Path(__file__).parent / "bacula"


class BaculaServer:
    def __init__(self, jobs_conf: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ims-bacula-", dir="/tmp"))
        (self.root / "etc").mkdir()
        (self.root / "etc" / "jobs.conf").write_text(jobs_conf)
        dir_port, fd_port, sd_port = free_ports(3)
        self.env = dict(os.environ, BACULA_DIR_PORT=str(dir_port),
                        BACULA_FD_PORT=str(fd_port), BACULA_SD_PORT=str(sd_port))
        self.started = False

    def start(self) -> None:
        result = subprocess.run(["bash", str(SCRIPTS / "bacula-up.sh"), str(self.root)],
                                env=self.env, capture_output=True, text=True)
        self.started = True
        if result.returncode != 0:
            raise RuntimeError(f"bacula-up.sh failed: {result.stderr[-2000:]}")
        # A volume labelled beforehand: the first jobs would otherwise queue behind the
        # one that labels it, and concurrency could not be seen.
        out = self.console("label storage=ims-file pool=ims-pool volume=ims-vol-0000\n")
        if "successfully created" not in out and "Wrote label" not in out:
            raise RuntimeError(f"labelling a volume failed: {out[-1000:]}")

    def stop(self) -> None:
        if self.started:
            subprocess.run(["bash", str(SCRIPTS / "bacula-down.sh"), str(self.root)],
                           env=self.env, capture_output=True)
            self.started = False

    def console(self, commands: str) -> str:
        result = subprocess.run([str(self.root / "bin" / "bcon")], input=commands, text=True,
                                capture_output=True, env=self.env, timeout=300)
        return result.stdout

    def run_job(self, name: str, level: str = "Full") -> int:
        out = self.console(f"run job={name} level={level} yes\n")
        match = re.search(r"Job queued\. JobId=(\d+)", out)
        if not match:
            raise RuntimeError(f"job {name} not queued: {out[-1000:]}")
        return int(match.group(1))

    def wait(self, jobid: int | None = None) -> None:
        self.console(f"wait jobid={jobid}\n" if jobid else "wait\n")

    def restore(self, jobid: int, where: str) -> int:
        out = self.console(f"restore jobid={jobid} where={where} all done yes\n")
        match = re.search(r"Job queued\. JobId=(\d+)", out)
        if not match:
            raise RuntimeError(f"restore of {jobid} not queued: {out[-1500:]}")
        restore_id = int(match.group(1))
        self.wait(restore_id)
        return restore_id

    def job(self, jobid: int) -> dict:
        deadline = time.monotonic() + 60
        while True:
            with sqlite3.connect(self.root / "work" / "dir" / "bacula.db") as db:
                row = db.execute("SELECT JobStatus, JobErrors, JobFiles, JobBytes, StartTime,"
                                 " EndTime FROM Job WHERE JobId=?", (jobid,)).fetchone()
                log = [r[0] for r in db.execute("SELECT LogText FROM Log WHERE JobId=?", (jobid,))]
            if row and row[0] not in ("C", "R", "F", "S", "m", "M", "s", "j", "c", "d", "t", "p", "i", "a"):
                return {"status": row[0], "errors": row[1], "files": row[2], "bytes": row[3],
                        "start": row[4], "end": row[5], "log": "".join(log)}
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {jobid} did not finish: {row}")
            time.sleep(0.5)
