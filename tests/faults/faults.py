#!/usr/bin/env python3
"""Fault-injection campaign for imsbackup and imsrestore (docs/reliability.md, "Fault injection").

Runs the installed commands (the ``bin`` directory of the Python running this script, or
``--bin``) on a small deterministic sample store (``ims.samplestore``) and injects faults:

- signals (SIGKILL, SIGINT to the process or to its group as Ctrl-C does, SIGTERM) at points
  spread by bytes written (``wchar`` of ``/proc/PID/io``: the process is stopped with SIGSTOP
  when it reaches the point, then signalled), by bytes fed through a pipe this script
  controls, by bytes read from the backup's output pipe, and by time;
- a full disk (a tmpfs mounted by the script, filled up to a chosen number of free bytes);
- read errors: an unreadable file or directory (chmod 000, run as root without
  CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH through ``setpriv``) and, when a C compiler exists,
  a real EIO at a chosen offset of a chosen file (an LD_PRELOAD shim over read/readv/pread,
  which returns the bytes before the bad offset and then EIO, as Linux does for a bad
  sector) or on writing the archive;
- the reader of the backup's output pipe going away (``imsbackup -f - / | head -c N``);
- the helper child killed (the backup's store reader, the restore's archive reader);
- Dovecot's folder lock (``dovecot-uidlist.lock``) or ``subscriptions.lock`` held by another
  live process, another host, a dead process, or released while the restore waits.

After each fault it checks the contract: an unfinished backup exits neither 0 nor 1 and its
output (``FILE.partial``, or the bytes a pipe carried) has no valid trailer (``imsrestore
-t`` exits 4 and names the byte where it ends); ``FILE`` keeps the previous good archive; a
completed one restores to the store it was taken from; a restore's intermediate state holds
no doubled message, keeps every message the store had, shows a folder restored whole either
absent or complete; a rerun of an interrupted restore gives the store a clean restore gives
(``store_listing``: per folder the UIDVALIDITY and the (UID, SHA-256, flags) of every
message, and the subscriptions); no lock, staged file or folder built aside is left (after
SIGKILL only after the rerun); no helper process outlives its command; no traceback.

    nice -n 10 .venv/bin/python tests/faults/faults.py --faults 1000 --seed 1
    .venv/bin/python tests/faults/faults.py --seed 1 --replay '<case JSON printed>'

Exit 0 when no violation was found, 1 otherwise (each violation is printed with the case
and a command that replays it), 2 on a setup problem.  Needs root (tmpfs, setpriv).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
HOST = socket.gethostname()
TRACEBACK = "Traceback (most recent call last)"
SIGNALS = {"KILL": signal.SIGKILL, "INT": signal.SIGINT, "TERM": signal.SIGTERM}
COMMAND_TIMEOUT = 120.0
SLACK = 4.0           # seconds allowed beyond a bound on a shared, niced machine

# -- the store listing -----------------------------------------------------------------------


def _uidlist(path: Path) -> tuple[int | None, dict[str, int], list[str], int]:
    """(UIDVALIDITY, base name -> UID, problems, next UID) of a dovecot-uidlist v3; the next
    UID is the larger of the header's N and the last UID + 1."""
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return None, {}, [], 1
    lines = text.split("\n")
    uidvalidity = None
    next_uid = 1
    for word in lines[0].split()[1:]:
        if word.startswith("V") and word[1:].isdigit():
            uidvalidity = int(word[1:])
        if word.startswith("N") and word[1:].isdigit():
            next_uid = int(word[1:])
    uids: dict[str, int] = {}
    seen_uids: dict[int, str] = {}
    problems = []
    for line in lines[1:]:
        if not line:
            continue
        cut = line.find(" :")
        if cut < 0 or not line.split(" ", 1)[0].isdigit():
            problems.append(f"unparsable uidlist line {line!r}")
            continue
        uid, key = int(line.split(" ", 1)[0]), line[cut + 2:]
        if key in uids:
            problems.append(f"base name {key} listed twice (UIDs {uids[key]} and {uid})")
        if uid in seen_uids:
            problems.append(f"UID {uid} listed twice ({seen_uids[uid]} and {key})")
        uids[key] = uid
        seen_uids[uid] = key
        next_uid = max(next_uid, uid + 1)
    return uidvalidity, uids, problems, next_uid


