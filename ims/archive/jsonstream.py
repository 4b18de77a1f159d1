"""One JSON object parsed from its text in chunks, with some of its arrays handed over an
element at a time instead of kept: the trailer's index (``ims.archive.records``), which has
an entry per folder of the archive and would otherwise be held whole, as text and as objects,
while it is read.

Everything else is the ``json`` module's own parsing (``raw_decode``), value by value, over a
window of the text: memory is the largest single value plus a chunk, whatever the object's
size.  The grammar is JSON's (RFC 8259) with one difference: a key given twice is refused
(``json.loads`` keeps the last; no writer of the format repeats one).

Failure behaviour: ``ArchiveDamaged`` naming ``where`` when the text is not one JSON object
(bad syntax, bad UTF-8, nesting too deep for the parser, text after the object); an exception
raised by an array's callback propagates unchanged.
"""

from __future__ import annotations

import codecs
import json
from typing import Any, Callable, Iterable, Iterator

from ims.errors import ArchiveDamaged

_DECODER = json.JSONDecoder()
_WHITESPACE = " \t\n\r"
_KEEP = 1 << 16           # consumed text dropped from the window once it is this long


class _Window:
    def __init__(self, chunks: Iterable[bytes], where: str) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self.text = ""
        self.position = 0
        self.ended = False
        self.where = where

    def fail(self, why: str) -> ArchiveDamaged:
        return ArchiveDamaged(f"{self.where}: metadata is not valid JSON ({why})")

    def more(self) -> bool:
        """Read the next chunk into the window; False at the end of the text."""
        if self.ended:
            return False
        chunk = next(self._chunks, None)
        try:
            if chunk is None:
                self.ended = True
                self.text += self._utf8.decode(b"", final=True)
                return False
            added = self._utf8.decode(chunk)
        except UnicodeDecodeError:
            raise self.fail("not UTF-8") from None
        if self.position >= _KEEP:
            self.text = self.text[self.position:]
            self.position = 0
        self.text += added
        return True

    def peek(self) -> str:
        """The next character that is not whitespace ("" at the end), not consumed."""
        while True:
            text, position = self.text, self.position
            while position < len(text) and text[position] in _WHITESPACE:
                position += 1
            self.position = position
            if position < len(text):
                return text[position]
            if not self.more():
                return ""

    def take(self, expected: str) -> str:
        """Consume the next character, which must be one of ``expected``."""
        char = self.peek()
        if not char or char not in expected:
            raise self.fail(f"{char or 'the end'!r} where one of {expected!r} was expected")
        self.position += 1
        return char

    def value(self) -> Any:
        """The next whole JSON value (read on while it is cut by the window's end)."""
        if not self.peek():
            raise self.fail("the text ends where a value was expected")
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.position)
            except json.JSONDecodeError as exc:
                # only a value cut by the window's end can be mended by reading on: an
                # unterminated string (reported where it starts) or an error at the end
                cut = exc.pos >= len(self.text) - 16 or exc.msg.startswith("Unterminated string")
                if cut and self.more():
                    continue
                raise self.fail(exc.msg) from None
            except RecursionError:
                raise self.fail("nested too deep") from None
            if end == len(self.text) and self.more():
                continue            # a number may go on in the next chunk
            self.position = end
            return value


def parse_object(chunks: Iterable[bytes], streamed: dict[str, Callable[[Any], None]],
                 where: str) -> dict[str, Any]:
    """The object in ``chunks``, without the members named in ``streamed``: each element of
    those arrays is passed to its callback as it is parsed (a member of another type is kept
    like any other)."""
    window = _Window(chunks, where)
    body: dict[str, Any] = {}
    seen: set[str] = set()
    window.take("{")
    if window.peek() == "}":
        window.position += 1
    else:
        while True:
            key = window.value()
            if not isinstance(key, str):
                raise window.fail("a key that is not a string")
            if key in seen:
                raise window.fail(f"the key {key!r} twice")
            seen.add(key)
            window.take(":")
            handle = streamed.get(key)
            if handle is not None and window.peek() == "[":
                window.position += 1
                if window.peek() == "]":
                    window.position += 1
                else:
                    while True:
                        handle(window.value())
                        if window.take(",]") == "]":
                            break
            else:
                body[key] = window.value()
            if window.take(",}") == "}":
                break
    if window.peek():
        raise window.fail("text after the object")
    return body
