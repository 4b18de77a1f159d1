"""Configuration: the config directory, ``msg.conf`` and ``backup-groups.conf``.

``msg.conf`` holds ``key = value`` lines under configutil's dotted names, ``#`` comments and
blank lines.  ``backup-groups.conf`` holds ``group=regex`` lines.  Both are parsed in full
before anything is done; any problem raises ``ConfigError`` naming the file and line.  They
are read as regular files only, never blocking (a FIFO given as ``--groups-file``) and at
most ``CONFIG_LIMIT`` bytes (``/dev/zero``); msg.conf is written by ``ims.outputfile``.

Groups (DESIGN §3): a user belongs to the first group in file order whose regex matches the
whole user ID.  ``user`` and ``ALL`` hold every user; ``ungrouped`` holds users that match no
custom group, so that a group-wise backup never loses anyone.  Regexes are POSIX EREs with
Python's additions: POSIX bracket classes are translated by ``ims.posixre``.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ims.errors import ConfigError
from ims.outputfile import write_file
from ims.posixre import translate
from ims.store.files import read_regular

DEFAULT_CONFIG_DIR = "/etc/ims"
CONFIG_LIMIT = 1 << 20          # far above any real msg.conf or backup-groups.conf
MSG_CONF = "msg.conf"
GROUPS_CONF = "backup-groups.conf"

EVERYONE_GROUPS = ("user", "ALL")
UNGROUPED = "ungrouped"
RESERVED_GROUPS = (*EVERYONE_GROUPS, UNGROUPED)

_KEY_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_GROUP_NAME_RE = re.compile(r"^[A-Za-z0-9_\-]+$")

DEFAULTS = {
    "store.defaultpartition": "primary",
    "store.maildir.layout": "%u/Maildir",
    "local.store.backup.exclude": "",
}


def read_config_file(path: Path) -> str:
    """A configuration file's text: a regular file (through the administrator's links), read
    without blocking and up to ``CONFIG_LIMIT`` bytes.  ``FileNotFoundError`` passes through;
    anything else is a ``ConfigError`` naming the file."""
    try:
        return read_regular(path, limit=CONFIG_LIMIT, follow_links=True).decode("utf-8")
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.EFBIG:
            raise ConfigError(f"{path}: cannot read: larger than {CONFIG_LIMIT} bytes,"
                              " not a configuration file") from None
        raise ConfigError(f"{path}: cannot read: {_reason(exc)}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: cannot read: {_reason(exc)}") from None


def config_dir(explicit: str | None = None) -> Path:
    """``--config-dir``, else ``$IMS_CONFIG_DIR``, else ``/etc/ims``."""
    return Path(explicit or os.environ.get("IMS_CONFIG_DIR") or DEFAULT_CONFIG_DIR)


@dataclass
class MsgConf:
    """The key/value settings of ``msg.conf``, in file order."""

    path: Path
    values: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, missing_ok: bool = False) -> "MsgConf":
        try:
            text = read_config_file(path)
        except FileNotFoundError:
            if missing_ok:
                return cls(path)
            raise ConfigError(f"{path}: configuration file not found") from None
        values: dict[str, str] = {}
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, value = line.partition("=")
            key = key.strip()
            if not sep or not _KEY_RE.match(key):
                raise ConfigError(f"{path}:{lineno}: expected 'key = value', got {raw.strip()!r}")
            values[key] = value.strip()
        return cls(path, values)

    def get(self, key: str, default: str | None = None) -> str | None:
        if key in self.values:
            return self.values[key]
        if default is not None:
            return default
        return DEFAULTS.get(key)

    def set(self, key: str, value: str) -> None:
        if not _KEY_RE.match(key):
            raise ConfigError(f"{self.path}: invalid key {key!r}")
        if "\n" in value:
            raise ConfigError(f"{self.path}: value of {key} must be one line")
        self.values[key] = value

    def unset(self, key: str) -> None:
        self.values.pop(key, None)

    def save(self) -> None:
        """Rewrite the file atomically, keeping comments and the order of existing lines."""
        try:
            old_lines = read_config_file(self.path).splitlines()
        except FileNotFoundError:
            old_lines = []
        pending = dict(self.values)
        lines: list[str] = []
        for raw in old_lines:
            key = raw.partition("=")[0].strip()
            if raw.strip().startswith("#") or "=" not in raw:
                lines.append(raw)
            elif key in pending:
                lines.append(f"{key} = {pending.pop(key)}")
            # a key no longer in values was unset: drop its line
        lines.extend(f"{k} = {v}" for k, v in pending.items())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_file(str(self.path), ("\n".join(lines) + "\n").encode("utf-8"))

    # -- typed accessors -------------------------------------------------------------

    def partitions(self) -> dict[str, Path]:
        """Partition name -> directory, from ``store.partition.<name>.path``."""
        result: dict[str, Path] = {}
        for key, value in self.values.items():
            m = re.fullmatch(r"store\.partition\.([^.]+)\.path", key)
            if m:
                result[m.group(1)] = Path(value)
        return dict(sorted(result.items()))

    def exclusions(self) -> list[str]:
        """The folders of local.store.backup.exclude.  A trailing ``/`` (``Trash/``, as a
        directory is often written) is dropped: no folder name ends in ``/``, so the name
        as written would exclude nothing, silently."""
        raw = self.get("local.store.backup.exclude") or ""
        return [name for name in (part.strip().rstrip("/").strip() for part in raw.split("%"))
                if name]

    def servername(self) -> str:
        return self.get("local.store.backup.servername") or socket.gethostname().split(".")[0]


@dataclass(frozen=True)
class BackupGroup:
    name: str
    pattern: re.Pattern[str]
    lineno: int
    regex: str = ""             # as written in the file (``pattern`` is its translation)


def compile_group_regex(regex: str) -> re.Pattern[str]:
    """A group's regex, POSIX bracket classes included (``ims.posixre``).

    Raises ``ValueError`` with the reason.  A warning of ``re`` (a nested set, say) is an
    error too: it would otherwise be the only sign, on stderr, of a regex that does not do
    what it says."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            return re.compile(translate(regex))       # RegexError passes through
        except (re.error, Warning) as exc:
            raise ValueError(str(exc)) from None


