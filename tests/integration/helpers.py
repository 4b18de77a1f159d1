"""Helpers for the integration tests: a config for a Dovecot instance, IMAP views, archive views."""

from __future__ import annotations

import imaplib
import os
import re
import socket
import time
from pathlib import Path

from archive_reader import Archive, Member

SYSTEM_FLAGS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S",
                "\\Deleted": "T"}
GROUPS = "groupA=[a-l].*\ngroupB=[m-z].*\ngroupC=[0-9].*\n"


def write_config(config_dir: Path, partitions: dict[str, Path], exclude: str = "",
                 groups: str | None = GROUPS) -> Path:
    config_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"store.partition.{name}.path = {path}" for name, path in partitions.items()]
    lines.append(f"local.store.backup.exclude = {exclude}")
    lines.append(f"local.store.logdir = {config_dir / 'log'}")
    (config_dir / "msg.conf").write_text("\n".join(lines) + "\n")
    if groups is not None:
        (config_dir / "backup-groups.conf").write_text(groups)
    return config_dir


def imap_folders(client: imaplib.IMAP4) -> list[str]:
    """Selectable folder names, in modified UTF-7 as IMAP sends them."""
    typ, data = client.list('""', "*")
    assert typ == "OK"
    names = []
    for line in data:
        m = re.match(rb'\((?P<attrs>[^)]*)\) "(?P<sep>[^"]*)" (?P<name>.*)$', line)
        assert m, line
        if b"\\Noselect" in m.group("attrs"):
            continue
        name = m.group("name").decode()
        names.append(name[1:-1] if name.startswith('"') else name)
    return names


def mutf7_decode(name: str) -> str:
    """Independent of ims.store.mutf7, so the tests check the driver rather than trust it."""
    import base64
    out, i = [], 0
    while i < len(name):
        if name[i] == "&":
            end = name.index("-", i)
            chunk = name[i + 1:end]
            if chunk:
                b64 = chunk.replace(",", "/") + "=" * (-len(chunk) % 4)
                out.append(base64.b64decode(b64).decode("utf-16-be"))
            else:
                out.append("&")
            i = end + 1
        else:
            out.append(name[i])
            i += 1
    return "".join(out)


def imap_messages(client: imaplib.IMAP4, folder: str) -> tuple[dict[str, int], list[dict]]:
    """STATUS of the folder, then every message's UID, flags, keywords, date, size, bytes."""
    typ, data = client.status(f'"{folder}"', "(UIDNEXT UIDVALIDITY MESSAGES)")
    assert typ == "OK", data
    status = {k.decode(): int(v) for k, v in re.findall(rb"(UIDNEXT|UIDVALIDITY|MESSAGES) (\d+)", data[0])}
    typ, _ = client.select(f'"{folder}"', readonly=True)
    assert typ == "OK"
    typ, data = client.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE RFC822.SIZE X-GUID BODY.PEEK[])")
    assert typ == "OK"
    messages = []
    for item in data:
        if not isinstance(item, tuple):
            continue
        head, body = item
        uid = int(re.search(rb"UID (\d+)", head).group(1))
        flags = re.search(rb"FLAGS \(([^)]*)\)", head).group(1).decode().split()
        guid = re.search(rb"X-GUID ([^ )]+)", head).group(1).decode()
        size = int(re.search(rb"RFC822.SIZE (\d+)", head).group(1))
        date = int(time.mktime(imaplib.Internaldate2tuple(head)))
        messages.append({
            "uid": uid, "guid": guid, "size": size, "internaldate": date, "body": body,
            "flags": "".join(sorted(SYSTEM_FLAGS[f] for f in flags if f in SYSTEM_FLAGS)),
            "keywords": sorted(f for f in flags if not f.startswith("\\")),
        })
    client.close()
    return status, messages


def folder_members(archive: Archive) -> dict[tuple[str, str, str], tuple[dict, list[Member]]]:
    """(partition, user, folder) -> (folder state, its message members)."""
    result: dict[tuple[str, str, str], tuple[dict, list[Member]]] = {}
    current: list[Member] | None = None
    for member in archive.members:
        if member.kind == "folder":
            state = member.json()
            current = []
            result[(state["partition"], state["user"], state["folder"])] = (state, current)
        elif member.kind == "message":
            assert current is not None, f"message {member.name} before any folder state"
            current.append(member)
        else:
            current = None
    return result


def member_bytes(archive: Archive, member: Member) -> bytes:
    if member.typeflag == b"1":
        return archive.by_name()[member.linkname].data
    return member.data


def hold_uidlist_lock(folder_dir: Path) -> Path:
    """Take Dovecot's uidlist dotlock as an outside process would (pid:host, O_EXCL)."""
    path = folder_dir / "dovecot-uidlist.lock"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    os.write(fd, f"{os.getpid()}:{socket.gethostname()}".encode())
    os.close(fd)
    return path


def since_arg(epoch: float) -> str:
    return time.strftime("%Y%m%d:%H%M%S", time.localtime(epoch))


def imap_snapshot(dovecot, user: str) -> dict:
    """What an IMAP client sees of a user: per folder UIDVALIDITY, UIDNEXT and every
    message's UID, flags, keywords, INTERNALDATE and bytes; and the subscriptions."""
    client = dovecot.imap(user)
    try:
        result = {}
        for folder in imap_folders(client):
            status, messages = imap_messages(client, folder)
            result[folder] = {
                "uidvalidity": status["UIDVALIDITY"], "uidnext": status["UIDNEXT"],
                "messages": {m["uid"]: (m["flags"], tuple(m["keywords"]), m["internaldate"],
                                        m["body"]) for m in messages}}
        typ, data = client.lsub('""', "*")
        result["<subscribed>"] = sorted(line.decode().rsplit(" ", 1)[-1] for line in data if line)
        return result
    finally:
        client.logout()


UID_MARGIN = 100_000     # imsrestore's default --uid-margin


def restored_whole(before: dict, folders: list[str] | None = None, margin: int = UID_MARGIN) -> dict:
    """What IMAP shows after folders come back whole: everything as before the backup, but the
    next UID raised by the margin (no UID handed out after the backup is handed out again)."""
    after = {name: dict(value) if isinstance(value, dict) else value
             for name, value in before.items()}
    for name, value in after.items():
        if name != "<subscribed>" and (folders is None or name in folders):
            value["uidnext"] = value["uidnext"] + margin
    return after
