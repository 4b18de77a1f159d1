"""Typed archive records: every member of docs/archive-format.md as a type, decoded (with its
validation) and encoded in one place.

The writer (``ims/backup.py``) builds records and encodes them; the readers (sequential, by
offset, the prefetching child, ``peek_header``), the chain merge and the restore decode them
here and nowhere else, so that a value from an archive is checked once, where the record is
parsed, before any of it can reach the store: names are never paths, UIDs are 32-bit and
positive, a base name is listed once per folder, a UIDVALIDITY is a number.

Failure behaviour: ``RecordError`` (an ``ArchiveDamaged``, exit 4) naming the member and the
field at fault.  The stream stays aligned after a bad record, so a restore may skip what the
record describes (a whole folder for a bad folder state or message) and go on.
"""

from __future__ import annotations

import re
from array import array
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, NamedTuple

from ims.archive import limits
from ims.archive.jsonstream import parse_object
from ims.errors import ArchiveDamaged

UIDVALIDITY_MAX = 2**32 - 1         # IMAP's UIDVALIDITY: a non-zero 32-bit number
UID_MAX = 2**32 - 2                 # the highest UID Dovecot accepts ("UID too high" above)
NEXT_UID_MAX = 2**32 - 1
TIME_MAX = 2**40                    # epoch seconds: about the year 36800
MODSEQ_MAX = 2**63 - 1              # RFC 7162: mod-sequences are 63-bit
SYSTEM_FLAGS = frozenset("DFPRST")
_GUID = re.compile(r"[0-9a-fA-F]{32}\Z")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
# IMAP atoms: no space, no control characters, none of ( ) { % * " \ ]
_KEYWORD_BAD = re.compile(r'[\x00-\x20\x7f(){%*"\\\]]')

FULL, INCREMENTAL = "full", "incremental"


class RecordError(ArchiveDamaged):
    """A member whose values are not what the format allows."""


def _nested_deeper(value: Any, limit: int) -> bool:
    """Whether ``value`` has containers nested deeper than ``limit`` (walked without
    recursion: the point is a value too deep for it)."""
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        if depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


# -- names -------------------------------------------------------------------------------

def valid_partition(name: object) -> bool:
    return isinstance(name, str) and bool(name) and name not in (".", "..") \
        and "/" not in name and not _has_control(name)


def valid_user(user: object) -> bool:
    """A user ID: also each part of ``local@domain`` (each may be a directory level of a
    hosted layout) is a name, never empty, ``.`` or ``..``."""
    if not isinstance(user, str) or not user or "/" in user or user.startswith(".") \
            or _has_control(user):
        return False
    local, at, domain = user.partition("@")
    return not at or (local not in ("", ".", "..") and domain not in ("", ".", ".."))


def valid_folder(folder: object) -> bool:
    if not isinstance(folder, str) or not folder or _has_control(folder):
        return False
    return all(level and level not in (".", "..") and "." not in level
               for level in folder.split("/"))


# lone surrogates: bytes that were not UTF-8 in the archive (decoded with surrogateescape)
_KEY = re.compile("[^./:\x00-\x1f\x7f\ud800-\udfff][^/:\x00-\x1f\x7f\ud800-\udfff]*\\Z")


def valid_key(key: object) -> bool:
    """A message's stable name inside its folder (the Maildir base name): not empty, no
    leading dot (so neither ``.`` nor ``..``), no ``/``, ``:``, control characters or bytes
    that were not UTF-8."""
    return isinstance(key, str) and _KEY.match(key) is not None


def valid_keyword(name: object) -> bool:
    """An IMAP keyword: an atom, so ASCII without spaces, controls or atom-specials."""
    return isinstance(name, str) and bool(name) and name.isascii() \
        and not _KEYWORD_BAD.search(name)


_CONTROL = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


def _has_control(text: str) -> bool:
    """Control characters, or bytes that were not UTF-8 in the archive (names are UTF-8,
    docs/archive-format.md §3; such a name could not be written to a report or a
    references file)."""
    return _CONTROL.search(text) is not None


def shown(name: str) -> str:
    """A name from an archive as an error message may show it: on one line, printable
    (quoted and escaped when it holds control characters or bytes that were not UTF-8)."""
    return ascii(name) if _has_control(name) else name


def valid_link_target(name: object) -> bool:
    return isinstance(name, str) and not _has_control(name)


# -- value checks --------------------------------------------------------------------------

