"""A deterministic sample Dovecot Maildir store, for the demo, the tests and the benchmarks.

``generate(root, SampleSpec(...))`` writes ``root/config/{msg.conf,backup-groups.conf}`` and
``root/partitions/<partition>/<user>/Maildir`` the way Dovecot 2.3 lays them out: Maildir++
folders (one with a non-ASCII name, stored in modified UTF-7), ``dovecot-uidlist`` version 3
with UID gaps and some stale ``N`` headers, per-folder ``dovecot-keywords``, ``subscriptions``,
flags and keyword letters in file names, mtimes equal to the delivery time, a few messages
still in ``new/`` without a UID, and multi-recipient deliveries stored as hard links with one
base name (as LMTP does).  Sizes are log-normal (median 4 KiB, sigma 1.7, capped at 2 MiB);
messages over 16 KiB carry a base64 attachment of random bytes.

The same seed gives the same store, byte for byte (file contents, names, uidlists, mtimes).
Run it as ``python -m ims.samplestore ROOT [--users N] [--messages N] [--seed S]``.
"""

from __future__ import annotations

import argparse
import base64
import math
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from ims.store import mutf7

REFERENCE_TIME = 1767225600  # 2026-01-01T00:00:00Z: dates lie in the two years before it
HOST = "sample"
PARTITION_NAMES = ["primary", "secondary", "tertiary", "quaternary", "quinary", "senary"]
FIRST_NAMES = ["amy", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan",
               "judy", "kim", "leo", "mallory", "nina", "oscar", "peggy", "quinn", "rupert",
               "sybil", "trent", "ursula", "victor", "wendy", "xavier", "yvonne", "zoe"]
SURNAMES = ["smith", "jones", "meyer", "dubois", "rossi", "tanaka", "nguyen", "garcia",
            "novak", "berg", "okafor", "silva"]
FOLDERS = ["Sent", "Drafts", "Trash", "Archive", "Archive/2024", "Entwürfe"]
KEYWORDS = ["$Forwarded", "$Junk", "$NotJunk", "work", "todo"]
GROUPS_CONF = """\
# Sun's example groups, as an administrator would write them.
groupA=[a-l].*
groupB=[m-z].*
groupC=[0-9].*
"""


@dataclass(frozen=True)
class SampleSpec:
    users: int = 20
    messages_per_user: int = 30
    partitions: int = 2
    seed: int = 1
    link_fraction: float = 0.1       # share of INBOX deliveries that go to 2-5 users
    size_median: int = 4096
    size_sigma: float = 1.7
    size_cap: int = 2 << 20
    owner: tuple[int, int] | None = None  # chown everything to (uid, gid)
    extra_folders: int = 0           # more folders per user (Projects/p1 ...): many small folders


@dataclass
class _Folder:
    path: Path
    uidvalidity: int
    keywords: list[str]
    entries: list[tuple[int | None, str]]  # (uid or None for new/, file name)
    next_uid: int = 1


def user_ids(count: int, rng: random.Random) -> list[str]:
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < count:
        roll = rng.random()
        first, last = rng.choice(FIRST_NAMES), rng.choice(SURNAMES)
        if roll < 0.1:
            candidate = f"{rng.randrange(10, 9999)}{first}"           # starts with digits
        elif roll < 0.5:
            candidate = f"{first[0]}{last}"
        elif roll < 0.8:
            candidate = f"{first}.{last}"
        else:
            candidate = f"{first}{rng.randrange(1, 99)}"
        if candidate not in seen:
            seen.add(candidate)
            ids.append(candidate)
    return ids


