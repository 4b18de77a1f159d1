"""A stand-in for the parts of Legato/Dell NetWorker that the integration uses, for tests only.

NetWorker is proprietary and cannot be installed here.  This module imitates its documented
client-side behaviour (docs/networker.md lists what is and is not verified), not its wire
formats: records are kept as files in a state directory, not on media.

- ``save [-s server] [-g group] [-N name] [-i] path...``: walks each path, reading a
  directory's ``.nsr`` before its entries.  Directives: ``[+]asm [args] : pattern...``
  (``+`` also applies below; patterns are shell patterns, quoted when they hold spaces),
  ``<< dir >>``, ``forget``/``ignore``/``allow``, ``#`` comments.  The closest directory's
  directives win, and within a file the last matching line.  Built-in ASMs: ``skip`` (no
  record), ``null`` (name only), ``uasm``/``always``/``holey`` (the file's bytes).  Any
  other ASM must be named ``...asm`` and sit beside this ``save`` (NetWorker's rule); it is
  run as ``ASM -s [args] path`` and its stdout is the record.  A directory matched by an
  ASM spec is handed to the ASM whole.  Each record keeps its ASM name and arguments.  An
  ASM that fails leaves a record marked failed and makes save exit 1.
- ``recover -a -f -s server path...``: the latest complete record of each path (or of every
  path below it) is fed to its recorded ASM as ``ASM -r path`` on stdin.
- ``savepnpc -s server -g group path...``: reads ``$NSR_RES/<group>.res`` (NSR resource
  syntax, one resource, ``type: savepnpc;``), runs the precmds once per group run (a lock in
  ``$NSR_TMP``, as preclntsave does); a failing precmd means no save and exit 1; then the
  saves, then the pstcmds.
- ``nsradmin -s server -i file``: ``create`` commands in the NSR resource syntax (below),
  read strictly; the resources are stored.
- ``savegrp [-G] group``: runs each client of the group (``Default`` when none
  is named) with its backup command, its server and its save sets.

Environment: ``NSR_STATE`` (records, resources), ``NSR_RES`` (the .res files), ``NSR_TMP``.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

INTERNAL_ASMS = {"skip", "null", "nullasm", "uasm", "always", "holey"}


class StandinError(Exception):
    pass


# -- NSR resource syntax -------------------------------------------------------------------
#
# nsr_resource(5): ``attribute: value, value; attribute: value`` where a physical line ending
# in ``,``, ``;`` or ``\`` (after trailing blanks, outside quotes) continues on the next one;
# ``#`` starts a comment; values are plain words or double-quoted with ``\"`` and ``\\``.
# Read strictly, as a careful NetWorker would: what it might read otherwise than meant (an
# attribute twice, say, when two commands run together) is an error naming the line.

@dataclass
class Logical:
    """One logical line: the physical line it starts on, its text, and for each character
    of the text the physical line it came from (so errors name the line at fault)."""
    first: int
    text: str = ""
    lines: list[int] = field(default_factory=list)

    def add(self, text: str, number: int) -> None:
        self.text += text
        self.lines.extend([number] * len(text))

    def line_at(self, index: int) -> int:
        return self.lines[min(index, len(self.lines) - 1)] if self.lines else self.first


def strip_comment(raw: str, where: str) -> str:
    """The line without its ``#`` comment; a quote left open is an error."""
    quoted = False
    i = 0
    while i < len(raw):
        ch = raw[i]
        if quoted and ch == "\\":
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        elif ch == "#" and not quoted:
            return raw[:i]
        i += 1
    if quoted:
        raise StandinError(f"{where}: unterminated quote")
    return raw


def logical_lines(text: str, where: str) -> list[Logical]:
    result: list[Logical] = []
    current: Logical | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        body = strip_comment(raw, f"{where}:{number}").rstrip()
        if not body:
            continue                   # blank and comment lines neither end nor continue one
        current = current or Logical(number)
        if body.endswith("\\"):
            current.add(body[:-1], number)     # joined where it was cut
        else:
            current.add(body + ("\n" if body[-1] in ",;" else ""), number)
        continued = body[-1] in ",;\\"
        if not continued:
            result.append(current)
            current = None
    if current is not None:
        result.append(current)
    return result