class _Check:
    """Field checks that raise ``RecordError`` naming the member and the field."""

    def __init__(self, where: str, body: Mapping[str, Any]) -> None:
        self.where = where
        self.body = body

    def fail(self, what: str) -> RecordError:
        return RecordError(f"{self.where}: {what}")

    def integer(self, key: str, low: int, high: int, optional: bool = False,
                value: Any = ...) -> int | None:
        if value is ...:
            value = self.body.get(key)
        if value is None and optional:
            return None
        if isinstance(value, str) and value.isdigit() and value.isascii():
            value = int(value)
        if type(value) is not int or not low <= value <= high:
            raise self.fail(f"{key} {value!r} is not a whole number in {low}..{high}")
        return value

    def number(self, key: str, optional: bool = False) -> float | None:
        """A time in epoch seconds (JSON's Infinity and NaN are not times)."""
        value = self.body.get(key)
        if value is None and optional:
            return None
        if type(value) not in (int, float) or not 0 <= value < TIME_MAX:
            raise self.fail(f"{key} {value!r} is not a time")
        return value

    def text(self, key: str, optional: bool = False) -> str | None:
        value = self.body.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise self.fail(f"{key} {value!r} is not a string")
        return value

    def name(self, key: str, check, what: str) -> str:
        value = self.body.get(key)
        if not check(value):
            raise self.fail(f"invalid {what} {value!r}")
        return value

    def names(self, key: str, check, what: str) -> tuple[str, ...]:
        value = self.body.get(key)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.fail(f"{key} is not a list")
        for item in value:
            if not check(item):
                raise self.fail(f"invalid {what} {item!r} in {key}")
        return tuple(value)

    def strings(self, key: str) -> tuple[str, ...]:
        """A list of strings (free text, such as logical names); absent or null is empty."""
        value = self.body.get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self.fail(f"{key} is not a list of strings")
        return tuple(value)

    def entries(self, key: str) -> list[Any]:
        value = self.body.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(f"{key} is not a list")
        return value

    def flags(self, value: Any) -> str:
        if not isinstance(value, str) or not set(value) <= SYSTEM_FLAGS:
            raise self.fail(f"flags {value!r} are not Maildir system flag letters")
        return "".join(sorted(set(value)))

    def keywords(self, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(valid_keyword(k) for k in value):
            raise self.fail(f"keywords {value!r} are not IMAP keywords")
        return tuple(value)


# -- header --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ArchiveHeader:
    """The first member: what was backed up, when, how."""

    created: int                       # the backup's start time (epoch seconds)
    since: float | None                # -d of an incremental; None for a full backup
    blocking_factor: int
    names: tuple[str, ...]
    archive_id: str | None = None      # absent in archives written before identities
    host: str = ""
    tool: str = ""
    since_text: str | None = None
    store: str = "dovecot-maildir"
    options: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def kind(self) -> str:
        return FULL if self.since is None else INCREMENTAL

    @property
    def version(self) -> int:
        """The archive format version it was read with (checked by the reader)."""
        return int(self.raw.get("version", 1))

    @classmethod
    def decode(cls, body: Mapping[str, Any], where: str) -> "ArchiveHeader":
        c = _Check(where, body)
        # kept whole (``raw``, which imsrestore -h prints): no deeper than a reader can show
        if _nested_deeper(body, limits.MAX_JSON_DEPTH):
            raise c.fail(f"nested deeper than {limits.MAX_JSON_DEPTH} levels")
        created = c.integer("created", 0, TIME_MAX)
        archive_id = c.text("archive_id", optional=True)
        if archive_id is not None and not re.fullmatch(r"[0-9a-f]{32}", archive_id):
            raise c.fail(f"archive_id {archive_id!r} is not 32 hex digits")
        names = body.get("names") or []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise c.fail("names is not a list of strings")
        options = body.get("options") or {}
        return cls(created=created, since=c.number("since", optional=True),
                   blocking_factor=c.integer("blocking_factor", 1, 2048),
                   names=tuple(names), archive_id=archive_id,
                   host=str(body.get("host") or ""), tool=str(body.get("tool") or ""),
                   since_text=c.text("since_text", optional=True),
                   store=str(body.get("store") or "dovecot-maildir"),
                   options=options if isinstance(options, dict) else {}, raw=dict(body))

    def encode(self, format_name: str, version: int, created_iso: str) -> dict[str, Any]:
        return {"format": format_name, "version": version, "archive_id": self.archive_id,
                "tool": self.tool, "host": self.host, "created": self.created,
                "created_iso": created_iso, "names": list(self.names), "since": self.since,
                "since_text": self.since_text, "blocking_factor": self.blocking_factor,
                "options": self.options, "store": self.store}


# -- user ----------------------------------------------------------------------------------

IDENTITY_MAX = 2**64 - 1


class UnchangedFolder(NamedTuple):
    """An incremental's folder in which nothing changed since its date (format version 2:
    an entry of its user's record, not a member of its own)."""

    folder: str
    identity: int | None


@dataclass(frozen=True)
class UserRecord:
    partition: str
    user: str
    group: str
    uid: int
    gid: int
    subscriptions: tuple[str, ...]
    folders: tuple[str, ...]
    excluded_folders: tuple[str, ...] = ()
    unchanged: tuple[UnchangedFolder, ...] = ()
    unchanged_since: float | None = None        # set when ``unchanged`` is not empty

    @property
    def logical(self) -> str:
        return f"/{self.partition}/{self.group}/{self.user}"

    def unchanged_states(self) -> list["FolderRecord"]:
        """The unchanged folders as the folder states a version 1 archive had for them, so
        that every reader handles them one way whichever version it reads."""
        return [FolderRecord(self.partition, self.user, entry.folder, self.unchanged_since,
                             None, None, None, (), None, identity=entry.identity)
                for entry in self.unchanged]

    @classmethod
    def decode(cls, body: Mapping[str, Any], where: str) -> "UserRecord":
        c = _Check(where, body)
        subscriptions = body.get("subscriptions") or []
        if not isinstance(subscriptions, list) or not all(isinstance(s, str) for s in subscriptions):
            raise c.fail("subscriptions is not a list of names")
        folders = c.names("folders", valid_folder, "folder")
        unchanged = _unchanged_folders(c, folders)
        return cls(partition=c.name("partition", valid_partition, "partition"),
                   user=c.name("user", valid_user, "user"),
                   group=c.text("group", optional=True) or "",
                   uid=c.integer("uid", 0, 2**32 - 1, optional=True) or 0,
                   gid=c.integer("gid", 0, 2**32 - 1, optional=True) or 0,
                   # a subscription to a name we could not restore is dropped, not an error
                   subscriptions=tuple(s for s in subscriptions if valid_folder(s)),
                   folders=folders,
                   excluded_folders=c.strings("excluded_folders"),
                   unchanged=unchanged,
                   unchanged_since=c.number("unchanged_since", optional=not unchanged))

    def encode(self) -> dict[str, Any]:
        body = {"partition": self.partition, "user": self.user, "group": self.group,
                "uid": self.uid, "gid": self.gid, "subscriptions": list(self.subscriptions),
                "folders": list(self.folders), "excluded_folders": list(self.excluded_folders)}
        if self.unchanged:
            body["unchanged_since"] = self.unchanged_since
            body["unchanged"] = [[entry.folder, entry.identity] for entry in self.unchanged]
        return body


def _unchanged_folders(c: _Check, folders: tuple[str, ...]) -> tuple[UnchangedFolder, ...]:
    """A user record's ``unchanged`` entries, each ``[folder, identity or null]``: a folder
    of the record's ``folders``, listed once."""
    known = set(folders)
    seen: set[str] = set()
    entries = []
    for entry in c.entries("unchanged"):
        if type(entry) is not list or len(entry) != 2:
            raise c.fail(f"unchanged entry {entry!r} is not [folder, identity]")
        folder, identity = entry
        if not valid_folder(folder):
            raise c.fail(f"invalid folder {folder!r} in unchanged")
        if folder in seen:
            raise c.fail(f"folder {folder!r} is listed twice in unchanged")
        if folder not in known:
            raise c.fail(f"unchanged folder {folder!r} is not among the user's folders")
        seen.add(folder)
        entries.append(UnchangedFolder(folder, c.integer(
            f"identity of unchanged folder {folder!r}", 0, IDENTITY_MAX, optional=True,
            value=identity)))
    return tuple(entries)


# -- folder state --------------------------------------------------------------------------

class ListedMessage(NamedTuple):
    """One message as the folder listed it at backup time (a tuple: cheap to make in bulk)."""

    key: str
    uid: int | None
    flags: str
    keywords: tuple[str, ...]


@dataclass(frozen=True)
class FolderRecord:
    partition: str
    user: str
    folder: str
    unchanged_since: float | None
    uidvalidity: int | None
    next_uid: int | None
    guid: str | None
    keywords: tuple[str, ...]
    messages: tuple[ListedMessage, ...] | None     # None: unchanged since an earlier backup
    highest_modseq: int | None = None
    identity: int | None = None          # follows the folder through a rename

    @property
    def unchanged(self) -> bool:
        return self.unchanged_since is not None

    def highest_uid(self) -> int:
        return max((m.uid for m in self.messages or () if m.uid is not None), default=0)

    @classmethod
    def decode(cls, body: Mapping[str, Any], where: str) -> "FolderRecord":
        c = _Check(where, body)
        partition = c.name("partition", valid_partition, "partition")
        user = c.name("user", valid_user, "user")
        folder = c.name("folder", valid_folder, "folder")
        unchanged_since = c.number("unchanged_since", optional=True)
        identity = c.integer("identity", 0, IDENTITY_MAX, optional=True)
        if unchanged_since is not None:
            return cls(partition, user, folder, unchanged_since, None, None, None, (), None,
                       identity=identity)
        guid = c.text("guid", optional=True)
        if guid is not None and not _GUID.match(guid):
            raise c.fail(f"guid {guid!r} is not 32 hex digits")
        raw = body.get("messages")
        if not isinstance(raw, list):
            raise c.fail("messages is not a list")
        messages = []
        keys: set[str] = set()
        uids: set[int] = set()
        key_ok, flags_ok = _KEY.match, SYSTEM_FLAGS.issuperset
        # one pass, checks inlined: a folder state lists every message of its folder
        for item in raw:
            if type(item) is not list or len(item) != 4:
                raise c.fail(f"message entry {item!r} is not [name, uid, flags, keywords]")
            key, uid, flags, keywords = item
            if type(key) is not str or key_ok(key) is None:
                raise c.fail(f"invalid message name {key!r}")
            if key in keys:
                raise c.fail(f"message name {key!r} is listed twice")
            keys.add(key)
            if uid is not None:
                if type(uid) is not int or not 1 <= uid <= UID_MAX:
                    raise c.fail(f"uid {uid!r} of {key!r} is not a whole number in 1..{UID_MAX}")
                if uid in uids:
                    raise c.fail(f"UID {uid} is listed twice")
                uids.add(uid)
            if type(flags) is not str or not flags_ok(flags):
                raise c.fail(f"flags {flags!r} are not Maildir system flag letters")
            if type(keywords) is not list:
                raise c.fail(f"keywords {keywords!r} are not IMAP keywords")
            if keywords:
                keywords = c.keywords(keywords)
            messages.append(ListedMessage(key, uid, flags, tuple(keywords)))
        keywords_list = body.get("keywords") or []
        return cls(partition, user, folder, None,
                   uidvalidity=c.integer("uidvalidity", 1, UIDVALIDITY_MAX, optional=True),
                   next_uid=c.integer("next_uid", 1, NEXT_UID_MAX, optional=True),
                   guid=guid, keywords=c.keywords(keywords_list),
                   messages=tuple(messages),
                   highest_modseq=c.integer("highest_modseq", 0, MODSEQ_MAX, optional=True),
                   identity=identity)

    def encode(self) -> dict[str, Any]:
        return self.encode_listed(
            self.partition, self.user, self.folder, self.unchanged_since, self.uidvalidity,
            self.next_uid, self.guid, list(self.keywords), self.highest_modseq,
            None if self.messages is None else
            [[m.key, m.uid, m.flags, list(m.keywords)] for m in self.messages], self.identity)

    @staticmethod
    def encode_listed(partition: str, user: str, folder: str, unchanged_since: float | None,
                      uidvalidity: int | None, next_uid: int | None, guid: str | None,
                      keywords: list[str], highest_modseq: int | None,
                      messages: list[list[Any]] | None,
                      identity: int | None = None) -> dict[str, Any]:
        """The JSON of a folder state from a listing already in wire form
        (``[key, uid, flags, [keywords]]``): the backup's hot path builds no objects."""
        if messages is None:
            return {"partition": partition, "user": user, "folder": folder,
                    "unchanged_since": unchanged_since, "uidvalidity": None,
                    "next_uid": None, "guid": None, "keywords": None,
                    "highest_modseq": None, "messages": None, "identity": identity}
        return {"partition": partition, "user": user, "folder": folder,
                "unchanged_since": None, "uidvalidity": uidvalidity, "next_uid": next_uid,
                "guid": guid, "keywords": keywords, "highest_modseq": highest_modseq,
                "messages": messages, "identity": identity}


# -- message -------------------------------------------------------------------------------

class MessageRecord(NamedTuple):
    """A message member's metadata (its pax records), in store-neutral terms.  A tuple:
    cheap to make once per message and to hand over between processes."""

    key: str
    uid: int | None
    flags: str
    keywords: tuple[str, ...]
    internaldate: int
    is_new: bool
    size: int
    sha256: str | None                 # None on a hard-link member
    links: int = 1                     # hard-link count at backup time

    @classmethod
    def decode(cls, pax: Mapping[str, str], name: str, size: int, mtime: int,
               is_link: bool) -> "MessageRecord":
        key = pax.get("IMS.basename", "")
        if not valid_key(key):
            raise RecordError(f"message member {name!r}: invalid message name {key!r}")
        if not name.endswith("/" + key):
            raise RecordError(f"message member {name!r}: its name does not end with"
                              f" IMS.basename {key!r}")
        try:
            uid_text = pax.get("IMS.uid")
            uid = None
            if uid_text:
                if not uid_text.isdigit() or not uid_text.isascii():
                    raise ValueError(f"IMS.uid {uid_text!r}")
                uid = int(uid_text)
                if not 1 <= uid <= UID_MAX:
                    raise ValueError(f"IMS.uid {uid_text!r} is out of range")
            flags = pax.get("IMS.flags", "")
            if not SYSTEM_FLAGS.issuperset(flags):
                raise ValueError(f"IMS.flags {flags!r}")
            words = pax.get("IMS.keywords", "")
            keywords = tuple(words.split(" ")) if words else ()
            if keywords and not all(valid_keyword(k) for k in keywords):
                raise ValueError(f"IMS.keywords {words!r}")
            date_text = pax.get("IMS.internaldate")
            internaldate = mtime if date_text is None else int(date_text)
            if not -TIME_MAX < internaldate < TIME_MAX:
                raise ValueError(f"IMS.internaldate {date_text!r}")
            links = int(pax.get("IMS.links") or 1)
            if links < 1:
                raise ValueError(f"IMS.links {links}")
            sha = pax.get("IMS.sha256")
            if is_link:
                sha = None
            elif sha is None or not _SHA256.match(sha):
                raise ValueError(f"IMS.sha256 {sha!r}")
            size_text = pax.get("IMS.size")
            if size_text is None or not size_text.isdigit() or not size_text.isascii() or \
                    (not is_link and int(size_text) != size):
                raise ValueError(f"IMS.size {size_text!r} (the member holds {size} bytes)")
            if max(size, int(size_text)) > limits.MAX_MESSAGE_SIZE:
                raise ValueError(f"size {max(size, int(size_text))} is over the limit of"
                                 f" {limits.MAX_MESSAGE_SIZE} bytes for a message")
        except ValueError as exc:
            raise RecordError(f"message member {name!r}: {exc}") from None
        return cls(key, uid, flags, keywords, internaldate, pax.get("IMS.state") == "new",
                   int(size_text), sha, links)


# -- trailer -------------------------------------------------------------------------------

@dataclass(frozen=True)
class FolderExtent:
    partition: str
    user: str
    folder: str
    offset: int
    end: int
    messages: int


@dataclass(frozen=True)
class UserExtent:
    partition: str
    user: str
    group: str
    offset: int


class StringTable:
    """The distinct strings of a trailer's two indexes, each held once and named by its
    number (the folder index and the users list name the same users)."""

    def __init__(self) -> None:
        self.strings: list[str] = []
        self.ids: dict[str, int] = {}

    def number(self, text: str) -> int:
        number = self.ids.get(text)
        if number is None:
            number = self.ids[text] = len(self.strings)
            self.strings.append(text)
        return number

    def __getstate__(self) -> list[str]:
        return self.strings

    def __setstate__(self, strings: list[str]) -> None:
        self.strings = strings
        self.ids = {text: number for number, text in enumerate(strings)}


class _CompactIndex:
    """A trailer index held compactly: each entry's names as numbers into a table of
    distinct strings (a partition, a user or a folder name comes back many times; the table
    is shared with the trailer's other index), its numbers in an ``array('Q')``; entries
    are made as they are read.  At 1,000,000 messages (70,000 folders, 10,000 users) both
    indexes take some 4 MiB; as objects they had taken about 30."""

    _FIELDS = 0         # strings an entry has
    _NUMBERS = 0        # numbers an entry has

    def __init__(self, table: StringTable | None = None) -> None:
        self._table = table if table is not None else StringTable()
        self._complete = False
        self._names = array("I")
        self._numbers = array("Q")

    def _add(self, names: tuple[str, ...], numbers: tuple[int, ...]) -> None:
        assert not self._complete, "the index is complete"
        number = self._table.number
        self._names.extend([number(name) for name in names])
        self._numbers.extend(numbers)

    def complete(self) -> None:
        """No more entries."""
        self._complete = True

    def _id(self, text: str) -> int | None:
        return self._table.ids.get(text)

    def __len__(self) -> int:
        return len(self._numbers) // self._NUMBERS if self._NUMBERS else 0

    def _entry(self, index: int) -> tuple[list[str], list[int]]:
        names = self._names[index * self._FIELDS:(index + 1) * self._FIELDS]
        strings = self._table.strings
        return ([strings[n] for n in names],
                list(self._numbers[index * self._NUMBERS:(index + 1) * self._NUMBERS]))

    def __iter__(self):
        for index in range(len(self)):
            yield self[index]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._make(i) for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        return self._make(index % len(self))

    def _make(self, index: int) -> Any:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _CompactIndex) and list(self) == list(other)

    def __getstate__(self) -> dict[str, Any]:
        return {"table": self._table, "names": self._names, "numbers": self._numbers}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._table, self._names, self._numbers = (state["table"], state["names"],
                                                   state["numbers"])
        self._complete = True


