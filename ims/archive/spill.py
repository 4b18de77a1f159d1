"""A JSON list built entry by entry and kept out of memory: the trailer's index.

The trailer lists one extent per folder and one per user, and it is written last; kept as
Python objects, those entries were the part of a backup's memory that grew with the store
(about 500 bytes a folder).  ``SpilledList`` keeps each entry as its JSON text instead, in
an unnamed temporary file of ``$TMPDIR`` (``ims.tempspace``: O_TMPFILE where the
file system has it, so the file never has a name and its space is freed when it is closed
or the process dies), and hands the list back as JSON text in chunks.  The text is what
``json.dumps`` of the whole list gives (same separators), so the trailer does not change.

Failure behaviour: when the temporary file cannot be made or written (no ``$TMPDIR``, a
full one), the entries stay in memory from there on: the backup then needs that memory, as
it did before, but never fails for it.  A file that cannot be read back (EIO) raises
``DeviceError``: the archive then has no trailer, never a wrong one.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator

from ims import tempspace
from ims.errors import DeviceError

_SPILL_AT = 256 << 10       # entries' text gathered in memory before a write
_CHUNK = 1 << 20            # read back in pieces of this size


def json_text(value: Any) -> bytes:
    """The archive's JSON encoding (docs/archive-format.md §4), used for every member."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class SpilledList:
    def __init__(self, prefix: str = "ims-index-") -> None:
        self.prefix = prefix
        self.count = 0
        self.size = 2               # bytes of the list's JSON text: "[" ... "]"
        self._fd: int | None = None
        self._on_disk = 0           # bytes of the file that hold entries
        self._memory = bytearray()  # entries' text not (yet) in the file
        self._spill = True          # False once the file failed: memory from then on

    def __len__(self) -> int:
        return self.count

    def append(self, entry: Any) -> None:
        text = json_text(entry)
        if self.count:
            self._memory += b","
            self.size += 1
        self._memory += text
        self.size += len(text)
        self.count += 1
        if self._spill and len(self._memory) >= _SPILL_AT:
            self._write_out()

    def _write_out(self) -> None:
        try:
            if self._fd is None:
                self._fd = tempspace.unnamed_file(self.prefix)
            view = memoryview(self._memory)
            done = 0
            while done < len(view):
                done += os.pwrite(self._fd, view[done:], self._on_disk + done)
            view.release()
        except OSError:
            # what is in the file up to _on_disk stays valid; the rest stays here
            self._spill = False
            return
        self._on_disk += len(self._memory)
        self._memory = bytearray()

    def chunks(self) -> Iterator[bytes]:
        """The list's JSON text, ``size`` bytes in all, in pieces."""
        yield b"["
        position = 0
        while position < self._on_disk:
            assert self._fd is not None
            try:
                chunk = os.pread(self._fd, min(_CHUNK, self._on_disk - position), position)
            except OSError as exc:
                chunk = b""
                why = exc.strerror
            else:
                why = "it is shorter than written"
            if not chunk:
                raise DeviceError(f"{tempspace.temp_dir()}: the trailer's index could not be"
                                  f" read back from its temporary file ({why}); the archive is"
                                  " incomplete (no trailer)")
            position += len(chunk)
            yield chunk
        yield bytes(self._memory)
        yield b"]"

    def close(self) -> None:
        """Frees the file (its space goes with the last descriptor)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._memory = bytearray()