def parse_attributes(line: Logical, start: int, where: str) -> dict[str, list[str]]:
    """``name: value, "quoted value"; name2: ...`` from ``start`` on -> {name: [values]}."""
    text, i = line.text, start
    attrs: dict[str, list[str]] = {}
    while True:
        i = skip_blanks(text, i)
        if i >= len(text):
            return attrs
        colon = text.find(":", i)
        name = " ".join(text[i:colon].split()).lower() if colon >= 0 else ""
        if not name or any(ch in name for ch in '";,\\'):
            raise StandinError(f"{where}:{line.line_at(i)}: expected 'attribute: value'"
                               f" at {text[i:i + 30].splitlines()[0]!r}")
        values, i = parse_values(line, colon + 1, name, where)
        if name in attrs:
            raise StandinError(f"{where}:{line.line_at(colon)}: attribute {name!r} given twice"
                               " in one command")
        attrs[name] = values


def skip_blanks(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\n":
        i += 1
    return i


def parse_values(line: Logical, i: int, name: str, where: str) -> tuple[list[str], int]:
    """The values of one attribute, up to and past its ``;`` (or the end of the line)."""
    text = line.text
    values: list[str] = []
    while True:
        i = skip_blanks(text, i)
        if i >= len(text) or text[i] == ";":
            if values:
                raise StandinError(f"{where}:{line.line_at(i)}: {name!r}: a ',' with no value after it")
            return values, i + 1
        if text[i] == '"':
            value, i = parse_quoted(line, i, where)
        else:
            end = i
            while end < len(text) and text[end] not in ",;":
                end += 1
            value = text[i:end].strip()
            if '"' in value:
                raise StandinError(f"{where}:{line.line_at(i)}: {name!r}: a quote inside a value")
            i = end
        values.append(value)
        i = skip_blanks(text, i)
        if i >= len(text) or text[i] == ";":
            return values, i + 1
        if text[i] != ",":
            raise StandinError(f"{where}:{line.line_at(i)}: {name!r}: text after a quoted value")
        i += 1


def parse_quoted(line: Logical, i: int, where: str) -> tuple[str, int]:
    """A double-quoted value starting at ``i``; ``\\"`` and ``\\\\`` are its only escapes."""
    text = line.text
    out: list[str] = []
    i += 1
    while i < len(text) and text[i] != '"':
        if text[i] == "\\":
            if i + 1 >= len(text) or text[i + 1] not in '"\\':
                raise StandinError(f"{where}:{line.line_at(i)}: unknown escape"
                                   f" {text[i:i + 2]!r} in a quoted value")
            i += 1
        out.append(text[i])
        i += 1
    if i >= len(text):                         # strip_comment already refuses this
        raise StandinError(f"{where}:{line.line_at(i)}: unterminated quote")
    return "".join(out), i + 1


RES_ATTRIBUTES = ("type", "precmd", "pstcmd", "timeout", "abort precmd with group")


def parse_res(path: Path) -> dict[str, list[str]]:
    """A savepnpc ``.res`` file: one resource, every field ending with ``;``."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise StandinError(f"{path}: {exc.strerror}") from None
    lines = logical_lines(text, str(path))
    if not lines:
        raise StandinError(f"{path}: empty")
    first = lines[0]
    if len(lines) > 1 or not first.text.rstrip().endswith(";"):
        # the resource ended early: the field on that line has no ';'
        raise StandinError(f"{path}:{first.line_at(len(first.text))}: field does not end with ';'")
    attrs = parse_attributes(first, 0, str(path))
    if attrs.get("type") != ["savepnpc"]:
        raise StandinError(f"{path}: 'type: savepnpc;' missing")
    for key in attrs:
        if key not in RES_ATTRIBUTES:
            raise StandinError(f"{path}: unknown attribute {key!r}")
    return attrs


@dataclass
class Command:
    name: str
    attrs: dict[str, list[str]]
    line: int


NSRADMIN_COMMANDS = ("create",)


def parse_nsradmin(text: str, where: str) -> list[Command]:
    """nsradmin commands, each the command word and an attribute list: ``create`` (a resource,
    needing type and name) is the only one the stand-in knows."""
    commands = []
    for line in logical_lines(text, where):
        start = skip_blanks(line.text, 0)
        end = start
        while end < len(line.text) and line.text[end] not in " \t\n":
            end += 1
        word = line.text[start:end]
        if word not in NSRADMIN_COMMANDS:
            raise StandinError(f"{where}:{line.first}: unknown command {word!r}"
                               f" (the stand-in knows {', '.join(NSRADMIN_COMMANDS)})")
        attrs = parse_attributes(line, end, where)
        if word == "create" and not (attrs.get("type") and attrs.get("name")):
            raise StandinError(f"{where}:{line.first}: create needs type and name")
        commands.append(Command(word, attrs, line.first))
    return commands


# -- .nsr directives -----------------------------------------------------------------------

@dataclass
class AsmSpec:
    asm: str
    args: list[str]
    patterns: list[str]
    inherit: bool


@dataclass
class Directives:
    specs: dict[Path, list[AsmSpec]] = field(default_factory=dict)
    ignore_below: bool = False


def parse_nsr(path: Path) -> list[tuple[Path, AsmSpec | str]]:
    """A .nsr file -> [(directory it applies to, spec or environment keyword)]."""
    directory = path.parent
    current = directory
    result: list[tuple[Path, AsmSpec | str]] = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        try:
            words = shlex.split(raw, comments=True)
        except ValueError as exc:
            raise StandinError(f"{path}:{number}: {exc}") from None
        if not words:
            continue
        line = " ".join(words)
        if line.startswith("<<"):
            if not line.endswith(">>"):
                raise StandinError(f"{path}:{number}: '<< dir >>' not closed")
            target = line[2:-2].strip()
            current = Path(target) if target.startswith("/") else directory / target
            continue
        if len(words) == 1 and words[0] in ("forget", "ignore", "allow"):
            result.append((current, words[0]))
            continue
        if ":" not in words:
            # "imsasm: INBOX" splits as ["imsasm:", "INBOX"]
            split_at = next((i for i, w in enumerate(words) if w.endswith(":")), None)
            if split_at is None:
                raise StandinError(f"{path}:{number}: expected '[+]asm [args] : pattern...'")
            head = words[:split_at] + [words[split_at][:-1]]
            patterns = words[split_at + 1:]
        else:
            split_at = words.index(":")
            head, patterns = words[:split_at], words[split_at + 1:]
        if not head or not head[0] or not patterns:
            raise StandinError(f"{path}:{number}: an ASM spec needs an ASM and a pattern")
        asm = head[0]
        inherit = asm.startswith("+")
        asm = asm.lstrip("+")
        for pattern in patterns:
            if "/" in pattern or pattern == "..":
                raise StandinError(f"{path}:{number}: pattern {pattern!r} may not contain '/'")
        result.append((current, AsmSpec(asm, head[1:], patterns, inherit)))
    return result


# -- save, recover ---------------------------------------------------------------------------

def state_dir() -> Path:
    path = Path(os.environ.get("NSR_STATE", "/nsr/standin"))
    (path / "data").mkdir(parents=True, exist_ok=True)
    return path


def load_records() -> list[dict]:
    path = state_dir() / "records.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def add_record(record: dict) -> None:
    with open(state_dir() / "records.jsonl", "a") as out:
        out.write(json.dumps(record) + "\n")


def bin_dir() -> Path:
    return Path(os.path.abspath(sys.argv[0])).parent


def external_asm(name: str) -> Path:
    if not name.endswith("asm"):
        raise StandinError(f"ASM {name!r}: an external ASM's name must end in 'asm'")
    path = bin_dir() / name
    if not os.access(path, os.X_OK):
        raise StandinError(f"ASM {name!r} not found beside {bin_dir() / 'save'}")
    return path


class Saver:
    def __init__(self, group: str, ignore_directives: bool) -> None:
        self.group = group
        self.ignore_directives = ignore_directives
        self.inherited: list[tuple[Path, AsmSpec]] = []
        self.failed = 0
        self.saved = 0

    def _asm_for(self, path: Path, local: list[AsmSpec]) -> AsmSpec | None:
        name = path.name
        for spec in reversed(local):
            if any(fnmatch.fnmatchcase(name, p) for p in spec.patterns):
                return spec
        for _, spec in reversed(self.inherited):
            if any(fnmatch.fnmatchcase(name, p) for p in spec.patterns):
                return spec
        return None

    def walk(self, path: Path) -> None:
        if path.is_dir() and not path.is_symlink():
            local: list[AsmSpec] = []
            nsr = path / ".nsr"
            pushed = 0
            if nsr.exists() and not self.ignore_directives:
                for directory, item in parse_nsr(nsr):
                    if isinstance(item, str):
                        if item == "forget":
                            self.inherited.clear()
                        continue
                    if directory == path:
                        local.append(item)
                    if item.inherit:
                        self.inherited.append((directory, item))
                        pushed += 1
            self.record(path, None, directory=True)
            for entry in sorted(path.iterdir()):
                spec = self._asm_for(entry, local)
                if spec is not None and spec.asm == "skip":
                    continue
                if spec is not None and spec.asm not in INTERNAL_ASMS:
                    self.record(entry, spec)         # the ASM handles it, directory or not
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    self.walk(entry)
                else:
                    self.record(entry, spec)
            if pushed:
                del self.inherited[-pushed:]
        else:
            self.record(path, self._asm_for(path, []))

    def record(self, path: Path, spec: AsmSpec | None, directory: bool = False) -> None:
        ssid = f"{len(load_records()) + 1:08d}"
        data_path = state_dir() / "data" / ssid
        record = {"ssid": ssid, "path": str(path), "group": self.group,
                  "asm": spec.asm if spec else ("directory" if directory else "uasm"),
                  "args": spec.args if spec else [], "data": str(data_path), "complete": False}
        if directory:
            record["complete"] = True
        elif spec is not None and spec.asm in ("null", "nullasm"):
            record["complete"] = True
        elif spec is None or spec.asm in INTERNAL_ASMS:
            data_path.write_bytes(path.read_bytes())
            record["complete"] = True
        else:
            asm = external_asm(spec.asm)
            with open(data_path, "wb") as out:
                result = subprocess.run([str(asm), "-s", *spec.args, str(path)], stdout=out,
                                        stderr=subprocess.PIPE)
            record["exit"] = result.returncode
            record["stderr"] = result.stderr.decode(errors="replace")[-2000:]
            if result.returncode == 0 and data_path.stat().st_size > 0:
                record["complete"] = True
            else:
                self.failed += 1
                sys.stderr.write(f"save: {path}: ASM {spec.asm} failed (exit"
                                 f" {result.returncode}): {record['stderr'].strip()}\n")
        record["size"] = data_path.stat().st_size if data_path.exists() else 0
        add_record(record)
        self.saved += 1


def cmd_save(args: list[str]) -> int:
    paths, options = _options(args, with_value="sgNecblf", flags="iqvnxEBLKV")
    saver = Saver(options.get("g", ""), "i" in options)
    for raw in paths or ["."]:
        saver.walk(Path(os.path.abspath(raw)))
    return 1 if saver.failed else 0


def cmd_recover(args: list[str]) -> int:
    paths, options = _options(args, with_value="scdtiS", flags="afnq")
    if "a" not in options:
        raise StandinError("only automatic recovery (-a) is imitated")
    # -d DIR relocates: an external ASM is told with uasm's -m SRC=DST, SRC the path asked
    # for (NetWorker's exact form is not documented; this is the reading imsasm accepts)
    relocate_to = os.path.abspath(options["d"]) if "d" in options else None
    records = [r for r in load_records() if r["complete"]]
    status = 0
    for raw in paths:
        wanted = os.path.abspath(raw)
        latest: dict[str, dict] = {}
        for record in records:
            if record["path"] == wanted or record["path"].startswith(wanted.rstrip("/") + "/"):
                latest[record["path"]] = record
        if not latest:
            sys.stderr.write(f"recover: {raw}: not in the index\n")
            status = 1
            continue
        for path, record in sorted(latest.items()):
            asm = record["asm"]
            if asm in ("directory", "null", "nullasm"):
                continue
            if asm in INTERNAL_ASMS:
                target = Path(relocate_to + path) if relocate_to else Path(path)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(Path(record["data"]).read_bytes())
                continue
            relocation = ["-m", f"{wanted}={relocate_to}"] if relocate_to else []
            with open(record["data"], "rb") as stream:
                result = subprocess.run([str(external_asm(asm)), "-r", *relocation,
                                         *record["args"], path], stdin=stream)
            if result.returncode != 0:
                sys.stderr.write(f"recover: {path}: ASM {asm} failed (exit {result.returncode})\n")
                status = 1
    return status


def cmd_savepnpc(args: list[str]) -> int:
    paths, options = _options(args, with_value="sgcNebl", flags="iqvn")
    group = options.get("g")
    if not group:
        raise StandinError("savepnpc needs -g group")
    res = parse_res(Path(os.environ.get("NSR_RES", "/nsr/res")) / f"{group}.res")
    tmp = Path(os.environ.get("NSR_TMP", "/nsr/tmp"))
    tmp.mkdir(parents=True, exist_ok=True)
    marker = tmp / f"{group}.tmp"
    if not marker.exists():                      # precmds once per group run
        for command in res.get("precmd", []):
            if subprocess.run(command, shell=True).returncode != 0:
                sys.stderr.write(f"savepnpc: precmd {command!r} failed: no save\n")
                return 1
        marker.touch()
    try:
        status = cmd_save(["-g", group, *paths])
    finally:
        for command in res.get("pstcmd", []):
            subprocess.run(command, shell=True)
        marker.unlink(missing_ok=True)
    return status


def cmd_nsradmin(args: list[str]) -> int:
    _, options = _options(args, with_value="si", flags="")
    if "i" not in options:
        raise StandinError("only 'nsradmin -s server -i file' is imitated")
    source = Path(options["i"])
    try:
        text = source.read_text()
    except OSError as exc:
        raise StandinError(f"{source}: {exc.strerror}") from None
    store = state_dir() / "resources.json"
    existing = json.loads(store.read_text()) if store.exists() else []
    for command in parse_nsradmin(text, str(source)):
        where = f"{source}:{command.line}"
        resource = command.attrs
        kind, name = resource["type"][0], resource["name"][0]
        if kind == "NSR client":
            for needed in ("server", "group", "save set", "backup command"):
                if not resource.get(needed):
                    raise StandinError(f"{where}: NSR client without {needed!r}")
            groups = {r["name"][0] for r in existing if r["type"] == ["NSR group"]}
            if resource["group"][0] not in groups:
                raise StandinError(f"{where}: NSR client in unknown group {resource['group'][0]!r}")
        existing = [r for r in existing if (r["type"][0], r["name"][0]) != (kind, name)]
        existing.append(resource)
    store.write_text(json.dumps(existing))
    return 0


def cmd_savegrp(args: list[str]) -> int:
    paths, options = _options(args, with_value="G", flags="v")
    if len(paths) + ("G" in options) > 1:
        raise StandinError("savegrp runs one group")
    group = options.get("G") or (paths[0] if paths else "Default")
    store = state_dir() / "resources.json"
    resources = json.loads(store.read_text()) if store.exists() else []
    clients = [r for r in resources if r["type"] == ["NSR client"] and group in r.get("group", [])]
    if not clients:
        raise StandinError(f"no client in group {group!r}")
    status = 0
    for client in clients:
        command = client.get("backup command", ["save"])[0]
        program = str(bin_dir() / command)
        result = subprocess.run([program, "-s", client["server"][0], "-g", group,
                                 *client["save set"]])
        status = status or result.returncode
    return status


def _options(args: list[str], with_value: str, flags: str) -> tuple[list[str], dict[str, str]]:
    options: dict[str, str] = {}
    paths: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-") and len(arg) > 1:
            letter = arg[1]
            if letter in with_value:
                if i + 1 >= len(args) and not arg[2:]:
                    raise StandinError(f"option -{letter} needs a value")
                options[letter] = arg[2:] or args[i + 1]
                i += 1 if arg[2:] else 2
                continue
            for ch in arg[1:]:
                if ch not in flags:
                    raise StandinError(f"unknown option -{ch}")
                options[ch] = ""
            i += 1
            continue
        paths.append(arg)
        i += 1
    return paths, options


COMMANDS = {"save": cmd_save, "recover": cmd_recover, "savepnpc": cmd_savepnpc,
            "nsradmin": cmd_nsradmin, "savegrp": cmd_savegrp}


def main() -> int:
    name = os.path.basename(sys.argv[0])
    try:
        return COMMANDS[name](sys.argv[1:])
    except StandinError as exc:
        sys.stderr.write(f"{name}: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