_NO_RUN = -1


class FolderIndex(_CompactIndex):
    """Folder extents; a user's folders are found through the first entry of each of their
    runs (the writer lists a user's folders together), found on the first lookup: an array
    by the user's string number, and the few user IDs with more than one run (the same ID on
    two partitions, or an index not in the writer's order) in a dict."""

    _FIELDS, _NUMBERS = 3, 3
    _runs: array | None = None                  # user's string number -> first run's index
    _more_runs: dict[int, list[int]]            # user's string number -> its later runs

    def _build_runs(self) -> array:
        runs = array("q", [_NO_RUN]) * len(self._table.strings)
        more: dict[int, list[int]] = {}
        names = self._names
        previous = (-1, -1)
        for index in range(len(self)):
            key = (names[index * 3], names[index * 3 + 1])
            if key != previous:
                user = key[1]
                if runs[user] == _NO_RUN:
                    runs[user] = index
                else:
                    more.setdefault(user, []).append(index)
                previous = key
        self._runs, self._more_runs = runs, more
        return runs

    def of_user(self, partition: str, user: str) -> Iterator[FolderExtent]:
        """The user's folder extents, in index order."""
        runs = self._runs if self._runs is not None else self._build_runs()
        key_p, key_u = self._id(partition), self._id(user)
        if key_p is None or key_u is None or key_u >= len(runs) or runs[key_u] == _NO_RUN:
            return
        names = self._names
        for start in (runs[key_u], *self._more_runs.get(key_u, ())):
            if names[start * 3] != key_p:
                continue                        # the same ID on another partition
            for index in range(start, len(self)):
                if names[index * 3] != key_p or names[index * 3 + 1] != key_u:
                    break
                yield self._make(index)

    def find(self, partition: str, user: str, folder: str) -> FolderExtent | None:
        for extent in self.of_user(partition, user):
            if extent.folder == folder:
                return extent
        return None

    def append(self, extent: FolderExtent) -> None:
        self._add((extent.partition, extent.user, extent.folder),
                  (extent.offset, extent.end, extent.messages))

    def _make(self, index: int) -> FolderExtent:
        (partition, user, folder), (offset, end, messages) = self._entry(index)
        return FolderExtent(partition, user, folder, offset, end, messages)