def generate(root: Path, spec: SampleSpec) -> dict[str, int]:
    """Write the store and its config; return counts (users, messages, files, links)."""
    rng = random.Random(spec.seed)
    root = root.resolve()
    parts = PARTITION_NAMES[:spec.partitions] if spec.partitions <= len(PARTITION_NAMES) else [
        f"part{i + 1}" for i in range(spec.partitions)]
    users = user_ids(spec.users, rng)
    home: dict[str, str] = {u: parts[i % len(parts)] for i, u in enumerate(users)}
    noise = rng.randbytes(1 << 20)
    counters = {"users": len(users), "messages": 0, "files": 0, "links": 0}
    folders: dict[tuple[str, str], _Folder] = {}
    uidvalidity = REFERENCE_TIME - 400 * 86400

    def folder(user: str, name: str) -> _Folder:
        key = (user, name)
        if key not in folders:
            nonlocal uidvalidity
            uidvalidity += rng.randrange(1, 5000)
            maildir = root / "partitions" / home[user] / user / "Maildir"
            path = maildir if name == "INBOX" else maildir / ("." + ".".join(
                mutf7.encode(level) for level in name.split("/")))
            for sub in ("cur", "new", "tmp"):
                (path / sub).mkdir(parents=True, exist_ok=True)
            if name != "INBOX":
                (path / "maildirfolder").touch()
            keywords = KEYWORDS[:]
            rng.shuffle(keywords)  # letters differ from folder to folder, as in Dovecot
            folders[key] = _Folder(path, uidvalidity, keywords[:rng.randrange(0, 6)], [])
        return folders[key]

    for user in users:
        folder(user, "INBOX")
    names = FOLDERS + [f"Projects/p{i + 1}" for i in range(spec.extra_folders)]
    sequence = 0
    budget = {u: max(1, int(rng.lognormvariate(math.log(spec.messages_per_user), 0.5)))
              for u in users}
    total = sum(budget.values())
    deliveries = 0
    while deliveries < total:
        user = users[deliveries % len(users)] if rng.random() < 0.5 else rng.choice(users)
        deliveries += 1
        name = "INBOX" if rng.random() < 0.6 else rng.choice(names)
        recipients = [user]
        if name == "INBOX" and rng.random() < spec.link_fraction and len(users) > 1:
            others = [u for u in rng.sample(users, min(len(users), 6)) if u != user]
            recipients += others[:rng.randrange(1, 5)]
        sequence += 1
        when = REFERENCE_TIME - rng.randrange(0, 2 * 365 * 86400)
        body = _message(rng, noise, spec, sequence, recipients)
        vsize = len(body) + body.count(b"\n")
        base = f"{when}.M{rng.randrange(1000000)}P{10000 + sequence}.{HOST},S={len(body)},W={vsize}"
        first_path: Path | None = None
        for recipient in recipients:
            target = folder(recipient, name)
            in_new = rng.random() < 0.03
            if in_new:
                file_name = base
                target.entries.append((None, "new/" + file_name))
            else:
                flags = _flags(rng, len(target.keywords))
                file_name = f"{base}:2,{flags}"
                target.next_uid += rng.choice((1, 1, 1, 2, 5))  # gaps: expunged messages
                target.entries.append((target.next_uid - 1, "cur/" + file_name))
            path = target.path / ("new" if in_new else "cur") / file_name
            if first_path is None:
                path.write_bytes(body)
                os.utime(path, (when, when))
                first_path = path
                counters["messages"] += 1
            else:
                os.link(first_path, path)
                counters["links"] += 1
            counters["files"] += 1

    for (user, name), f in folders.items():
        _write_folder_files(f, rng)
    for user in users:
        maildir = root / "partitions" / home[user] / user / "Maildir"
        names = sorted(n for (u, n) in folders if u == user and n != "INBOX")
        lines = ["V\t2", ""] + ["\t".join(mutf7.encode(level) for level in n.split("/"))
                                for n in names]
        (maildir / "subscriptions").write_text("\n".join(lines) + "\n", encoding="ascii")
    _write_config(root, parts)
    if spec.owner is not None:
        for dirpath, dirnames, filenames in os.walk(root / "partitions"):
            os.chown(dirpath, *spec.owner)
            for entry in filenames:
                os.chown(os.path.join(dirpath, entry), *spec.owner, follow_symlinks=False)
    return counters