def _keywords(path: Path) -> dict[int, str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return {}
    result = {}
    for line in text.splitlines():
        number, _, name = line.partition(" ")
        if number.isdigit():
            result[int(number)] = name
    return result


def folder_listing(folder: Path) -> dict:
    """A folder as the comparison sees it: UIDVALIDITY, [UID, SHA-256, flags] of every message
    file (UID null when the uidlist does not list it), problems (doubled UIDs or names)."""
    uidvalidity, uids, problems, next_uid = _uidlist(folder / "dovecot-uidlist")
    keywords = _keywords(folder / "dovecot-keywords")
    messages = []
    seen: dict[str, str] = {}
    for sub in ("new", "cur"):
        try:
            names = sorted(os.listdir(folder / sub))
        except FileNotFoundError:
            continue
        for name in names:
            if name.startswith("."):
                continue
            key, _, info = name.partition(":")
            if key in seen:
                problems.append(f"message {key} stored twice ({seen[key]}, {sub}/{name})")
            seen[key] = f"{sub}/{name}"
            letters = info[2:] if info.startswith("2,") else ""
            flags = "".join(sorted(c for c in letters if c.isupper()))
            words = sorted(keywords.get(ord(c) - 97, "?" + c) for c in letters if c.islower())
            if words:
                flags += " " + " ".join(words)
            try:
                digest = hashlib.sha256((folder / sub / name).read_bytes()).hexdigest()
            except OSError as exc:
                digest = f"unreadable:{exc.strerror}"
            messages.append([uids.get(key), digest, flags])
    messages.sort(key=lambda m: (m[0] is not None, m[0] or 0, m[1], m[2]))
    return {"uidvalidity": uidvalidity, "messages": messages, "problems": problems,
            "next_uid": next_uid}


def _subscriptions(maildir: Path) -> list[str] | None:
    try:
        text = (maildir / "subscriptions").read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    if text.startswith("V\t2\n\n"):
        text = text[5:]
    return sorted(line for line in text.split("\n") if line)


def store_listing(partitions: dict[str, Path]) -> dict[str, dict]:
    """Every folder of every user: ``"partition/user/folder"`` (the folder as stored, INBOX
    for the Maildir root) -> ``folder_listing``; ``"partition/user/<subscriptions>"`` -> the
    subscribed names."""
    out: dict[str, dict] = {}
    for pname, pdir in sorted(partitions.items()):
        try:
            users = sorted(os.listdir(pdir))
        except FileNotFoundError:
            continue
        for user in users:
            maildir = pdir / user / "Maildir"
            if not maildir.is_dir():
                continue
            folders = {"INBOX": maildir}
            for name in os.listdir(maildir):
                if name.startswith(".") and not name.startswith(".ims-restore") \
                        and (maildir / name / "cur").is_dir():
                    folders[name[1:]] = maildir / name
            for fname, fdir in sorted(folders.items()):
                out[f"{pname}/{user}/{fname}"] = folder_listing(fdir)
            subs = _subscriptions(maildir)
            if subs is not None:
                out[f"{pname}/{user}/<subscriptions>"] = {"names": subs}
    return out


def match_messages(actual: list, expected: list) -> tuple[collections.Counter, collections.Counter]:
    """(missing, extra) between two folders' [UID, SHA-256, flags] lists.  A message without a
    UID (in ``new/``, not yet in the uidlist) matches the same message given any UID: a
    restore that finds it there gives it its UID, as Dovecot would on its next sync."""
    a_num = collections.Counter(tuple(m) for m in actual if m[0] is not None)
    e_num = collections.Counter(tuple(m) for m in expected if m[0] is not None)
    a_none = collections.Counter((m[1], m[2]) for m in actual if m[0] is None)
    e_none = collections.Counter((m[1], m[2]) for m in expected if m[0] is None)
    missing, extra = e_num - a_num, a_num - e_num
    unmatched = e_none - a_none
    for (uid, sha, flags), n in sorted(extra.items()):
        take = min(n, unmatched[(sha, flags)])
        if take:
            unmatched[(sha, flags)] -= take
            extra[(uid, sha, flags)] -= take
    extra = +extra
    for (sha, flags), n in (a_none - e_none).items():
        extra[(None, sha, flags)] += n
    for (sha, flags), n in (+unmatched).items():
        missing[(None, sha, flags)] += n
    return missing, extra


def compare_listings(actual: dict, expected: dict, uids: bool = True, limit: int = 6,
                     before: dict | None = None) -> list[str]:
    """Differences between two store listings, in words (empty when equal).  ``uids=False``
    compares each folder's messages as (SHA-256, flags) multisets, ignoring UIDs.

    ``before``: the store before the restore.  A folder that had handed out UIDs then gets
    the archived messages it lacked as new mail (rule 2), in an order a fault may change;
    it is compared as: every message it had still there, unchanged; the same (SHA-256,
    flags) as ``expected``; every added message with a UID at or above the folder's next
    UID before the restore (never an old, expunged UID)."""
    diffs: list[str] = []
    for key in sorted(set(actual) | set(expected)):
        a, e = actual.get(key), expected.get(key)
        if a is None:
            diffs.append(f"{key}: missing")
            continue
        if e is None:
            diffs.append(f"{key}: not expected ({len(a.get('messages', []))} messages)")
            continue
        if "names" in e or "names" in a:
            if a.get("names") != e.get("names"):
                diffs.append(f"{key}: {a.get('names')} instead of {e.get('names')}")
            continue
        if a["uidvalidity"] != e["uidvalidity"]:
            diffs.append(f"{key}: UIDVALIDITY {a['uidvalidity']} instead of {e['uidvalidity']}")
        if a["problems"]:
            diffs.append(f"{key}: {'; '.join(a['problems'][:3])}")

        live = (before or {}).get(key)
        if uids and live is not None and live.get("uidvalidity") is not None:
            kept_missing, _ = match_messages(a["messages"], live["messages"])
            if kept_missing:
                diffs.append(f"{key}: {sum(kept_missing.values())} message(s) the folder had are"
                             f" gone or changed {sorted(kept_missing, key=repr)[:2]}")
            had = collections.Counter((m[1], m[2]) for m in live["messages"])
            old_uids = sorted(m[0] for m in a["messages"] if m[0] is not None
                              and m[0] < live["next_uid"]
                              and not had[(m[1], m[2])]
                              and [m[0], m[1], m[2]] not in live["messages"])
            if old_uids:
                diffs.append(f"{key}: message(s) added with UIDs below the folder's next UID"
                             f" {live['next_uid']} before the restore: {old_uids[:5]}"
                             f" (old UIDs handed out again)")
            am = collections.Counter((m[1], m[2]) for m in a["messages"])
            em = collections.Counter((m[1], m[2]) for m in e["messages"])
            missing, extra = em - am, am - em
        elif uids:
            missing, extra = match_messages(a["messages"], e["messages"])
        else:
            am = collections.Counter((m[1], m[2]) for m in a["messages"])
            em = collections.Counter((m[1], m[2]) for m in e["messages"])
            missing, extra = em - am, am - em
        if missing or extra:
            diffs.append(f"{key}: {sum(missing.values())} message(s) missing"
                         f" {sorted(missing, key=repr)[:2]}, {sum(extra.values())} extra"
                         f" {sorted(extra, key=repr)[:2]}")
    return diffs[:limit] + ([f"... {len(diffs) - limit} more"] if len(diffs) > limit else [])


def intermediate_problems(during: dict, before: dict, expected: dict, whole_atomic: bool) -> list[str]:
    """What an interrupted restore may never leave: a message doubled, a message the store
    had lost or changed, a message from nowhere, a wrong UIDVALIDITY, a folder restored whole
    that is neither absent nor complete (``whole_atomic``), doubled UIDs or names."""
    problems: list[str] = []
    for key, now in sorted(during.items()):
        if "names" in now:
            continue
        was, want = before.get(key), expected.get(key)
        if now["problems"]:
            problems.append(f"{key}: {'; '.join(now['problems'][:3])}")
        if want is None and was is None:
            problems.append(f"{key}: a folder from nowhere")
            continue
        if was is not None and was["uidvalidity"] is not None:
            if now["uidvalidity"] != was["uidvalidity"]:
                problems.append(f"{key}: UIDVALIDITY changed from {was['uidvalidity']} to"
                                f" {now['uidvalidity']}")
        elif want is not None and now["uidvalidity"] is not None \
                and now["uidvalidity"] != want["uidvalidity"]:
            problems.append(f"{key}: UIDVALIDITY {now['uidvalidity']}, the archive's is"
                            f" {want['uidvalidity']}")
        counts = collections.Counter(m[1] for m in now["messages"])
        allowed = collections.Counter(m[1] for m in (was or {"messages": []})["messages"])
        allowed |= collections.Counter(m[1] for m in (want or {"messages": []})["messages"])
        over = {sha: n for sha, n in counts.items() if n > allowed.get(sha, 0)}
        if over:
            problems.append(f"{key}: {len(over)} message(s) doubled or from nowhere,"
                            f" e.g. {sorted(over, key=repr)[:1]}")
        if was is not None:
            lost, _ = match_messages(now["messages"], was["messages"])
            if lost:
                problems.append(f"{key}: {sum(lost.values())} message(s) of the store lost or"
                                f" changed, e.g. {sorted(lost, key=repr)[:1]}")
        elif whole_atomic and want is not None:
            if not now["messages"] and now["uidvalidity"] is None:
                continue    # an empty INBOX made to hang folders on: Dovecot makes them too
            if any(match_messages(now["messages"], want["messages"])):
                problems.append(f"{key}: a folder restored whole is visible incomplete"
                                f" ({len(now['messages'])} of {len(want['messages'])} messages)")
    return problems


def leftovers(partitions: dict[str, Path], ignore: tuple[Path, ...] = ()) -> list[str]:
    """Locks, staged files, folders built aside and temporary control files left behind."""
    found = []
    for pdir in partitions.values():
        for directory, dirs, files in os.walk(pdir):
            for name in dirs + files:
                path = Path(directory) / name
                if path in ignore:
                    continue
                if name.endswith(".lock") or name.startswith(".ims-restore") \
                        or name.startswith("ims-restore.") or ".ims-" in name:
                    found.append(str(path.relative_to(pdir.parent)))
    return sorted(found)


# -- processes -------------------------------------------------------------------------------


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


def wait_group_gone(pgid: int, timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        members = group_members(pgid)
        if not members:
            return []
        time.sleep(0.02)
    return group_members(pgid)


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                found += [int(p) for p in
                          Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    except OSError:
        pass
    return found


def wchar(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def stop_at_wchar(proc: subprocess.Popen, target: int, timeout: float = 30.0) -> int | None:
    """Poll the process's bytes written; when they reach ``target``, SIGSTOP it and return
    the count; None when it ended first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        count = wchar(proc.pid)
        if count is not None and count >= target:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGSTOP)
            return wchar(proc.pid) or count
    return None


def deliver(proc: subprocess.Popen, sig: str, to_group: bool, stopped: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if to_group:
            os.killpg(proc.pid, SIGNALS[sig])
        else:
            os.kill(proc.pid, SIGNALS[sig])
        if stopped:
            if to_group:
                os.killpg(proc.pid, signal.SIGCONT)
            else:
                os.kill(proc.pid, signal.SIGCONT)


def signal_rc(sig: str) -> set[int]:
    number = int(SIGNALS[sig])
    return {-number, 128 + number}


def rc_text(rc: int | None) -> str:
    if rc is None:
        return "hung"
    if rc < 0:
        return f"killed:SIG{signal.Signals(-rc).name[3:]}"
    return f"exit:{rc}"


# -- an LD_PRELOAD shim: EIO at an offset of a chosen file -----------------------------------

EIO_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

/* IMSF_EIO_PATH: a substring of the path; IMSF_EIO_OFFSET: the first bad byte;
   IMSF_EIO_MODE: r (reads fail from the offset on) or w (writes fail from the offset on).
   A read or write that spans the offset is cut short at it (Linux returns what it could
   before the error), the next one fails with EIO. */

static int hits(int fd, off_t offset, size_t count, size_t *allowed, char mode) {
    const char *want = getenv("IMSF_EIO_PATH");
    const char *m = getenv("IMSF_EIO_MODE");
    if (!want || !m || m[0] != mode) return 0;
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0) return 0;
    path[n] = 0;
    if (!strstr(path, want)) return 0;
    off_t bad = (off_t)atoll(getenv("IMSF_EIO_OFFSET") ? getenv("IMSF_EIO_OFFSET") : "0");
    if (offset < 0) offset = lseek(fd, 0, SEEK_CUR);
    if (offset < 0) offset = 0;
    if (offset >= bad) return -1;
    if (offset + (off_t)count > bad) { *allowed = (size_t)(bad - offset); return 1; }
    return 0;
}

#define REAL(name, type) static __typeof__(&name) real_##name; if (!real_##name) real_##name = (__typeof__(&name))dlsym(RTLD_NEXT, #name)

ssize_t read(int fd, void *buf, size_t count) {
    REAL(read, ssize_t (*)(int, void *, size_t));
    size_t allowed = count; int h = hits(fd, -1, count, &allowed, 'r');
    if (h < 0) { errno = EIO; return -1; }
    return real_read(fd, buf, allowed);
}

static ssize_t cut_iov(const struct iovec *iov, int cnt, size_t allowed, struct iovec *out) {
    int i = 0;
    for (; i < cnt && allowed > 0; i++) {
        out[i] = iov[i];
        if (out[i].iov_len > allowed) out[i].iov_len = allowed;
        allowed -= out[i].iov_len;
    }
    return i;
}

static size_t total(const struct iovec *iov, int cnt) {
    size_t t = 0; for (int i = 0; i < cnt; i++) t += iov[i].iov_len; return t;
}

ssize_t readv(int fd, const struct iovec *iov, int cnt) {
    REAL(readv, ssize_t (*)(int, const struct iovec *, int));
    size_t allowed = total(iov, cnt); int h = hits(fd, -1, allowed, &allowed, 'r');
    if (h < 0) { errno = EIO; return -1; }
    if (h > 0) { struct iovec c[cnt > 0 ? cnt : 1]; int k = cut_iov(iov, cnt, allowed, c); return real_readv(fd, c, k); }
    return real_readv(fd, iov, cnt);
}

ssize_t pread64(int fd, void *buf, size_t count, off_t off) {
    REAL(pread64, ssize_t (*)(int, void *, size_t, off_t));
    size_t allowed = count; int h = hits(fd, off, count, &allowed, 'r');
    if (h < 0) { errno = EIO; return -1; }
    return real_pread64(fd, buf, allowed, off);
}

ssize_t pread(int fd, void *buf, size_t count, off_t off) { return pread64(fd, buf, count, off); }

ssize_t preadv64(int fd, const struct iovec *iov, int cnt, off_t off) {
    REAL(preadv64, ssize_t (*)(int, const struct iovec *, int, off_t));
    size_t allowed = total(iov, cnt); int h = hits(fd, off, allowed, &allowed, 'r');
    if (h < 0) { errno = EIO; return -1; }
    if (h > 0) { struct iovec c[cnt > 0 ? cnt : 1]; int k = cut_iov(iov, cnt, allowed, c); return real_preadv64(fd, c, k, off); }
    return real_preadv64(fd, iov, cnt, off);
}

ssize_t preadv(int fd, const struct iovec *iov, int cnt, off_t off) { return preadv64(fd, iov, cnt, off); }

ssize_t preadv64v2(int fd, const struct iovec *iov, int cnt, off_t off, int flags) {
    REAL(preadv64v2, ssize_t (*)(int, const struct iovec *, int, off_t, int));
    size_t allowed = total(iov, cnt); int h = hits(fd, off, allowed, &allowed, 'r');
    if (h < 0) { errno = EIO; return -1; }
    if (h > 0) { struct iovec c[cnt > 0 ? cnt : 1]; int k = cut_iov(iov, cnt, allowed, c); return real_preadv64v2(fd, c, k, off, flags); }
    return real_preadv64v2(fd, iov, cnt, off, flags);
}

ssize_t preadv2(int fd, const struct iovec *iov, int cnt, off_t off, int flags) { return preadv64v2(fd, iov, cnt, off, flags); }

/* IMSF_KILL_OP (rename, link, unlink, mkdir, lockfile, create) and IMSF_KILL_AT=N,
   IMSF_KILL_SIG=S: the process sends itself signal S at its Nth such call (before the call;
   for lockfile, a file named *.lock* created with O_EXCL, and create, any other file created
   with O_EXCL: just after it, before anything is written in it).
   IMSF_COUNT_FILE: at exit, write how many of each the process made. */

enum { OP_RENAME, OP_LINK, OP_UNLINK, OP_MKDIR, OP_LOCKFILE, OP_CREATE, OP_COUNT };
static const char *OP_NAMES[OP_COUNT] = {"rename", "link", "unlink", "mkdir", "lockfile", "create"};
static long op_counts[OP_COUNT];
static pid_t first_pid;

static void op_hit(int op) {
    if (!first_pid) first_pid = getpid();
    op_counts[op]++;
    const char *want = getenv("IMSF_KILL_OP");
    if (!want || strcmp(want, OP_NAMES[op]) != 0 || getpid() != first_pid) return;
    if (op_counts[op] == atol(getenv("IMSF_KILL_AT") ? getenv("IMSF_KILL_AT") : "0"))
        kill(getpid(), atoi(getenv("IMSF_KILL_SIG") ? getenv("IMSF_KILL_SIG") : "9"));
}

__attribute__((constructor)) static void op_start(void) { first_pid = getpid(); }

__attribute__((destructor)) static void op_report(void) {
    const char *path = getenv("IMSF_COUNT_FILE");
    if (!path || getpid() != first_pid) return;
    FILE *out = fopen(path, "w");
    if (!out) return;
    for (int i = 0; i < OP_COUNT; i++) fprintf(out, "%s %ld\n", OP_NAMES[i], op_counts[i]);
    fclose(out);
}

int rename(const char *a, const char *b) {
    REAL(rename, 0); op_hit(OP_RENAME); return real_rename(a, b);
}
int renameat(int fa, const char *a, int fb, const char *b) {
    REAL(renameat, 0); op_hit(OP_RENAME); return real_renameat(fa, a, fb, b);
}
int renameat2(int fa, const char *a, int fb, const char *b, unsigned int flags) {
    REAL(renameat2, 0); op_hit(OP_RENAME); return real_renameat2(fa, a, fb, b, flags);
}
int link(const char *a, const char *b) {
    REAL(link, 0); op_hit(OP_LINK); return real_link(a, b);
}
int linkat(int fa, const char *a, int fb, const char *b, int flags) {
    REAL(linkat, 0); op_hit(OP_LINK); return real_linkat(fa, a, fb, b, flags);
}
int unlink(const char *a) {
    REAL(unlink, 0); op_hit(OP_UNLINK); return real_unlink(a);
}
int unlinkat(int fd, const char *a, int flags) {
    REAL(unlinkat, 0); op_hit(OP_UNLINK); return real_unlinkat(fd, a, flags);
}
int mkdir(const char *a, mode_t mode) {
    REAL(mkdir, 0); op_hit(OP_MKDIR); return real_mkdir(a, mode);
}
int mkdirat(int fd, const char *a, mode_t mode) {
    REAL(mkdirat, 0); op_hit(OP_MKDIR); return real_mkdirat(fd, a, mode);
}

static void lock_created(const char *path, int flags, int fd) {
    if (fd < 0 || !(flags & O_EXCL) || !(flags & O_CREAT)) return;
    /* a lock, or the temporary file a lock is written in before it is linked */
    op_hit(strstr(path, ".lock") ? OP_LOCKFILE : OP_CREATE);
}

static mode_t mode_of(int flags, va_list ap) {
    return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...) {
    REAL(open, 0); va_list ap; va_start(ap, flags); mode_t mode = mode_of(flags, ap); va_end(ap);
    int fd = real_open(path, flags, mode); lock_created(path, flags, fd); return fd;
}
int open64(const char *path, int flags, ...) {
    REAL(open64, 0); va_list ap; va_start(ap, flags); mode_t mode = mode_of(flags, ap); va_end(ap);
    int fd = real_open64(path, flags, mode); lock_created(path, flags, fd); return fd;
}
int openat(int dirfd, const char *path, int flags, ...) {
    REAL(openat, 0); va_list ap; va_start(ap, flags); mode_t mode = mode_of(flags, ap); va_end(ap);
    int fd = real_openat(dirfd, path, flags, mode); lock_created(path, flags, fd); return fd;
}
int openat64(int dirfd, const char *path, int flags, ...) {
    REAL(openat64, 0); va_list ap; va_start(ap, flags); mode_t mode = mode_of(flags, ap); va_end(ap);
    int fd = real_openat64(dirfd, path, flags, mode); lock_created(path, flags, fd); return fd;
}

ssize_t write(int fd, const void *buf, size_t count) {
    REAL(write, ssize_t (*)(int, const void *, size_t));
    size_t allowed = count; int h = hits(fd, -1, count, &allowed, 'w');
    if (h < 0) { errno = EIO; return -1; }
    return real_write(fd, buf, allowed);
}

ssize_t writev(int fd, const struct iovec *iov, int cnt) {
    REAL(writev, ssize_t (*)(int, const struct iovec *, int));
    size_t allowed = total(iov, cnt); int h = hits(fd, -1, allowed, &allowed, 'w');
    if (h < 0) { errno = EIO; return -1; }
    if (h > 0) { struct iovec c[cnt > 0 ? cnt : 1]; int k = cut_iov(iov, cnt, allowed, c); return real_writev(fd, c, k); }
    return real_writev(fd, iov, cnt);
}
"""


def build_eio_shim(work: Path) -> Path | None:
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        return None
    source, library = work / "eio_shim.c", work / "eio_shim.so"
    source.write_text(EIO_SHIM)
    result = subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(library), str(source),
                             "-ldl"], capture_output=True, text=True)
    if result.returncode != 0:
        print(f"faults: cannot build the EIO shim: {result.stderr.strip()[:300]}", file=sys.stderr)
        return None
    return library


# -- the setup ---------------------------------------------------------------------------------


@dataclass
class Setup:
    work: Path
    seed: int
    golden: Path                        # store root: partitions/<p>, config/
    partitions: list[str]
    users: dict[str, str]               # user -> partition
    archive: Path                       # imsbackup -f / of the golden store
    archive_copies: Path                # imsbackup -i -f / (no hard-link members)
    old_archive: Path                   # a small good archive: FILE before a failing run
    golden_listing: dict
    existing_template: Path             # partitions of a store that already has mail
    existing_listing: dict
    names: dict[str, list[str]]         # NAME variants for restores
    shim: Path | None
    setpriv: bool
    tmpfs: Path | None = None           # mounted by this script
    run_seconds: dict[str, float] = field(default_factory=dict)
    restore_bytes: dict[str, int] = field(default_factory=dict)
    references: dict[tuple, tuple[int, dict, float]] = field(default_factory=dict)
    op_counts: dict[tuple, dict[str, int]] = field(default_factory=dict)

    def partition_dirs(self, root: Path) -> dict[str, Path]:
        return {p: root / "partitions" / p for p in self.partitions}


def write_config(root: Path, partitions: list[str]) -> Path:
    config = root / "config"
    config.mkdir(parents=True, exist_ok=True)
    lines = [f"store.partition.{p}.path = {root / 'partitions' / p}" for p in partitions]
    lines += ["store.defaultpartition = " + partitions[0], "store.maildir.layout = %u/Maildir",
              "local.store.backup.exclude = ", f"local.store.logdir = {root / 'log'}"]
    (config / "msg.conf").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (config / "backup-groups.conf").write_text("groupA=[a-l].*\ngroupB=[m-z].*\ngroupC=[0-9].*\n")
    for p in partitions:
        (root / "partitions" / p).mkdir(parents=True, exist_ok=True)
    return config


def env_for(config: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("IMS_DEBUG", "LD_PRELOAD")}
    env.update(IMS_CONFIG_DIR=str(config), TZ="UTC", PYTHONDONTWRITEBYTECODE="1")
    env.update(extra or {})
    return env


def run_tool(name: str, args: list[str], config: Path, *, stdin=None, input_bytes: bytes | None = None,
             prefix: tuple[str, ...] = (), extra_env: dict[str, str] | None = None,
             timeout: float = COMMAND_TIMEOUT) -> tuple[int | None, bytes, bytes, float]:
    """Run to the end (no fault): (rc or None if it hung, stdout, stderr, seconds)."""
    started = time.monotonic()
    proc = subprocess.Popen([*prefix, str(BIN / name), *args], stdin=subprocess.PIPE if input_bytes
                            is not None else stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env_for(config, extra_env), start_new_session=True)
    try:
        out, err = proc.communicate(input_bytes, timeout=timeout)
        rc: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        out, err = proc.communicate()
        rc = None
    return rc, out, err, time.monotonic() - started


def make_existing(template: Path, users: dict[str, str], rng: random.Random) -> None:
    """Turn a copy of the golden store into one that already has mail, as Dovecot would have
    left it after the backup: a user gone, a user with only an empty INBOX (Dovecot recreated
    it), folders deleted, messages expunged (some uidlist lines left for Dovecot to compact),
    mail delivered after the backup, flags changed."""
    now = int(time.time())
    for index, user in enumerate(sorted(users)):
        maildir = template / "partitions" / users[user] / user / "Maildir"
        role = index % 6
        if role == 0:
            shutil.rmtree(maildir.parent)
            continue
        if role == 1:
            shutil.rmtree(maildir)
            for sub in ("cur", "new", "tmp"):
                (maildir / sub).mkdir(parents=True)
            continue
        subfolders = sorted(p for p in maildir.iterdir() if p.name.startswith(".") and p.is_dir())
        if subfolders:
            shutil.rmtree(subfolders[rng.randrange(len(subfolders))])
        for folder in [maildir] + [p for p in subfolders if p.exists()][:2]:
            uidvalidity, uids, _, _ = _uidlist(folder / "dovecot-uidlist")
            lines = (folder / "dovecot-uidlist").read_text().split("\n")
            header, body = lines[0], [line for line in lines[1:] if line]
            files = sorted((folder / "cur").iterdir())
            for path in files:
                key = path.name.partition(":")[0]
                roll = rng.random()
                if roll < 0.25:
                    path.unlink()
                    if rng.random() < 0.5:
                        body = [line for line in body if not line.endswith(" :" + key)]
                elif roll < 0.35:
                    flags = path.name.partition(":2,")[2]
                    new = "".join(sorted(set(flags) ^ {"S", "F"}))
                    path.rename(path.with_name(f"{key}:2,{new}"))
            words = header.split()
            next_uid = max([int(w[1:]) for w in words if w.startswith("N")] +
                           [int(line.split()[0]) + 1 for line in body] + [1])
            for extra in range(2 if folder == maildir else 1):
                key = f"{now}.M{rng.randrange(10**6)}P{index}{extra}.after,S=60"
                data = f"Subject: after the backup {index}/{extra}\n\n{rng.random()}\n".encode()
                target = folder / "cur" / f"{key}:2,"
                target.write_bytes(data)
                body.append(f"{next_uid} :{key}")
                next_uid += 1
            words = [w for w in words if not w.startswith("N")]
            words.insert(2, f"N{next_uid}")
            (folder / "dovecot-uidlist").write_text(" ".join(words) + "\n" + "\n".join(body) + "\n")


def choose_names(golden: Path, users: dict[str, str], rng: random.Random) -> dict[str, list[str]]:
    ordered = sorted(users)
    modified = [u for i, u in enumerate(ordered) if i % 6 >= 2] or ordered
    gone = [u for i, u in enumerate(ordered) if i % 6 == 0] or ordered
    empty_inbox = [u for i, u in enumerate(ordered) if i % 6 == 1] or ordered

    def with_archive(user: str) -> bool:
        return (golden / "partitions" / users[user] / user / "Maildir" / ".Archive").is_dir()
    folder_user = next((u for u in modified if with_archive(u)), modified[0])
    first, second = modified[0], modified[-1]
    return {
        "all": [],
        "user": [f"/{users[first]}/user/{first}"],
        "gone-user": [f"/{users[gone[0]]}/user/{gone[0]}"],
        "folder": [f"/{users[folder_user]}/user/{folder_user}/"
                   + ("Archive" if with_archive(folder_user) else "INBOX")],
        "several": [second, f"/{users[gone[0]]}/user/{gone[0]}/INBOX"],
        # in the store with mail: a user whose INBOX Dovecot recreated empty
        "empty-inbox-user": [f"/{users[empty_inbox[0]]}/user/{empty_inbox[0]}"],
    }


def prepare(work: Path, seed: int, users: int, messages: int) -> Setup:
    from ims.samplestore import SampleSpec, generate
    rng = random.Random(seed)
    golden = work / "golden"
    generate(golden, SampleSpec(users=users, messages_per_user=messages, partitions=2, seed=seed))
    partitions = sorted(p.name for p in (golden / "partitions").iterdir())
    user_map = {u.name: p for p in partitions for u in (golden / "partitions" / p).iterdir()}
    config = golden / "config"
    archives = work / "archives"
    archives.mkdir()
    archive, copies, old = archives / "full.ims", archives / "copies.ims", archives / "old.ims"
    times = []
    for args, target in ((["/"], archive), (["-i", "/"], copies),
                         ([f"/{user_map[min(user_map)]}/user/{min(user_map)}"], old),
                         (["/"], work / "timing.ims"), (["/"], work / "timing.ims")):
        rc, _, err, seconds = run_tool("imsbackup", ["-f", str(target), *args], config)
        if rc != 0:
            raise SystemExit(f"faults: setup backup {args} failed ({rc_text(rc)}): {err.decode()}")
        if args == ["/"]:
            times.append(seconds)
    existing = work / "existing"
    existing.mkdir()
    subprocess.run(["cp", "-a", str(golden / "partitions"), str(existing / "partitions")], check=True)
    make_existing(existing, user_map, rng)
    setup = Setup(work=work, seed=seed, golden=golden, partitions=partitions, users=user_map,
                  archive=archive, archive_copies=copies, old_archive=old,
                  golden_listing=store_listing({p: golden / "partitions" / p for p in partitions}),
                  existing_template=existing,
                  existing_listing=store_listing({p: existing / "partitions" / p for p in partitions}),
                  names=choose_names(golden, user_map, rng), shim=build_eio_shim(work),
                  setpriv=shutil.which("setpriv") is not None)
    # signals "by time" are spread over the slowest of a few whole runs
    setup.run_seconds["backup"] = max(times)
    return setup


# -- cases -------------------------------------------------------------------------------------

BACKUP_KINDS = ["backup-signal-file", "backup-signal-pipe", "backup-pipe-closed",
                "backup-full-disk", "backup-unreadable", "backup-eio-read", "backup-eio-write",
                "backup-helper-killed", "backup-lock-held"]
RESTORE_KINDS = ["restore-signal-file", "restore-signal-pipe", "restore-helper-killed",
                 "restore-stream-cut", "restore-full-disk", "restore-lock", "restore-eio-archive",
                 "restore-kill-at-op", "restore-eio-store"]
WEIGHTS = {"backup-signal-file": 12, "backup-signal-pipe": 8, "backup-pipe-closed": 5,
           "backup-full-disk": 5, "backup-unreadable": 5, "backup-eio-read": 4,
           "backup-eio-write": 3, "backup-helper-killed": 5, "backup-lock-held": 2,
           "restore-signal-file": 16, "restore-signal-pipe": 10, "restore-helper-killed": 5,
           "restore-stream-cut": 4, "restore-full-disk": 5, "restore-lock": 8,
           "restore-eio-archive": 3, "restore-kill-at-op": 12, "restore-eio-store": 3}


@dataclass
class Result:
    case: dict
    outcome: str = ""
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def available_kinds(setup: Setup) -> list[str]:
    kinds = BACKUP_KINDS + RESTORE_KINDS
    if setup.shim is None:
        kinds = [k for k in kinds if "eio" not in k and "at-op" not in k]
    if not setup.setpriv:
        kinds = [k for k in kinds if k != "backup-unreadable"]
    if setup.tmpfs is None:
        kinds = [k for k in kinds if "full-disk" not in k]
    return kinds


def draw_case(setup: Setup, kind: str, rng: random.Random, index: int) -> dict:
    """Every random choice of one case, so that it can be replayed from its JSON."""
    case: dict = {"index": index, "kind": kind, "seed": rng.randrange(1 << 30)}
    size = setup.archive.stat().st_size
    if kind.startswith("backup-signal") or kind == "backup-helper-killed":
        case["signal"] = rng.choice(["KILL", "INT", "TERM"])
        case["group"] = case["signal"] == "INT" and rng.random() < 0.5
        case["trigger"] = rng.choice(["bytes", "bytes", "time"])
        case["at_bytes"] = rng.randrange(0, int(size * 1.05))
        case["at_seconds"] = round(rng.uniform(0, setup.run_seconds["backup"] * 1.2), 4)
        case["previous"] = rng.random() < 0.5          # a good archive already at FILE
        if kind == "backup-helper-killed":
            case["output"] = rng.choice(["file", "pipe"])
            case["trigger"] = "bytes"
            case["at_bytes"] = rng.randrange(0, int(size * 0.9))
    elif kind == "backup-pipe-closed":
        case["at_bytes"] = rng.choice([0, 1, 511, 512, 10240]) if rng.random() < 0.15 \
            else rng.randrange(0, size)
    elif kind == "backup-full-disk":
        case["free"] = rng.randrange(0, int(size * 1.1))
        case["previous"] = rng.random() < 0.5
    elif kind in ("backup-unreadable", "backup-eio-read"):
        case["target"] = rng.choice(["message", "message", "message", "folder-cur", "folder-new",
                                     "uidlist", "keywords", "subscriptions", "maildir"]
                                    if kind == "backup-unreadable" else
                                    ["message", "message", "message", "uidlist", "keywords",
                                     "subscriptions"])
        case["pick"] = rng.random()
        case["offset_fraction"] = rng.choice([0.0, rng.random()])
    elif kind == "backup-eio-write":
        case["at_bytes"] = rng.randrange(0, size)
        case["output"] = rng.choice(["file", "file", "pipe"])
    elif kind == "backup-lock-held":
        case["locks"] = rng.randrange(1, 6)
        case["pick"] = rng.random()
    else:
        case["store"] = rng.choice(["scratch", "existing"])
        case["names"] = rng.choice(sorted(setup.names))
        if kind == "restore-signal-file":
            case["signal"] = rng.choice(["KILL", "INT", "TERM"])
            case["group"] = case["signal"] == "INT" and rng.random() < 0.5
            case["trigger"] = rng.choice(["bytes", "bytes", "time"])
            case["at_fraction"] = round(rng.uniform(0, 1.05), 4)
        elif kind in ("restore-signal-pipe", "restore-helper-killed", "restore-stream-cut"):
            case["signal"] = rng.choice(["KILL", "INT", "TERM"])
            case["group"] = case["signal"] == "INT" and rng.random() < 0.5
            case["at_bytes"] = rng.randrange(0, size)
            case["settle"] = round(rng.choice([0.0, rng.uniform(0, 0.6)]), 3)
        elif kind == "restore-full-disk":
            case["free_fraction"] = round(rng.uniform(0, 1.2), 4)
        elif kind == "restore-lock":
            case["store"] = "existing"
            case["names"] = rng.choice(["all", "user", "several"])
            case["holder"] = rng.choice(["live", "live", "other-host", "dead-old", "dead-fresh",
                                         "released", "subscriptions"])
            case["timeout"] = round(rng.uniform(0.3, 2.0), 2)
            case["release_after"] = round(rng.uniform(0.1, 1.5), 2)
            case["pick"] = rng.random()
        elif kind == "restore-eio-archive":
            case["at_bytes"] = rng.randrange(0, size)
        elif kind == "restore-eio-store":
            case["pick"] = rng.random()
        elif kind == "restore-kill-at-op":
            case["op"] = rng.choice(["rename", "rename", "rename", "link", "unlink", "mkdir",
                                     "lockfile", "create", "create"])
            case["signal"] = rng.choice(["KILL", "INT", "TERM"])
            case["at_fraction"] = rng.random()
            case["pipe"] = rng.random() < 0.25
    return case


class Case:
    """One fault and its checks; ``run`` fills ``result``."""

    def __init__(self, setup: Setup, case: dict) -> None:
        self.setup = setup
        self.case = case
        self.result = Result(case)
        self.python_startup = False
        self.rng = random.Random(case["seed"])
        self.dir = setup.work / "cases" / f"{case['index']:05d}-{case['kind']}"
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)

    def violate(self, text: str) -> None:
        self.result.violations.append(text)

    def check_stderr(self, err: bytes, what: str) -> None:
        text = err.decode("utf-8", "replace")
        if "Fatal Python error: init_import_site" in text or (
                "Exception ignored in" in text and "importlib._bootstrap" in text
                and "KeyboardInterrupt" in text and "/ims/" not in text):
            # the signal came while Python itself started (its site module, or the import
            # of the entry point, where Python reports the KeyboardInterrupt as "ignored"
            # and goes on), before any code of the project ran: Python's, not the command's
            self.result.notes.append("signal during the interpreter's own start-up")
            self.python_startup = True
            return
        if TRACEBACK in text:
            tail = text[text.index(TRACEBACK):].strip().splitlines()[-1]
            self.violate(f"{what}: traceback on stderr: {tail}")

    def check_group(self, pgid: int, what: str) -> None:
        left = wait_group_gone(pgid)
        if left:
            names = []
            for pid in left:
                with contextlib.suppress(OSError):
                    names.append(f"{pid}:{Path(f'/proc/{pid}/cmdline').read_bytes()[:60]!r}")
            self.violate(f"{what}: processes outlived the command: {names}")
            kill_group(pgid)

    # -- backup side ---------------------------------------------------------------------------

    def backup_popen(self, target: str, *, stdout=None, extra_env=None, prefix=(),
                     config: Path | None = None) -> subprocess.Popen:
        self.err_path = self.dir / "stderr"
        return subprocess.Popen([*prefix, str(BIN / "imsbackup"), "-f", target, "/"],
                                stdout=stdout, stderr=open(self.err_path, "wb"),
                                env=env_for(config or self.setup.golden / "config", extra_env),
                                start_new_session=True)

    def finish_checked(self, proc: subprocess.Popen, tool: str) -> tuple[int | None, bytes]:
        """Wait for the command, then the checks every case makes: its stderr (no
        traceback), and no process of its group left."""
        rc = self.finish(proc)
        err = self.err_path.read_bytes()
        self.check_stderr(err, tool)
        self.check_group(proc.pid, tool)
        return rc, err

    def finish(self, proc: subprocess.Popen, timeout: float = COMMAND_TIMEOUT) -> int | None:
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc.pid)
            proc.wait()
            self.violate(f"the command hung (more than {timeout:.0f} s)")
            return None

    def verify_incomplete(self, path: Path, what: str) -> None:
        """An unfinished archive: imsrestore -t exits 4 and says where it ends."""
        rc, _, err, _ = run_tool("imsrestore", ["-t", "-f", str(path)], self.setup.golden / "config")
        self.check_stderr(err, f"imsrestore -t of {what}")
        text = err.decode("utf-8", "replace")
        if rc == 0:
            self.result.notes.append(f"{what} is complete (killed after its trailer)")
            self.verify_archive_restores(path, what, set())
        elif rc != 4:
            self.violate(f"imsrestore -t of {what}: {rc_text(rc)} instead of exit 4: {text.strip()[:200]}")
        elif "ends at byte" not in text and "trailer" not in text and "damaged" not in text:
            self.violate(f"imsrestore -t of {what}: exit 4 without naming the point: {text.strip()[:200]}")

    def verify_archive_restores(self, path: Path, what: str, skipped_shas: set[str],
                                covered: tuple[str, ...] = ()) -> None:
        """A finished archive restores to the store it was taken from, less the messages it
        skipped and the folders under ``covered`` (listing key prefixes) that it skipped."""
        root = self.dir / "verify"
        shutil.rmtree(root, ignore_errors=True)
        config = write_config(root, self.setup.partitions)
        rc, _, err, _ = run_tool("imsrestore", ["-f", str(path)], config)
        self.check_stderr(err, f"restore of {what}")
        if rc != 0:
            self.violate(f"restore of {what}: {rc_text(rc)}: {err.decode()[:300]}")
            return
        actual = store_listing(self.setup.partition_dirs(root))
        expected = {}
        for key, value in self.setup.golden_listing.items():
            in_cover = any(key == c or key.startswith(c + "/") for c in covered)
            empty = key in actual and not actual[key].get("messages") and \
                actual[key].get("uidvalidity") is None and "names" not in actual[key]
            if in_cover and (key not in actual or empty):
                continue            # skipped as a whole, and said so (an INBOX made to hang
                                    # the user's other folders on has no UIDVALIDITY)
            if "messages" in value:
                value = dict(value, messages=[m for m in value["messages"]
                                              if m[1] not in skipped_shas])
                if in_cover:
                    have = {m[1] for m in actual[key].get("messages", [])}
                    # a folder whose dovecot-keywords could not be read keeps its messages,
                    # without keyword names (the backup named that): system flags compared
                    value["messages"] = [[*m[:2], m[2].split(" ")[0]] if len(m) > 2 else m
                                         for m in value["messages"] if m[1] in have]
                    if key in actual:
                        actual[key] = dict(actual[key], messages=[
                            [*m[:2], m[2].split(" ")[0]] if len(m) > 2 else m
                            for m in actual[key].get("messages", [])])
            expected[key] = value
        for key in covered:
            if key in actual and key not in expected and not actual[key].get("messages"):
                expected[key] = actual[key]
        diffs = compare_listings(actual, expected)
        if diffs:
            self.violate(f"restore of {what} differs from the store backed up: {diffs}")
        shutil.rmtree(root, ignore_errors=True)

    def check_backup_file(self, rc: int | None, target: Path, previous: bytes | None,
                          expect_failure: bool, what: str) -> None:
        partial = Path(str(target) + ".partial")
        if rc == 0:
            if not target.exists():
                self.violate(f"{what}: exit 0 but no {target.name}")
                return
            self.verify_archive_restores(target, what, set())
            if expect_failure:
                self.result.notes.append("finished before the fault")
            return
        if rc == 1 and not self.python_startup:
            self.violate(f"{what}: exit 1 (complete with skips) for an unfinished backup")
        now = target.read_bytes() if target.exists() else None
        if now is not None and now != previous and rc is not None and (rc < 0 or rc >= 128):
            # killed after the complete, fsynced archive was renamed into place
            rc_t, _, err_t, _ = run_tool("imsrestore", ["-t", "-f", str(target)],
                                         self.setup.golden / "config")
            if rc_t == 0:
                self.result.notes.append(f"signalled after {target.name} was complete and in place")
                self.verify_archive_restores(target, f"{target.name} of a run killed at its end", set())
                return
        if now != previous:
            self.violate(f"{what}: {target.name} was replaced or removed by a failed run"
                         f" ({'absent' if now is None else len(now)} bytes, before"
                         f" {'absent' if previous is None else len(previous)})")
        if partial.exists():
            self.verify_incomplete(partial, f"{partial.name} of {what}")
        self.rerun_backup(target, what)

    def rerun_backup(self, target: Path, what: str) -> None:
        """The same backup run again after the failed one (its .partial left behind) must
        finish: exit 0, a complete archive in place, no .partial."""
        if not target.parent.exists() or (self.setup.tmpfs and self.setup.tmpfs in target.parents
                                          and (target.parent / "filler").exists()):
            return
        rc, _, err, _ = run_tool("imsbackup", ["-f", str(target), "/"], self.setup.golden / "config")
        self.check_stderr(err, "the backup run again")
        if rc != 0:
            self.violate(f"{what}, run again after the failure: {rc_text(rc)}: {err.decode()[:300]}")
            return
        if Path(str(target) + ".partial").exists():
            self.violate(f"{what}, run again: exit 0 but {target.name}.partial left behind")
        self.verify_archive_restores(target, f"{what}, run again", set())

    def place_previous(self, target: Path, wanted: bool) -> bytes | None:
        if not wanted:
            return None
        data = self.setup.old_archive.read_bytes()
        target.write_bytes(data)
        return data

    def run_backup_signal(self) -> None:
        case = self.case
        sig, group = case["signal"], case["group"]
        pipe = case["kind"] == "backup-signal-pipe"
        target = self.dir / "out.ims"
        previous = None if pipe else self.place_previous(target, case["previous"])
        captured = bytearray()
        proc = self.backup_popen("-" if pipe else str(target),
                                 stdout=subprocess.PIPE if pipe else None)
        stopped, position, drain = False, None, None
        if pipe and case["trigger"] == "bytes":
            while len(captured) < case["at_bytes"]:
                chunk = os.read(proc.stdout.fileno(), min(1 << 16, case["at_bytes"] - len(captured)))
                if not chunk:
                    break
                captured += chunk
            position = len(captured)
        elif pipe:
            drain = threading.Thread(target=self.drain, args=(proc, captured), daemon=True)
            drain.start()
            time.sleep(case["at_seconds"])
        elif case["trigger"] == "bytes":
            position = stop_at_wchar(proc, case["at_bytes"])
            stopped = position is not None
        else:
            time.sleep(case["at_seconds"])
        fired = proc.poll() is None
        if fired:
            deliver(proc, sig, group, stopped)
        if drain is not None:
            drain.join()
        elif pipe:
            self.drain(proc, captured)
        rc, err = self.finish_checked(proc, "imsbackup")
        self.result.outcome = rc_text(rc) if fired else "finished before the fault"
        self.result.notes.append(f"fault at {position} bytes" if position is not None else
                                 f"fault at {case['at_seconds']} s")
        if self.python_startup:
            self.result.outcome = "interrupted in Python's start-up"
        elif fired and rc not in signal_rc(sig) and rc != 0:
            self.violate(f"imsbackup signalled {sig}: {rc_text(rc)}, expected 128+{int(SIGNALS[sig])}"
                         f" or finished: {err.decode()[:200]}")
        if sig == "INT" and rc == 130 and b"interrupted" not in err:
            self.violate("imsbackup after Ctrl-C: exit 130 without saying 'interrupted'")
        if pipe:
            (self.dir / "captured.ims").write_bytes(captured)
            if rc == 0:
                self.verify_archive_restores(self.dir / "captured.ims", "the stream", set())
            else:
                self.verify_incomplete(self.dir / "captured.ims", "the stream of a killed backup")
        else:
            self.check_backup_file(rc, target, previous, fired, "imsbackup -f FILE")

    @staticmethod
    def drain(proc: subprocess.Popen, captured: bytearray) -> None:
        while True:
            chunk = os.read(proc.stdout.fileno(), 1 << 16)
            if not chunk:
                break
            captured += chunk
        proc.stdout.close()

    def run_backup_pipe_closed(self) -> None:
        n = self.case["at_bytes"]
        captured = self.dir / "captured.ims"
        proc = self.backup_popen("-", stdout=subprocess.PIPE)
        with open(captured, "wb") as out:
            head = subprocess.Popen(["head", "-c", str(n)], stdin=proc.stdout, stdout=out)
        proc.stdout.close()
        head.wait(COMMAND_TIMEOUT)
        rc, err = self.finish_checked(proc, "imsbackup")
        self.result.outcome = rc_text(rc)
        size = self.setup.archive.stat().st_size
        if rc == 0:
            if n + (1 << 20) + 65536 < size:
                self.violate(f"imsbackup -f - | head -c {n}: exit 0 although the reader left"
                             f" after {n} of ~{size} bytes")
            else:
                self.result.notes.append("the archive fit in the pipe before head left")
        elif rc != 6:
            self.violate(f"imsbackup -f - | head -c {n}: {rc_text(rc)} instead of exit 6:"
                         f" {err.decode()[:200]}")
        elif "pipe" not in err.decode().lower():
            self.violate(f"exit 6 without naming the broken pipe: {err.decode()[:200]}")
        if captured.stat().st_size < size:
            self.verify_incomplete(captured, f"the first {n} bytes")

    def full_disk_dir(self) -> Path:
        assert self.setup.tmpfs is not None
        root = self.setup.tmpfs / f"case{self.case['index']}"
        root.mkdir()
        return root

    def fill(self, directory: Path, free: int) -> Path:
        """Leave about ``free`` bytes free on the tmpfs."""
        st = os.statvfs(directory)
        avail = st.f_bavail * st.f_frsize
        filler = directory / "filler"
        with open(filler, "wb") as out:
            if avail > free:
                os.posix_fallocate(out.fileno(), 0, avail - free)
        return filler

    def run_backup_full_disk(self) -> None:
        root = self.full_disk_dir()
        try:
            target = root / "out.ims"
            previous = self.place_previous(target, self.case["previous"])
            self.fill(root, self.case["free"])
            proc = self.backup_popen(str(target))
            rc, err = self.finish_checked(proc, "imsbackup")
            self.result.outcome = rc_text(rc)
            if rc not in (0, 6):
                self.violate(f"imsbackup on a full disk: {rc_text(rc)} instead of exit 6:"
                             f" {err.decode()[:200]}")
            if rc == 6 and "space" not in err.decode().lower():
                self.violate(f"exit 6 without naming the full disk: {err.decode()[:200]}")
            (root / "filler").unlink()
            self.check_backup_file(rc, target, previous, False, "imsbackup on a full disk")
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def pick_target(self, what: str) -> tuple[Path, set[str], int, tuple[str, ...]]:
        """A file or directory of the golden store for a read error: (path, SHA-256 of the
        messages it makes unreadable, how many message files may be left out at most, the
        listing keys it may take out of the archive)."""
        golden = self.setup.golden / "partitions"
        maildirs = sorted(golden.glob("*/*/Maildir"))
        maildir = maildirs[int(self.case["pick"] * len(maildirs))]
        user_key = f"{maildir.parent.parent.name}/{maildir.parent.name}"
        folders = [maildir] + sorted(p for p in maildir.iterdir() if p.name.startswith(".")
                                     and (p / "cur").is_dir())
        folder = folders[int(self.case["pick"] * 7919) % len(folders)]
        folder_key = f"{user_key}/{'INBOX' if folder == maildir else folder.name[1:]}"
        files = sorted((folder / "cur").iterdir()) + sorted((folder / "new").iterdir())
        if what == "message" and files:
            path = files[int(self.case["pick"] * 104729) % len(files)]
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
            return path, {sha}, os.stat(path).st_nlink, ()
        if what in ("folder-cur", "folder-new", "uidlist", "keywords") or what == "message":
            path = {"folder-cur": folder / "cur", "folder-new": folder / "new",
                    "uidlist": folder / "dovecot-uidlist", "keywords": folder / "dovecot-keywords",
                    "message": folder / "cur"}[what]
            shas = {hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
            # an unreadable uidlist or directory costs the folder; keywords only their names
            return path, shas, 0 if what == "keywords" else len(files), (folder_key,)
        if what == "subscriptions":
            return maildir / "subscriptions", set(), 0, (user_key,)
        shas = set()
        count = 0
        for f in folders:
            for p in list((f / "cur").iterdir()) + list((f / "new").iterdir()):
                shas.add(hashlib.sha256(p.read_bytes()).hexdigest())
                count += 1
        return maildir, shas, count, (user_key,)

    def run_backup_read_error(self) -> None:
        case = self.case
        eio = case["kind"] == "backup-eio-read"
        path, shas, allowed, covered = self.pick_target(case["target"])
        if not path.exists():
            self.result.outcome = "no such target"
            return
        target = self.dir / "out.ims"
        mode = path.stat().st_mode & 0o7777
        extra, prefix = None, ()
        if eio:
            size = path.stat().st_size if path.is_file() else 0
            offset = int(size * case["offset_fraction"])
            needle = path.name.partition(":")[0] if case["target"] == "message" else str(path)
            extra = {"LD_PRELOAD": str(self.setup.shim), "IMSF_EIO_PATH": needle,
                     "IMSF_EIO_OFFSET": str(offset), "IMSF_EIO_MODE": "r"}
            self.result.notes.append(f"EIO from byte {offset} of {size} of {path.name}")
        else:
            prefix = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search")
            os.chmod(path, 0)
        try:
            proc = self.backup_popen(str(target), extra_env=extra, prefix=prefix)
            rc = self.finish(proc)
        finally:
            os.chmod(path, mode)
        err = self.err_path.read_bytes()
        self.check_stderr(err, "imsbackup")
        self.check_group(proc.pid, "imsbackup")
        self.result.outcome = rc_text(rc)
        if rc not in (0, 1):
            self.violate(f"imsbackup with {case['target']} unreadable: {rc_text(rc)} instead of"
                         f" exit 1: {err.decode()[:300]}")
            return
        if not target.exists():
            self.violate("exit 0/1 but no archive")
            return
        archived = self.archived_shas(target)
        golden = {m[1] for v in self.setup.golden_listing.values() for m in v.get("messages", [])}
        missing = golden - archived
        if rc == 0 and missing:
            self.violate(f"exit 0 but {len(missing)} message(s) of the store are not in the"
                         f" archive (the read error was not reported)")
        if rc == 1 and not err.strip():
            self.violate("exit 1 without naming what was skipped")
        if missing - shas:
            self.violate(f"{len(missing - shas)} readable message(s) left out of the archive"
                         f" because {case['target']} {path.name} could not be read")
        elif allowed == 0 and missing:
            self.violate(f"{len(missing)} message(s) left out of the archive because"
                         f" {case['target']} {path.name} could not be read")
        self.verify_archive_restores(target, "the archive with a read error", missing & shas,
                                     covered)

    def archived_shas(self, archive: Path) -> set[str]:
        root = self.dir / "verify-shas"
        shutil.rmtree(root, ignore_errors=True)
        config = write_config(root, self.setup.partitions)
        run_tool("imsrestore", ["-f", str(archive)], config)
        shas = {m[1] for v in store_listing(self.setup.partition_dirs(root)).values()
                for m in v.get("messages", [])}
        shutil.rmtree(root, ignore_errors=True)
        return shas

    def run_backup_eio_write(self) -> None:
        case = self.case
        pipe = case["output"] == "pipe"
        target = self.dir / "out.ims"
        extra = {"LD_PRELOAD": str(self.setup.shim), "IMSF_EIO_OFFSET": str(case["at_bytes"]),
                 "IMSF_EIO_MODE": "w",
                 "IMSF_EIO_PATH": str(self.dir / "captured.ims") if pipe else "out.ims.partial"}
        if pipe:
            with open(self.dir / "captured.ims", "wb") as out:
                # the pipe's reader is a file: a write error on a "device" given as -f -
                proc = self.backup_popen("-", stdout=out, extra_env=extra)
        else:
            proc = self.backup_popen(str(target), extra_env=extra)
        rc, err = self.finish_checked(proc, "imsbackup")
        self.result.outcome = rc_text(rc)
        if rc != 6:
            self.violate(f"imsbackup with EIO writing at byte {case['at_bytes']}: {rc_text(rc)}"
                         f" instead of exit 6: {err.decode()[:200]}")
        if pipe:
            self.verify_incomplete(self.dir / "captured.ims", "the stream cut by EIO")
        else:
            self.check_backup_file(rc, target, None, False, "imsbackup with EIO")

    def run_backup_helper_killed(self) -> None:
        case = self.case
        pipe = case["output"] == "pipe"
        target = self.dir / "out.ims"
        previous = None if pipe else self.place_previous(target, case["previous"])
        proc = self.backup_popen("-" if pipe else str(target),
                                 stdout=subprocess.PIPE if pipe else None)
        captured = bytearray()
        victim = None
        if pipe:
            while len(captured) < case["at_bytes"]:
                chunk = os.read(proc.stdout.fileno(), min(1 << 16, case["at_bytes"] - len(captured)))
                if not chunk:
                    break
                captured += chunk
            kids = children_of(proc.pid)
            victim = kids[0] if kids else None
        else:
            deadline = time.monotonic() + 30
            while proc.poll() is None and time.monotonic() < deadline:
                kids = children_of(proc.pid)
                count = wchar(proc.pid)
                if kids and count is not None and count >= case["at_bytes"]:
                    victim = kids[0]
                    break
        if victim is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        if pipe:
            self.drain(proc, captured)
        rc, err = self.finish_checked(proc, "imsbackup")
        self.result.outcome = rc_text(rc) if victim else "no helper left to kill"
        if victim is not None and rc not in (0, 4):
            self.violate(f"imsbackup with its store reader killed: {rc_text(rc)} instead of exit 4:"
                         f" {err.decode()[:200]}")
        if rc == 4 and len([line for line in err.decode().splitlines() if line.strip()]) > 2:
            self.violate(f"more than the documented lines on stderr: {err.decode()[:300]}")
        if pipe:
            (self.dir / "captured.ims").write_bytes(captured)
            if rc == 0:
                self.verify_archive_restores(self.dir / "captured.ims", "the stream", set())
            else:
                self.verify_incomplete(self.dir / "captured.ims", "the stream")
        else:
            self.check_backup_file(rc, target, previous, False, "imsbackup, store reader killed")

    def run_backup_lock_held(self) -> None:
        folders = sorted(p.parent for p in (self.setup.golden / "partitions").glob("*/*/Maildir/**/dovecot-uidlist"))
        rng = self.rng
        chosen = rng.sample(folders, min(self.case["locks"], len(folders)))
        sleeper = subprocess.Popen(["sleep", "600"])
        locks = [f / "dovecot-uidlist.lock" for f in chosen]
        maildir = sorted((self.setup.golden / "partitions").glob("*/*/Maildir"))[0]
        locks.append(maildir / "subscriptions.lock")
        try:
            for lock in locks:
                lock.write_text(f"{sleeper.pid}:{HOST}")
            target = self.dir / "out.ims"
            started = time.monotonic()
            proc = self.backup_popen(str(target))
            rc = self.finish(proc)
            seconds = time.monotonic() - started
        finally:
            for lock in locks:
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
            sleeper.kill()
            sleeper.wait()
        err = self.err_path.read_bytes()
        self.check_stderr(err, "imsbackup")
        self.result.outcome = rc_text(rc)
        if rc != 0:
            self.violate(f"imsbackup with Dovecot's locks held: {rc_text(rc)}: {err.decode()[:200]}")
        elif seconds > self.setup.run_seconds["backup"] + SLACK:
            self.violate(f"imsbackup waited for locks it does not need ({seconds:.1f} s)")
        else:
            self.verify_archive_restores(target, "the archive taken with locks held", set())

    # -- restore side --------------------------------------------------------------------------

    def source(self) -> Path:
        pipe = self.case["kind"] in ("restore-signal-pipe", "restore-helper-killed",
                                     "restore-stream-cut") or self.case.get("pipe", False)
        return self.setup.archive_copies if pipe else self.setup.archive

    def restore_args(self, src: str, extra: list[str] = ()) -> list[str]:
        return ["-f", src, "--json", "--lock-timeout", "10", *extra,
                *self.setup.names[self.case["names"]]]

    def make_store(self, root: Path) -> tuple[Path, dict[str, Path]]:
        config = write_config(root, self.setup.partitions)
        if self.case["store"] == "existing":
            shutil.rmtree(root / "partitions")
            subprocess.run(["cp", "-a", str(self.setup.existing_template / "partitions"),
                            str(root / "partitions")], check=True)
        return config, self.setup.partition_dirs(root)

    def reference(self, pipe: bool) -> tuple[int, dict, float]:
        """What a clean restore of this case's archive and NAMEs gives (cached)."""
        key = (self.case["store"], self.case["names"], pipe)
        if key not in self.setup.references:
            root = self.setup.work / "references" / "-".join(map(str, key))
            shutil.rmtree(root, ignore_errors=True)
            config, parts = self.make_store(root)
            src = self.source()
            args = self.restore_args("-" if pipe else str(src))
            counting = {}
            if self.setup.shim is not None:
                counting = {"LD_PRELOAD": str(self.setup.shim),
                            "IMSF_COUNT_FILE": str(root / "op-counts")}
            rc, out, err, seconds = run_tool("imsrestore", args, config,
                                             input_bytes=src.read_bytes() if pipe else None,
                                             extra_env=counting)
            if counting and (root / "op-counts").exists():
                self.setup.op_counts[key] = {line.split()[0]: int(line.split()[1]) for line in
                                             (root / "op-counts").read_text().splitlines()}
            if rc not in (0, 1) or TRACEBACK in err.decode():
                raise SystemExit(f"faults: the clean restore {key} failed: {rc_text(rc)} {err.decode()}")
            restored = json.loads(out)["bytes"] if out.strip() else 0
            self.setup.references[key] = (rc, store_listing(parts), seconds)
            self.setup.restore_bytes["-".join(map(str, key))] = restored
            lost = leftovers(parts)
            if lost:
                raise SystemExit(f"faults: the clean restore {key} left {lost}")
        return self.setup.references[key]

    def restore_popen(self, config: Path, args: list[str], *, stdin=None,
                      extra_env=None) -> subprocess.Popen:
        self.err_path = self.dir / "stderr"
        self.out_path = self.dir / "stdout"
        return subprocess.Popen([str(BIN / "imsrestore"), *args], stdin=stdin,
                                stdout=open(self.out_path, "wb"), stderr=open(self.err_path, "wb"),
                                env=env_for(config, extra_env), start_new_session=True)

    def check_after_fault(self, parts: dict[str, Path], before: dict, expected: dict,
                          rc: int | None, whole_atomic: bool = True,
                          ignore: tuple[Path, ...] = ()) -> None:
        during = store_listing(parts)
        for problem in intermediate_problems(during, before, expected, whole_atomic):
            self.violate(f"after the fault: {problem}")
        left = leftovers(parts, ignore)
        if left and rc != -9:
            self.violate(f"after the fault ({rc_text(rc)}): left behind {left[:4]}")
        elif left:
            self.result.notes.append(f"SIGKILL left {len(left)} lock/staging file(s)")

    def rerun_and_compare(self, config: Path, parts: dict[str, Path], pipe: bool,
                          uids: bool = True, before: dict | None = None) -> None:
        expected_rc, expected, _ = self.reference(pipe)
        src = self.source()
        rc, out, err, _ = run_tool("imsrestore", self.restore_args("-" if pipe else str(src)),
                                   config, input_bytes=src.read_bytes() if pipe else None)
        self.check_stderr(err, "the rerun")
        if rc != expected_rc:
            self.violate(f"the rerun: {rc_text(rc)} where a clean restore exits {expected_rc}:"
                         f" {err.decode()[:300]}")
        diffs = compare_listings(store_listing(parts), expected, uids=uids, before=before)
        if diffs:
            self.violate(f"the rerun's store differs from a clean restore's: {diffs}")
        left = leftovers(parts)
        if left:
            self.violate(f"after the rerun: left behind {left[:4]}")

    def run_restore_signal(self) -> None:
        case = self.case
        pipe = case["kind"] == "restore-signal-pipe"
        expected_rc, expected, clean_seconds = self.reference(pipe)
        config, parts = self.make_store(self.dir / "store")
        before = store_listing(parts)
        src = self.source()
        sig, group = case["signal"], case["group"]
        stopped, position, fired = False, None, False
        if pipe:
            proc = self.restore_popen(config, self.restore_args("-"), stdin=subprocess.PIPE)
            data = src.read_bytes()
            written = self.feed(proc, data[:case["at_bytes"]])
            time.sleep(case["settle"])
            position = written
        else:
            proc = self.restore_popen(config, self.restore_args(str(src)))
            if case["trigger"] == "bytes":
                total = self.setup.restore_bytes["-".join(map(str, (case["store"], case["names"], pipe)))]
                position = stop_at_wchar(proc, int(total * case["at_fraction"]))
                stopped = position is not None
            else:
                time.sleep(clean_seconds * case["at_fraction"])
        fired = proc.poll() is None
        if fired:
            deliver(proc, sig, group, stopped)
        if pipe:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        rc, err = self.finish_checked(proc, "imsrestore")
        self.result.outcome = rc_text(rc) if fired else "finished before the fault"
        self.result.notes.append(f"fault at {position} bytes" if position is not None else
                                 "fault by time")
        if self.python_startup:
            self.result.outcome = "interrupted in Python's start-up"
        elif fired and rc not in signal_rc(sig) and not (rc == expected_rc and not pipe):
            self.violate(f"imsrestore signalled {sig}: {rc_text(rc)}: {err.decode()[:200]}")
        self.check_after_fault(parts, before, expected, rc)
        self.rerun_and_compare(config, parts, pipe, before=before)

    def feed(self, proc: subprocess.Popen, data: bytes) -> int:
        """Write ``data`` to the restore's stdin from a thread (it may block); return what
        was written when the thread is done or the process ended."""
        written = [0]

        def writer() -> None:
            view = memoryview(data)
            try:
                while view:
                    n = os.write(proc.stdin.fileno(), view[:1 << 16])
                    written[0] += n
                    view = view[n:]
            except (OSError, ValueError):       # the reader went away, or stdin was closed
                pass
        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while thread.is_alive() and proc.poll() is None:
            if time.monotonic() > deadline:
                self.violate("imsrestore stopped reading its input (hung)")
                kill_group(proc.pid)
                break
            thread.join(0.01)
        return written[0]

    def run_restore_helper_killed(self) -> None:
        case = self.case
        expected_rc, expected, _ = self.reference(True)
        config, parts = self.make_store(self.dir / "store")
        before = store_listing(parts)
        data = self.source().read_bytes()
        proc = self.restore_popen(config, self.restore_args("-"), stdin=subprocess.PIPE)
        self.feed(proc, data[:case["at_bytes"]])
        time.sleep(case["settle"])
        deadline = time.monotonic() + 10
        victim = None
        while proc.poll() is None and time.monotonic() < deadline and victim is None:
            kids = children_of(proc.pid)
            victim = kids[0] if kids else None
            time.sleep(0.005)
        if victim is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        self.feed(proc, data[case["at_bytes"]:])
        with contextlib.suppress(OSError):
            proc.stdin.close()
        rc, err = self.finish_checked(proc, "imsrestore")
        self.result.outcome = rc_text(rc) if victim else "no helper to kill"
        if victim is not None and rc != 4:
            self.violate(f"imsrestore with its archive reader killed: {rc_text(rc)} instead of"
                         f" exit 4: {err.decode()[:200]}")
        if rc == 4 and "archive reader" not in err.decode():
            self.violate(f"exit 4 without naming the archive reader: {err.decode()[:200]}")
        self.check_after_fault(parts, before, expected, rc)
        self.rerun_and_compare(config, parts, True, before=before)

    def run_restore_stream_cut(self) -> None:
        case = self.case
        _, expected, _ = self.reference(True)
        config, parts = self.make_store(self.dir / "store")
        before = store_listing(parts)
        data = self.source().read_bytes()
        n = case["at_bytes"]
        proc = self.restore_popen(config, self.restore_args("-"), stdin=subprocess.PIPE)
        self.feed(proc, data[:n])
        time.sleep(case["settle"])
        with contextlib.suppress(OSError):
            proc.stdin.close()
        rc, err = self.finish_checked(proc, "imsrestore")
        self.result.outcome = rc_text(rc)
        if rc not in (2, 4):
            self.violate(f"imsrestore of a stream cut at byte {n}: {rc_text(rc)} instead of exit 4:"
                         f" {err.decode()[:200]}")
        elif rc == 4 and "ends at byte" not in err.decode():
            self.violate(f"exit 4 without naming where the stream ended: {err.decode()[:200]}")
        # a cut stream commits the folder in progress (documented): no atomicity, and the
        # rerun lands the rest as new mail (new UIDs)
        self.check_after_fault(parts, before, expected, rc, whole_atomic=False)
        self.rerun_and_compare(config, parts, True, uids=False, before=before)

    def run_restore_full_disk(self) -> None:
        case = self.case
        expected_rc, expected, _ = self.reference(False)
        root = self.full_disk_dir()
        try:
            config, parts = self.make_store(root)
            before = store_listing(parts)
            needed = self.setup.restore_bytes["-".join(map(str, (case["store"], case["names"], False)))]
            # message files take whole pages: a tmpfs holds fewer bytes than it has free
            filler = self.fill(root, int(needed * 1.6 * case["free_fraction"]))
            proc = self.restore_popen(config, self.restore_args(str(self.source())))
            rc, err = self.finish_checked(proc, "imsrestore")
            self.result.outcome = rc_text(rc)
            if rc not in (expected_rc, 1, 6):
                self.violate(f"imsrestore on a full disk: {rc_text(rc)}: {err.decode()[:200]}")
            if rc not in (0, expected_rc) and "space" not in err.decode().lower():
                self.violate(f"{rc_text(rc)} without naming the full disk: {err.decode()[:200]}")
            if rc == 0:
                self.result.outcome = "enough space"
            self.check_after_fault(parts, before, expected, rc)
            filler.unlink()
            self.rerun_and_compare(config, parts, False, before=before)
        finally:
            if self.result.violations:
                subprocess.run(["cp", "-a", str(root), str(self.dir / "on-tmpfs")], check=False)
            shutil.rmtree(root, ignore_errors=True)

    def run_restore_eio_archive(self) -> None:
        case = self.case
        expected_rc, expected, _ = self.reference(False)
        config, parts = self.make_store(self.dir / "store")
        before = store_listing(parts)
        copy = self.dir / "archive.ims"
        shutil.copyfile(self.source(), copy)
        extra = {"LD_PRELOAD": str(self.setup.shim), "IMSF_EIO_PATH": str(copy),
                 "IMSF_EIO_OFFSET": str(case["at_bytes"]), "IMSF_EIO_MODE": "r"}
        proc = self.restore_popen(config, self.restore_args(str(copy)), extra_env=extra)
        rc, err = self.finish_checked(proc, "imsrestore")
        self.result.outcome = rc_text(rc)
        if rc not in (4, 6) and not (rc == expected_rc and self.case["names"] != "all"):
            self.violate(f"imsrestore with EIO at archive byte {case['at_bytes']}: {rc_text(rc)}:"
                         f" {err.decode()[:200]}")
        self.check_after_fault(parts, before, expected, rc)
        self.rerun_and_compare(config, parts, False, before=before)

    def run_restore_kill_at_op(self) -> None:
        """A signal at the Nth rename, link, unlink, mkdir, lock file or file created of the
        restore: the commit steps of both rules, placed exactly (the LD_PRELOAD shim counts
        the calls)."""
        case = self.case
        pipe = case["pipe"]
        expected_rc, expected, _ = self.reference(pipe)
        counts = self.setup.op_counts.get((case["store"], case["names"], pipe), {})
        total = counts.get(case["op"], 0)
        if total == 0:
            self.result.outcome = f"no {case['op']} in this restore"
            return
        n = 1 + int(case["at_fraction"] * total)
        self.result.notes.append(f"SIG{case['signal']} at {case['op']} {n} of {total}")
        config, parts = self.make_store(self.dir / "store")
        before = store_listing(parts)
        src = self.source()
        extra = {"LD_PRELOAD": str(self.setup.shim), "IMSF_KILL_OP": case["op"],
                 "IMSF_KILL_AT": str(n), "IMSF_KILL_SIG": str(int(SIGNALS[case["signal"]]))}
        if pipe:
            proc = self.restore_popen(config, self.restore_args("-"), stdin=subprocess.PIPE,
                                      extra_env=extra)
            self.feed(proc, src.read_bytes())
            with contextlib.suppress(OSError):
                proc.stdin.close()
        else:
            proc = self.restore_popen(config, self.restore_args(str(src)), extra_env=extra)
        rc, err = self.finish_checked(proc, "imsrestore")
        self.result.outcome = f"{case['op']}: {rc_text(rc)}"
        if rc not in signal_rc(case["signal"]):
            self.violate(f"imsrestore signalled SIG{case['signal']} at {case['op']} {n}:"
                         f" {rc_text(rc)}: {err.decode()[:200]}")
        self.check_after_fault(parts, before, expected, rc)
        self.rerun_and_compare(config, parts, pipe, before=before)

    def run_restore_eio_store(self) -> None:
        """Every write under one user's directory fails with EIO (a failing disk under part
        of the store): the rest lands, the user's folders are named, and once the disk is
        good again a rerun gives what a clean restore gives."""
        case = self.case
        expected_rc, expected, _ = self.reference(False)
        config, parts = self.make_store(self.dir / "store")
        before = store_listing(parts)
        users = sorted({k.split("/")[1] for k in expected})
        user = users[int(case["pick"] * len(users))]
        extra = {"LD_PRELOAD": str(self.setup.shim), "IMSF_EIO_MODE": "w",
                 "IMSF_EIO_PATH": f"/{user}/", "IMSF_EIO_OFFSET": "0"}
        self.result.notes.append(f"EIO writing under {user}")
        proc = self.restore_popen(config, self.restore_args(str(self.source())), extra_env=extra)
        rc, err = self.finish_checked(proc, "imsrestore")
        self.result.outcome = rc_text(rc)
        if rc not in (1, 6) and not (rc == expected_rc and "Input/output" not in err.decode()):
            self.violate(f"imsrestore with EIO writing under {user}: {rc_text(rc)}:"
                         f" {err.decode()[:200]}")
        if rc in (1, 6) and "Input/output error" not in err.decode():
            self.violate(f"{rc_text(rc)} without naming the I/O error: {err.decode()[:200]}")
        self.check_after_fault(parts, before, expected, rc)
        self.rerun_and_compare(config, parts, False, before=before)

    def run_restore_lock(self) -> None:
        case = self.case
        expected_rc, expected, clean_seconds = self.reference(False)
        config, parts = self.make_store(self.dir / "store")
        before = store_listing(parts)
        # the folders the clean restore adds messages to
        merged = sorted(k for k, v in expected.items() if "messages" in v and k in before
                        and collections.Counter(map(tuple, v["messages"]))
                        != collections.Counter(map(tuple, before[k]["messages"])))
        if not merged:
            self.result.outcome = "nothing to lock"
            return
        key = merged[int(case["pick"] * len(merged))]
        pname, user, folder = key.split("/", 2)
        maildir = parts[pname] / user / "Maildir"
        folder_dir = maildir if folder == "INBOX" else maildir / ("." + folder)
        holder = case["holder"]
        lock = (maildir / "subscriptions.lock") if holder == "subscriptions" else \
            folder_dir / "dovecot-uidlist.lock"
        sleeper = subprocess.Popen(["sleep", "600"])
        dead = subprocess.Popen(["true"])
        dead.wait()
        content = {"other-host": f"{sleeper.pid}:another-{HOST}",
                   "dead-old": f"{dead.pid}:{HOST}", "dead-fresh": f"{dead.pid}:{HOST}"}.get(
                       holder, f"{sleeper.pid}:{HOST}")
        lock.write_text(content)
        if holder == "dead-old":
            os.utime(lock, (time.time() - 60, time.time() - 60))
        inode = lock.stat().st_ino
        timeout = {"dead-fresh": 6.0, "released": 10.0, "dead-old": 3.0}.get(holder, case["timeout"])
        releaser = None
        if holder == "released":
            releaser = threading.Timer(case["release_after"], lambda: lock.unlink(missing_ok=True))
        try:
            started = time.monotonic()
            proc = self.restore_popen(config, ["-f", str(self.source()), "--json", "--lock-timeout",
                                               str(timeout), *self.setup.names[case["names"]]])
            if releaser:
                releaser.start()
            rc = self.finish(proc)
            seconds = time.monotonic() - started
        finally:
            if releaser:
                releaser.cancel()
            sleeper.kill()
            sleeper.wait()
        err = self.err_path.read_bytes()
        self.check_stderr(err, "imsrestore")
        self.check_group(proc.pid, "imsrestore")
        self.result.outcome = f"{holder}: {rc_text(rc)}"
        blocking = holder in ("live", "other-host", "subscriptions")
        still = lock.exists() and lock.stat().st_ino == inode and lock.read_text() == content
        if blocking:
            if rc != 3 and not (holder == "subscriptions" and rc == expected_rc):
                self.violate(f"imsrestore with {lock.name} held ({holder}): {rc_text(rc)} instead"
                             f" of exit 3: {err.decode()[:200]}")
            if seconds > timeout + clean_seconds + SLACK:
                self.violate(f"imsrestore waited {seconds:.1f} s for a lock with --lock-timeout"
                             f" {timeout}")
            if not still:
                self.violate(f"the {holder} lock {lock.name} was broken or changed")
            if rc == 3 and "locked" not in err.decode():
                self.violate(f"exit 3 without saying 'locked': {err.decode()[:200]}")
        else:
            if rc != expected_rc:
                self.violate(f"imsrestore with a {holder} lock: {rc_text(rc)} where a clean"
                             f" restore exits {expected_rc}: {err.decode()[:200]}")
            if holder == "released" and seconds > case["release_after"] + clean_seconds + SLACK:
                self.violate(f"the restore went on {seconds - case['release_after']:.1f} s after"
                             f" the lock was released")
            if still:
                self.violate(f"the {holder} lock was not taken over")
        self.check_after_fault(parts, before, expected, rc,
                               ignore=(lock,) if blocking else ())
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        self.rerun_and_compare(config, parts, False, before=before)

    def run(self) -> Result:
        started = time.monotonic()
        kind = self.case["kind"]
        handler = {
            "backup-signal-file": self.run_backup_signal,
            "backup-signal-pipe": self.run_backup_signal,
            "backup-pipe-closed": self.run_backup_pipe_closed,
            "backup-full-disk": self.run_backup_full_disk,
            "backup-unreadable": self.run_backup_read_error,
            "backup-eio-read": self.run_backup_read_error,
            "backup-eio-write": self.run_backup_eio_write,
            "backup-helper-killed": self.run_backup_helper_killed,
            "backup-lock-held": self.run_backup_lock_held,
            "restore-signal-file": self.run_restore_signal,
            "restore-signal-pipe": self.run_restore_signal,
            "restore-helper-killed": self.run_restore_helper_killed,
            "restore-stream-cut": self.run_restore_stream_cut,
            "restore-full-disk": self.run_restore_full_disk,
            "restore-lock": self.run_restore_lock,
            "restore-eio-archive": self.run_restore_eio_archive,
            "restore-kill-at-op": self.run_restore_kill_at_op,
            "restore-eio-store": self.run_restore_eio_store,
        }[kind]
        try:
            handler()
        except SystemExit:
            raise
        except Exception as exc:     # noqa: BLE001 - a campaign bug is reported, not hidden
            import traceback
            self.violate(f"campaign error: {type(exc).__name__}: {exc}"
                         f" {traceback.format_exc().splitlines()[-3:]}")
        self.result.seconds = time.monotonic() - started
        # a store left with a permission we changed would spoil every later case
        if self.golden_changed():
            self.violate("the golden store changed during the case (a backup wrote to the store?)")
        if not self.result.violations:
            shutil.rmtree(self.dir, ignore_errors=True)
        return self.result

    def golden_changed(self) -> bool:
        if not self.case["kind"].startswith("backup"):
            return False
        now = store_listing({p: self.setup.golden / "partitions" / p for p in self.setup.partitions})
        return now != self.setup.golden_listing


# -- the campaign ------------------------------------------------------------------------------


@contextlib.contextmanager
def mounted_tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        print(f"faults: no tmpfs ({result.stderr.strip()}): full-disk faults left out",
              file=sys.stderr)
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def schedule(kinds: list[str], count: int, rng: random.Random) -> list[str]:
    """Every kind once (in a shuffled order), then by weight."""
    first = kinds[:]
    rng.shuffle(first)
    rest = rng.choices(kinds, weights=[WEIGHTS[k] for k in kinds], k=max(0, count - len(first)))
    return (first + rest)[:count]


CATEGORIES = [
    ("traceback on stderr: KeyboardInterrupt", "traceback after Ctrl-C (during start-up)"),
    ("traceback on stderr", "traceback"),
    ("hung", "hung"),
    ("processes outlived", "helper outlived its command"),
    ("SIGTERM): left behind", "SIGTERM leaves staging/aside files or locks"),
    ("after the rerun: left behind", "left behind even after the rerun"),
    ("left behind", "lock or staging left behind"),
    ("the rerun: ", "the rerun does not exit as a clean restore"),
    ("rerun's store differs", "the rerun's store differs from a clean restore's"),
    ("visible incomplete", "a folder restored whole visible incomplete"),
    ("lost or changed", "a message of the store lost"),
    ("doubled", "a message doubled"),
    ("UIDVALIDITY", "wrong UIDVALIDITY"),
    ("left out of the archive", "readable messages left out of a backup"),
    ("not reported", "a read error not reported"),
    ("differs from the store backed up", "a finished archive restores wrong"),
    ("campaign error", "campaign error"),
]


def category(violation: str) -> str:
    for needle, name in CATEGORIES:
        if needle in violation:
            return name
    return "exit code or message"


def summarize(results: list[Result], seconds: float) -> dict:
    by_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in results:
        by_kind[r.case["kind"]][r.outcome or "?"] += 1
    return {
        "faults": len(results),
        "violations": sum(1 for r in results if r.violations),
        "seconds": round(seconds, 1),
        "by_kind": {k: dict(sorted(v.items())) for k, v in sorted(by_kind.items())},
        "violations_by_kind": dict(collections.Counter(r.case["kind"] for r in results if r.violations)),
        "violation_categories": dict(collections.Counter(
            category(v) for r in results for v in r.violations).most_common()),
    }


def print_summary(summary: dict, stream=sys.stdout) -> None:
    print(f"\n{summary['faults']} faults in {summary['seconds']} s,"
          f" {summary['violations']} with violations", file=stream)
    width = max(len(k) for k in summary["by_kind"]) if summary["by_kind"] else 10
    for kind, outcomes in summary["by_kind"].items():
        total = sum(outcomes.values())
        bad = summary["violations_by_kind"].get(kind, 0)
        detail = ", ".join(f"{o} {n}" for o, n in outcomes.items())
        print(f"  {kind:<{width}} {total:>5}  violations {bad:>3}  ({detail})", file=stream)
    if summary["violation_categories"]:
        print("violations by category:", file=stream)
        for name, count in summary["violation_categories"].items():
            print(f"  {count:>5}  {name}", file=stream)


def _interrupted(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--users", type=int, default=6)
    parser.add_argument("--messages", type=int, default=25, help="median messages per user")
    parser.add_argument("--kinds", help="comma-separated kinds (default: all available)")
    parser.add_argument("--workdir", type=Path, help="default: a new directory under /tmp")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--replay", help="run one case given as the JSON a report printed")
    parser.add_argument("--json", type=Path, help="write the summary and violations here")
    parser.add_argument("--bin", type=Path, help="directory of imsbackup/imsrestore")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    global BIN
    if args.bin:
        BIN = args.bin
    if os.geteuid() != 0:
        print("faults: needs root (tmpfs, setpriv, chown)", file=sys.stderr)
        return 2
    for name in ("imsbackup", "imsrestore"):
        if not (BIN / name).exists():
            print(f"faults: {BIN / name} not found (pip install -e .)", file=sys.stderr)
            return 2
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ims-faults-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)
    started = time.monotonic()
    results: list[Result] = []
    # stop cleanly (unmount, remove) when the campaign itself is interrupted
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        with mounted_tmpfs(work / "tmpfs", "32m") as tmpfs:
            setup = prepare(work, args.seed, args.users, args.messages)
            setup.tmpfs = tmpfs
            if args.replay:
                case = json.loads(args.replay)
                result = Case(setup, case).run()
                print(json.dumps({"case": case, "outcome": result.outcome,
                                  "violations": result.violations, "notes": result.notes}, indent=1))
                return 1 if result.violations else 0
            kinds = available_kinds(setup)
            if args.kinds:
                wanted = args.kinds.split(",")
                unknown = set(wanted) - set(BACKUP_KINDS + RESTORE_KINDS)
                if unknown:
                    print(f"faults: unknown kinds {sorted(unknown)}", file=sys.stderr)
                    return 2
                kinds = [k for k in kinds if k in wanted]
            missing = set(BACKUP_KINDS + RESTORE_KINDS) - set(kinds)
            if missing and not args.kinds:
                print(f"faults: left out (missing gcc, setpriv or tmpfs): {sorted(missing)}",
                      file=sys.stderr)
            rng = random.Random(args.seed)
            plan = schedule(kinds, args.faults, rng)
            for index, kind in enumerate(plan):
                case = draw_case(setup, kind, rng, index)
                result = Case(setup, case).run()
                results.append(result)
                if not args.quiet:
                    mark = "VIOLATION" if result.violations else "ok"
                    print(f"[{index + 1}/{len(plan)}] {kind}: {result.outcome} {mark}"
                          f" ({result.seconds:.2f} s)", flush=True)
                for v in result.violations:
                    print(f"    violation: {v}", flush=True)
                if result.violations:
                    print(f"    replay: {sys.executable} {Path(__file__).resolve()} --seed"
                          f" {args.seed} --users {args.users} --messages {args.messages}"
                          f" --replay '{json.dumps(case)}'", flush=True)
    except KeyboardInterrupt:
        print("faults: interrupted", file=sys.stderr)
    finally:
        summary = summarize(results, time.monotonic() - started)
        if results:
            print_summary(summary)
        if args.json:
            args.json.write_text(json.dumps({
                "summary": summary, "seed": args.seed,
                "violations": [{"case": r.case, "outcome": r.outcome, "violations": r.violations,
                                "notes": r.notes} for r in results if r.violations]}, indent=1))
        if not args.keep and not any(r.violations for r in results):
            shutil.rmtree(work, ignore_errors=True)
        elif results:
            print(f"faults: work directory kept: {work}")
    if len(results) < args.faults and not args.replay:
        return 2
    return 1 if summary["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