class UserIndex(_CompactIndex):
    _FIELDS, _NUMBERS = 3, 1

    def append(self, extent: UserExtent) -> None:
        self._add((extent.partition, extent.user, extent.group), (extent.offset,))

    def _make(self, index: int) -> UserExtent:
        (partition, user, group), (offset,) = self._entry(index)
        return UserExtent(partition, user, group, offset)


_BIG = 2**62


def _folder_extent(entry: Any, where: str) -> FolderExtent:
    e = _Check(where + " (index)", entry if isinstance(entry, dict) else {})
    if _nested_deeper(e.body, 1):
        raise e.fail("an index entry holds a list or an object")
    offset, end = e.integer("offset", 0, _BIG), e.integer("end", 0, _BIG)
    if end < offset:
        raise e.fail(f"folder extent ends ({end}) before it starts ({offset})")
    return FolderExtent(e.name("partition", valid_partition, "partition"),
                        e.name("user", valid_user, "user"),
                        e.name("folder", valid_folder, "folder"),
                        offset, end, e.integer("messages", 0, _BIG))


def _drop(checked: object) -> None:
    """An index entry checked and not kept (``TrailerRecord.decode_stream``)."""


def _user_extent(entry: Any, where: str) -> UserExtent:
    e = _Check(where + " (users)", entry if isinstance(entry, dict) else {})
    if _nested_deeper(e.body, 1):
        raise e.fail("a users entry holds a list or an object")
    return UserExtent(e.name("partition", valid_partition, "partition"),
                      e.name("user", valid_user, "user"),
                      e.text("group", optional=True) or "",
                      e.integer("offset", 0, _BIG))