def _write_folder_files(f: _Folder, rng: random.Random) -> None:
    numbered = sorted((uid, name) for uid, name in f.entries if uid is not None)
    next_uid = f.next_uid
    header_n = next_uid if rng.random() < 0.7 else max(1, next_uid - rng.randrange(1, 4))
    guid = "%032x" % rng.getrandbits(128)
    lines = [f"3 V{f.uidvalidity} N{header_n} G{guid}"]
    lines += [f"{uid} :{name.split('/', 1)[1].split(':', 1)[0]}" for uid, name in numbered]
    (f.path / "dovecot-uidlist").write_text("\n".join(lines) + "\n", encoding="ascii")
    if f.keywords:
        (f.path / "dovecot-keywords").write_text(
            "".join(f"{i} {k}\n" for i, k in enumerate(f.keywords)), encoding="ascii")


def _flags(rng: random.Random, keyword_count: int) -> str:
    flags = [letter for letter, p in (("D", 0.02), ("F", 0.1), ("R", 0.2), ("S", 0.7),
                                      ("T", 0.03)) if rng.random() < p]
    letters = [chr(97 + i) for i in range(keyword_count) if rng.random() < 0.15]
    return "".join(flags) + "".join(letters)


def _message(rng: random.Random, noise: bytes, spec: SampleSpec, sequence: int,
             recipients: list[str]) -> bytes:
    size = min(spec.size_cap, max(300, int(rng.lognormvariate(math.log(spec.size_median),
                                                               spec.size_sigma))))
    head = (f"Return-Path: <sender{sequence % 97}@example.org>\n"
            f"From: Sender {sequence % 97} <sender{sequence % 97}@example.org>\n"
            f"To: {', '.join(r + '@example.com' for r in recipients)}\n"
            f"Subject: Sample message {sequence}\n"
            f"Message-ID: <sample.{sequence}@{HOST}>\n"
            "MIME-Version: 1.0\n").encode("ascii")
    if size <= 16384:
        text = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\n"
        fill = max(0, size - len(head) - 40)
        body = (text * (fill // len(text) + 1))[:fill]
        return head + b"Content-Type: text/plain; charset=us-ascii\n\n" + body + b"\n"
    raw_len = (size - len(head) - 200) * 3 // 4
    start = rng.randrange(0, len(noise))
    raw = (noise[start:] + noise * (raw_len // len(noise) + 1))[:raw_len]
    encoded = base64.encodebytes(raw)
    return (head + b"Content-Type: multipart/mixed; boundary=\"b1\"\n\n--b1\n"
            b"Content-Type: text/plain\n\nSee the attachment.\n--b1\n"
            b"Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
            + encoded + b"--b1--\n")


def _write_config(root: Path, parts: list[str]) -> None:
    config = root / "config"
    config.mkdir(parents=True, exist_ok=True)
    lines = [f"store.partition.{p}.path = {root / 'partitions' / p}" for p in parts]
    lines += ["store.defaultpartition = primary", "store.maildir.layout = %u/Maildir",
              "local.store.backup.exclude = ", f"local.store.logdir = {root / 'log'}"]
    (config / "msg.conf").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (config / "backup-groups.conf").write_text(GROUPS_CONF, encoding="utf-8")
    for p in parts:
        (root / "partitions" / p).mkdir(parents=True, exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ims.samplestore",
                                     description="Write a deterministic sample Dovecot Maildir store.")
    parser.add_argument("root", type=Path)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--messages", type=int, default=30, help="median messages per user")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--owner", metavar="UID:GID", help="chown the store to UID:GID")
    args = parser.parse_args(argv)
    if args.root.exists() and any(args.root.iterdir()):
        print(f"{args.root}: exists and is not empty; choose a new directory", file=sys.stderr)
        return 2
    owner = None
    if args.owner:
        uid, _, gid = args.owner.partition(":")
        owner = (int(uid), int(gid or uid))
    counts = generate(args.root, SampleSpec(users=args.users, messages_per_user=args.messages,
                                            partitions=args.partitions, seed=args.seed,
                                            owner=owner))
    print(f"sample store in {args.root}: {counts['users']} users, {counts['messages']} messages,"
          f" {counts['files']} files ({counts['links']} hard links);"
          f" config in {args.root / 'config'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