@dataclass
class BackupGroups:
    """The custom groups of ``backup-groups.conf`` in file order (may be empty)."""

    path: Path | None
    groups: list[BackupGroup] = field(default_factory=list)
    overlaps: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path, missing_ok: bool = True) -> "BackupGroups":
        """The file's groups; none (only ``ALL``) when it is missing and ``missing_ok``."""
        try:
            text = read_config_file(path)
        except FileNotFoundError:
            if not missing_ok:
                raise ConfigError(f"{path}: backup groups file not found") from None
            return cls(None)
        return cls.parse(text, path)

    @classmethod
    def parse(cls, text: str, path: Path) -> "BackupGroups":
        groups: list[BackupGroup] = []
        seen: dict[str, int] = {}
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, regex = line.partition("=")
            name, regex = name.strip(), regex.strip()
            if not sep or not name or not regex:
                raise ConfigError(f"{path}:{lineno}: expected 'group=regex', got {line!r}")
            if not _GROUP_NAME_RE.match(name):
                raise ConfigError(f"{path}:{lineno}: invalid group name {name!r}"
                                  " (letters, digits, '_' and '-' only)")
            if name in RESERVED_GROUPS:
                raise ConfigError(f"{path}:{lineno}: group name {name!r} is reserved")
            if name in seen:
                raise ConfigError(f"{path}:{lineno}: group {name!r} already defined on line"
                                  f" {seen[name]}")
            try:
                pattern = compile_group_regex(regex)
            except ValueError as exc:
                raise ConfigError(f"{path}:{lineno}: invalid regex {regex!r}: {exc}") from None
            seen[name] = lineno
            groups.append(BackupGroup(name, pattern, lineno, regex))
        return cls(path, groups)

    @property
    def defined(self) -> bool:
        return self.path is not None

    def custom_names(self) -> list[str]:
        """The groups of the file, in file order."""
        return [g.name for g in self.groups]

    def empty_warning(self, name: str, where: list[str], partitions: list[str]) -> str:
        """The warning for a custom group no user falls in (on the partitions ``where``, of
        all ``partitions``): its regex may be wrong, or the file's order hides it.  No mail
        is left out: such users are in an earlier group or in ``ungrouped``."""
        group = next(g for g in self.groups if g.name == name)
        on = "" if set(where) >= set(partitions) else f" on partition(s) {', '.join(where)}"
        return (f"backup group {name!r} ({self.path}:{group.lineno}: {group.regex}) matches no"
                f" user{on}; its users, if any, are in an earlier group or in '{UNGROUPED}'")

    def names(self) -> list[str]:
        """Every group a listing should show: custom groups, then ``ungrouped``."""
        if not self.groups:
            return ["ALL"]
        return self.custom_names() + [UNGROUPED]

    def group_of(self, user: str) -> str:
        """The group a user belongs to: the first match, else ``ungrouped`` (or ``ALL``)."""
        for group in self.groups:
            if group.pattern.fullmatch(user):
                return group.name
        return UNGROUPED if self.groups else "ALL"

    def overlapping(self, user: str) -> list[str]:
        return [g.name for g in self.groups if g.pattern.fullmatch(user)]

    def exists(self, name: str) -> bool:
        return name in EVERYONE_GROUPS or name == UNGROUPED or any(
            g.name == name for g in self.groups)

    def contains(self, group: str, user: str) -> bool:
        if group in EVERYONE_GROUPS:
            return True
        return self.group_of(user) == group


@dataclass
class Config:
    """Everything read from one config directory."""

    directory: Path
    msg: MsgConf
    groups: BackupGroups

    @classmethod
    def load(cls, directory: Path, groups_file: Path | None = None) -> "Config":
        """``groups_file``: a backup-groups.conf to use instead of the directory's (a
        candidate being checked: it must exist)."""
        msg = MsgConf.load(directory / MSG_CONF)
        groups = (BackupGroups.load(groups_file, missing_ok=False) if groups_file
                  else BackupGroups.load(directory / GROUPS_CONF))
        if not msg.partitions():
            raise ConfigError(f"{directory / MSG_CONF}: no partition defined"
                              " (store.partition.<name>.path)")
        return cls(directory, msg, groups)

    def logdir(self) -> Path:
        return Path(self.msg.get("local.store.logdir") or self.directory / "log")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