@dataclass(frozen=True)
class TrailerRecord:
    trailer_offset: int
    digest: str
    counts: dict[str, int]
    skipped: tuple[str, ...]
    excluded_folders: tuple[str, ...]
    folders: FolderIndex
    users: UserIndex
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def decode(cls, body: Mapping[str, Any], where: str) -> "TrailerRecord":
        """From a trailer parsed whole (``index`` and ``users`` as lists)."""
        c = _Check(where, body)
        table = StringTable()
        folders, users = FolderIndex(table), UserIndex(table)
        for entry in c.entries("index"):
            folders.append(_folder_extent(entry, where))
        for entry in c.entries("users"):
            users.append(_user_extent(entry, where))
        return cls.from_parts({k: v for k, v in body.items() if k not in ("index", "users")},
                              folders, users, where)

    @classmethod
    def decode_stream(cls, chunks: Iterable[bytes], where: str,
                      keep_index: bool = True,
                      keep_users: bool | None = None) -> "TrailerRecord":
        """From the trailer member's text in chunks (``ims.archive.jsonstream``): each
        ``index`` and ``users`` entry is checked and stored compactly as it is parsed, so the
        whole index is never held as JSON objects (at 1,000,000 messages that had been some
        60 MiB for a moment).  With ``keep_index`` false every entry is checked and none
        kept (``folders`` and ``users`` are empty): for a reader that only verifies the
        trailer (at 1,000,000 messages the compact index is some 5 MiB); ``keep_users`` (by
        default as ``keep_index``) keeps the users' entries alone.  ``ArchiveDamaged``
        when the text is not JSON, RecordError when a value is not valid."""
        table = StringTable()
        folders, users = FolderIndex(table), UserIndex(table)
        add_folder = folders.append if keep_index else _drop
        add_user = users.append if (keep_index if keep_users is None else keep_users) else _drop
        body = parse_object(chunks, {
            "index": lambda entry: add_folder(_folder_extent(entry, where)),
            "users": lambda entry: add_user(_user_extent(entry, where)),
        }, where)
        return cls.from_parts(body, folders, users, where)

    @classmethod
    def from_parts(cls, body: Mapping[str, Any], folders: FolderIndex, users: UserIndex,
                   where: str) -> "TrailerRecord":
        c = _Check(where, body)
        for key in ("index", "users"):
            if body.get(key) is not None:     # the lists went to ``folders`` and ``users``
                raise c.fail(f"{key} is not a list")
        if _nested_deeper(body, limits.MAX_JSON_DEPTH):
            raise c.fail(f"nested deeper than {limits.MAX_JSON_DEPTH} levels")
        counts = body.get("counts") or {}
        if not isinstance(counts, dict):
            raise c.fail("counts is not an object")
        folders.complete()
        users.complete()
        return cls(trailer_offset=c.integer("trailer_offset", 0, _BIG),
                   digest=c.text("digest") or "", counts=dict(counts),
                   skipped=c.strings("skipped"), excluded_folders=c.strings("excluded_folders"),
                   folders=folders, users=users,
                   # without the index: it is held once, compactly, in folders and users
                   raw=dict(body))

    def folder(self, partition: str, user: str, folder: str) -> FolderExtent | None:
        return self.folders.find(partition, user, folder)
