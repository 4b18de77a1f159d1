"""A stand-in for the parts of Legato/Dell NetWorker that the integration uses, for tests only.

NetWorker is proprietary and cannot be installed here.  This module imitates its documented
client-side behaviour (../shared/reference/ims-and-networker.md §10–§11), not its wire
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
  syntax, ``type: savepnpc;``), runs the precmds once per group run (a lock in ``$NSR_TMP``,
  as preclntsave does); a failing precmd means no save and exit 1; then the saves, then the
  pstcmds.
- ``nsradmin -s server -i file``: ``create type: ...; attr: value, ...;`` lines, stored.
- ``savegrp -s server group``: runs each client of the group with its backup command.

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

def parse_attributes(text: str, where: str) -> dict[str, list[str]]:
    """``name: value, "quoted value"; name2: ...;`` -> {name: [values]} (nsr_resource(5))."""
    attrs: dict[str, list[str]] = {}
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in " \t\r\n":
            i += 1
        if i >= n:
            return attrs
        colon = text.find(":", i)
        if colon < 0:
            raise StandinError(f"{where}: expected 'attribute: value;' near {text[i:i + 30]!r}")
        name = " ".join(text[i:colon].split()).lower()
        if not name or '"' in name or ";" in name:
            raise StandinError(f"{where}: bad attribute name {text[i:colon]!r}")
        i = colon + 1
        values: list[str] = []
        current: list[str] = []
        quoted = False
        while True:
            if i >= n:
                raise StandinError(f"{where}: attribute {name!r} does not end with ';'")
            ch = text[i]
            if ch == '"':
                if "".join(current).strip():
                    raise StandinError(f"{where}: text before a quote in {name!r}")
                current = []
                i += 1
                quoted = True
                while True:
                    if i >= n:
                        raise StandinError(f"{where}: unterminated quote in {name!r}")
                    if text[i] == "\\" and i + 1 < n:
                        current.append(text[i + 1])
                        i += 2
                        continue
                    if text[i] == '"':
                        i += 1
                        break
                    current.append(text[i])
                    i += 1
                continue
            if ch in ",;":
                value = "".join(current) if quoted else "".join(current).strip()
                if value or quoted:
                    values.append(value)
                current, quoted = [], False
                i += 1
                if ch == ";":
                    break
                continue
            if ch == "\\" and i + 1 < n and text[i + 1] == "\n":
                i += 2
                continue
            if quoted and ch not in " \t\r\n":
                raise StandinError(f"{where}: text after a quoted value in {name!r}")
            if not quoted:
                current.append(ch)
            i += 1
        if name in attrs:
            raise StandinError(f"{where}: attribute {name!r} given twice")
        attrs[name] = values


def parse_res(path: Path) -> dict[str, list[str]]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise StandinError(f"{path}: {exc.strerror}") from None
    attrs = parse_attributes("\n".join(line for line in text.splitlines()
                                       if not line.lstrip().startswith("#")), str(path))
    if attrs.get("type") != ["savepnpc"]:
        raise StandinError(f"{path}: 'type: savepnpc;' missing")
    for key in attrs:
        if key not in ("type", "precmd", "pstcmd", "timeout", "abort precmd with group"):
            raise StandinError(f"{path}: unknown attribute {key!r}")
    return attrs


def parse_nsradmin(text: str, where: str) -> list[dict[str, list[str]]]:
    resources = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not stripped.startswith("create "):
            raise StandinError(f"{where}:{number}: only 'create' commands are understood")
        attrs = parse_attributes(stripped[len("create "):], f"{where}:{number}")
        if "type" not in attrs or "name" not in attrs:
            raise StandinError(f"{where}:{number}: a resource needs type and name")
        resources.append(attrs)
    return resources


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
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                Path(path).write_bytes(Path(record["data"]).read_bytes())
                continue
            with open(record["data"], "rb") as stream:
                result = subprocess.run([str(external_asm(asm)), "-r", *record["args"], path],
                                        stdin=stream)
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
    source = Path(options["i"])
    resources = parse_nsradmin(source.read_text(), str(source))
    store = state_dir() / "resources.json"
    existing = json.loads(store.read_text()) if store.exists() else []
    names = {(r["type"][0], r["name"][0]) for r in existing}
    for resource in resources:
        kind = resource["type"][0]
        if kind == "NSR client":
            for needed in ("server", "group", "save set", "backup command"):
                if not resource.get(needed):
                    raise StandinError(f"{source}: NSR client without {needed!r}")
            if ("NSR group", resource["group"][0]) not in names:
                raise StandinError(f"{source}: NSR client in unknown group {resource['group'][0]!r}")
        existing = [r for r in existing if (r["type"][0], r["name"][0]) != (kind, resource["name"][0])]
        existing.append(resource)
        names.add((kind, resource["name"][0]))
    store.write_text(json.dumps(existing))
    return 0


def cmd_savegrp(args: list[str]) -> int:
    paths, options = _options(args, with_value="sc", flags="v")
    group = paths[0] if paths else "Default"
    store = state_dir() / "resources.json"
    resources = json.loads(store.read_text()) if store.exists() else []
    clients = [r for r in resources if r["type"] == ["NSR client"] and group in r.get("group", [])]
    if not clients:
        raise StandinError(f"savegrp: no client in group {group!r}")
    status = 0
    for client in clients:
        command = client.get("backup command", ["save"])[0]
        program = str(bin_dir() / command)
        result = subprocess.run([program, "-s", options.get("s", "localhost"), "-g", group,
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
