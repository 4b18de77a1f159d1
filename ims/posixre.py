"""POSIX bracket expressions in backup-groups.conf regexes, translated to Python's ``re``.

Sun's guide calls the regexes of backup-groups.conf "UNIX regular expressions", so
administrators write ``[[:digit:]].*``.  Python's ``re`` has no POSIX classes: it reads
``[[:digit:]]`` as a set of ``[ : d i g t`` followed by a literal ``]`` (with only a
FutureWarning), which matches nobody.  ``translate`` rewrites every bracket expression into
an explicit Python set, so that the classes keep their POSIX meaning, and leaves the rest of
the regex to ``re`` (whose syntax is a superset of POSIX ERE for whole-ID matching).

Meanings are those of the C (POSIX) locale: ASCII only, e.g. ``[:alpha:]`` is ``A-Za-z``
and does not include ``é``.  One difference from POSIX is kept on purpose: a backslash
inside brackets escapes as in Python (``[\\d.]``), as it did before; POSIX reads it as a
literal backslash, which no user ID holds in practice.

Failure behaviour: ``RegexError`` (a ``ValueError``) with a one-line reason for an unknown
class name, ``[:digit:]`` written without its outer brackets, a multi-character collating
element, a range ending in a class, or an unterminated bracket expression.
"""

from __future__ import annotations

import re
import string


class RegexError(ValueError):
    """A regex that cannot mean what it says; ``str()`` is the reason."""


# the POSIX classes in the C locale, as the inside of a Python set
CLASSES: dict[str, str] = {
    "alpha": "A-Za-z",
    "digit": "0-9",
    "alnum": "0-9A-Za-z",
    "upper": "A-Z",
    "lower": "a-z",
    "space": r" \t\n\r\f\v",
    "blank": r" \t",
    "punct": "".join(re.escape(ch) for ch in string.punctuation),
    "xdigit": "0-9A-Fa-f",
    "cntrl": r"\x00-\x1f\x7f",
    "print": r"\x20-\x7e",
    "graph": r"\x21-\x7e",
}


def translate(regex: str) -> str:
    """The Python regex with the same meaning as ``regex`` (POSIX brackets made explicit)."""
    out: list[str] = []
    i = 0
    while i < len(regex):
        if regex[i] == "\\":
            out.append(regex[i:i + 2])      # an escape is copied whole: '\[' is no bracket
            i += 2
        elif regex[i] == "[":
            text, i = _bracket(regex, i)
            out.append(text)
        else:
            out.append(regex[i])
            i += 1
    return "".join(out)


def _bracket(regex: str, start: int) -> tuple[str, int]:
    """The Python set for the bracket expression at ``start``, and the index after it."""
    i = start + 1
    negate = regex.startswith("^", i)
    if negate:
        i += 1
    items: list[str] = []
    first = True
    while True:
        if i >= len(regex):
            raise RegexError(f"'[' at position {start + 1} is never closed by ']'")
        if regex[i] == "]" and not first:   # ']' first is a literal, as in POSIX
            i += 1
            break
        first = False
        if regex.startswith("[:", i):
            name, i = _delimited(regex, i, ":")
            if name not in CLASSES:
                raise RegexError(f"unknown character class [:{name}:] (known: "
                                 + " ".join(f"[:{known}:]" for known in CLASSES) + ")")
            items.append(CLASSES[name])
            continue
        low, i = _endpoint(regex, i)
        if regex.startswith("-", i) and i + 1 < len(regex) and regex[i + 1] != "]":
            if regex.startswith("[:", i + 1):
                raise RegexError(f"a range cannot end in a character class: {regex[start:]!r}")
            high, i = _endpoint(regex, i + 1)
            items.append(f"{low}-{high}")
        else:
            items.append(low)
    body = regex[start + 1:i - 1]
    if re.fullmatch(r":[a-z]+:", body):
        # what grep also refuses: '[:digit:]' is the set ':', 'd', 'i', 'g', 't'
        raise RegexError(f"character class syntax is [[{body}]], not [{body}]")
    return "[" + ("^" if negate else "") + "".join(items) + "]", i


def _endpoint(regex: str, i: int) -> tuple[str, int]:
    """One character of a bracket expression as Python set syntax, and the index after it."""
    if regex.startswith("[.", i) or regex.startswith("[=", i):
        element, end = _delimited(regex, i, regex[i + 1])
        if len(element) != 1:
            raise RegexError(f"[{regex[i + 1]}{element}{regex[i + 1]}]: only single-character"
                             " collating elements are supported (C locale)")
        return re.escape(element), end
    if regex[i] == "\\":
        return regex[i:i + 2], i + 2        # a Python escape (\d, \.), kept as written
    return re.escape(regex[i]), i + 1


def _delimited(regex: str, i: int, mark: str) -> tuple[str, int]:
    """The text of ``[:name:]`` (``[.x.]``, ``[=x=]``) at ``i``, and the index after it."""
    end = regex.find(mark + "]", i + 2)
    if end < 0:
        raise RegexError(f"'[{mark}' at position {i + 1} is never closed by '{mark}]'")
    return regex[i + 2:end], end + 2
